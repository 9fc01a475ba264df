//! The FHIR documents the API adds around stored resources: searchset and history Bundles, the
//! CapabilityStatements (generated from the search registry and the routes the router serves),
//! and the SMART configuration. The resources themselves are shown by `gateway::views`.

use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::gateway::params::{self, COMMON, Kind};
use crate::gateway::search::query_text;
use crate::store::Stored;

/// One page of a search, for its links.
pub struct Page<'a> {
    /// The base of the view searched (the cross-sector base or a sector's).
    pub base: &'a str,
    pub rtype: &'a str,
    /// The parameters as executed (ignored ones left out).
    pub executed: &'a [(String, String)],
    pub offset: i64,
    pub count: i64,
    pub total: usize,
    pub show_total: bool,
}

/// The URL of the page of `page`'s search starting at `offset`.
pub fn page_url(page: &Page<'_>, offset: i64) -> String {
    let mut pairs: Vec<(String, String)> = page
        .executed
        .iter()
        .filter(|(k, _)| k != "_count" && k != "_offset")
        .cloned()
        .collect();
    pairs.push(("_count".into(), page.count.to_string()));
    if offset > 0 {
        pairs.push(("_offset".into(), offset.to_string()));
    }
    format!("{}/{}?{}", page.base, page.rtype, query_text(&pairs))
}

fn entry(base: &str, r: Value, mode: &str) -> Value {
    let full = format!(
        "{base}/{}/{}",
        r.get("resourceType").and_then(Value::as_str).unwrap_or(""),
        r.get("id").and_then(Value::as_str).unwrap_or("")
    );
    json!({ "fullUrl": full, "resource": r, "search": { "mode": mode } })
}

/// A `searchset` Bundle: `total`, the self link (the query as executed), `next` and
/// `previous`, absolute `fullUrl`s; matches, then what `_include`/`_revinclude` added.
pub fn searchset(page: &Page<'_>, matches: Vec<Value>, included: Vec<Value>) -> Value {
    // Alerts, gateway patients and audit events live at the cross-sector base.
    let mut entries: Vec<Value> = matches
        .into_iter()
        .map(|r| entry(page.base, r, "match"))
        .collect();
    entries.extend(included.into_iter().map(|r| entry(page.base, r, "include")));
    let mut link = vec![json!({ "relation": "self", "url": page_url(page, page.offset) })];
    let got = page.offset.saturating_add(page.count);
    if page.count > 0 && (got as usize) < page.total {
        link.push(json!({ "relation": "next", "url": page_url(page, got) }));
    }
    if page.offset > 0 && page.count > 0 {
        link.push(json!({ "relation": "previous", "url": page_url(page, (page.offset - page.count).max(0)) }));
    }
    let mut b = json!({ "resourceType": "Bundle", "type": "searchset", "link": link });
    if page.show_total {
        b["total"] = json!(page.total);
    }
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// A `history` Bundle: each version with its request and response.
pub fn history(
    base: &str,
    self_url: String,
    next: Option<String>,
    versions: &[Stored],
    shown: Vec<Value>,
) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .zip(shown)
        .map(|(v, r)| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
            let method = if v.version == 1 { "POST" } else { "PUT" };
            let url = if v.version == 1 {
                v.rtype.clone()
            } else {
                format!("{}/{id}", v.rtype)
            };
            json!({
                "fullUrl": format!("{base}/{}/{id}", v.rtype),
                "resource": r,
                "request": { "method": method, "url": url },
                "response": {
                    "status": if v.version == 1 { "201 Created" } else { "200 OK" },
                    "etag": format!("W/\"{}\"", v.version),
                    "lastModified": v.last_updated,
                }
            })
        })
        .collect();
    let mut link = vec![json!({ "relation": "self", "url": self_url })];
    if let Some(n) = next {
        link.push(json!({ "relation": "next", "url": n }));
    }
    let mut b = json!({ "resourceType": "Bundle", "type": "history", "link": link });
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// The search parameters of a stored type, by name (common ones first).
pub fn param_names(rtype: &str) -> Vec<String> {
    let mut names: Vec<String> = COMMON.iter().map(|s| (*s).to_owned()).collect();
    match params::params_of(rtype) {
        Some(ps) => names.extend(ps.iter().map(|p| p.name.to_owned())),
        None => names.push("patient".into()),
    }
    names
}

fn search_param(name: &str, kind: &str, doc: &str) -> Value {
    json!({ "name": name, "type": kind, "documentation": doc })
}

