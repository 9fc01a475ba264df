//! What is written: one create or update (a single resource, or one entry of a transaction or
//! batch Bundle), checked against its URL; what the store keeps for it; and the response
//! Bundle of a transaction or batch. Pure: no store, no clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::GatewayError;
use crate::config::SectorSettings;
use crate::fhir::json::{Arena, Node};
use crate::fhir::outcome::Issue;
use crate::fhir::tree::{Edits, Tree};
use crate::fhir::{self, identifiers, is_valid_id};
use crate::ids::content_hash;
use crate::store::{Prepared, PutOutcome};

/// One create or update to apply (a single request, or one Bundle entry). Its resource is an
/// owned `Value` where an adapter built one (and in a held write); the write pipeline reads
/// it as a [`Node`] — borrowed from the request's bytes for a Bundle, so that no entry is
/// copied into an owned tree — and writes what it stores from that tree with its edits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry<R = Value> {
    /// Where the entry sits, for error locations: `Bundle.entry[3]`, or `None` for a single resource.
    pub location: Option<String>,
    pub method: Method,
    pub rtype: String,
    /// The id from the URL (PUT).
    pub url_id: Option<String>,
    /// The search of `If-None-Exist` (a conditional create), as query pairs.
    pub if_none_exist: Option<Vec<(String, String)>>,
    /// `If-Match`: the version an update expects to replace.
    pub if_match: Option<i64>,
    pub full_url: Option<String>,
    pub resource: R,
}

impl<R> Entry<R> {
    /// The same entry over another form of its resource.
    fn with<S>(&self, resource: S) -> Entry<S> {
        Entry {
            location: self.location.clone(),
            method: self.method,
            rtype: self.rtype.clone(),
            url_id: self.url_id.clone(),
            if_none_exist: self.if_none_exist.clone(),
            if_match: self.if_match,
            full_url: self.full_url.clone(),
            resource,
        }
    }
}

impl Entry {
    /// The entry over a tree that borrows its resource's strings (its containers in `arena`).
    pub fn view<'a>(&'a self, arena: &'a Arena) -> Entry<Node<'a>> {
        self.with(Node::from_value(&self.resource, arena))
    }
}

