//! The Bundle invariants (bdl-1, 2, 3, 4, 7, 8, 9, 10, 11, 12): what each Bundle type may and
//! must carry. bdl-5 (an entry has a resource, a request or a response) is an ordinary
//! invariant of `Bundle.entry` (`validate::invariants`).

use crate::fhir::json::{Node, Object};
use std::collections::HashSet;

use super::invariants::{Broken, present};

fn at(key: &'static str, message: &str, at: Option<String>) -> Broken {
    Broken {
        key,
        message: message.to_owned(),
        at,
    }
}

pub fn check(map: &Object<'_>, out: &mut Vec<Broken>) {
    let kind = map.get("type").and_then(Node::as_str).unwrap_or("");
    let entries: &[Node<'_>] = map.get("entry").and_then(Node::as_array).unwrap_or(&[]);
    if present(map, "total") && !matches!(kind, "searchset" | "history") {
        out.push(at(
            "bdl-1",
            "total is only for a searchset or history Bundle",
            None,
        ));
    }
    let wants_request = matches!(kind, "batch" | "transaction" | "history");
    let wants_response = matches!(kind, "batch-response" | "transaction-response" | "history");
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(e) = entry.as_object() else { continue };
        let here = || Some(format!("entry[{i}]"));
        if e.contains_key("search") && kind != "searchset" {
            out.push(at(
                "bdl-2",
                "entry.search is only for a searchset Bundle",
                here(),
            ));
        }
        if e.contains_key("request") != wants_request {
            out.push(at(
                "bdl-3",
                "entry.request is required in a batch, transaction or history Bundle, and \
                 allowed only there",
                here(),
            ));
        }
        if e.contains_key("response") != wants_response {
            out.push(at(
                "bdl-4",
                "entry.response is required in a batch-response, transaction-response or \
                 history Bundle, and allowed only there",
                here(),
            ));
        }
        if let Some(Node::String(full)) = e.get("fullUrl") {
            if full.contains("/_history/") {
                out.push(at(
                    "bdl-8",
                    "fullUrl must not be a version-specific URL",
                    here(),
                ));
            }
            let version = e
                .get("resource")
                .and_then(|r| r.get("meta"))
                .and_then(|m| m.get("versionId"))
                .and_then(Node::as_str)
                .unwrap_or("");
            if kind != "history" && !seen.insert((*full, version)) {
                out.push(at(
                    "bdl-7",
                    "two entries have the same fullUrl (and version)",
                    here(),
                ));
            }
        }
    }
    by_type(kind, map, entries, out);
}

/// bdl-9, 10, 11 (documents) and bdl-12 (messages).
fn by_type(kind: &str, map: &Object<'_>, entries: &[Node<'_>], out: &mut Vec<Broken>) {
    let first = entries
        .first()
        .and_then(|e| e.get("resource"))
        .and_then(|r| r.get("resourceType"))
        .and_then(Node::as_str);
    match kind {
        "document" => {
            let id = map.get("identifier");
            let has = |k: &str| id.and_then(|i| i.get(k)).is_some();
            if !(has("system") && has("value")) {
                out.push(at(
                    "bdl-9",
                    "a document Bundle needs an identifier with a system and a value",
                    None,
                ));
            }
            if !map.contains_key("timestamp") {
                out.push(at("bdl-10", "a document Bundle needs a timestamp", None));
            }
            if first != Some("Composition") {
                out.push(at(
                    "bdl-11",
                    "a document Bundle's first entry must be a Composition",
                    None,
                ));
            }
        }
        "message" if first != Some("MessageHeader") => out.push(at(
            "bdl-12",
            "a message Bundle's first entry must be a MessageHeader",
            None,
        )),
        _ => {}
    }
}
