//! Medication findings: the same ingredient twice (`DUPTHPGEN`), two ingredients of one class
//! (`DUPTHPCLS`), and polypharmacy.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    ACT_CODE_SYSTEM, ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot,
    active_medication, item_label, sorted,
};
use crate::terminology::medication::{Ingredient, MedKnowledge, RouteFamily, concept_of};

/// An active medication with what it contains.
struct Med<'a> {
    item: &'a Item,
    ingredients: Vec<Ingredient>,
    family: RouteFamily,
}

fn meds<'a>(s: &'a Snapshot, k: &MedKnowledge) -> Vec<Med<'a>> {
    s.items
        .iter()
        .filter(|i| active_medication(i))
        .map(|i| {
            let concept = concept_of(&i.body).cloned().unwrap_or(Value::Null);
            let family = match k.route_family(&i.body, &concept) {
                // Unknown counts as systemic: most orders without a route are tablets.
                RouteFamily::Unknown => RouteFamily::Systemic,
                f => f,
            };
            Med {
                item: i,
                ingredients: k.ingredients(&concept),
                family,
            }
        })
        .collect()
}

/// Who prescribed or reported it: `requester` (MedicationRequest) or `informationSource`
/// (MedicationStatement), by reference, identifier or display.
fn prescriber(i: &Item) -> Option<String> {
    let r = i
        .body
        .get("requester")
        .or_else(|| i.body.get("informationSource"))?;
    r.get("reference")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            let id = r.get("identifier")?;
            Some(format!(
                "{}|{}",
                id.get("system")?.as_str()?,
                id.get("value")?.as_str()?
            ))
        })
        .or_else(|| r.get("display").and_then(Value::as_str).map(str::to_owned))
}

/// True when two items come from different sectors, or from different known prescribers.
fn independent(a: &Item, b: &Item) -> bool {
    if a.sector != b.sector {
        return true;
    }
    matches!((prescriber(a), prescriber(b)), (Some(x), Some(y)) if x != y)
}

fn any_independent_pair(items: &[&Item]) -> bool {
    items
        .iter()
        .enumerate()
        .any(|(n, a)| items[n + 1..].iter().any(|b| independent(a, b)))
}

fn family_label(f: RouteFamily) -> String {
    format!("{f:?}").to_lowercase()
}

/// The items a duplicate is judged on: the orders (MedicationRequests) when there are any —
/// a MedicationStatement beside an order of the same ingredient reports taking that order,
/// it does not duplicate it — else the statements.
fn judged<'a>(items: &[&'a Item]) -> Vec<&'a Item> {
    let orders: Vec<&Item> = items
        .iter()
        .copied()
        .filter(|i| i.rtype == "MedicationRequest")
        .collect();
    if orders.is_empty() {
        items.to_vec()
    } else {
        orders
    }
}

/// DUPTHPGEN: two or more active medications with the same active ingredient (ATC level 5,
/// directly or through the medication maps) in the same route family, from different sectors
/// or different prescribers. A combination product counts for each of its ingredients. When
/// orders exist for the ingredient only orders count (statements that report taking an order
/// are not duplicates of it). One finding per ingredient and route family.
pub fn duplicate_ingredient(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let meds = meds(s, cx.knowledge);
    let mut groups: BTreeMap<(Ingredient, RouteFamily), Vec<&Item>> = BTreeMap::new();
    for m in &meds {
        for ing in &m.ingredients {
            let g = groups.entry((ing.clone(), m.family)).or_default();
            if !g.iter().any(|i| i.gid == m.item.gid) {
                g.push(m.item);
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, items)| (key, judged(&items)))
        .filter(|(_, items)| items.len() >= 2 && any_independent_pair(items))
        .map(|((ing, family), items)| Finding {
            code: (ACT_CODE_SYSTEM, "DUPTHPGEN", "duplicate generic alert"),
            severity: Severity::High,
            fingerprint: format!("DUPTHPGEN|{}|{}", ing.atc, family_label(family)),
            implicated: sorted(items.iter().map(|i| i.gid.clone()).collect()),
            detail: format!(
                "{} ({}, {}) is active {} times: {}. Check whether both are intended.",
                ing.name,
                ing.atc,
                family_label(family),
                items.len(),
                items
                    .iter()
                    .map(|i| item_label(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect()
}

/// DUPTHPCLS: active medications with two or more different ingredients of one ATC level-4
/// class in the same route family (whoever prescribed them). One finding per class and route
/// family.
pub fn duplicate_class(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let meds = meds(s, cx.knowledge);
    let mut groups: BTreeMap<(String, RouteFamily), BTreeMap<Ingredient, Vec<&Item>>> =
        BTreeMap::new();
    for m in &meds {
        for ing in &m.ingredients {
            groups
                .entry((MedKnowledge::class_of(ing), m.family))
                .or_default()
                .entry(ing.clone())
                .or_default()
                .push(m.item);
        }
    }
    groups
        .into_iter()
        .filter(|(_, by_ingredient)| by_ingredient.len() >= 2)
        .map(|((class, family), by_ingredient)| {
            let items: Vec<&Item> = by_ingredient.values().flatten().copied().collect();
            Finding {
                code: (
                    ACT_CODE_SYSTEM,
                    "DUPTHPCLS",
                    "duplicate therapeutic class alert",
                ),
                severity: Severity::Moderate,
                fingerprint: format!("DUPTHPCLS|{class}|{}", family_label(family)),
                implicated: sorted(items.iter().map(|i| i.gid.clone()).collect()),
                detail: format!(
                    "{} different ingredients of class {class} are active: {}.",
                    by_ingredient.len(),
                    by_ingredient
                        .iter()
                        .map(|(ing, items)| format!(
                            "{} ({}) from {}",
                            ing.name,
                            ing.atc,
                            items
                                .iter()
                                .map(|i| item_label(i))
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
        })
        .collect()
}

/// Polypharmacy: the number of different active ingredients across all sectors (a medication
/// whose ingredient is unknown counts once by its own code) reaches the configured threshold.
pub fn polypharmacy(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let meds = meds(s, cx.knowledge);
    let mut distinct: BTreeSet<String> = BTreeSet::new();
    for m in &meds {
        if m.ingredients.is_empty() {
            let concept = concept_of(&m.item.body);
            let key = super::coding_keys(concept)
                .first()
                .map(|(s, c)| format!("{s}|{c}"))
                .unwrap_or_else(|| m.item.gid.clone());
            distinct.insert(key);
        } else {
            distinct.extend(m.ingredients.iter().map(|i| i.atc.clone()));
        }
    }
    let threshold = cx.rules.polypharmacy_threshold;
    if threshold == 0 || distinct.len() < threshold {
        return Vec::new();
    }
    let sectors: BTreeSet<&str> = meds.iter().map(|m| m.item.sector.as_str()).collect();
    vec![Finding {
        code: (ALERT_CODE_SYSTEM, "polypharmacy", "Polypharmacy"),
        severity: Severity::Moderate,
        fingerprint: "polypharmacy".into(),
        implicated: sorted(meds.iter().map(|m| m.item.gid.clone()).collect()),
        detail: format!(
            "{} different active ingredients across {} ({} or more is polypharmacy): review the whole medication list.",
            distinct.len(),
            sectors.into_iter().collect::<Vec<_>>().join(", "),
            threshold
        ),
    }]
}