impl Entry<Node<'_>> {
    /// The entry with an owned copy of its resource (a held write keeps it).
    pub fn to_owned_entry(&self) -> Result<Entry, serde_json::Error> {
        Ok(self.with(self.resource.to_value()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Post,
    Put,
}

/// The result of one applied entry.
#[derive(Debug, Clone)]
pub struct Applied {
    pub rtype: String,
    pub rid: String,
    pub outcome: PutOutcome,
    /// The resource as stored (its JSON text).
    pub body: String,
}

/// Checks that a single resource matches its URL (type, and id for PUT).
pub(super) fn check_entry_shape<R: Tree>(e: &Entry<R>) -> Result<(), GatewayError> {
    let at = |p: &str| match &e.location {
        Some(l) => format!("{l}.{p}"),
        None => p.to_owned(),
    };
    if !e.resource.is_object() {
        return Err(GatewayError::invalid(
            Issue::error(
                "structure",
                "the body must be a JSON object holding one FHIR resource",
            )
            .at(at(&e.rtype)),
        ));
    }
    match fhir::resource_type(&e.resource) {
        Some(t) if t == e.rtype => {}
        Some(_) => {
            return Err(GatewayError::invalid(
                Issue::error(
                    "invalid",
                    format!("resourceType does not match the URL's type {}", e.rtype),
                )
                .at(at(&format!("{}.resourceType", e.rtype))),
            ));
        }
        None => {
            return Err(GatewayError::invalid(
                Issue::error("required", "missing resourceType")
                    .at(at(&format!("{}.resourceType", e.rtype))),
            ));
        }
    }
    if let Some(url_id) = &e.url_id {
        if !is_valid_id(url_id) {
            return Err(GatewayError::invalid(
                Issue::error("value", "the id in the URL is not a valid FHIR id")
                    .at(at(&format!("{}.id", e.rtype))),
            ));
        }
        match fhir::resource_id(&e.resource) {
            Some(id) if id == url_id => {}
            Some(_) => {
                return Err(GatewayError::invalid(
                    Issue::error("invalid", "the resource id differs from the id in the URL")
                        .at(at(&format!("{}.id", e.rtype))),
                ));
            }
            None => {
                return Err(GatewayError::invalid(
                    Issue::error("required", "an update must carry the resource id")
                        .at(at(&format!("{}.id", e.rtype))),
                ));
            }
        }
    }
    Ok(())
}

/// Builds what the store keeps for one resource.
pub fn prepare(s: &SectorSettings, rtype: &str, rid: &str, resource: &Value) -> Prepared {
    // Serialising a Value cannot fail: its keys are strings and its numbers are valid.
    let body = serde_json::to_string(resource).unwrap_or_default();
    prepare_stored(s, rtype, rid, resource, &Edits::default(), body)
}

/// What the store keeps for one resource whose stored form `body` is `resource` with `edits`
/// made ([`crate::fhir::tree::write_stored`]): the patient reference is read through the edits.
pub(super) fn prepare_stored<T: Tree>(
    s: &SectorSettings,
    rtype: &str,
    rid: &str,
    resource: &T,
    edits: &Edits<'_>,
    body: String,
) -> Prepared {
    let hash = content_hash(body.as_bytes());
    let idents: Vec<(String, String)> = identifiers(resource)
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let (patient_ref, link_identifiers) = if rtype == "Patient" {
        let links = idents
            .iter()
            .filter(|(sys, _)| {
                *sys == s.patient_identifier_system
                    || s.replacement_identifier_systems.contains(sys)
            })
            .cloned()
            .collect();
        (None, links)
    } else {
        (
            edited_patient_reference(resource, edits).and_then(|r| normalise_patient_ref(s, r)),
            Vec::new(),
        )
    };
    Prepared {
        sector: s.id.clone(),
        rtype: rtype.to_owned(),
        rid: rid.to_owned(),
        body,
        hash,
        patient_ref,
        link_identifiers,
        identifiers: idents,
        patient_id: None,
        expected_version: None,
        authority_systems: if rtype == "Patient" {
            s.replacement_identifier_systems.clone()
        } else {
            Vec::new()
        },
        allow_merge: false,
    }
}

/// [`fhir::patient_reference`] of the resource as stored: its references with `edits` made.
pub(super) fn edited_patient_reference<'r, T: Tree>(
    resource: &'r T,
    edits: &Edits<'r>,
) -> Option<&'r str> {
    let edited = |r: &'r str| -> &'r str {
        edits
            .references
            .and_then(|m| m.get(r))
            .map_or(r, String::as_str)
    };
    fhir::patient_reference_through(resource, &edited).map(|(_, r)| r)
}

/// `Patient/123`, `Patient/123/_history/2` and `<own base>/Patient/123` become `Patient/123`;
/// a conditional reference stays as it is; anything else names no patient of this sector.
fn normalise_patient_ref(s: &SectorSettings, r: &str) -> Option<String> {
    if r.starts_with("Patient?identifier=") {
        return Some(r.to_owned());
    }
    let local = match &s.base_url {
        Some(base) => r
            .strip_prefix(&format!("{}/", base.trim_end_matches('/')))
            .unwrap_or(r),
        None => r,
    };
    let id = local.strip_prefix("Patient/")?.split('/').next()?;
    is_valid_id(id).then(|| format!("Patient/{id}"))
}

