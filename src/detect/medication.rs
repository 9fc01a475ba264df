//! Medication findings: the same ingredient twice (`DUPTHPGEN`), two ingredients of one class
//! (`DUPTHPCLS`), polypharmacy, and orders left active after their inpatient stay or validity
//! (`stale-order`).
//!
//! Medication identity: the ingredients the knowledge gives a product (ATC level 5, combination
//! codes resolved to their ingredients); a product the knowledge cannot resolve is identified by
//! its own codings (`system|code`: the same code from two sectors is the same product). A stale
//! order is not a current medication for any of the medication rules.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    ACT_CODE_SYSTEM, ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot,
    active_medication, coding_keys, end_us, item_label, sorted,
};
use crate::terminology::medication::{
    Ingredient, MedKnowledge, RouteFamily, concept_of, is_atc_level5,
};

/// An active medication with what it contains.
struct Med<'a> {
    item: &'a Item,
    /// What it contains, as far as the knowledge knows.
    ingredients: Vec<Ingredient>,
    /// The product's own codings when the knowledge gives it no ingredient (`atc` holds
    /// `system|code`): the identity of an unknown product.
    products: Vec<Ingredient>,
    family: RouteFamily,
}

impl Med<'_> {
    /// What identifies it for DUPTHPGEN: its ingredients, else its product codes.
    fn identity(&self) -> &[Ingredient] {
        if self.ingredients.is_empty() {
            &self.products
        } else {
            &self.ingredients
        }
    }
}

