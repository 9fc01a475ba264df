//! The R4 invariants (FHIRPath constraints of severity error) that the gateway evaluates, in
//! code: the ones a sector system trips on in exchange. Each is attached to its type when the
//! definitions are loaded (`for_type`), so the rules pass only looks at a type's own list.
//! `docs/validation.md` lists which invariants are checked and which are not, and why.

use crate::fhir::json::{Node, Object};

use crate::fhir::time::period;

/// One invariant, with what it needs to be evaluated on an object of its type.
#[derive(Debug, Clone, Copy)]
pub enum Invariant {
    /// ext-1: an extension has either nested extensions or a value, not both, not neither.
    Ext1,
    /// ref-1: a local reference `#id` names a contained resource of the resource.
    Ref1,
    /// `key`: `a` and `b` are not both present.
    Exclusive(&'static str, &'static str, &'static str),
    /// `key`: when `a` is present, `b` is too.
    Implies(&'static str, &'static str, &'static str),
    /// `key`: at least one of these is present.
    AnyOf(&'static str, &'static [&'static str]),
    /// per-1: a period's start is not after its end.
    Per1,
    /// con-4: an abated condition is not clinically active.
    Con4,
    /// con-5: an entered-in-error condition has no clinical status.
    Con5,
    /// org-2, org-3: an organization has no home address or home telecom.
    OrgNotHome,
    /// bdl-1, 2, 3, 4, 7, 8, 9, 10, 11, 12: what each Bundle type may and must carry.
    Bundle,
    /// tim-9: an offset needs a `when` that is not a meal-relative code.
    Tim9,
}

/// The invariants evaluated in code, by the type (or backbone element path) they belong to.
pub const TABLE: &[(&str, &[Invariant])] = {
    use Invariant as I;
    const QTY: &[Invariant] = &[I::Implies("qty-3", "code", "system")];
    &[
        ("Extension", &[I::Ext1]),
        ("Reference", &[I::Ref1]),
        ("Period", &[I::Per1]),
        ("Attachment", &[I::Implies("att-1", "data", "contentType")]),
        ("ContactPoint", &[I::Implies("cpt-2", "value", "system")]),
        ("Quantity", QTY),
        ("Age", QTY),
        ("Count", QTY),
        ("Distance", QTY),
        ("Duration", QTY),
        (
            "Timing.repeat",
            &[
                I::Implies("tim-1", "duration", "durationUnit"),
                I::Implies("tim-2", "period", "periodUnit"),
                I::Implies("tim-6", "periodMax", "period"),
                I::Implies("tim-7", "durationMax", "duration"),
                I::Implies("tim-8", "countMax", "count"),
                I::Exclusive("tim-10", "timeOfDay", "when"),
                I::Tim9,
            ],
        ),
        (
            "CarePlan.activity",
            &[I::Exclusive("cpl-3", "detail", "reference")],
        ),
        ("Condition", &[I::Con4, I::Con5]),
        (
            "Condition.stage",
            &[I::AnyOf("con-1", &["summary", "assessment"])],
        ),
        (
            "Condition.evidence",
            &[I::AnyOf("con-2", &["code", "detail"])],
        ),
        ("Goal.target", &[I::Implies("gol-1", "detail", "measure")]),
        (
            "Patient.contact",
            &[I::AnyOf(
                "pat-1",
                &["name", "telecom", "address", "organization"],
            )],
        ),
        (
            "Organization",
            &[I::AnyOf("org-1", &["identifier", "name"]), I::OrgNotHome],
        ),
        ("Bundle", &[I::Bundle]),
        (
            "Bundle.entry",
            &[I::AnyOf("bdl-5", &["resource", "request", "response"])],
        ),
    ]
};

/// The invariants of a type, by its name in the definitions (a backbone element by its path).
pub fn for_type(name: &str) -> &'static [Invariant] {
    TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, list)| *list)
        .unwrap_or(&[])
}

impl Invariant {
    /// The invariant keys this check stands for, as the R4 definitions name them.
    pub fn keys(self) -> Vec<&'static str> {
        use Invariant as I;
        match self {
            I::Ext1 => vec!["ext-1"],
            I::Ref1 => vec!["ref-1"],
            I::Exclusive(k, ..) | I::Implies(k, ..) | I::AnyOf(k, _) => vec![k],
            I::Per1 => vec!["per-1"],
            I::Con4 => vec!["con-4"],
            I::Con5 => vec!["con-5"],
            I::OrgNotHome => vec!["org-2", "org-3"],
            I::Bundle => vec![
                "bdl-1", "bdl-2", "bdl-3", "bdl-4", "bdl-7", "bdl-8", "bdl-9", "bdl-10", "bdl-11",
                "bdl-12",
            ],
            I::Tim9 => vec!["tim-9"],
        }
    }
}

