//! How stored resources are shown: as the sector knows them (its own ids) or across sectors
//! (gateway ids, the subject pointing at the gateway patient), each tagged with its sector;
//! and the gateway patient with a link to every sector's Patient.

use serde_json::{Map, Value, json};

use super::Gateway;
use crate::fhir::{SECTOR_TAG_SYSTEM, patient_reference};
use crate::store::{GatewayPatient, StoreError, Stored};

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
pub fn sector_view(gw: &Gateway, stored: &Stored) -> Result<Value, StoreError> {
    let mut r = stored.json()?;
    stamp(&mut r, stored, sector_name(gw, &stored.sector));
    Ok(r)
}

/// The resource as the gateway shows it across sectors: gateway id, and its patient reference
/// pointing at the gateway patient when linked. References to other resources keep the
/// sector's own ids; `GET /fhir/{sector}/{type}/{id}` resolves them.
pub fn gateway_view(gw: &Gateway, stored: &Stored) -> Result<Value, StoreError> {
    let mut r = stored.json()?;
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
    Ok(r)
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
