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
//! Only sectors with a `base_url` receive anything. A sector joins a patient's care with its
//! first clinical record of the patient (its Patient alone does not count, unless the sector is
//! configured with `join_care_on_patient`) or when a Communication about the patient is
//! addressed to it; then the current versions that the `care` routes carry from the other
//! sectors are queued for it too (`backfill`), and the gateway audits the disclosure ([`Join`]).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::{GATEWAY_SECTOR, RouteRule, RouteSettings, RouteTarget, Settings};
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
    /// The resource as stored (its JSON text).
    pub body: &'a str,
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

/// A sector that joined a patient's care in this request: why, and what was queued for it
/// (`Type/<gateway id>`), so that the disclosure is audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub sector: String,
    pub patient: String,
    pub why: String,
    pub queued: Vec<String>,
}

/// What routing one request wrote.
#[derive(Debug, Clone, Default)]
pub struct Enqueued {
    /// The target sectors that got entries.
    pub targets: BTreeSet<String>,
    /// The sectors that joined a patient's care, each with its backfill.
    pub joins: Vec<Join>,
}

/// The sectors taking part in a patient's care, read once per request: those the store knows
/// ([`crate::store::ExchangeTx::care_sectors`]) and those configured with
/// `join_care_on_patient` that hold the patient's Patient.
async fn in_care<'c>(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    cache: &'c mut HashMap<String, Vec<String>>,
    patient: &str,
) -> Result<&'c Vec<String>> {
    if !cache.contains_key(patient) {
        let mut sectors = tx.care_sectors(patient).await?;
        for s in settings.sectors.iter().filter(|s| s.join_care_on_patient) {
            if !sectors.contains(&s.id) && tx.sector_patient(patient, &s.id).await?.is_some() {
                sectors.push(s.id.clone());
            }
        }
        cache.insert(patient.to_owned(), sectors);
    }
    Ok(cache.entry(patient.to_owned()).or_default())
}