/// An invariant broken: its key and what is wrong, with the path below the object it concerns
/// (empty for the object itself).
pub struct Broken {
    pub key: &'static str,
    pub message: String,
    pub at: Option<String>,
}

fn broken(key: &'static str, message: impl Into<String>) -> Broken {
    Broken {
        key,
        message: message.into(),
        at: None,
    }
}

/// True when the element is present: `name`, its `_name` extension, or (for a choice) any
/// `name<Type>`.
pub fn present(map: &Object<'_>, name: &str) -> bool {
    map.keys().any(|k| {
        let k = k.strip_prefix('_').unwrap_or(k);
        k.strip_prefix(name).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
        })
    })
}

/// Evaluates one invariant on an object. `contained` holds the ids `#id` references may name.
pub fn check(inv: Invariant, map: &Object<'_>, contained: &[&str], out: &mut Vec<Broken>) {
    use Invariant as I;
    match inv {
        I::Ext1 => {
            if present(map, "extension") == present(map, "value") {
                out.push(broken(
                    "ext-1",
                    "an extension must have either extensions or a value[x], not both",
                ));
            }
        }
        I::Ref1 => {
            if let Some(Node::String(r)) = map.get("reference")
                && let Some(id) = r.strip_prefix('#')
                && !id.is_empty()
                && !contained.contains(&id)
            {
                out.push(broken(
                    "ref-1",
                    "a local reference must name a contained resource of this resource",
                ));
            }
        }
        I::Exclusive(key, a, b) => {
            if present(map, a) && present(map, b) {
                out.push(broken(key, format!("{a} and {b} must not both be present")));
            }
        }
        I::Implies(key, a, b) => {
            if present(map, a) && !present(map, b) {
                out.push(broken(key, format!("{b} is required when {a} is present")));
            }
        }
        I::AnyOf(key, names) => {
            if !names.iter().any(|n| present(map, n)) {
                out.push(broken(
                    key,
                    format!("at least one of {} is required", names.join(", ")),
                ));
            }
        }
        I::Per1 => per1(map, out),
        I::Con4 | I::Con5 => condition(inv, map, out),
        I::OrgNotHome => org_not_home(map, out),
        // Evaluated by `validate::bundle_rules`, which the rules pass calls for it.
        I::Bundle => {}
        I::Tim9 => tim9(map, out),
    }
}

/// per-1, decided only when certain. Two values of the same shape (same precision, same
/// offset) compare as text; otherwise by the instants they denote, where a value without a
/// time zone beside one with a time zone may be 14 hours either way.
fn per1(map: &Object<'_>, out: &mut Vec<Broken>) {
    let (Some(Node::String(s)), Some(Node::String(e))) = (map.get("start"), map.get("end")) else {
        return;
    };
    let zoned = |v: &str| {
        v.contains('T') && (v.ends_with('Z') || v.get(10..).is_some_and(|t| t.contains(['+', '-'])))
    };
    let after = if s.len() == e.len() && zoned(s) == zoned(e) && s.get(19..) == e.get(19..) {
        s > e
    } else {
        let (Some(start), Some(end)) = (period(s), period(e)) else {
            return;
        };
        let slack = if zoned(s) == zoned(e) {
            0
        } else {
            14 * 3_600_000_000
        };
        start.0 - slack > end.1 + slack
    };
    if after {
        out.push(broken("per-1", "the period's start is after its end"));
    }
}