/// The codings of an unresolved product as pseudo-ingredients.
fn product_codes(concept: &Value) -> Vec<Ingredient> {
    let label = super::concept_label(Some(concept));
    let mut out: Vec<Ingredient> = coding_keys(Some(concept))
        .into_iter()
        .map(|(s, c)| Ingredient {
            atc: format!("{s}|{c}"),
            name: label.clone(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The active, not stale, medications.
fn meds<'a>(s: &'a Snapshot, k: &MedKnowledge) -> Vec<Med<'a>> {
    s.items
        .iter()
        .filter(|i| active_medication(i) && stale(s, i).is_none())
        .map(|i| {
            let concept = concept_of(&i.body).cloned().unwrap_or(Value::Null);
            let family = match k.route_family(&i.body, &concept) {
                // Unknown counts as systemic: most orders without a route are tablets.
                RouteFamily::Unknown => RouteFamily::Systemic,
                f => f,
            };
            let ingredients = k.ingredients(&concept);
            let products = if ingredients.is_empty() {
                product_codes(&concept)
            } else {
                Vec::new()
            };
            Med {
                item: i,
                ingredients,
                products,
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

/// The items a duplicate is judged on: every order, and every statement that does not report
/// one of the orders (a statement reporting an order is the patient taking that order, not a
/// second supply of the ingredient).
fn judged<'a>(s: &Snapshot, items: &[&'a Item]) -> Vec<&'a Item> {
    let orders: Vec<&Item> = items
        .iter()
        .copied()
        .filter(|i| i.rtype == "MedicationRequest")
        .collect();
    items
        .iter()
        .copied()
        .filter(|i| i.rtype == "MedicationRequest" || !orders.iter().any(|o| reports(s, i, o)))
        .collect()
}

/// A statement reports an order when it names the same product (a shared `system|code`), is
/// `basedOn` or `derivedFrom` it (by the gateway id, or through the copy the statement's sector
/// got), or is its own sector's statement of the ingredient.
fn reports(s: &Snapshot, statement: &Item, order: &Item) -> bool {
    if statement.sector == order.sector {
        return true;
    }
    let codes = |i: &Item| coding_keys(concept_of(&i.body));
    let order_codes = codes(order);
    if codes(statement).iter().any(|c| order_codes.contains(c)) {
        return true;
    }
    ["basedOn", "derivedFrom"]
        .iter()
        .flat_map(|k| statement.body.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|r| r.get("reference")?.as_str())
        .any(|r| {
            s.target(&statement.sector, r).as_deref() == Some(order.gid.as_str())
                || crate::fhir::parse_relative(r).is_some_and(|(_, id)| id == order.gid)
        })
}

/// DUPTHPGEN: two or more active medications with the same active ingredient (ATC level 5,
/// directly or through the medication maps; a product the knowledge cannot resolve by its own
/// `system|code`) in the same route family, from different sectors or different prescribers. A
/// combination product counts for each of its ingredients. A statement that reports one of the
/// orders (see [`reports`]) is set aside; any other statement counts like an order. One finding
/// per ingredient (or product code) and route family.
pub fn duplicate_ingredient(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let meds = meds(s, cx.knowledge);
    let mut groups: BTreeMap<(Ingredient, RouteFamily), Vec<&Item>> = BTreeMap::new();
    for m in &meds {
        for ing in m.identity() {
            let g = groups.entry((ing.clone(), m.family)).or_default();
            if !g.iter().any(|i| i.gid == m.item.gid) {
                g.push(m.item);
            }
        }
    }
    // A product with several unknown codings is one product: one finding per set of records.
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    groups
        .into_iter()
        .map(|(key, items)| (key, judged(s, &items)))
        .filter(|(_, items)| items.len() >= 2 && any_independent_pair(items))
        .filter(|((ing, _), items)| {
            is_atc_level5(&ing.atc)
                || seen.insert(sorted(items.iter().map(|i| i.gid.clone()).collect()))
        })
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
            let key = coding_keys(concept)
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

/// Why an active MedicationRequest is stale, if it is: its `dispenseRequest.validityPeriod`
/// ended, or the inpatient encounter it was ordered in (`encounter`: class IMP, ACUTE or NONAC)
/// is `finished`/`cancelled` or its period ended. Returns the reason and the encounter's gateway
/// id when that is the cause.
pub fn stale<'a>(s: &'a Snapshot, i: &Item) -> Option<(String, Option<&'a Item>)> {
    if i.rtype != "MedicationRequest" {
        return None;
    }
    if let Some(end) = end_us(i.body.pointer("/dispenseRequest/validityPeriod/end"))
        && end < s.now_us
    {
        return Some(("its validity period has ended".into(), None));
    }
    let r = i.body.pointer("/encounter/reference")?.as_str()?;
    let enc = s.by_gid(&s.target(&i.sector, r)?)?;
    let class = enc.body.pointer("/class/code").and_then(Value::as_str);
    if !matches!(class, Some("IMP" | "ACUTE" | "NONAC")) {
        return None;
    }
    let status = enc.body.get("status").and_then(Value::as_str);
    let ended = matches!(status, Some("finished" | "cancelled"))
        || end_us(enc.body.pointer("/period/end")).is_some_and(|e| e < s.now_us);
    ended.then(|| {
        (
            "the inpatient stay it was ordered in has ended".into(),
            Some(enc),
        )
    })
}

/// stale-order (low): an active MedicationRequest that is [`stale`]; it is left out of the
/// other medication rules. One finding per order.
pub fn stale_orders(s: &Snapshot, _cx: &Context<'_>) -> Vec<Finding> {
    s.of_type("MedicationRequest")
        .filter(|i| active_medication(i))
        .filter_map(|i| {
            let (why, enc) = stale(s, i)?;
            let mut implicated = vec![i.gid.clone()];
            implicated.extend(enc.map(|e| e.gid.clone()));
            Some(Finding {
                code: (ALERT_CODE_SYSTEM, "stale-order", "Stale order"),
                severity: Severity::Low,
                fingerprint: format!("stale-order|{}", i.gid),
                implicated: sorted(implicated),
                detail: format!(
                    "{} for {} is still active but {why}: complete or renew it.",
                    item_label(i),
                    super::concept_label(concept_of(&i.body)),
                ),
            })
        })
        .collect()
}

/// The next time an active order becomes stale by its validity period alone.
pub fn next_stale(s: &Snapshot) -> Option<i64> {
    s.of_type("MedicationRequest")
        .filter(|i| active_medication(i))
        .filter_map(|i| end_us(i.body.pointer("/dispenseRequest/validityPeriod/end")))
        .filter(|e| *e >= s.now_us)
        .map(|e| e + 1)
        .min()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, rules, snapshot};
    use super::super::{Context, detect};
    use crate::terminology::{Mapping, MedKnowledge};
    use serde_json::{Value, json};

    fn med(
        sector: &str,
        rtype: &str,
        id: &str,
        system: &str,
        code: &str,
        extra: Value,
    ) -> super::Item {
        let mut body = json!({"status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        item(sector, rtype, id, body)
    }

    fn found(items: Vec<super::Item>) -> Vec<&'static str> {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let cx = Context {
            knowledge: &k,
            mapping: &m,
            rules: &r,
        };
        detect(&snapshot(items), &cx)
            .into_iter()
            .map(|f| f.code.1)
            .collect()
    }

    const P: &str = "urn:test:product";
    const ATC: &str = "http://www.whocc.no/atc";

    #[test]
    fn an_unknown_product_code_is_itself() {
        let none = json!({});
        let same = vec![
            med("gp", "MedicationRequest", "a", P, "081234", none.clone()),
            med(
                "hospital",
                "MedicationRequest",
                "b",
                P,
                "081234",
                none.clone(),
            ),
        ];
        assert_eq!(found(same), ["DUPTHPGEN"]);
        let differ = vec![
            med("gp", "MedicationRequest", "a", P, "081234", none.clone()),
            med("hospital", "MedicationRequest", "b", P, "099999", none),
        ];
        assert!(found(differ).is_empty());
    }

    #[test]
    fn a_statement_counts_unless_it_reports_an_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles");
        let (k, m, r) = (MedKnowledge::load(&dir).unwrap(), Mapping::empty(), rules());
        let cx = Context {
            knowledge: &k,
            mapping: &m,
            rules: &r,
        };
        let codes = |items: Vec<super::Item>| -> Vec<&'static str> {
            detect(&snapshot(items), &cx)
                .into_iter()
                .map(|f| f.code.1)
                .collect()
        };
        // Codeine with paracetamol ordered; paracetamol alone reported by another sector.
        let order = med("gp", "MedicationRequest", "o", ATC, "N02AJ06", json!({}));
        let statement = |code: &str, extra: Value| {
            med("municipality", "MedicationStatement", "s", ATC, code, extra)
        };
        assert_eq!(
            codes(vec![order.clone(), statement("N02BE01", json!({}))]),
            ["DUPTHPGEN"]
        );
        // The same product, or a statement based on the order: it reports the order.
        assert!(codes(vec![order.clone(), statement("N02AJ06", json!({}))]).is_empty());
        let based_on =
            json!({"basedOn": [{"reference": format!("MedicationRequest/{}", order.gid)}]});
        assert!(codes(vec![order.clone(), statement("N02BE01", based_on)]).is_empty());
        // The ordering sector's own statement of it.
        let own = med("gp", "MedicationStatement", "s", ATC, "N02BE01", json!({}));
        assert!(codes(vec![order, own]).is_empty());
    }

    #[test]
    fn an_order_past_its_validity_is_stale_not_a_duplicate() {
        let gp = med("gp", "MedicationRequest", "a", ATC, "C03CA01", json!({}));
        let old = med(
            "hospital",
            "MedicationRequest",
            "b",
            ATC,
            "C03CA01",
            json!({"dispenseRequest": {"validityPeriod": {"end": "2026-01-01"}}}),
        );
        assert_eq!(found(vec![gp.clone(), old]), ["stale-order"]);
        let current = med(
            "hospital",
            "MedicationRequest",
            "b",
            ATC,
            "C03CA01",
            json!({"dispenseRequest": {"validityPeriod": {"end": "2099-01-01"}}}),
        );
        assert_eq!(found(vec![gp, current]), ["DUPTHPGEN"]);
    }
}