/// The search parameters a stored type claims.
fn search_params(rtype: &str) -> Vec<Value> {
    let mut out = vec![
        search_param(
            "_id",
            "token",
            "the gateway id (on a sector's base: the sector's own id)",
        ),
        search_param(
            "_lastUpdated",
            "date",
            "when the gateway stored the current version (eq, ge, gt, le, lt)",
        ),
        search_param(
            "identifier",
            "token",
            "a business identifier: [system|]value",
        ),
    ];
    match params::params_of(rtype) {
        Some(ps) => out.extend(ps.iter().map(|p| {
            let doc = match p.kind {
                Kind::Token => "[system|]code, several separated by commas; :text and :not",
                Kind::Date => "eq, ne, ge, gt, le, lt and a FHIR date or dateTime",
                Kind::Reference if matches!(p.name, "patient" | "subject") => {
                    "the gateway patient's id (on a sector's base: the sector's Patient)"
                }
                Kind::Reference => "Type/id or id, by gateway id or the sector's own id",
            };
            search_param(p.name, p.kind.code(), doc)
        })),
        None => out.push(search_param(
            "patient",
            "reference",
            "the gateway patient's id (on a sector's base: the sector's Patient)",
        )),
    }
    out
}

const SEARCH_RESULT_DOC: &str = "Every search takes _count, _offset, _sort (_lastUpdated, _id or a date parameter, - for descending), _elements (top-level elements), _summary=count, _total=none; unknown parameters are ignored unless Prefer: handling=strict";

fn stored_type(rtype: &str) -> Value {
    let mut r = json!({
        "type": rtype,
        "interaction": [
            { "code": "read" }, { "code": "vread" }, { "code": "history-instance" },
            { "code": "history-type" }, { "code": "search-type" }
        ],
        "versioning": "versioned",
        "readHistory": true,
        "searchParam": search_params(rtype),
    });
    let includes = params::includes_of(rtype);
    if !includes.is_empty() {
        r["searchInclude"] = json!(includes);
    }
    let rev = params::revincludes_of(rtype);
    if !rev.is_empty() {
        r["searchRevInclude"] = json!(rev);
    }
    r
}

fn operation(gw: &Gateway, name: &str, id: &str) -> Value {
    json!({ "name": name, "definition": format!("{}/OperationDefinition/{id}", gw.fhir_base()) })
}

/// The ids of the gateway's OperationDefinitions, served at `/fhir/OperationDefinition/{id}`.
pub const TOTAL_PLAN: &str = "Patient-total-plan";
pub const ACKNOWLEDGE: &str = "DetectedIssue-acknowledge";
pub const SNOOZE: &str = "DetectedIssue-snooze";

/// One of the gateway's OperationDefinitions, by id.
pub fn operation_definition(gw: &Gateway, id: &str) -> Option<Value> {
    let url = format!("{}/OperationDefinition/{id}", gw.fhir_base());
    let common = |name: &str, code: &str, desc: &str| {
        json!({
            "resourceType": "OperationDefinition", "id": id, "url": url, "version": env!("CARGO_PKG_VERSION"),
            "name": name, "status": "active", "kind": "operation", "description": desc,
            "code": code, "system": false, "instance": true,
        })
    };
    match id {
        TOTAL_PLAN => {
            let mut d = common(
                "TotalPlan",
                "total-plan",
                "A gateway patient's total healthcare plan: every sector's current CarePlans, Goals, Conditions, CareTeams and medications and the open alerts, in one collection Bundle",
            );
            d["affectsState"] = json!(false);
            d["resource"] = json!(["Patient"]);
            d["type"] = json!(false);
            d["parameter"] = json!([{ "name": "return", "use": "out", "min": 1, "max": "1", "type": "Bundle", "documentation": "a collection Bundle" }]);
            Some(d)
        }
        ACKNOWLEDGE => {
            let mut d = common(
                "Acknowledge",
                "acknowledge",
                "A care-team member acknowledges an alert: recorded as a mitigation, the DetectedIssue becomes final; audited",
            );
            d["affectsState"] = json!(true);
            d["resource"] = json!(["DetectedIssue"]);
            d["type"] = json!(false);
            d["parameter"] = json!([
                { "name": "author", "use": "in", "min": 1, "max": "1", "documentation": "who acknowledges: valueString, or valueReference with a display or reference", "type": "string" },
                { "name": "note", "use": "in", "min": 0, "max": "1", "type": "string" },
                { "name": "return", "use": "out", "min": 1, "max": "1", "type": "DetectedIssue" }
            ]);
            Some(d)
        }
        SNOOZE => {
            let mut d = common(
                "Snooze",
                "snooze",
                "A care-team member snoozes an open alert until a date: it leaves the console's default inbox until then (or until the alert changes) and carries the alert-snooze extension meanwhile; recorded in the alert's history; audited",
            );
            d["affectsState"] = json!(true);
            d["resource"] = json!(["DetectedIssue"]);
            d["type"] = json!(false);
            d["parameter"] = json!([
                { "name": "until", "use": "in", "min": 1, "max": "1", "documentation": "until when: valueDate (from its first moment, UTC) or valueDateTime, in the future", "type": "dateTime" },
                { "name": "author", "use": "in", "min": 1, "max": "1", "documentation": "who snoozes: valueString, or valueReference with a display or reference", "type": "string" },
                { "name": "note", "use": "in", "min": 0, "max": "1", "type": "string" },
                { "name": "return", "use": "out", "min": 1, "max": "1", "type": "DetectedIssue" }
            ]);
            Some(d)
        }
        _ => None,
    }
}

