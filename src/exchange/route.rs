//! Routes: which accepted resource versions go to which sectors. Runs inside the transaction
//! that stores them, so an accepted resource and its outbox entries commit together.
//!
//! Rules (the configured `exchange.routes`, or the defaults of
//! [`crate::config::ExchangeSettings::effective_routes`]):
//! - `care`: every other sector that takes part in the patient's care, that is, holds a
//!   resource of that gateway patient;
//! - `recipients`: the sectors of a Communication's recipients (see [`recipient_sectors`]);
//! - a list of sector ids.
//!
//! Only sectors with a `base_url` receive anything. When a sector joins a patient's care (its
//! first resources of that patient arrive), the current versions that the `care` routes carry
//! from the other sectors are queued for it too (`backfill`).

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

use crate::config::{RouteRule, RouteSettings, RouteTarget, Settings};
use crate::exchange::resolve::reference_target;
use crate::store::{OutboxNew, Result, StoreTx};

/// One stored version to route.
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    pub sector: &'a str,
    pub rtype: &'a str,
    pub gid: &'a str,
    pub version: i64,
    pub patient_id: Option<&'a str>,
    pub created: bool,
    pub changed: bool,
    pub body: &'a Value,
}

fn route_name(i: usize, r: &RouteSettings) -> String {
    match &r.to {
        RouteTarget::Rule(RouteRule::Care) => "care".into(),
        RouteTarget::Rule(RouteRule::Recipients) => "recipients".into(),
        RouteTarget::Sectors(_) => format!("route:{i}"),
    }
}

fn applies(r: &RouteSettings, sector: &str, rtype: &str) -> bool {
    r.types.iter().any(|t| t == rtype) && (r.from.is_empty() || r.from.iter().any(|f| f == sector))
}

fn deliverable(settings: &Settings, sector: &str) -> bool {
    settings
        .sector(sector)
        .is_some_and(|s| s.base_url.is_some())
}

/// Writes the outbox entries for `items` (all from one request of one sector) and returns the
/// target sectors that got entries.
pub async fn enqueue(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    items: &[Routed<'_>],
) -> Result<BTreeSet<String>> {
    let routes = settings.exchange.effective_routes();
    let mut targets_hit = BTreeSet::new();
    let mut care_cache: HashMap<String, Vec<String>> = HashMap::new();
    for item in items.iter().filter(|i| i.changed) {
        for (i, route) in routes.iter().enumerate() {
            if !applies(route, item.sector, item.rtype) {
                continue;
            }
            let targets: Vec<String> = match &route.to {
                RouteTarget::Rule(RouteRule::Care) => match item.patient_id {
                    Some(p) => {
                        if !care_cache.contains_key(p) {
                            let sectors = tx.care_sectors(p).await?;
                            care_cache.insert(p.to_owned(), sectors);
                        }
                        care_cache.get(p).cloned().unwrap_or_default()
                    }
                    None => Vec::new(),
                },
                RouteTarget::Rule(RouteRule::Recipients) => {
                    recipient_sectors(tx, settings, item.sector, item.body)
                        .await?
                        .into_iter()
                        .collect()
                }
                RouteTarget::Sectors(list) => list.clone(),
            };
            for target in targets {
                if target == item.sector || !deliverable(settings, &target) {
                    continue;
                }
                let added = tx
                    .outbox_add(&OutboxNew {
                        target: target.clone(),
                        source: item.sector.to_owned(),
                        gid: item.gid.to_owned(),
                        version: item.version,
                        rtype: item.rtype.to_owned(),
                        patient_id: item.patient_id.map(str::to_owned),
                        route: route_name(i, route),
                    })
                    .await?;
                if added {
                    targets_hit.insert(target);
                }
            }
        }
    }
    backfill(tx, settings, &routes, items, &mut targets_hit).await?;
    Ok(targets_hit)
}

/// When the request's sector just joined a patient's care, queue for it what the `care`
/// routes carry from the other sectors.
async fn backfill(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    routes: &[RouteSettings],
    items: &[Routed<'_>],
    targets_hit: &mut BTreeSet<String>,
) -> Result<()> {
    let mut created: HashMap<(&str, &str), i64> = HashMap::new();
    for item in items.iter().filter(|i| i.created) {
        if let Some(p) = item.patient_id {
            *created.entry((item.sector, p)).or_default() += 1;
        }
    }
    for ((sector, patient), n) in created {
        if !deliverable(settings, sector) || tx.sector_resource_count(patient, sector).await? != n {
            continue;
        }
        for (gid, source, rtype, version) in tx.patient_resources(patient).await? {
            if source == sector {
                continue;
            }
            let carried = routes
                .iter()
                .any(|r| r.to == RouteTarget::Rule(RouteRule::Care) && applies(r, &source, &rtype));
            if !carried {
                continue;
            }
            let added = tx
                .outbox_add(&OutboxNew {
                    target: sector.to_owned(),
                    source,
                    gid,
                    version,
                    rtype,
                    patient_id: Some(patient.to_owned()),
                    route: "backfill".into(),
                })
                .await?;
            if added {
                targets_hit.insert(sector.to_owned());
            }
        }
    }
    Ok(())
}

/// The sectors a Communication's recipients belong to: a recipient is a reference to a copy
/// the gateway delivered to the sender (it belongs to the copy's origin), to a resource whose
/// business identifier another sector holds (by conditional reference, logical reference or
/// the identifiers of the sender's own resource), or an absolute URL under a sector's base.
pub async fn recipient_sectors(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    sector: &str,
    body: &Value,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let Some(recipients) = body.get("recipient").and_then(Value::as_array) else {
        return Ok(out);
    };
    for r in recipients {
        for owner in reference_target(tx, settings, sector, r).await?.owners {
            if owner != sector {
                out.insert(owner);
            }
        }
    }
    Ok(out)
}

/// The types polled from a sector: Patient, then what the routes carry from it, referenced
/// types before the types that reference them (a Condition before the CarePlan addressing it),
/// so that references resolve to what was already delivered.
pub fn pull_types(settings: &Settings, sector: &str) -> Vec<String> {
    let mut out = vec!["Patient".to_owned()];
    for r in settings.exchange.effective_routes() {
        if r.from.is_empty() || r.from.iter().any(|f| f == sector) {
            for t in r.types {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out.sort_by_key(|t| rank(t));
    out
}

/// Order of polling: who is referenced comes first.
fn rank(rtype: &str) -> u8 {
    match rtype {
        "Patient" => 0,
        "Organization" | "Practitioner" | "PractitionerRole" | "RelatedPerson" | "Medication" => 1,
        "Condition" | "Observation" | "Goal" => 2,
        "MedicationRequest" | "MedicationStatement" => 3,
        "CareTeam" => 4,
        "CarePlan" => 5,
        "Communication" => 7,
        _ => 6,
    }
}
