//! `check-config`'s probe of each sector endpoint: `GET [base]/metadata` answers, the server
//! speaks FHIR 4.0.1, and its CapabilityStatement supports what the routes send there (create
//! and update of each type) and what the poller reads there (search of each pulled type).

use serde_json::Value;
use std::collections::BTreeSet;

use super::{Outbound, kind};
use crate::config::{RouteTarget, SectorMode, SectorSettings, Settings};

/// The verdict on one sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub sector: String,
    pub ok: bool,
    pub message: String,
}

/// The types the routes may deliver to `sector`.
pub fn types_routed_to(settings: &Settings, sector: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in settings.exchange.effective_routes() {
        let reaches = match &r.to {
            RouteTarget::Rule(_) => r.from.len() != 1 || r.from[0] != sector,
            RouteTarget::Sectors(list) => list.iter().any(|s| s == sector),
        };
        if reaches {
            out.extend(r.types.iter().cloned());
        }
    }
    out
}

/// Probes every sector with a base URL.
pub async fn probe_all(settings: &Settings, outbound: &Outbound) -> Vec<Probe> {
    let mut out = Vec::new();
    for s in &settings.sectors {
        out.push(match &s.base_url {
            None => Probe {
                sector: s.id.clone(),
                ok: true,
                message: "no base_url: the sector only sends (nothing to probe)".into(),
            },
            Some(_) => probe(settings, outbound, s).await,
        });
    }
    out
}

async fn probe(settings: &Settings, outbound: &Outbound, s: &SectorSettings) -> Probe {
    let base = s.base_url.as_deref().unwrap_or("").trim_end_matches('/');
    let verdict = match fetch_metadata(outbound, s, base).await {
        Ok(cs) => judge(settings, s, base, &cs),
        Err(message) => Err(message),
    };
    let (ok, message) = match verdict {
        Ok(message) => (true, message),
        Err(message) => (false, message),
    };
    Probe {
        sector: s.id.clone(),
        ok,
        message,
    }
}

/// `GET [base]/metadata` with the sector's credentials: the JSON answered with 200, or what
/// went wrong.
async fn fetch_metadata(
    outbound: &Outbound,
    s: &SectorSettings,
    base: &str,
) -> Result<Value, String> {
    let auth = outbound
        .authorization(s)
        .await
        .map_err(|e| format!("credentials: {}", e.0))?;
    let resp = outbound
        .fhir_get(&format!("{base}/metadata"), auth)
        .send()
        .await
        .map_err(|e| format!("{base}/metadata: {}", kind(&e)))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("{base}/metadata answered {status}"));
    }
    resp.json()
        .await
        .map_err(|_| format!("{base}/metadata did not answer JSON"))
}