/// Writes the outbox entries for `items` (all from one request of one sector): what the routes
/// carry, and the backfill of every sector that joined a patient's care.
pub async fn enqueue(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    items: &[Routed<'_>],
) -> Result<Enqueued> {
    let routes = settings.exchange.effective_routes();
    let mut out = Enqueued::default();
    let mut care_cache: HashMap<String, Vec<String>> = HashMap::new();
    let mut joins: Vec<Join> = Vec::new();
    let mut queued: Vec<OutboxNew> = Vec::new();
    for item in items.iter().filter(|i| i.changed) {
        for (i, route) in routes.iter().enumerate() {
            if !applies(route, item.sector, item.rtype) {
                continue;
            }
            let targets: Vec<String> = match &route.to {
                RouteTarget::Rule(RouteRule::Care) => match item.patient_id {
                    Some(p) => in_care(tx, settings, &mut care_cache, p).await?.clone(),
                    None => Vec::new(),
                },
                RouteTarget::Rule(RouteRule::Recipients) => {
                    let body = crate::store::parse_body(
                        || format!("{}/{}", item.rtype, item.gid),
                        item.body,
                    )?;
                    let sectors = recipient_sectors(tx, settings, item.sector, &body).await?;
                    if let Some(p) = item.patient_id {
                        // A Communication addressed to a sector makes it take part in the care.
                        let care = in_care(tx, settings, &mut care_cache, p).await?.clone();
                        joins.extend(sectors.iter().filter(|t| !care.contains(t)).map(|t| Join {
                            sector: t.clone(),
                            patient: p.to_owned(),
                            why: format!("a {} addressed to it", item.rtype),
                            queued: Vec::new(),
                        }));
                    }
                    sectors.into_iter().collect()
                }
                RouteTarget::Sectors(list) => list.clone(),
            };
            for target in targets {
                if target == item.sector || !deliverable(settings, &target) {
                    continue;
                }
                queued.push(OutboxNew {
                    target,
                    source: item.sector.to_owned(),
                    gid: item.gid.to_owned(),
                    version: item.version,
                    rtype: item.rtype.to_owned(),
                    patient_id: item.patient_id.map(str::to_owned),
                    route: route_name(i, route),
                });
            }
        }
    }
    // The routes' entries in a few multi-row statements, before the backfills (which leave an
    // entry already queued as it is).
    if !queued.is_empty() {
        out.targets.extend(tx.outbox_add_many(&queued).await?);
    }
    joins.extend(record_joins(tx, settings, items).await?);
    joins.retain(|j| deliverable(settings, &j.sector) && j.sector != GATEWAY_SECTOR);
    let mut seen = BTreeSet::new();
    joins.retain(|j| seen.insert((j.sector.clone(), j.patient.clone())));
    for mut join in joins {
        backfill(tx, &routes, &mut join, &mut out.targets).await?;
        // A join that discloses nothing (no other sector holds records of the patient) is
        // neither audited nor counted.
        if !join.queued.is_empty() {
            out.joins.push(join);
        }
    }
    Ok(out)
}

/// The sectors that joined a patient's care with this request's records: with their first
/// clinical record of the patient (its Patient alone is not enough: a CPR number names a
/// person, it does not show that the sector treats them), or, for a sector configured with
/// `join_care_on_patient`, with their first resource of the patient.
async fn record_joins(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    items: &[Routed<'_>],
) -> Result<Vec<Join>> {
    let mut created: BTreeMap<(&str, &str), (i64, &str)> = BTreeMap::new();
    for item in items.iter().filter(|i| i.created) {
        let on_patient = settings
            .sector(item.sector)
            .is_some_and(|s| s.join_care_on_patient);
        if let Some(p) = item.patient_id
            && (item.rtype != "Patient" || on_patient)
        {
            let e = created.entry((item.sector, p)).or_insert((0, item.rtype));
            e.0 += 1;
        }
    }
    let mut joins = Vec::new();
    for ((sector, patient), (n, first)) in created {
        let on_patient = settings
            .sector(sector)
            .is_some_and(|s| s.join_care_on_patient);
        if tx
            .sector_resource_count(patient, sector, !on_patient)
            .await?
            != n
        {
            continue;
        }
        let why = if on_patient {
            "its first resource of the patient (join_care_on_patient)".to_owned()
        } else {
            format!("its first clinical record of the patient (a {first})")
        };
        joins.push(Join {
            sector: sector.to_owned(),
            patient: patient.to_owned(),
            why,
            queued: Vec::new(),
        });
    }
    Ok(joins)
}

/// Queues for a sector that joined a patient's care what the `care` routes carry of that
/// patient from the other sectors; `join.queued` lists it.
async fn backfill(
    tx: &mut dyn StoreTx,
    routes: &[RouteSettings],
    join: &mut Join,
    targets_hit: &mut BTreeSet<String>,
) -> Result<()> {
    let mut resources = tx.patient_resources(&join.patient).await?;
    // Referenced types first (a Condition before the CarePlan addressing it), so that the
    // later entries' references find the copies already delivered.
    resources.sort_by(|a, b| rank(&a.2).cmp(&rank(&b.2)).then_with(|| a.0.cmp(&b.0)));
    for (gid, source, rtype, version) in resources {
        if source == join.sector {
            continue;
        }
        let carried = routes
            .iter()
            .any(|r| r.to == RouteTarget::Rule(RouteRule::Care) && applies(r, &source, &rtype));
        if !carried {
            continue;
        }
        let entity = format!("{rtype}/{gid}");
        let added = tx
            .outbox_add(&OutboxNew {
                target: join.sector.clone(),
                source,
                gid,
                version,
                rtype,
                patient_id: Some(join.patient.clone()),
                route: "backfill".into(),
            })
            .await?;
        if added {
            targets_hit.insert(join.sector.clone());
            join.queued.push(entity);
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