/// The security section: bearer tokens; SMART with the token endpoint when one is configured.
fn security(gw: &Gateway) -> Value {
    let s = gw.settings();
    let mut sec = json!({
        "cors": !s.server.cors_origins.is_empty(),
        "description": "Bearer token (Authorization: Bearer <token>): static tokens, or JWTs of the configured issuer. /fhir/metadata and /.well-known/smart-configuration need none."
    });
    if let Some(token) = &s.auth.token_endpoint {
        let mut uris = vec![json!({ "url": "token", "valueUri": token })];
        if let Some(a) = &s.auth.authorization_endpoint {
            uris.push(json!({ "url": "authorize", "valueUri": a }));
        }
        sec["service"] = json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR" }] }]);
        sec["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris
        }]);
    }
    sec
}

/// The cross-sector base's statement, generated from the schema's types and the search
/// registry: what is claimed here is what the routes and `gateway::params` serve.
pub fn capability_statement(gw: &Gateway) -> Value {
    let mut resources: Vec<Value> = gw
        .validator()
        .schema
        .resource_types()
        .filter(|t| !matches!(*t, "AuditEvent" | "DetectedIssue" | "Patient"))
        .map(stored_type)
        .collect();
    resources.push(json!({
        "type": "Patient",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "searchParam": [
            search_param("identifier", "token", "system|value: a CPR number or a sector Patient key"),
            search_param("_id", "token", "the gateway patient's id"),
        ],
        "operation": [operation(gw, "total-plan", TOTAL_PLAN)]
    }));
    resources.push(json!({
        "type": "DetectedIssue",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "searchParam": [
            search_param("patient", "reference", "the gateway patient's id"),
            search_param("status", "token", "preliminary, amended, final or cancelled"),
            search_param("code", "token", "the alert code ([system|]code)"),
        ],
        "operation": [
            operation(gw, "acknowledge", ACKNOWLEDGE),
            operation(gw, "snooze", SNOOZE)
        ]
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{ "code": "search-type" }],
        "searchParam": [
            search_param("patient", "reference", "the gateway patient's id"),
            search_param("date", "date", "when the event was recorded"),
            search_param("outcome", "token", "0, 4, 8 or 12"),
            search_param("agent", "string", "the client id of the requesting agent"),
            search_param("sector", "token", "the source or target sector"),
            search_param("action", "token", "C, R, U, D or E"),
            search_param("entity-type", "token", "an R4 resource type"),
        ]
    }));
    let sectors: Vec<String> = gw
        .settings()
        .sectors
        .iter()
        .map(|s| format!("{}/{} ({})", gw.fhir_base(), s.id, s.name))
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-05",
        "kind": "instance",
        "software": { "name": "carebridge", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "carebridge cross-sector FHIR gateway", "url": gw.fhir_base() },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Cross-sector reads with gateway ids. {SEARCH_RESULT_DOC}. Sectors write under their own base: {}",
                sectors.join(", ")
            ),
            "security": security(gw),
            "resource": resources,
            "operation": [
                operation(gw, "total-plan", TOTAL_PLAN),
                operation(gw, "acknowledge", ACKNOWLEDGE),
                operation(gw, "snooze", SNOOZE)
            ]
        }]
    })
}

/// The statement of one sector's base: create (conditional), update (`If-Match`), read,
/// vread, history and search by the sector's own ids, transaction and batch.
pub fn sector_capability(gw: &Gateway, sector: &str) -> Value {
    let resources: Vec<Value> = gw
        .validator()
        .schema
        .resource_types()
        .map(|t| {
            let mut r = stored_type(t);
            if let Some(list) = r["interaction"].as_array_mut() {
                list.push(json!({ "code": "create" }));
                list.push(json!({ "code": "update" }));
            }
            r["conditionalCreate"] = json!(true);
            r["updateCreate"] = json!(true);
            r["versioning"] = json!("versioned-update");
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-05",
        "kind": "instance",
        "software": { "name": "carebridge", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": format!("carebridge ingress for sector {sector}"), "url": gw.sector_base(sector) },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": security(gw),
            "resource": resources,
            "interaction": [{ "code": "transaction" }, { "code": "batch" }]
        }]
    })
}

/// `/.well-known/smart-configuration` (SMART App Launch 2.0 discovery), when a token endpoint
/// is configured.
pub fn smart_configuration(gw: &Gateway) -> Option<Value> {
    let a = &gw.settings().auth;
    let token = a.token_endpoint.as_ref()?;
    let mut v = json!({
        "token_endpoint": token,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": a.scopes.iter().map(|s| s.scope.clone()).collect::<Vec<_>>(),
        "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric"],
    });
    if let Some(i) = &a.issuer {
        v["issuer"] = json!(i);
    }
    if let Some(j) = &a.jwks_url {
        v["jwks_uri"] = json!(j);
    }
    if let Some(auth) = &a.authorization_endpoint {
        v["authorization_endpoint"] = json!(auth);
        v["grant_types_supported"] = json!(["authorization_code", "client_credentials"]);
        v["response_types_supported"] = json!(["code"]);
        v["capabilities"] = json!([
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric"
        ]);
    }
    Some(v)
}