fn codes<'a, 'n: 'a>(
    cc: Option<&'a Node<'n>>,
    system: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    cc.and_then(|c| c.get("coding"))
        .and_then(Node::as_array)
        .into_iter()
        .flatten()
        .filter(move |c| c.get("system").and_then(Node::as_str) == Some(system))
        .filter_map(|c| c.get("code").and_then(Node::as_str))
}

fn condition(inv: Invariant, map: &Object<'_>, out: &mut Vec<Broken>) {
    const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    const VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
    match inv {
        Invariant::Con4 => {
            let settled = codes(map.get("clinicalStatus"), CLINICAL)
                .any(|c| matches!(c, "resolved" | "remission" | "inactive"));
            if present(map, "abatement") && !settled {
                out.push(broken(
                    "con-4",
                    "a condition with an abatement must have clinicalStatus inactive, \
                     resolved or remission",
                ));
            }
        }
        _ => {
            let in_error =
                codes(map.get("verificationStatus"), VERIFICATION).any(|c| c == "entered-in-error");
            if in_error && map.contains_key("clinicalStatus") {
                out.push(broken(
                    "con-5",
                    "a condition entered in error must not have a clinicalStatus",
                ));
            }
        }
    }
}

fn org_not_home(map: &Object<'_>, out: &mut Vec<Broken>) {
    for (key, element) in [("org-2", "address"), ("org-3", "telecom")] {
        let items = map
            .get(element)
            .and_then(Node::as_array)
            .into_iter()
            .flatten();
        for (i, item) in items.enumerate() {
            if item.get("use").and_then(Node::as_str) == Some("home") {
                out.push(Broken {
                    key,
                    message: format!("an organization's {element} must not have use 'home'"),
                    at: Some(format!("{element}[{i}]")),
                });
            }
        }
    }
}

fn tim9(map: &Object<'_>, out: &mut Vec<Broken>) {
    if !map.contains_key("offset") {
        return;
    }
    let whens: Vec<&str> = map
        .get("when")
        .and_then(Node::as_array)
        .into_iter()
        .flatten()
        .filter_map(Node::as_str)
        .collect();
    if whens.is_empty() || whens.iter().any(|w| matches!(*w, "C" | "CM" | "CD" | "CV")) {
        out.push(broken(
            "tim-9",
            "an offset needs a when that is not relative to a meal (C, CM, CD, CV)",
        ));
    }
}

#[cfg(test)]
mod per1_tests {
    use super::{Broken, per1};
    use crate::fhir::json::Node;
    use serde_json::json;

    fn broken(start: &str, end: &str) -> bool {
        let mut out: Vec<Broken> = Vec::new();
        let v = json!({"start": start, "end": end});
        let arena = crate::fhir::json::Arena::new();
        per1(Node::from_value(&v, &arena).as_object().unwrap(), &mut out);
        !out.is_empty()
    }

    #[test]
    fn a_period_ends_after_it_starts() {
        assert!(broken("2020-01-02", "2020-01-01"));
        assert!(broken(
            "2020-01-01T10:00:00+01:00",
            "2020-01-01T09:00:00+01:00"
        ));
        assert!(broken("2021", "2020-06-01"));
        assert!(broken("2020-01-03T10:00:00Z", "2020-01-01"));
        assert!(!broken("2020-01-01", "2020-01-01"));
        assert!(!broken("2020-01-01T10:00:00+01:00", "2020-01-01T09:30:00Z"));
        assert!(!broken("2020-01-01T10:00:00Z", "2020-01-01"));
        assert!(!broken("2020", "2020-06-01"));
    }
}
