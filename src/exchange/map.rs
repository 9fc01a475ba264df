//! Mapping one stored version for one target sector: the target's profile and codes (from
//! `fhir-profiles/`, see [`crate::terminology`]), its ids and references, and a business identifier
//! naming the source resource (which makes delivery idempotent and lets the poller recognise
//! the gateway's own deliveries).
//!
//! Everything the mapping does not change passes through untouched: unknown elements,
//! extensions, primitive extensions (`_field`), contained resources.
//!
//! References, in the order tried (see [`Mapper::rewrite`]):
//! 1. `#local`, `urn:` and absolute URLs outside the configured sectors stay as they are; an
//!    absolute URL into a configured sector, however it is spelt ([`resolve::locate`]), is
//!    that sector's resource and goes through the steps below as that sector's reference: the
//!    owning sector gets its own `Type/id`, every other sector what steps 3–5 give.
//! 2. A Patient becomes the target's own Patient of the same gateway patient, else a conditional
//!    reference by the target's patient identifier (CPR): `Patient?identifier=system|value`.
//!    In what the gateway authors (the alert messages) a reference names a stored record by its
//!    gateway id: it becomes the target's copy of it, the target's own record, or a logical
//!    reference by the record's source-resource identifier.
//! 3. A resource already delivered to the target becomes `Type/<the id it got there>`; a
//!    resource the target itself holds (a copy the gateway delivered to the source, or the same
//!    business identifier) becomes `Type/<its id there>`.
//! 4. A resource with an older pending outbox entry for the same target defers the delivery
//!    until that one is delivered (so that step 3 applies).
//! 5. Anything else becomes a logical reference: `identifier` (the resource's business
//!    identifier, or the source-resource identifier the gateway gives every delivered copy) and
//!    `type`, `display` kept, `reference` removed.

use serde_json::{Map, Value, json};
use std::collections::HashMap;

use super::SOURCE_ID_SYSTEM;
use super::resolve::{self, locate, normalise_url};
use crate::config::{GATEWAY_SECTOR, SectorSettings, Settings};
use crate::fhir::SECTOR_TAG_SYSTEM;
use crate::fhir::{parse_conditional, parse_relative};
use crate::ids::gateway_id;
use crate::store::{OutboxEntry, Result, StoreTx};
use crate::terminology::{CodeReport, Mapping};
use crate::validate::FhirSchema;

/// A resource mapped for one target.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub body: Value,
    /// The body holds conditional references: it must travel in a transaction.
    pub conditional: bool,
    pub codes: CodeReport,
    /// References rewritten.
    pub references: usize,
    /// The business identifier that makes the create idempotent (`If-None-Exist`).
    pub business_id: Option<(String, String)>,
    /// Set when delivery must wait for an older entry of a referenced resource.
    pub deferred: bool,
}

/// What one Reference element becomes.
#[derive(Debug, Clone, PartialEq)]
enum Replacement {
    Keep,
    Literal(String),
    Conditional(String),
    Logical { rtype: String, identifier: Value },
    Defer,
}

pub struct Mapper<'a> {
    pub settings: &'a Settings,
    pub mapping: &'a Mapping,
    pub schema: &'a FhirSchema,
}

