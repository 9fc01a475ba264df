//! One reading interface over the two JSON trees — the owned `serde_json::Value` and the
//! borrowed [`Node`] — so that the resource helpers of [`crate::fhir`] serve both; and the
//! stored form of a borrowed tree, written with the gateway's edits (the id it is stored under,
//! references to other entries of its Bundle) without building an owned tree first.

use super::json::Node;
use serde_json::Value;
use std::collections::HashMap;

/// What the resource helpers read of a JSON tree.
pub trait Tree: Sized {
    /// The member `key` of an object (`None` for anything else).
    fn member(&self, key: &str) -> Option<&Self>;
    /// The text of a string.
    fn text(&self) -> Option<&str>;
    /// The items of an array.
    fn items(&self) -> Option<&[Self]>;
    fn is_object(&self) -> bool;
    /// Whether `f` holds for any member of an object, in document order (false for anything
    /// else, and for an empty object).
    fn any_member(&self, f: &mut dyn FnMut(&str, &Self) -> bool) -> bool;
}

impl Tree for Value {
    fn member(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
    fn any_member(&self, f: &mut dyn FnMut(&str, &Self) -> bool) -> bool {
        self.as_object()
            .is_some_and(|map| map.iter().any(|(k, v)| f(k, v)))
    }
}

impl Tree for Node<'_> {
    fn member(&self, key: &str) -> Option<&Self> {
        self.get(key)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn items(&self) -> Option<&[Self]> {
        self.as_array()
    }
    fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }
    fn any_member(&self, f: &mut dyn FnMut(&str, &Self) -> bool) -> bool {
        self.as_object()
            .is_some_and(|o| o.iter().any(|(k, v)| f(k, v)))
    }
}

/// What the gateway changes in a resource as it stores it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Edits<'e> {
    /// The id it is stored under: it replaces `id` where that stands, else it is added last.
    pub id: Option<&'e str>,
    /// `reference` strings replaced wherever [`super::for_each_reference_mut`] would reach them
    /// (nested resources left out): a Bundle's `fullUrl`s to `Type/id`.
    pub references: Option<&'e HashMap<String, String>>,
}

/// The compact JSON of `node` with `edits` made: byte for byte what `serde_json::to_string`
/// writes for the owned tree of the same text after the same edits
/// ([`super::for_each_reference_mut`], then `id` inserted), so content hashes agree whichever
/// tree a resource was held in.
pub fn write_stored(node: &Node<'_>, edits: &Edits<'_>) -> String {
    let mut out = String::with_capacity(256);
    let Node::Object(object) = node else {
        write_value(&mut out, node, None);
        return out;
    };
    out.push('{');
    let mut id_written = false;
    for (i, (key, value)) in object.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(&mut out, key);
        out.push(':');
        match edits.id {
            Some(id) if key == "id" => {
                write_str(&mut out, id);
                id_written = true;
            }
            _ => write_member(&mut out, key, value, edits.references),
        }
    }
    if let Some(id) = edits.id.filter(|_| !id_written) {
        if !object.is_empty() {
            out.push(',');
        }
        out.push_str("\"id\":");
        write_str(&mut out, id);
    }
    out.push('}');
    out
}

/// One member's value, references replaced unless it holds a nested resource.
fn write_member(
    out: &mut String,
    key: &str,
    value: &Node<'_>,
    references: Option<&HashMap<String, String>>,
) {
    let Some(map) = references else {
        return write_value(out, value, None);
    };
    match (key, value) {
        ("reference", Node::String(s)) => write_str(out, map.get(*s).map_or(*s, String::as_str)),
        ("resource" | "contained" | "outcome", v) if super::holds_resources(v) => {
            write_value(out, v, None)
        }
        (_, v) => write_value(out, v, references),
    }
}

fn write_value(out: &mut String, value: &Node<'_>, references: Option<&HashMap<String, String>>) {
    match value {
        Node::Null => out.push_str("null"),
        Node::Bool(true) => out.push_str("true"),
        Node::Bool(false) => out.push_str("false"),
        // The lexeme as written, as `arbitrary_precision` keeps it.
        Node::Number(n) => out.push_str(n),
        Node::String(s) => write_str(out, s),
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, references);
            }
            out.push(']');
        }
        Node::Object(object) => {
            out.push('{');
            for (i, (key, v)) in object.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, key);
                out.push(':');
                write_member(out, key, v, references);
            }
            out.push('}');
        }
    }
}