/// What makes a Bundle's entries ambiguous: two entries with one `fullUrl`, or a `urn:uuid:`
/// reference that no entry's `fullUrl` names (it could only be stored dangling).
pub(super) fn bundle_links(bundle: &Node<'_>) -> Vec<Issue> {
    let Some(entries) = bundle.get("entry").and_then(Node::as_array) else {
        return Vec::new();
    };
    let mut issues = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(full) = e.get("fullUrl").and_then(Node::as_str)
            && !seen.insert(full)
        {
            issues.push(
                Issue::error(
                    "invalid",
                    "two entries have this fullUrl; each fullUrl names one entry",
                )
                .at(format!("Bundle.entry[{i}].fullUrl")),
            );
        }
    }
    for (i, e) in entries.iter().enumerate() {
        let Some(resource) = e.get("resource") else {
            continue;
        };
        let mut dangling = false;
        fhir::for_each_reference(resource, &mut |r: &str| {
            dangling |= r.starts_with("urn:uuid:") && !seen.contains(r);
        });
        if dangling {
            issues.push(
                Issue::error(
                    "invalid",
                    "a urn:uuid reference names no entry of the Bundle; send the entry or reference a stored resource",
                )
                .at(format!("Bundle.entry[{i}].resource")),
            );
        }
    }
    issues
}

/// Reads the entries of a transaction/batch Bundle; each is an `Entry` or its issues.
pub(super) fn bundle_entries<'a>(bundle: &Node<'a>) -> Vec<Result<Entry<Node<'a>>, Vec<Issue>>> {
    let Some(entries) = bundle.get("entry").and_then(Node::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| bundle_entry(&format!("Bundle.entry[{i}]"), e))
        .collect()
}

/// One entry of a Bundle at `loc`: its request (method, url, ifNoneExist) and resource (the
/// Bundle's own tree: a copy of a node is a few words).
fn bundle_entry<'a>(loc: &str, e: &Node<'a>) -> Result<Entry<Node<'a>>, Vec<Issue>> {
    let fail = |code: &'static str, msg: &str, at: &str| {
        vec![Issue::error(code, msg).at(format!("{loc}{at}"))]
    };
    let resource = e.get("resource").copied();
    let request = e
        .get("request")
        .ok_or_else(|| fail("required", "each entry needs a request", ".request"))?;
    let method = match request.get("method").and_then(Node::as_str) {
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some(m) => {
            return Err(fail(
                "not-supported",
                &format!("{m} entries are not supported: the gateway accepts POST and PUT"),
                ".request.method",
            ));
        }
        None => {
            return Err(fail(
                "required",
                "missing request method",
                ".request.method",
            ));
        }
    };
    let resource = resource.ok_or_else(|| {
        fail(
            "required",
            "a POST or PUT entry needs a resource",
            ".resource",
        )
    })?;
    let rtype = fhir::resource_type(&resource).unwrap_or("").to_owned();
    let url = request.get("url").and_then(Node::as_str).unwrap_or("");
    let url_id =
        entry_url_id(url, &rtype, method).map_err(|msg| fail("invalid", msg, ".request.url"))?;
    let if_none_exist = request
        .get("ifNoneExist")
        .and_then(Node::as_str)
        .map(parse_query);
    let if_match = match request.get("ifMatch").and_then(Node::as_str) {
        None => None,
        Some(tag) => Some(etag_version(tag).ok_or_else(|| {
            fail(
                "value",
                "ifMatch takes the ETag of a version, W/\"<versionId>\"",
                ".request.ifMatch",
            )
        })?),
    };
    let entry = Entry {
        location: Some(loc.to_owned()),
        method,
        rtype,
        url_id,
        if_none_exist,
        if_match,
        full_url: e.get("fullUrl").and_then(Node::as_str).map(str::to_owned),
        resource,
    };
    check_entry_shape(&entry).map_err(|err| match err {
        GatewayError::Invalid(i) => i,
        other => vec![Issue::error("invalid", other.to_string()).at(loc)],
    })?;
    Ok(entry)
}

/// The id a Bundle entry's `request.url` names (`Type/id` for a PUT, none for a POST), or
/// why the url does not fit the entry.
fn entry_url_id(url: &str, rtype: &str, method: Method) -> Result<Option<String>, &'static str> {
    let path = url.split('?').next().unwrap_or("");
    let mut parts = path.split('/');
    let url_type = parts.next().unwrap_or("");
    let url_id = parts.next().map(str::to_owned);
    if url_type != rtype {
        return Err("request.url does not name the entry resource's type");
    }
    match (method, &url_id) {
        (Method::Put, None) => Err("a PUT entry's url must be Type/id"),
        (Method::Post, Some(_)) => Err("a POST entry's url must be the resource type only"),
        _ => Ok(url_id),
    }
}