/// Ids the gateway assigned itself (a create without an id): the sector does not know them.
pub fn is_assigned_id(rid: &str) -> bool {
    rid.len() == 41
        && (rid.starts_with('i') || rid.starts_with('h'))
        && rid[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The source-resource identifier value: `<sector>/<Type>/<id>`.
pub fn source_id_value(sector: &str, rtype: &str, rid: &str) -> String {
    format!("{sector}/{rtype}/{rid}")
}

impl Mapper<'_> {
    /// Maps `body` (the stored version of `entry`) for `entry.target`.
    pub async fn map(
        &self,
        tx: &mut dyn StoreTx,
        entry: &OutboxEntry,
        rid: &str,
        mut body: Value,
    ) -> Result<Mapped> {
        let target = self.settings.sector(&entry.target);
        let set = target.and_then(|t| t.profile.as_deref());
        let source_name = self
            .settings
            .sector(&entry.source)
            .map_or(entry.source.as_str(), |s| s.name.as_str());
        strip_server_fields(&mut body);
        self.mapping.apply_profile(set, &mut body);
        let codes = self.mapping.translate_codes(set, &mut body);
        tag_source(&mut body, &entry.source, source_name);

        // References: collect, resolve, replace.
        let mut refs = Vec::new();
        collect_references(&body, &mut refs);
        let mut replacements: HashMap<String, Replacement> = HashMap::new();
        for r in refs {
            let key = r.to_string();
            if replacements.contains_key(&key) {
                continue;
            }
            let rep = self.rewrite(tx, entry, target, &r).await?;
            replacements.insert(key, rep);
        }
        if replacements.values().any(|r| *r == Replacement::Defer) {
            return Ok(Mapped {
                body,
                conditional: false,
                codes,
                references: 0,
                business_id: None,
                deferred: true,
            });
        }
        let mut references = 0;
        let mut conditional = false;
        replace_references(&mut body, &replacements, &mut references, &mut conditional);

        let business_id = self.add_source_identifier(&mut body, entry, rid);
        Ok(Mapped {
            body,
            conditional,
            codes,
            references,
            business_id,
            deferred: false,
        })
    }

    /// Adds the source-resource identifier when the type has a repeating `identifier`.
    fn add_source_identifier(
        &self,
        body: &mut Value,
        entry: &OutboxEntry,
        rid: &str,
    ) -> Option<(String, String)> {
        let repeating = self.schema.repeats(&entry.rtype, "identifier");
        if !repeating {
            return None;
        }
        let value = source_id_value(&entry.source, &entry.rtype, rid);
        let obj = body.as_object_mut()?;
        let list = obj.entry("identifier").or_insert_with(|| json!([]));
        let items = list.as_array_mut()?;
        let present = items.iter().any(|i| {
            i.get("system").and_then(Value::as_str) == Some(SOURCE_ID_SYSTEM)
                && i.get("value").and_then(Value::as_str) == Some(value.as_str())
        });
        if !present {
            items.push(json!({ "use": "secondary", "system": SOURCE_ID_SYSTEM, "value": value }));
        }
        Some((SOURCE_ID_SYSTEM.to_owned(), value))
    }

    /// What one Reference element of the source's resource becomes at the target.
    async fn rewrite(
        &self,
        tx: &mut dyn StoreTx,
        entry: &OutboxEntry,
        target: Option<&SectorSettings>,
        reference: &Value,
    ) -> Result<Replacement> {
        let t = entry.target.as_str();
        let source = entry.source.as_str();
        let literal = reference.get("reference").and_then(Value::as_str);
        let Some(r) = literal else {
            // A logical reference: point it at the target's own resource when it holds one.
            let found = resolve::reference_target(tx, self.settings, source, reference).await?;
            return Ok(match found.in_sector(t) {
                Some(f) if !is_assigned_id(&f.rid) => {
                    Replacement::Literal(format!("{}/{}", f.rtype, f.rid))
                }
                _ => Replacement::Keep,
            });
        };
        if r.starts_with('#') || r.starts_with("urn:") {
            return Ok(Replacement::Keep);
        }
        if normalise_url(r).is_none() {
            return self.in_sector(tx, entry, target, source, reference).await;
        }
        // An absolute URL into a configured sector, however it is spelt, is that sector's
        // resource (the gateway's own sector bases included); any other URL stays as it is.
        let Some(at) = locate(self.settings, r) else {
            return Ok(Replacement::Keep);
        };
        let (owner, rest) = match (at.sector.as_str(), at.relative()) {
            // The gateway's cross-sector base names a stored resource by its gateway id.
            (GATEWAY_SECTOR, Some((rtype, gid))) if rtype != "Patient" => {
                match tx.get(gid).await? {
                    Some(st) => (st.sector, format!("{}/{}", st.rtype, st.rid)),
                    None => (at.sector.clone(), at.rest.clone()),
                }
            }
            _ => (at.sector.clone(), at.rest.clone()),
        };
        let mut located = reference.clone();
        located["reference"] = Value::String(rest);
        self.in_sector(tx, entry, target, &owner, &located).await
    }

    /// What a relative or conditional reference of `owner`'s (the source's own, or the sector
    /// an absolute URL was located in) becomes at the target: the owner itself gets its own
    /// reference, any other sector the id its copy got there, the target's own resource, or a
    /// logical reference.
    async fn in_sector(
        &self,
        tx: &mut dyn StoreTx,
        entry: &OutboxEntry,
        target: Option<&SectorSettings>,
        owner: &str,
        reference: &Value,
    ) -> Result<Replacement> {
        let t = entry.target.as_str();
        let r = reference
            .get("reference")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some((rtype, system, value)) = parse_conditional(r) {
            for (holder, _gid, rid) in tx.identifier_owners(rtype, system, value).await? {
                if holder == t && !is_assigned_id(&rid) {
                    return Ok(Replacement::Literal(format!("{rtype}/{rid}")));
                }
            }
            return Ok(Replacement::Conditional(r.to_owned()));
        }
        let Some((rtype, rid)) = parse_relative(r) else {
            return Ok(Replacement::Keep);
        };
        if let Some(r) = self.by_kind(tx, owner, target, rtype, rid).await? {
            return Ok(r);
        }
        if owner == t {
            // The owning sector: its own reference.
            return Ok(Replacement::Literal(format!("{rtype}/{rid}")));
        }
        let gid = gateway_id(owner, rtype, rid);
        if let Some(d) = tx.delivered_get(t, &gid).await? {
            return Ok(Replacement::Literal(format!("{rtype}/{}", d.target_id)));
        }
        let found = resolve::reference_target(tx, self.settings, owner, reference).await?;
        if let Some(f) = found.in_sector(t)
            && !is_assigned_id(&f.rid)
        {
            return Ok(Replacement::Literal(format!("{}/{}", f.rtype, f.rid)));
        }
        for f in &found.found {
            if let Some(d) = tx.delivered_get(t, &f.gid).await? {
                return Ok(Replacement::Literal(format!("{}/{}", f.rtype, d.target_id)));
            }
        }
        if tx.outbox_pending_before(t, &gid, entry.id).await? {
            return Ok(Replacement::Defer);
        }
        self.logical(tx, owner, rtype, rid, &gid).await
    }

    /// A logical reference by business identifier: the resource's own (when the gateway holds
    /// it), else the source-resource identifier `<owner>/<Type>/<id>`.
    async fn logical(
        &self,
        tx: &mut dyn StoreTx,
        owner: &str,
        rtype: &str,
        rid: &str,
        gid: &str,
    ) -> Result<Replacement> {
        let identifier = match tx.get(gid).await? {
            Some(stored) => {
                let body: Value = stored.json()?;
                crate::fhir::identifiers(&body)
                    .into_iter()
                    .find(|(s, _)| *s != SOURCE_ID_SYSTEM)
                    .map(|(s, v)| json!({ "system": s, "value": v }))
            }
            None => None,
        }
        .unwrap_or_else(
            || json!({ "system": SOURCE_ID_SYSTEM, "value": source_id_value(owner, rtype, rid) }),
        );
        Ok(Replacement::Logical {
            rtype: rtype.to_owned(),
            identifier,
        })
    }

    /// A reference to a Patient ([`Self::patient`]), or to a stored record by its gateway id in
    /// what the gateway authors ([`gateway_named`]); `None` for every other reference.
    async fn by_kind(
        &self,
        tx: &mut dyn StoreTx,
        source: &str,
        target: Option<&SectorSettings>,
        rtype: &str,
        rid: &str,
    ) -> Result<Option<Replacement>> {
        if rtype == "Patient" {
            return self.patient(tx, source, target, rid).await.map(Some);
        }
        match target {
            Some(t) if source == GATEWAY_SECTOR => gateway_named(tx, &t.id, rtype, rid).await,
            _ => Ok(None),
        }
    }

    /// A reference to the source's Patient `rid`.
    async fn patient(
        &self,
        tx: &mut dyn StoreTx,
        source: &str,
        target: Option<&SectorSettings>,
        rid: &str,
    ) -> Result<Replacement> {
        let Some(target) = target else {
            return Ok(Replacement::Keep);
        };
        let (patient_id, own) = if source == GATEWAY_SECTOR {
            // What the gateway authors names its own patients.
            let own = tx.sector_patient(rid, &target.id).await?;
            (Some(rid.to_owned()), own)
        } else {
            let gid = gateway_id(source, "Patient", rid);
            tx.patient_and_own(&gid, &target.id)
                .await?
                .unwrap_or((None, None))
        };
        let Some(patient_id) = patient_id else {
            return Ok(Replacement::Logical {
                rtype: "Patient".into(),
                identifier: json!({ "system": SOURCE_ID_SYSTEM, "value": source_id_value(source, "Patient", rid) }),
            });
        };
        if let Some(own) = own
            && !is_assigned_id(&own)
        {
            return Ok(Replacement::Literal(format!("Patient/{own}")));
        }
        let system = &target.patient_identifier_system;
        let value = tx.patient(&patient_id).await?.and_then(|p| {
            p.identifiers
                .into_iter()
                .find(|(s, _)| s == system)
                .map(|(_, v)| v)
        });
        Ok(match value {
            Some(v) => Replacement::Conditional(format!("Patient?identifier={system}|{v}")),
            None => Replacement::Logical {
                rtype: "Patient".into(),
                identifier: json!({ "system": SOURCE_ID_SYSTEM, "value": source_id_value(source, "Patient", rid) }),
            },
        })
    }
}

/// A stored record that a resource the gateway authors names by its gateway id (an alert
/// message's implicated records): the copy delivered to the target, the target's own record,
/// else a logical reference by the source-resource identifier of the record. `None` when no
/// stored record has that id.
async fn gateway_named(
    tx: &mut dyn StoreTx,
    target: &str,
    rtype: &str,
    gid: &str,
) -> Result<Option<Replacement>> {
    let Some(stored) = tx.get(gid).await? else {
        return Ok(None);
    };
    if let Some(d) = tx.delivered_get(target, gid).await? {
        return Ok(Some(Replacement::Literal(format!(
            "{rtype}/{}",
            d.target_id
        ))));
    }
    if stored.sector == target && !is_assigned_id(&stored.rid) {
        return Ok(Some(Replacement::Literal(format!(
            "{rtype}/{}",
            stored.rid
        ))));
    }
    let value = source_id_value(&stored.sector, rtype, &stored.rid);
    Ok(Some(Replacement::Logical {
        rtype: rtype.to_owned(),
        identifier: json!({ "system": SOURCE_ID_SYSTEM, "value": value }),
    }))
}

/// Removes what the source's server owns: the id and the version metadata.
fn strip_server_fields(body: &mut Value) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    obj.remove("id");
    let empty = match obj.get_mut("meta").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.remove("source");
            meta.is_empty()
        }
        None => false,
    };
    if empty {
        obj.remove("meta");
    }
}

