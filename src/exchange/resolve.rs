//! What a Reference in a sector's resource points at, across sectors: used by routing (to
//! find a Communication's recipients) and by mapping (to rewrite references for a target).

use serde_json::Value;
use std::collections::BTreeSet;

use crate::config::Settings;
use crate::fhir::{parse_conditional, parse_relative};
use crate::ids::gateway_id;
use crate::store::{Result, StoreTx};

/// A resource that a reference resolves to, in the sector that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    pub gid: String,
}

/// What a reference resolves to.
#[derive(Debug, Clone, Default)]
pub struct RefTarget {
    /// Every sector holding the referenced resource (its origin, or a sector holding the same
    /// business identifier).
    pub owners: BTreeSet<String>,
    pub found: Vec<Found>,
}

impl RefTarget {
    fn add(&mut self, f: Found) {
        self.owners.insert(f.sector.clone());
        if !self.found.contains(&f) {
            self.found.push(f);
        }
    }

    /// The referenced resource as `sector` holds it, if it does.
    pub fn in_sector(&self, sector: &str) -> Option<&Found> {
        self.found.iter().find(|f| f.sector == sector)
    }
}

/// The configured sector whose FHIR base an absolute URL lies under, with the rest
/// (`Type/id`).
pub fn sector_of_url<'a>(settings: &'a Settings, url: &'a str) -> Option<(&'a str, &'a str)> {
    settings.sectors.iter().find_map(|s| {
        let base = s.base_url.as_deref()?.trim_end_matches('/');
        let rest = url.strip_prefix(base)?.strip_prefix('/')?;
        Some((s.id.as_str(), rest))
    })
}

/// Types a logical reference without `type` may name (recipients, authors, members).
const PARTY_TYPES: [&str; 5] = [
    "PractitionerRole",
    "CareTeam",
    "Practitioner",
    "Organization",
    "RelatedPerson",
];

/// Resolves one Reference element (an object with `reference`, `identifier`, `type`) of a
/// resource held by `sector`.
pub async fn reference_target(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    sector: &str,
    reference: &Value,
) -> Result<RefTarget> {
    let mut out = RefTarget::default();
    let literal = reference.get("reference").and_then(Value::as_str);
    match literal {
        Some(r) if r.starts_with('#') || r.starts_with("urn:") => {}
        Some(r) if r.starts_with("http://") || r.starts_with("https://") => {
            if let Some((owner, rest)) = sector_of_url(settings, r)
                && let Some((rtype, rid)) = parse_relative(rest)
            {
                out.add(Found {
                    sector: owner.to_owned(),
                    rtype: rtype.to_owned(),
                    rid: rid.to_owned(),
                    gid: gateway_id(owner, rtype, rid),
                });
            }
        }
        Some(r) => {
            if let Some((rtype, system, value)) = parse_conditional(r) {
                by_identifier(tx, &mut out, rtype, system, value).await?;
            } else if let Some((rtype, rid)) = parse_relative(r) {
                local(tx, &mut out, sector, rtype, rid).await?;
            }
        }
        None => {}
    }
    if out.found.is_empty()
        && let Some(ident) = reference.get("identifier")
        && let (Some(system), Some(value)) = (
            ident.get("system").and_then(Value::as_str),
            ident.get("value").and_then(Value::as_str),
        )
    {
        let named = reference.get("type").and_then(Value::as_str);
        let types: Vec<&str> = match named {
            Some(t) => vec![t],
            None => PARTY_TYPES.to_vec(),
        };
        for t in types {
            by_identifier(tx, &mut out, t, system, value).await?;
        }
    }
    Ok(out)
}

async fn by_identifier(
    tx: &mut dyn StoreTx,
    out: &mut RefTarget,
    rtype: &str,
    system: &str,
    value: &str,
) -> Result<()> {
    for (owner, gid, rid) in tx.identifier_owners(rtype, system, value).await? {
        out.add(Found {
            sector: owner,
            rtype: rtype.to_owned(),
            rid,
            gid,
        });
    }
    Ok(())
}

/// A relative reference in `sector`'s resource: a copy the gateway delivered there (it belongs
/// to the copy's origin), or the sector's own resource (with whoever else holds its business
/// identifiers).
async fn local(
    tx: &mut dyn StoreTx,
    out: &mut RefTarget,
    sector: &str,
    rtype: &str,
    rid: &str,
) -> Result<()> {
    if let Some(copy) = tx.delivered_by_target_id(sector, rtype, rid).await?
        && let Some(origin) = tx.get(&copy.gid).await?
    {
        out.add(Found {
            sector: origin.sector,
            rtype: origin.rtype,
            rid: origin.rid,
            gid: origin.gid,
        });
        return Ok(());
    }
    let gid = gateway_id(sector, rtype, rid);
    out.add(Found {
        sector: sector.to_owned(),
        rtype: rtype.to_owned(),
        rid: rid.to_owned(),
        gid: gid.clone(),
    });
    if let Some(own) = tx.get(&gid).await? {
        let body: Value = own.json()?;
        for (system, value) in crate::fhir::identifiers(&body) {
            if system == super::SOURCE_ID_SYSTEM {
                continue;
            }
            by_identifier(tx, out, rtype, system, value).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_forms() {
        assert_eq!(parse_relative("Condition/abc"), Some(("Condition", "abc")));
        assert_eq!(
            parse_relative("Condition/abc/_history/2"),
            Some(("Condition", "abc"))
        );
        assert_eq!(parse_relative("Condition/abc/extra"), None);
        assert_eq!(parse_relative("condition/abc"), None);
        assert_eq!(parse_relative("#c1"), None);
        assert_eq!(
            parse_conditional("Patient?identifier=urn:oid:1.2.208.176.1.2|0101011234"),
            Some(("Patient", "urn:oid:1.2.208.176.1.2", "0101011234"))
        );
        assert_eq!(parse_conditional("Patient?name=x"), None);
    }
}