/// The verdict on a sector's `/metadata` answer: a FHIR 4.0.1 CapabilityStatement that supports
/// what the routes send there and what the poller reads there. Pure.
fn judge(
    settings: &Settings,
    s: &SectorSettings,
    base: &str,
    cs: &Value,
) -> Result<String, String> {
    if cs.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return Err(format!("{base}/metadata is not a CapabilityStatement"));
    }
    let version = cs.get("fhirVersion").and_then(Value::as_str).unwrap_or("");
    if version != "4.0.1" {
        return Err(format!(
            "the server speaks FHIR '{version}', not 4.0.1 (R4)"
        ));
    }
    let missing = missing_interactions(settings, s, cs);
    if !missing.is_empty() {
        return Err(format!(
            "FHIR 4.0.1 at {base}, but the CapabilityStatement lacks: {}",
            missing.join(", ")
        ));
    }
    Ok(format!(
        "FHIR 4.0.1 at {base}; supports every routed type ({})",
        types_routed_to(settings, &s.id)
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The interactions a sector's CapabilityStatement lacks (`create Condition`, `search-type
/// Patient`, …): create and update of every routed type, search of every pulled type.
fn missing_interactions(settings: &Settings, s: &SectorSettings, cs: &Value) -> Vec<String> {
    let resources: Vec<&Value> = cs
        .get("rest")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("mode").and_then(Value::as_str) != Some("client"))
        .filter_map(|r| r.get("resource").and_then(Value::as_array))
        .flatten()
        .collect();
    let supports = |rtype: &str, code: &str| {
        resources.iter().any(|r| {
            r.get("type").and_then(Value::as_str) == Some(rtype)
                && r.get("interaction")
                    .and_then(Value::as_array)
                    .is_some_and(|i| {
                        i.iter()
                            .any(|x| x.get("code").and_then(Value::as_str) == Some(code))
                    })
        })
    };
    let mut missing = Vec::new();
    for t in types_routed_to(settings, &s.id) {
        for code in ["create", "update"] {
            if !supports(&t, code) {
                missing.push(format!("{code} {t}"));
            }
        }
    }
    if matches!(s.mode, SectorMode::Pull | SectorMode::Both) {
        for t in crate::exchange::route::pull_types(settings, &s.id) {
            if !supports(&t, "search-type") {
                missing.push(format!("search-type {t}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn settings() -> Settings {
        let text = "[[exchange.routes]]\ntypes = [\"Condition\", \"CarePlan\"]\nto = [\"hospital\"]\n\
            [[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n\
            base_url = \"http://gp.example\"\nmode = \"pull\"\n\
            [[sectors]]\nid = \"hospital\"\nname = \"H\"\nkind = \"hospital\"\n\
            base_url = \"http://h.example\"\n";
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::load(f.path()).unwrap()
    }

    fn capability(version: &str, resources: Value) -> Value {
        json!({
            "resourceType": "CapabilityStatement",
            "fhirVersion": version,
            "rest": [
                { "mode": "client", "resource": [{ "type": "Patient", "interaction": [{ "code": "search-type" }] }] },
                { "mode": "server", "resource": resources }
            ]
        })
    }

    fn supporting(rtype: &str, codes: &[&str]) -> Value {
        let interactions: Vec<Value> = codes.iter().map(|c| json!({ "code": c })).collect();
        json!({ "type": rtype, "interaction": interactions })
    }

    #[test]
    fn the_capability_statement_is_judged_against_routes_and_pulls() {
        let settings = settings();
        let hospital = settings.sector("hospital").unwrap();
        let gp = settings.sector("gp").unwrap();
        let base = "http://h.example";
        assert_eq!(
            judge(
                &settings,
                hospital,
                base,
                &json!({ "resourceType": "Bundle" })
            ),
            Err("http://h.example/metadata is not a CapabilityStatement".into())
        );
        assert_eq!(
            judge(&settings, hospital, base, &capability("4.0.0", json!([]))),
            Err("the server speaks FHIR '4.0.0', not 4.0.1 (R4)".into())
        );
        let some = json!([
            supporting("Condition", &["create", "update"]),
            supporting("CarePlan", &["create"])
        ]);
        assert_eq!(
            judge(&settings, hospital, base, &capability("4.0.1", some)),
            Err("FHIR 4.0.1 at http://h.example, but the CapabilityStatement lacks: update CarePlan".into())
        );
        let all = json!([
            supporting("Condition", &["create", "update"]),
            supporting("CarePlan", &["update", "create"])
        ]);
        assert_eq!(
            judge(&settings, hospital, base, &capability("4.0.1", all.clone())),
            Ok(
                "FHIR 4.0.1 at http://h.example; supports every routed type (CarePlan, Condition)"
                    .into()
            )
        );
        // The gp sector is polled: each pulled type needs search-type (the client-mode rest
        // entry does not count).
        let missing = missing_interactions(&settings, gp, &capability("4.0.1", all));
        assert!(
            missing.contains(&"search-type Patient".to_owned()),
            "{missing:?}"
        );
    }
}