/// Tags the copy with the sector it came from.
fn tag_source(body: &mut Value, sector: &str, name: &str) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    if let Some(tags) = tags.as_array_mut() {
        // Never a tag in the gateway's system that the source wrote itself.
        tags.retain(|t| t.get("system").and_then(Value::as_str) != Some(SECTOR_TAG_SYSTEM));
        tags.push(json!({ "system": SECTOR_TAG_SYSTEM, "code": sector, "display": name }));
    }
}

/// A Reference element: an object with a string `reference`, or a logical reference (an
/// `identifier` object beside nothing but `type`, `display`, `id` and `extension`).
fn is_reference(obj: &Map<String, Value>) -> bool {
    if obj.contains_key("resourceType") {
        return false;
    }
    if obj.get("reference").is_some_and(Value::is_string) {
        return true;
    }
    obj.get("identifier").is_some_and(Value::is_object)
        && obj.keys().all(|k| {
            matches!(
                k.as_str(),
                "identifier" | "type" | "display" | "id" | "extension"
            )
        })
}

fn collect_references(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(obj) => {
            if is_reference(obj) {
                out.push(value.clone());
            }
            for (k, child) in obj {
                // Reference.identifier holds no references of its own worth rewriting.
                if k != "identifier" || !is_reference(obj) {
                    collect_references(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_references(i, out)),
        _ => {}
    }
}

fn replace_references(
    value: &mut Value,
    replacements: &HashMap<String, Replacement>,
    count: &mut usize,
    conditional: &mut bool,
) {
    if let Value::Object(obj) = value
        && is_reference(obj)
    {
        let key = Value::Object(obj.clone()).to_string();
        match replacements.get(&key) {
            Some(Replacement::Literal(r)) => {
                if obj.get("reference").and_then(Value::as_str) != Some(r.as_str()) {
                    obj.insert("reference".into(), Value::String(r.clone()));
                    *count += 1;
                }
            }
            Some(Replacement::Conditional(r)) => {
                *conditional = true;
                if obj.get("reference").and_then(Value::as_str) != Some(r.as_str()) {
                    obj.insert("reference".into(), Value::String(r.clone()));
                    *count += 1;
                }
            }
            Some(Replacement::Logical { rtype, identifier }) => {
                obj.remove("reference");
                obj.entry("type")
                    .or_insert_with(|| Value::String(rtype.clone()));
                obj.entry("identifier")
                    .or_insert_with(|| identifier.clone());
                *count += 1;
            }
            Some(Replacement::Keep | Replacement::Defer) | None => {}
        }
    }
    match value {
        Value::Object(obj) => {
            let reference = is_reference(obj);
            for (k, child) in obj.iter_mut() {
                if k != "identifier" || !reference {
                    replace_references(child, replacements, count, conditional);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| replace_references(i, replacements, count, conditional)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_ids_are_recognised() {
        assert!(is_assigned_id(&format!("h{}", "a".repeat(40))));
        assert!(is_assigned_id(&format!("i{}", "0".repeat(40))));
        assert!(!is_assigned_id("abc"));
        assert!(!is_assigned_id(&format!("x{}", "a".repeat(40))));
    }

    #[test]
    fn references_are_found_at_any_depth_and_replaced() {
        let mut body = json!({
            "resourceType": "CarePlan",
            "subject": {"reference": "Patient/p1", "display": "x"},
            "addresses": [{"reference": "Condition/c1"}],
            "activity": [{"detail": {"performer": [{"identifier": {"system": "s", "value": "v"}, "type": "PractitionerRole"}]}}],
            "extension": [{"url": "u", "valueReference": {"reference": "Goal/g1"}}],
            "identifier": [{"system": "s", "value": "plan-1"}]
        });
        let mut refs = Vec::new();
        collect_references(&body, &mut refs);
        assert_eq!(refs.len(), 4);
        let mut map = HashMap::new();
        map.insert(
            refs[0].to_string(),
            Replacement::Literal("Patient/t1".into()),
        );
        map.insert(
            refs[1].to_string(),
            Replacement::Logical {
                rtype: "Condition".into(),
                identifier: json!({"system": "a", "value": "b"}),
            },
        );
        let (mut n, mut cond) = (0, false);
        replace_references(&mut body, &map, &mut n, &mut cond);
        assert_eq!(n, 2);
        assert!(!cond);
        assert_eq!(
            body["subject"],
            json!({"reference": "Patient/t1", "display": "x"})
        );
        assert_eq!(
            body["addresses"][0],
            json!({"type": "Condition", "identifier": {"system": "a", "value": "b"}})
        );
        assert_eq!(
            body["extension"][0]["valueReference"]["reference"],
            "Goal/g1"
        );
    }

    #[test]
    fn server_fields_are_stripped_and_the_source_tagged() {
        let mut body = json!({"resourceType": "Condition", "id": "c1", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z", "security": [{"code": "N"}]}});
        strip_server_fields(&mut body);
        tag_source(&mut body, "gp", "General practice");
        assert_eq!(
            body,
            json!({"resourceType": "Condition", "meta": {"security": [{"code": "N"}], "tag": [{"system": SECTOR_TAG_SYSTEM, "code": "gp", "display": "General practice"}]}})
        );
    }
}
