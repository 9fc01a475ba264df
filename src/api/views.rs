//! How stored resources are shown: as the sector knows them (its own ids) or across sectors
//! (gateway ids, the subject pointing at the gateway patient), each tagged with its sector.

use serde_json::{Map, Value, json};

use crate::fhir::{SECTOR_TAG_SYSTEM, patient_reference};
use crate::ingest::Gateway;
use crate::store::{GatewayPatient, Stored};

fn parse(stored: &Stored) -> Value {
    // The store only holds JSON that the gateway serialised itself.
    serde_json::from_str(&stored.body).unwrap_or_else(|_| json!({ "resourceType": stored.rtype }))
}

/// Sets `meta.versionId`, `meta.lastUpdated` and the sector tag, keeping the rest of `meta`.
fn stamp(resource: &mut Value, stored: &Stored, sector_name: &str) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta["versionId"] = json!(stored.version.to_string());
    meta["lastUpdated"] = json!(stored.last_updated);
    let tag = json!({ "system": SECTOR_TAG_SYSTEM, "code": stored.sector, "display": sector_name });
    match meta.get_mut("tag").and_then(Value::as_array_mut) {
        Some(tags) => {
            if !tags.iter().any(|t| t.get("system") == tag.get("system")) {
                tags.push(tag);
            }
        }
        None => meta["tag"] = json!([tag]),
    }
}

fn sector_name<'a>(gw: &'a Gateway, id: &'a str) -> &'a str {
    gw.sector(id).map_or(id, |s| s.name.as_str())
}

/// The resource as its sector knows it (sector-local id).
pub fn sector_view(gw: &Gateway, stored: &Stored) -> Value {
    let mut r = parse(stored);
    stamp(&mut r, stored, sector_name(gw, &stored.sector));
    r
}

/// The resource as the gateway shows it across sectors: gateway id, and its patient reference
/// pointing at the gateway patient when linked. References to other resources keep the
/// sector's own ids; `GET /fhir/{sector}/{type}/{id}` resolves them.
pub fn gateway_view(gw: &Gateway, stored: &Stored) -> Value {
    let mut r = parse(stored);
    if let Some(obj) = r.as_object_mut() {
        obj.insert("id".into(), json!(stored.gid));
    }
    if stored.rtype != "Patient"
        && let Some(pid) = &stored.patient_id
        && let Some((element, _)) = patient_reference(&r)
    {
        r[element]["reference"] = json!(format!("Patient/{pid}"));
    }
    stamp(&mut r, stored, sector_name(gw, &stored.sector));
    r
}

/// The gateway patient: its identifiers and a `link` to every sector's Patient.
pub fn patient_view(p: &GatewayPatient) -> Value {
    let identifiers: Vec<Value> = p
        .identifiers
        .iter()
        .map(|(s, v)| json!({ "system": s, "value": v }))
        .collect();
    let links: Vec<Value> = p
        .sector_patients
        .iter()
        .map(|sp| json!({ "other": { "reference": format!("Patient/{}", sp.gid), "display": format!("{} Patient", sp.sector) }, "type": "seealso" }))
        .collect();
    let mut v = json!({ "resourceType": "Patient", "id": p.id, "active": true });
    if !identifiers.is_empty() {
        v["identifier"] = Value::Array(identifiers);
    }
    if !links.is_empty() {
        v["link"] = Value::Array(links);
    }
    v
}

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
        .validator
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
        .settings
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
        .validator
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
