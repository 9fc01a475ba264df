//! The FHIR documents the API adds around stored resources: searchset Bundles and the
//! CapabilityStatements (the resources themselves are shown by `gateway::views`).

use serde_json::{Value, json};

use crate::gateway::Gateway;

/// A `searchset` Bundle.
pub fn searchset(
    base: &str,
    self_url: &str,
    next_url: Option<String>,
    resources: Vec<Value>,
) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let full = format!(
                "{base}/{}/{}",
                r.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                r.get("id").and_then(Value::as_str).unwrap_or("")
            );
            json!({ "fullUrl": full, "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    let mut link = vec![json!({ "relation": "self", "url": self_url })];
    if let Some(n) = next_url {
        link.push(json!({ "relation": "next", "url": n }));
    }
    let mut b = json!({ "resourceType": "Bundle", "type": "searchset", "link": link });
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// What the cross-sector base really supports: read of every type, search by patient, and the
/// audit search. Sector ingress has its own statement at `/fhir/{sector}/metadata`.
pub fn capability_statement(gw: &Gateway) -> Value {
    let mut resources: Vec<Value> = gw
        .validator()
        .schema
        .resource_types()
        .filter(|t| *t != "AuditEvent")
        .map(|t| {
            let mut r = json!({
                "type": t,
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
                "searchParam": [{ "name": "identifier", "type": "token", "documentation": "system|value: a CPR number or a sector Patient key" }]
            });
            if t != "Patient" {
                r["interaction"] = json!([{ "code": "read" }, { "code": "search-type" }]);
                r["searchParam"] = json!([{ "name": "patient", "type": "reference", "documentation": "the gateway patient id" }]);
            }
            r
        })
        .collect();
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{ "code": "search-type" }],
        "searchParam": [
            { "name": "patient", "type": "reference" },
            { "name": "date", "type": "date" },
            { "name": "outcome", "type": "token" }
        ]
    }));
    let sectors: Vec<String> = gw
        .settings()
        .sectors
        .iter()
        .map(|s| format!("/fhir/{} ({})", s.id, s.name))
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": { "name": "carebridge", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "carebridge cross-sector FHIR gateway: cross-sector reads" },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Cross-sector reads with gateway ids. Sectors push under their own base: {}",
                sectors.join(", ")
            ),
            "security": { "cors": false, "description": "Bearer token (Authorization: Bearer <token>)" },
            "resource": resources
        }]
    })
}

/// The statement of one sector's ingress base.
pub fn sector_capability(gw: &Gateway, sector: &str) -> Value {
    let resources: Vec<Value> = gw
        .validator()
        .schema
        .resource_types()
        .map(|t| {
            json!({
                "type": t,
                "interaction": [{ "code": "read" }, { "code": "create" }, { "code": "update" }],
                "conditionalCreate": true,
                "updateCreate": true
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": { "name": "carebridge", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": format!("carebridge ingress for sector {sector}") },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{ "code": "transaction" }, { "code": "batch" }]
        }]
    })
}
