//! How stored resources are shown: as the sector knows them (its own ids) or across sectors
//! (gateway ids, the subject pointing at the gateway patient, every reference to a stored
//! resource pointing at its gateway id), each tagged with its sector;
//! and the gateway patient with a link to every sector's Patient.

use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};

use super::Gateway;
use crate::config::GATEWAY_SECTOR;
use crate::exchange::resolve::locate;
use crate::fhir::{
    SECTOR_TAG_SYSTEM, for_each_reference_mut, parse_conditional, parse_relative, patient_reference,
};
use crate::ids::gateway_id;
use crate::store::{GatewayPatient, StoreError, StoreTx, Stored};

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
    // The gateway's tag replaces any in its system (the write pipeline refuses them; a version
    // stored before that rule is not trusted either).
    match meta.get_mut("tag").and_then(Value::as_array_mut) {
        Some(tags) => {
            tags.retain(|t| t.get("system") != tag.get("system"));
            tags.push(tag);
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

/// Where the cross-sector view points the references of some stored resources: (sector,
/// reference as stored) → `Type/<gateway id>`, for every reference that names a stored
/// resource (relative, absolute into a configured sector's base in any spelling, or conditional by identifier).
pub type ReferenceMap = HashMap<(String, String), String>;

/// The references of a resource that name a stored resource by id: (reference, owning sector,
/// type, id) — relative ones name its own sector's, absolute ones in any spelling the sector
/// whose base they lie under ([`locate`]).
fn local_references(
    gw: &Gateway,
    stored: &Stored,
    body: &mut Value,
) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for_each_reference_mut(body, &mut |r: &mut String| {
        if let Some(at) = locate(gw.settings(), r) {
            if let Some((t, id)) = at.relative()
                && at.sector != GATEWAY_SECTOR
            {
                out.push((r.clone(), at.sector.clone(), t.to_owned(), id.to_owned()));
            }
        } else if let Some((t, id)) = parse_relative(r) {
            out.push((
                r.clone(),
                stored.sector.clone(),
                t.to_owned(),
                id.to_owned(),
            ));
        }
    });
    out
}

impl Gateway {
    /// Stored resources as shown on a sector's base (`sector` given: the sector's own ids) or
    /// on the cross-sector base (gateway ids, references resolved in a read transaction).
    pub async fn show(
        &self,
        sector: Option<&str>,
        items: &[Stored],
    ) -> Result<Vec<Value>, StoreError> {
        if sector.is_some() {
            return items.iter().map(|s| sector_view(self, s)).collect();
        }
        let mut tx = self.store().begin_read().await?;
        let refs = self.reference_map(&mut *tx, items).await?;
        items.iter().map(|s| gateway_view(self, s, &refs)).collect()
    }

    /// The [`ReferenceMap`] of these resources, read in `tx`.
    pub(crate) async fn reference_map(
        &self,
        tx: &mut dyn StoreTx,
        items: &[Stored],
    ) -> Result<ReferenceMap, StoreError> {
        let mut wanted: Vec<((String, String), String, String)> = Vec::new();
        for stored in items {
            let mut body = stored.json()?;
            for (reference, owner, t, id) in local_references(self, stored, &mut body) {
                let gid = gateway_id(&owner, &t, &id);
                wanted.push(((stored.sector.clone(), reference), t, gid));
            }
            let mut conditional = Vec::new();
            for_each_reference_mut(&mut body, &mut |r: &mut String| {
                if let Some((t, s, v)) = parse_conditional(r) {
                    conditional.push((r.clone(), t.to_owned(), s.to_owned(), v.to_owned()));
                }
            });
            for (reference, t, system, value) in conditional {
                if let Some(rid) = tx
                    .find_by_identifier(&stored.sector, &t, &system, &value)
                    .await?
                {
                    let gid = gateway_id(&stored.sector, &t, &rid);
                    wanted.push(((stored.sector.clone(), reference), t, gid));
                }
            }
        }
        let mut gids: Vec<String> = wanted.iter().map(|w| w.2.clone()).collect();
        gids.sort();
        gids.dedup();
        let known: HashSet<String> = tx.existing(&gids).await?.into_iter().collect();
        Ok(wanted
            .into_iter()
            .filter(|(_, _, gid)| known.contains(gid))
            .map(|(key, t, gid)| (key, format!("{t}/{gid}")))
            .collect())
    }
}

/// The resource as the gateway shows it across sectors: gateway id, its patient reference
/// pointing at the gateway patient when linked, and every reference that names a stored
/// resource pointing at its gateway id (`refs`, from [`Gateway::reference_map`]); a reference
/// the gateway cannot resolve stays as sent.
pub fn gateway_view(
    gw: &Gateway,
    stored: &Stored,
    refs: &ReferenceMap,
) -> Result<Value, StoreError> {
    let mut r = stored.json()?;
    if let Some(obj) = r.as_object_mut() {
        obj.insert("id".into(), json!(stored.gid));
    }
    let key = |reference: &String| (stored.sector.clone(), reference.clone());
    for_each_reference_mut(&mut r, &mut |reference: &mut String| {
        if let Some(to) = refs.get(&key(reference)) {
            *reference = to.clone();
        }
    });
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
