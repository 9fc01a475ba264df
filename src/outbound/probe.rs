//! `check-config`'s probe of each sector endpoint: `GET [base]/metadata` answers, the server
//! speaks FHIR 4.0.1, and its CapabilityStatement supports what the routes send there (create
//! and update of each type) and what the poller reads there (search of each pulled type).

use serde_json::Value;
use std::collections::BTreeSet;

use super::{Outbound, kind};
use crate::config::{RouteTarget, SectorMode, SectorSettings, Settings};
use crate::fhir::FHIR_JSON;

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
    let fail = |message: String| Probe {
        sector: s.id.clone(),
        ok: false,
        message,
    };
    let base = s.base_url.as_deref().unwrap_or("").trim_end_matches('/');
    let auth = match outbound.authorization(s).await {
        Ok(a) => a,
        Err(e) => return fail(format!("credentials: {}", e.0)),
    };
    let mut req = outbound
        .http
        .get(format!("{base}/metadata"))
        .header(reqwest::header::ACCEPT, FHIR_JSON);
    if let Some(a) = auth {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("{base}/metadata: {}", kind(&e))),
    };
    let status = resp.status().as_u16();
    if status != 200 {
        return fail(format!("{base}/metadata answered {status}"));
    }
    let cs: Value = match resp.json().await {
        Ok(v) => v,
        Err(_) => return fail(format!("{base}/metadata did not answer JSON")),
    };
    if cs.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return fail(format!("{base}/metadata is not a CapabilityStatement"));
    }
    let version = cs.get("fhirVersion").and_then(Value::as_str).unwrap_or("");
    if version != "4.0.1" {
        return fail(format!(
            "the server speaks FHIR '{version}', not 4.0.1 (R4)"
        ));
    }
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
    if !missing.is_empty() {
        return fail(format!(
            "FHIR 4.0.1 at {base}, but the CapabilityStatement lacks: {}",
            missing.join(", ")
        ));
    }
    Probe {
        sector: s.id.clone(),
        ok: true,
        message: format!(
            "FHIR 4.0.1 at {base}; supports every routed type ({})",
            types_routed_to(settings, &s.id)
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