/// A query string (`a=1&b=x%7Cy`) → decoded pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.trim_start_matches('?')
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The version an ETag names: `W/"3"` or `"3"`.
pub fn etag_version(tag: &str) -> Option<i64> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// `identifier=system|value` → (system, value).
pub fn parse_identifier_query(q: &str) -> Option<(String, String)> {
    match parse_query(q).as_slice() {
        [(k, v)] if k == "identifier" => {
            let (s, val) = v.split_once('|')?;
            (!s.is_empty() && !val.is_empty()).then(|| (s.to_owned(), val.to_owned()))
        }
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The response Bundle of a transaction or batch: serialised straight to its JSON (a
/// 340-entry answer builds no owned tree), with the members in the order written here.
#[derive(Debug, Serialize)]
pub struct ResponseBundle {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    entry: Vec<ResponseEntry>,
}

#[derive(Debug, Serialize)]
struct ResponseEntry {
    response: EntryResponse,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryResponse {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Value>,
}

impl ResponseBundle {
    /// The Bundle as JSON text. Its parts are strings and an OperationOutcome `Value`, so
    /// serialising cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Bundle as an owned tree (the demo and the library's callers).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The response Bundle of a transaction or batch.
pub(super) fn response_bundle(
    kind: &'static str,
    base: &str,
    results: Vec<Result<Applied, GatewayError>>,
) -> ResponseBundle {
    let entry = results
        .into_iter()
        .map(|r| {
            let response = match r {
                Ok(a) => EntryResponse {
                    status: if a.outcome.created {
                        "201 Created"
                    } else {
                        "200 OK"
                    }
                    .to_owned(),
                    location: Some(format!(
                        "{base}/{}/{}/_history/{}",
                        a.rtype, a.rid, a.outcome.version
                    )),
                    etag: Some(format!("W/\"{}\"", a.outcome.version)),
                    last_modified: Some(a.outcome.last_updated),
                    outcome: None,
                },
                Err(e) => EntryResponse {
                    status: e.status().to_string(),
                    location: None,
                    etag: None,
                    last_modified: None,
                    outcome: Some(fhir::outcome::operation_outcome(&e.issues())),
                },
            };
            ResponseEntry { response }
        })
        .collect();
    ResponseBundle {
        resource_type: "Bundle",
        kind,
        entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_bundle_is_written_in_the_order_and_form_of_its_fhir_json() {
        let applied = |created: bool, version: i64| Applied {
            rtype: "Condition".into(),
            rid: format!("c{version}"),
            outcome: PutOutcome {
                gid: "g".into(),
                version,
                last_updated: "2026-12-06T10:00:00.000Z".into(),
                changed: true,
                created,
                patient_id: None,
                merged: Vec::new(),
            },
            body: String::new(),
        };
        let refused = || GatewayError::invalid(Issue::error("value", "bad").at("Condition.code"));
        let bundle = response_bundle(
            "batch-response",
            "http://gw/fhir/gp",
            vec![Ok(applied(true, 1)), Ok(applied(false, 2)), Err(refused())],
        );
        let expected = serde_json::json!({
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"response": {"status": "201 Created",
                    "location": "http://gw/fhir/gp/Condition/c1/_history/1",
                    "etag": "W/\"1\"", "lastModified": "2026-12-06T10:00:00.000Z"}},
                {"response": {"status": "200 OK",
                    "location": "http://gw/fhir/gp/Condition/c2/_history/2",
                    "etag": "W/\"2\"", "lastModified": "2026-12-06T10:00:00.000Z"}},
                {"response": {"status": refused().status().to_string(),
                    "outcome": fhir::outcome::operation_outcome(&refused().issues())}},
            ]
        });
        // The same text as the owned tree's (key order included), and the same tree.
        assert_eq!(bundle.to_json(), expected.to_string());
        assert_eq!(bundle.to_value(), expected);
    }
}