/// A JSON string as `serde_json` escapes it: `"` and `\`, and the characters below U+0020 (`\b`,
/// `\t`, `\n`, `\f`, `\r`, else `\u00xx` in lower-case hex); nothing else.
fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    loop {
        // Plain runs are copied whole; every escaped byte is ASCII, so `i` and `i + 1` lie on
        // character boundaries.
        let i = start + super::json::plain_run(&bytes[start..]);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json::{Arena, parse_borrowed, parse_strict};

    /// The owned tree's stored form after the same edits, as the gateway made it before.
    fn owned_path(mut v: Value, edits: &Edits<'_>) -> String {
        if let Some(map) = edits.references {
            crate::fhir::for_each_reference_mut(&mut v, &mut |r: &mut String| {
                if let Some(t) = map.get(r.as_str()) {
                    *r = t.clone();
                }
            });
        }
        if let (Some(id), Some(obj)) = (edits.id, v.as_object_mut()) {
            obj.insert("id".into(), Value::String(id.to_owned()));
        }
        serde_json::to_string(&v).unwrap()
    }

    /// Both trees of `bytes` written with `edits` agree with the owned path: the strict
    /// parser's borrowed tree, and a view of a `Value` read by `serde_json` itself (which, unlike
    /// the strict parser, lets control characters through).
    fn agree(bytes: &[u8], edits: &Edits<'_>) {
        let lenient: Value = serde_json::from_slice(bytes).unwrap();
        let expected = owned_path(lenient.clone(), edits);
        let arena = Arena::new();
        assert_eq!(
            write_stored(&Node::from_value(&lenient, &arena), edits),
            expected
        );
        if let Ok(node) = parse_borrowed(bytes, &arena, 64) {
            assert_eq!(write_stored(&node, edits), expected);
        }
    }

    #[test]
    fn the_stored_form_matches_the_owned_trees_for_every_example_and_synthea_bundle() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        let mut files = Vec::new();
        for folder in ["fhir-r4-examples", "synthea"] {
            crate::fhir::json::tests::data_files(&root.join(folder), &mut files);
        }
        assert!(files.len() >= 450, "{} files", files.len());
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let arena = Arena::new();
            let node = parse_borrowed(&bytes, &arena, 64).unwrap();
            // Every reference of the document (nested resources' too) pointed elsewhere.
            let mut map = HashMap::new();
            super::super::any_reference_member(&node, &mut |r| {
                map.insert(r.to_owned(), format!("Edited/{}", map.len()));
                false
            });
            for edits in [
                Edits::default(),
                Edits {
                    id: Some("stored-1"),
                    references: None,
                },
                Edits {
                    id: Some("x\"\\\u{1}"),
                    references: Some(&map),
                },
            ] {
                assert_eq!(
                    write_stored(&node, &edits),
                    owned_path(parse_strict(&bytes, 64).unwrap(), &edits),
                    "{}",
                    f.display()
                );
            }
        }
    }

    #[test]
    fn escapes_numbers_and_the_id_land_where_serde_json_puts_them() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        let text = serde_json::to_string(&format!("{all_controls}\"\\/é😀\u{7f}")).unwrap();
        let doc = format!(
            r#"{{"resourceType":"Basic","a":{text},"n":[-0,1.50,1e+2,1E5,-12.30e-4,18446744073709551616],"b":[true,false,null,{{}},[]]}}"#
        );
        let refs: HashMap<String, String> =
            [("urn:uuid:1".to_owned(), "Patient/p".to_owned())].into();
        for edits in [
            Edits::default(),
            Edits {
                id: Some("new"),
                references: Some(&refs),
            },
        ] {
            agree(doc.as_bytes(), &edits);
            agree(br#"{"id":"old","resourceType":"Basic"}"#, &edits);
            agree(br#"{}"#, &edits);
        }
        // References in nested resources stay; elsewhere they are replaced, at any depth.
        let nested = br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:1"}}}],"x":[{"y":{"reference":"urn:uuid:1"}}],"contained":[{"resourceType":"Patient","link":[{"other":{"reference":"urn:uuid:1"}}]}],"reference":7}"#;
        let edits = Edits {
            id: Some("b"),
            references: Some(&refs),
        };
        agree(nested, &edits);
        let arena = Arena::new();
        let written = write_stored(&parse_borrowed(nested, &arena, 64).unwrap(), &edits);
        assert_eq!(written.matches("Patient/p").count(), 1, "{written}");
        assert!(
            written.ends_with(r#","reference":7,"id":"b"}"#),
            "{written}"
        );
    }
}
