//! End-to-end exchange: the gateway between three real FHIR servers (Medplum's FHIR router in
//! `tests/peers/`), pushing, pulling, mapping, delivering, surviving outages and faults. The
//! fault proxy (tests/common/fault.rs) sits in front of a real server only to inject faults.

use crate::common;

use crate::common::fault::{Fault, FaultProxy, Matcher};
use crate::common::peers::{Peer, PeerOptions, lantana_errors, start_three, validate_with_lantana};
use crate::common::records::{CPR, ICPC2, condition, patient, transaction};
use crate::common::server::{Serve, Server};
use crate::common::{Backend, TestApp, conf, copy_at, repo, wait_for};
use carebridge::exchange::SOURCE_ID_SYSTEM;
use carebridge::store::OutboxEntry;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SKSD: &str = "urn:oid:1.2.208.176.2.4.12";
const FSIII: &str = "urn:oid:1.2.208.176.2.21";
const ATC: &str = "http://www.whocc.no/atc";

/// Fast retries and polls for tests.
const FAST: &str = "retry_initial_ms = 100\nretry_max_ms = 1000\nidle_poll_ms = 100\n\
                    poll_interval_ms = 400\nrequest_timeout_ms = 5000\n";

fn kind_and_profile(id: &str) -> (&'static str, &'static str) {
    match id {
        "gp" => ("general-practice", "dk-gp"),
        "hospital" => ("hospital", "dk-hospital"),
        _ => ("municipality", "dk-municipality"),
    }
}

/// A configuration with the given sectors (id, base URL, mode) and `[exchange]` lines. These
/// tests look at delivery: a sector with a server takes part in a patient's care from its
/// Patient on (`join_care_on_patient`; `tests/it/trust.rs` tests the default, a clinical record).
fn config(store_url: &str, sectors: &[(&str, String, &str)], exchange: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n[store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\n{exchange}\n\n\
         [[sectors]]\nid = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n",
        repo().join("fhir-profiles").display()
    );
    for (id, base, mode) in sectors {
        let (kind, profile) = kind_and_profile(id);
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\nmode = \"{mode}\"\nprofile = \"{profile}\"\njoin_care_on_patient = true\n"
        ));
    }
    // The test clients name all three sectors; a sector without a server only sends.
    for id in ["gp", "hospital", "municipality"] {
        if !sectors.iter().any(|s| s.0 == id) {
            let (kind, profile) = kind_and_profile(id);
            text.push_str(&format!(
                "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\nprofile = \"{profile}\"\n"
            ));
        }
    }
    text
}

async fn outbox(app: &TestApp, state: Option<&str>) -> Vec<OutboxEntry> {
    common::outbox(app.app_gateway.store().as_ref(), state).await
}

/// Waits until nothing is pending, then returns every entry.
async fn settled(app: &TestApp, secs: u64) -> Vec<OutboxEntry> {
    wait_for("the outbox to drain", secs, || async {
        let all = outbox(app, None).await;
        (!all.is_empty() && all.iter().all(|e| e.state.code() != "pending")).then_some(all)
    })
    .await
}

/// Creates the patient on the sector's own server, then the sector pushes it to the gateway
/// under the same id. Returns that id.
async fn register_patient(app: &TestApp, peer: &Peer, sector: &str, cpr: &str) -> String {
    let created = peer.create(&patient(cpr, "Mortensen")).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut body = patient(cpr, "Mortensen");
    body["id"] = json!(id);
    let (status, out, _) = app
        .put(sector, &format!("/{sector}/Patient/{id}"), &body)
        .await;
    assert!(status == 201 || status == 200, "{status} {out}");
    id
}

fn care_plan(id: &str, patient: &str, condition: &str, activity: Option<(&str, &str)>) -> Value {
    let mut plan = json!({
        "resourceType": "CarePlan",
        "id": id,
        "identifier": [{"system": format!("urn:carebridge:test:{id}"), "value": id}],
        "status": "active",
        "intent": "plan",
        "title": "Shared plan",
        "subject": {"reference": format!("Patient/{patient}")},
        "addresses": [{"reference": format!("Condition/{condition}")}]
    });
    if let Some((system, code)) = activity {
        plan["activity"] = json!([{"detail": {"code": {"coding": [{"system": system, "code": code}]}, "status": "in-progress"}}]);
    }
    plan
}

fn med_request(id: &str, patient: &str, atc: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "id": id,
        "identifier": [{"system": format!("urn:carebridge:test:{id}"), "value": id}],
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "requester": {"reference": "Practitioner/doc-1", "display": "The prescriber"}
    })
}

fn care_team(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "CareTeam",
        "id": id,
        "identifier": [{"system": format!("urn:carebridge:test:{id}"), "value": id}],
        "status": "active",
        "subject": {"reference": format!("Patient/{patient}")},
        "participant": [{"member": {"reference": "Practitioner/doc-1", "display": "The prescriber"}}]
    })
}

async fn push(app: &TestApp, sector: &str, resources: &[Value]) {
    let (status, body, _) = app
        .post(sector, &format!("/{sector}"), &transaction(resources))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn codings(r: &Value, pointer: &str) -> Vec<(String, String)> {
    r.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["system"].as_str().unwrap_or("").to_owned(),
                        c["code"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mapping_profiles(set: &str, rtype: &str) -> Vec<String> {
    let path = repo().join(format!("fhir-profiles/mapping/{set}.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["profiles"][rtype]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_the_other_sectors_mapped_and_valid() {
    let (gp, hospital, municipality) = start_three(&PeerOptions {
        validate: true,
        ..PeerOptions::default()
    })
    .await;
    let peers: HashMap<&str, &Peer> = HashMap::from([
        ("gp", &gp),
        ("hospital", &hospital),
        ("municipality", &municipality),
    ]);
    let sectors = [
        ("gp", gp.base.clone(), "push"),
        ("hospital", hospital.base.clone(), "push"),
        ("municipality", municipality.base.clone(), "push"),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, &sectors, FAST)).await;

    // The patient is known in every sector, under each sector's own id.
    let cpr = "1403482196";
    let mut pid = HashMap::new();
    for s in ["gp", "hospital", "municipality"] {
        pid.insert(s, register_patient(&app, peers[s], s, cpr).await);
    }

    // Each sector records what it knows.
    push(
        &app,
        "gp",
        &[
            condition("gp-hf", &pid["gp"], ICPC2, "K77", "Hjerteinsufficiens"),
            care_plan("gp-plan", &pid["gp"], "gp-hf", None),
            care_team("gp-team", &pid["gp"]),
            med_request("gp-furosemide", &pid["gp"], "C03CA01"),
        ],
    )
    .await;
    push(
        &app,
        "hospital",
        &[
            condition(
                "h-dm",
                &pid["hospital"],
                SKSD,
                "DE112",
                "Type 2-diabetes med nyrekomplikation",
            ),
            med_request("h-metformin", &pid["hospital"], "A10BA02"),
        ],
    )
    .await;
    push(
        &app,
        "municipality",
        &[
            condition(
                "m-mob",
                &pid["municipality"],
                FSIII,
                "I4.4",
                "Problemer med mobilitet",
            ),
            care_plan(
                "m-plan",
                &pid["municipality"],
                "m-mob",
                Some((FSIII, "I4.4")),
            ),
        ],
    )
    .await;

    let entries = settled(&app, 60).await;
    let dead: Vec<_> = entries
        .iter()
        .filter(|e| e.state.code() == "dead")
        .collect();
    assert!(dead.is_empty(), "dead letters: {dead:#?}");
    // 4 GP resources to 2 sectors, 2 hospital resources to 2, 2 municipal resources to 2 (beside
    // them, the alert messages the gateway itself sends to the care team: source `carebridge`).
    let delivered: Vec<_> = entries
        .iter()
        .filter(|e| e.state.code() == "delivered" && e.source != "carebridge")
        .collect();
    assert_eq!(delivered.len(), 16, "{entries:#?}");

    let sources: HashMap<&str, Vec<Value>> = HashMap::from([
        (
            "gp",
            vec![
                condition("gp-hf", &pid["gp"], ICPC2, "K77", "Hjerteinsufficiens"),
                care_plan("gp-plan", &pid["gp"], "gp-hf", None),
                care_team("gp-team", &pid["gp"]),
                med_request("gp-furosemide", &pid["gp"], "C03CA01"),
            ],
        ),
        (
            "hospital",
            vec![
                condition(
                    "h-dm",
                    &pid["hospital"],
                    SKSD,
                    "DE112",
                    "Type 2-diabetes med nyrekomplikation",
                ),
                med_request("h-metformin", &pid["hospital"], "A10BA02"),
            ],
        ),
        (
            "municipality",
            vec![
                condition(
                    "m-mob",
                    &pid["municipality"],
                    FSIII,
                    "I4.4",
                    "Problemer med mobilitet",
                ),
                care_plan(
                    "m-plan",
                    &pid["municipality"],
                    "m-mob",
                    Some((FSIII, "I4.4")),
                ),
            ],
        ),
    ]);
    let mut all_copies = Vec::new();
    for (source, resources) in &sources {
        for target in ["gp", "hospital", "municipality"] {
            if target == *source {
                continue;
            }
            let peer = peers[target];
            for r in resources {
                let rtype = r["resourceType"].as_str().unwrap();
                let id = r["id"].as_str().unwrap();
                let copy = copy_at(peer, source, rtype, id)
                    .await
                    .unwrap_or_else(|| panic!("{source}/{rtype}/{id} did not reach {target}"));
                // The target's profile.
                let (_, set) = kind_and_profile(target);
                for p in mapping_profiles(set, rtype) {
                    assert!(
                        copy["meta"]["profile"]
                            .as_array()
                            .is_some_and(|a| a.contains(&json!(p))),
                        "{target} copy of {rtype} lacks profile {p}: {copy}"
                    );
                }
                // References rewritten to what the target knows.
                assert_eq!(
                    copy["subject"]["reference"],
                    json!(format!("Patient/{}", pid[target])),
                    "{copy}"
                );
                if rtype == "CarePlan" {
                    let cond_id = r["addresses"][0]["reference"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("Condition/");
                    let cond = copy_at(peer, source, "Condition", cond_id).await.unwrap();
                    assert_eq!(
                        copy["addresses"][0]["reference"],
                        json!(format!("Condition/{}", cond["id"].as_str().unwrap())),
                        "{copy}"
                    );
                }
                if rtype == "CareTeam" || rtype == "MedicationRequest" {
                    // A Practitioner never sent to the gateway: a logical reference.
                    let r = if rtype == "CareTeam" {
                        &copy["participant"][0]["member"]
                    } else {
                        &copy["requester"]
                    };
                    assert!(r.get("reference").is_none(), "{copy}");
                    assert_eq!(r["identifier"]["system"], json!(SOURCE_ID_SYSTEM));
                    assert_eq!(r["display"], json!("The prescriber"));
                }
                // Original codes kept; extensions and primitive extensions identical.
                for pointer in [
                    "/code/coding",
                    "/medicationCodeableConcept/coding",
                    "/activity/0/detail/code/coding",
                ] {
                    for c in codings(r, pointer) {
                        assert!(
                            codings(&copy, pointer).contains(&c),
                            "{target} copy lost {c:?}: {copy}"
                        );
                    }
                }
                assert_eq!(copy.get("extension"), r.get("extension"), "{copy}");
                assert_eq!(copy.get("_recordedDate"), r.get("_recordedDate"), "{copy}");
                // The business identifier kept beside the gateway's.
                assert!(
                    copy["identifier"]
                        .as_array()
                        .unwrap()
                        .contains(&r["identifier"][0])
                );
                all_copies.push(copy);
            }
        }
    }
    // Translations beside the originals, by each target's policy.
    let hf_at_hospital = copy_at(&hospital, "gp", "Condition", "gp-hf")
        .await
        .unwrap();
    assert!(
        codings(&hf_at_hospital, "/code/coding").contains(&(SKSD.into(), "DI50".into())),
        "{hf_at_hospital}"
    );
    let dm_at_gp = copy_at(&gp, "hospital", "Condition", "h-dm").await.unwrap();
    assert!(
        codings(&dm_at_gp, "/code/coding").contains(&(ICPC2.into(), "T90".into())),
        "{dm_at_gp}"
    );
    let mob_at_hospital = copy_at(&hospital, "municipality", "Condition", "m-mob")
        .await
        .unwrap();
    assert!(
        codings(&mob_at_hospital, "/code/coding").contains(&(SKSD.into(), "DL89".into())),
        "{mob_at_hospital}"
    );

    // The independent validator accepts every copy.
    let results = validate_with_lantana(&all_copies);
    let invalid: Vec<_> = results
        .iter()
        .filter(|r| r["valid"] != json!(true))
        .map(|r| (r["resourceType"].clone(), lantana_errors(r)))
        .collect();
    assert!(
        invalid.is_empty(),
        "Lantana rejects delivered copies: {invalid:#?}"
    );
    assert_eq!(results.len(), 16);

    // Re-sending the same content delivers nothing new.
    push(
        &app,
        "gp",
        &[condition(
            "gp-hf",
            &pid["gp"],
            ICPC2,
            "K77",
            "Hjerteinsufficiens",
        )],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outbox(&app, None).await.len(), entries.len());

    // An update travels as an update of the copy.
    let mut changed = condition("gp-hf", &pid["gp"], ICPC2, "K77", "Hjerteinsufficiens");
    changed["clinicalStatus"]["coding"][0]["code"] = json!("remission");
    push(&app, "gp", &[changed]).await;
    settled(&app, 30).await;
    let updated = copy_at(&hospital, "gp", "Condition", "gp-hf")
        .await
        .unwrap();
    assert_eq!(updated["id"], hf_at_hospital["id"]);
    assert_eq!(
        updated["clinicalStatus"]["coding"][0]["code"],
        json!("remission")
    );
    let history = hospital
        .history(&format!("Condition/{}", updated["id"].as_str().unwrap()))
        .await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);

    // Every attempt is in the audit log with its source and target sectors.
    let (status, log) = app
        .get("auditor", "/AuditEvent?sector=hospital&_count=1000")
        .await;
    assert_eq!(status, 200);
    let deliveries_to_hospital = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["subtype"][0]["code"] == json!("deliver"))
        .count();
    assert!(
        deliveries_to_hospital >= 6,
        "{deliveries_to_hospital} delivery rows"
    );
    app.stop().await;
}

/// The sum of a metric's samples whose labels contain every `labels` part (comma-separated).
async fn metric(app: &TestApp, name: &str, labels: &str) -> f64 {
    let text = app
        .http
        .get(app.base.replace("/fhir", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.split(',').all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_brings_municipal_records_to_general_practice_once() {
    let (gp, hospital, municipality) = start_three(&PeerOptions::default()).await;
    let sectors = [
        ("gp", gp.base.clone(), "push"),
        ("hospital", hospital.base.clone(), "push"),
        ("municipality", municipality.base.clone(), "pull"),
    ];
    // Pages of two, so that paging (by _offset: Medplum gives no next links) is exercised.
    let app = TestApp::spawn_config(Backend::Sqlite, |url| {
        config(url, &sectors, &format!("{FAST}poll_page_size = 2\n"))
    })
    .await;
    let cpr = "0906543083";
    let gp_pid = register_patient(&app, &gp, "gp", cpr).await;
    register_patient(&app, &hospital, "hospital", cpr).await;
    // General practice's own record reaches the municipality (and must not come back).
    push(
        &app,
        "gp",
        &[condition(
            "gp-copd",
            &gp_pid,
            ICPC2,
            "R95",
            "Kronisk obstruktiv lungesygdom",
        )],
    )
    .await;

    // The municipality records directly in its own system.
    let m_patient = municipality.create(&patient(cpr, "Larsen")).await;
    let m_pid = m_patient["id"].as_str().unwrap().to_owned();
    let mut created = Vec::new();
    for (code, display) in [
        ("I4.4", "Problemer med mobilitet"),
        ("I11.1", "Problemer med ernæring"),
        ("B3", "Problemer med hukommelse"),
    ] {
        let mut c = condition("x", &m_pid, FSIII, code, display);
        c.as_object_mut().unwrap().remove("id");
        c["identifier"] = json!([{"system": "urn:carebridge:test:municipality", "value": code}]);
        created.push(municipality.create(&c).await);
    }
    let mut plan = care_plan(
        "x",
        &m_pid,
        created[0]["id"].as_str().unwrap(),
        Some((FSIII, "I4.4")),
    );
    plan.as_object_mut().unwrap().remove("id");
    created.push(municipality.create(&plan).await);

    // Everything arrives at general practice, mapped.
    for r in &created {
        let rtype = r["resourceType"].as_str().unwrap();
        let id = r["id"].as_str().unwrap();
        let copy = wait_for(&format!("{rtype} at gp"), 60, || async {
            copy_at(&gp, "municipality", rtype, id).await
        })
        .await;
        assert_eq!(
            copy["subject"]["reference"],
            json!(format!("Patient/{gp_pid}"))
        );
    }
    let gp_copy_of_plan = copy_at(
        &gp,
        "municipality",
        "CarePlan",
        created[3]["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let gp_copy_of_cond = copy_at(
        &gp,
        "municipality",
        "Condition",
        created[0]["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        gp_copy_of_plan["addresses"][0]["reference"],
        json!(format!(
            "Condition/{}",
            gp_copy_of_cond["id"].as_str().unwrap()
        ))
    );
    wait_for("gp's condition at the municipality", 30, || async {
        copy_at(&municipality, "gp", "Condition", "gp-copd").await
    })
    .await;
    let before = settled(&app, 30).await;
    let stored_before = app.stored_count().await;

    // Three more poll cycles: nothing re-ingested, nothing delivered twice.
    tokio::time::sleep(Duration::from_millis(400 * 4)).await;
    let after = settled(&app, 30).await;
    assert_eq!(before, after, "the outbox changed without new records");
    assert_eq!(app.stored_count().await, stored_before);
    let echo = metric(
        &app,
        "carebridge_pulled_resources_total",
        "outcome=\"echo\"",
    )
    .await;
    assert!(
        echo >= 1.0,
        "the poller saw gp's copy at the municipality and skipped it"
    );
    for r in &created {
        let rtype = r["resourceType"].as_str().unwrap();
        let copy = copy_at(&gp, "municipality", rtype, r["id"].as_str().unwrap())
            .await
            .unwrap();
        let history = gp
            .history(&format!("{rtype}/{}", copy["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            history["entry"].as_array().unwrap().len(),
            1,
            "{rtype} delivered more than once"
        );
    }
    // Nothing of the municipality's copies of other sectors' records was ingested as its own.
    let municipal_sources: Vec<_> = after
        .iter()
        .filter(|e| e.source == "municipality")
        .collect();
    assert_eq!(municipal_sources.len(), 4 * 2, "{municipal_sources:#?}");

    // A change made at the municipality travels as an update.
    let mut changed = created[1].clone();
    changed["clinicalStatus"]["coding"][0]["code"] = json!("resolved");
    let id = changed["id"].as_str().unwrap().to_owned();
    let (status, _, body) = municipality
        .request(
            reqwest::Method::PUT,
            &format!("Condition/{id}"),
            Some(&changed),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let copy = wait_for("the update at gp", 30, || async {
        copy_at(&gp, "municipality", "Condition", &id)
            .await
            .filter(|c| c["clinicalStatus"]["coding"][0]["code"] == json!("resolved"))
    })
    .await;
    let history = gp
        .history(&format!("Condition/{}", copy["id"].as_str().unwrap()))
        .await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sector_that_was_down_receives_what_it_missed_once_and_in_order() {
    let (gp, mut hospital, municipality) = start_three(&PeerOptions::default()).await;
    let sectors = [
        ("gp", gp.base.clone(), "push"),
        ("hospital", hospital.base.clone(), "push"),
        ("municipality", municipality.base.clone(), "push"),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, &sectors, FAST)).await;
    let cpr = "1901420116";
    let mut pid = HashMap::new();
    for (s, p) in [
        ("gp", &gp),
        ("hospital", &hospital),
        ("municipality", &municipality),
    ] {
        pid.insert(s, register_patient(&app, p, s, cpr).await);
    }

    hospital.stop().await;
    let ids: Vec<String> = (0..10).map(|i| format!("gp-c{i}")).collect();
    for id in &ids {
        push(
            &app,
            "gp",
            &[condition(
                id,
                &pid["gp"],
                ICPC2,
                "K77",
                "Hjerteinsufficiens",
            )],
        )
        .await;
    }
    // Two more versions of one of them while the hospital is down.
    for status in ["recurrence", "remission"] {
        let mut c = condition("gp-c0", &pid["gp"], ICPC2, "K77", "Hjerteinsufficiens");
        c["clinicalStatus"]["coding"][0]["code"] = json!(status);
        push(&app, "gp", &[c]).await;
    }
    // Meanwhile the municipality keeps receiving.
    for id in &ids {
        wait_for(&format!("{id} at the municipality"), 30, || async {
            copy_at(&municipality, "gp", "Condition", id).await
        })
        .await;
    }
    wait_for("the last version at the municipality", 30, || async {
        copy_at(&municipality, "gp", "Condition", "gp-c0")
            .await
            .filter(|c| c["clinicalStatus"]["coding"][0]["code"] == json!("remission"))
    })
    .await;
    let waiting: Vec<_> = outbox(&app, Some("pending"))
        .await
        .into_iter()
        .filter(|e| e.target == "hospital")
        .collect();
    assert_eq!(waiting.len(), 12, "{waiting:#?}");
    assert!(
        waiting
            .iter()
            .any(|e| e.attempts > 0 && e.last_error.is_some())
    );

    // The hospital comes back (empty: Medplum keeps nothing) on the same address.
    hospital.restart().await;
    let entries = settled(&app, 60).await;
    assert!(
        entries.iter().all(|e| e.state.code() == "delivered"),
        "{entries:#?}"
    );
    for id in &ids {
        copy_at(&hospital, "gp", "Condition", id)
            .await
            .unwrap_or_else(|| panic!("{id} missing at the hospital"));
    }
    let c0 = copy_at(&hospital, "gp", "Condition", "gp-c0")
        .await
        .unwrap();
    let history = hospital
        .history(&format!("Condition/{}", c0["id"].as_str().unwrap()))
        .await;
    // Newest first: the three versions arrived once each, in order.
    let statuses: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["clinicalStatus"]["coding"][0]["code"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses, ["remission", "recurrence", "active"]);
    app.stop().await;
}

/// The hospital's entry for `gp/Condition/<id>`.
async fn entry_for(app: &TestApp, id: &str) -> OutboxEntry {
    let gid = carebridge::ids::gateway_id("gp", "Condition", id);
    outbox(app, None)
        .await
        .into_iter()
        .find(|e| e.gid == gid && e.target == "hospital")
        .unwrap_or_else(|| panic!("no entry for {id}"))
}

async fn wait_state(app: &TestApp, id: &str, state: &str) -> OutboxEntry {
    wait_for(&format!("{id} to be {state}"), 60, || async {
        let e = entry_for(app, id).await;
        (e.state.code() == state).then_some(e)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_or_dead_lettered_and_dead_letters_replay() {
    let gp = Peer::start("gp", &PeerOptions::default()).await;
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&hospital.base).await;
    let sectors = [
        ("gp", gp.base.clone(), "push"),
        ("hospital", proxy.base.clone(), "push"),
    ];
    let exchange = "retry_initial_ms = 100\nretry_max_ms = 400\nidle_poll_ms = 100\n\
                    request_timeout_ms = 1000\nmax_attempts = 4\n";
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, &sectors, exchange)).await;
    let cpr = "0205600643";
    let gp_pid = register_patient(&app, &gp, "gp", cpr).await;
    register_patient(&app, &hospital, "hospital", cpr).await;
    let send = |id: &'static str| {
        let app = &app;
        let gp_pid = gp_pid.clone();
        async move {
            push(
                app,
                "gp",
                &[condition(id, &gp_pid, ICPC2, "K77", "Hjerteinsufficiens")],
            )
            .await
        }
    };
    let post_condition = || Matcher::MethodPath("POST", "/Condition".into());

    // Retryable failures are retried, then succeed.
    let cases: [(&str, Fault, i64); 5] = [
        ("f-503", Fault::Status(503), 3),
        ("f-429", Fault::Status(429), 2),
        ("f-drop", Fault::Drop, 2),
        ("f-hang", Fault::Hang, 2),
        ("f-lost", Fault::DropAfterForward, 2),
    ];
    for (id, fault, attempts) in cases {
        let times = usize::try_from(attempts - 1).unwrap();
        proxy.push(post_condition(), fault.clone(), times);
        send(id).await;
        let e = wait_state(&app, id, "delivered").await;
        assert_eq!(e.attempts, attempts, "{id}: {e:#?}");
        assert!(e.last_status.is_some());
        // Exactly one copy, even when the first write happened and its answer was lost.
        let copy = copy_at(&hospital, "gp", "Condition", id)
            .await
            .expect("delivered");
        assert_eq!(Some(copy["id"].as_str().unwrap()), e.target_id.as_deref());
    }

    // A permanent failure is dead-lettered at once.
    proxy.push(post_condition(), Fault::Status(422), 1);
    send("f-422").await;
    let dead = wait_state(&app, "f-422", "dead").await;
    assert_eq!((dead.attempts, dead.last_status), (1, Some(422)));
    // Exhausted retries are dead-lettered after max_attempts.
    proxy.set_always(post_condition(), Some(Fault::Status(503)));
    send("f-down").await;
    let exhausted = wait_state(&app, "f-down", "dead").await;
    assert_eq!((exhausted.attempts, exhausted.last_status), (4, Some(503)));
    proxy.set_always(post_condition(), None);
    assert!(
        copy_at(&hospital, "gp", "Condition", "f-down")
            .await
            .is_none()
    );

    // IT staff see the dead letters and replay them.
    let (status, list) = app.get("admin", "/../admin/deliveries?state=dead").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<i64> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![dead.id, exhausted.id]);
    assert_eq!(
        app.get("careteam", "/../admin/deliveries?state=dead")
            .await
            .0,
        403
    );
    for id in &ids {
        let (status, body, _) = app
            .post(
                "admin",
                &format!("/../admin/deliveries/{id}/retry"),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], json!("pending"));
    }
    assert_eq!(
        app.post(
            "admin",
            &format!("/../admin/deliveries/{}/retry", ids[0]),
            &json!({})
        )
        .await
        .0,
        404
    );
    for id in ["f-422", "f-down"] {
        wait_state(&app, id, "delivered").await;
        assert!(copy_at(&hospital, "gp", "Condition", id).await.is_some());
    }
    let dead_letters = metric(&app, "carebridge_dead_letters_total", "target=\"hospital\"").await;
    assert_eq!(dead_letters, 2.0);

    // Each attempt left an audit row naming both sectors and the outcome.
    let (_, log) = app
        .get(
            "auditor",
            "/AuditEvent?sector=hospital&entity-type=Condition&_count=1000",
        )
        .await;
    let rows: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["subtype"][0]["code"] == json!("deliver"))
        .collect();
    let failures = rows.iter().filter(|r| r["outcome"] != json!("0")).count();
    // 2 + 1 + 1 + 1 + 1 retried, 1 permanent, 4 exhausted.
    assert_eq!(failures, 6 + 1 + 4, "{rows:#?}");
    assert_eq!(rows.len() - failures, 7);
    app.stop().await;
}

/// Starts `carebridge serve`; the child is killed when dropped, so that a failing test leaves
/// no server behind.
fn start_binary(config: &std::path::Path) -> (Server, String) {
    let server = Serve::new(config)
        .rust_log("warn,carebridge=info")
        .start()
        .expect("the binary starts");
    let base = server.base.clone();
    (server, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_deliver_each_entry_exactly_once() {
    const N: usize = 2000;
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let (url, db) = common::fresh_pg_database().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &url,
        &[("hospital", hospital.base.clone(), "push")],
        &format!("{FAST}batch = 32\n"),
    );
    let (clients, tokens) = conf::mint(&[("gp", "sector:gp"), ("hospital", "sector:hospital")]);
    let config_file = dir.path().join("carebridge.toml");
    std::fs::write(&config_file, text + &clients).unwrap();
    let (a, base_a) = start_binary(&config_file);
    let (b, base_b) = start_binary(&config_file);
    let http = carebridge::outbound::client().expect("an HTTP client");
    let send = |base: String, who: &'static str, path: String, body: Value| {
        let http = http.clone();
        let token = tokens[who].clone();
        async move {
            let resp = http
                .request(
                    if path.contains("/Patient/") {
                        reqwest::Method::PUT
                    } else {
                        reqwest::Method::POST
                    },
                    format!("{base}{path}"),
                )
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert!(status < 300, "{status}: {}", resp.text().await.unwrap());
        }
    };
    // The patient, known at the hospital and in general practice.
    let cpr = "1503570721";
    let h_patient = hospital.create(&patient(cpr, "Rahimi")).await;
    let h_pid = h_patient["id"].as_str().unwrap().to_owned();
    let mut hp = patient(cpr, "Rahimi");
    hp["id"] = json!(h_pid);
    send(
        base_a.clone(),
        "hospital",
        format!("/hospital/Patient/{h_pid}"),
        hp,
    )
    .await;
    let mut gp = patient(cpr, "Rahimi");
    gp["id"] = json!("gp-p1");
    send(base_b.clone(), "gp", "/gp/Patient/gp-p1".into(), gp).await;

    // 2,000 Conditions from general practice, half through each replica, two senders at once.
    let started = Instant::now();
    let bundles: Vec<Value> = (0..N / 100)
        .map(|b| {
            transaction(
                &(0..100)
                    .map(|i| {
                        condition(
                            &format!("r-{b}-{i}"),
                            "gp-p1",
                            ICPC2,
                            "K77",
                            "Hjerteinsufficiens",
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let (even, odd): (Vec<_>, Vec<_>) = bundles
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let through = |base: String, items: Vec<(usize, Value)>| {
        let send = &send;
        async move {
            for (_, bundle) in items {
                send(base.clone(), "gp", "/gp".into(), bundle).await;
            }
        }
    };
    tokio::join!(through(base_a.clone(), even), through(base_b.clone(), odd));
    let pushed = started.elapsed();

    let store = carebridge::store::SqlStore::connect(&url, 2).await.unwrap();
    wait_for("2,000 deliveries", 300, || async {
        let delivered = common::outbox(&store, Some("delivered")).await;
        (delivered.len() == N).then_some(())
    })
    .await;
    let all_delivered = started.elapsed();
    // Nothing else is pending or dead.
    let all = common::outbox(&store, None).await;
    assert_eq!(all.len(), N);

    // Exactly once: one successful delivery row per entry, and 2,000 copies at the hospital.
    let mut pg = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    use sqlx::{Connection, Row};
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(DISTINCT entities) FROM audit_log WHERE interaction = 'deliver' AND outcome = '0'",
    )
    .fetch_one(&mut pg)
    .await
    .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((rows, distinct), (N as i64, N as i64));
    let details: Vec<String> =
        sqlx::query("SELECT detail FROM audit_log WHERE interaction = 'deliver' AND outcome = '0'")
            .fetch_all(&mut pg)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    let mut by_replica: HashMap<String, usize> = HashMap::new();
    for d in &details {
        let who = d
            .split(" by ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap_or("?");
        *by_replica.entry(who.to_owned()).or_default() += 1;
    }
    assert_eq!(by_replica.len(), 2, "both replicas deliver: {by_replica:?}");
    assert_eq!(hospital.total("Condition").await, N as u64);
    eprintln!(
        "replicas: {N} resources pushed in {:.2} s, all delivered after {:.2} s ({:.0} deliveries/s end to end); by replica {by_replica:?}",
        pushed.as_secs_f64(),
        all_delivered.as_secs_f64(),
        N as f64 / all_delivered.as_secs_f64()
    );
    // Killed and waited for.
    drop(a);
    drop(b);
    store.close().await;
    drop(pg);
    common::drop_pg_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_care_team_as_communications_and_close_when_the_cause_goes() {
    use carebridge::gateway::notify::ALERT_MESSAGE_SYSTEM;
    let gp = Peer::start(
        "gp",
        &PeerOptions {
            validate: true,
            ..PeerOptions::default()
        },
    )
    .await;
    let hospital = Peer::start(
        "hospital",
        &PeerOptions {
            validate: true,
            ..PeerOptions::default()
        },
    )
    .await;
    let sectors = [
        ("gp", gp.base.clone(), "push"),
        ("hospital", hospital.base.clone(), "push"),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, &sectors, FAST)).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let mut stream = app
        .http
        .get(format!("{root}/alerts/stream"))
        .bearer_auth(app.token("careteam"))
        .send()
        .await
        .unwrap();
    let cpr = "1403482196";
    let gp_pid = register_patient(&app, &gp, "gp", cpr).await;
    let h_pid = register_patient(&app, &hospital, "hospital", cpr).await;
    let furosemide = |id: &str, patient: &str, status: &str| {
        let mut r = med_request(id, patient, "C03CA01");
        r["status"] = json!(status);
        r
    };
    push(&app, "gp", &[furosemide("gp-furo", &gp_pid, "active")]).await;
    push(&app, "hospital", &[furosemide("h-furo", &h_pid, "active")]).await;

    // One DUPTHPGEN alert, in the API and on the stream.
    let (_, found) = app
        .get("careteam", &format!("/Patient?identifier={CPR}|{cpr}"))
        .await;
    let pid = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, issues) = app
        .get(
            "careteam",
            &format!("/DetectedIssue?patient={pid}&code=DUPTHPGEN"),
        )
        .await;
    let issues = issues["entry"].as_array().unwrap().clone();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let id = issues[0]["resource"]["id"].as_str().unwrap().to_owned();
    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains(&id));

    // No care team yet: general practice hears of it, as a Communication about the alert.
    async fn message(peer: &Peer, id: &str, version: i64) -> Option<Value> {
        let q = format!("Communication?identifier={ALERT_MESSAGE_SYSTEM}|{id}/{version}");
        peer.search_resources(&q).await.into_iter().next()
    }
    let first = wait_for("the alert message at gp", 30, || message(&gp, &id, 1)).await;
    assert_eq!(first["category"][0]["coding"][0]["code"], json!("alert"));
    assert_eq!(
        first["subject"]["reference"],
        json!(format!("Patient/{gp_pid}"))
    );
    assert!(
        first["payload"][0]["contentString"]
            .as_str()
            .unwrap()
            .contains("New alert")
    );
    assert_eq!(first["priority"], json!("urgent"));
    // It names the implicated records as general practice knows them: its own order by its id.
    let about: Vec<&str> = first["about"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["reference"].as_str())
        .collect();
    assert!(about.contains(&"MedicationRequest/gp-furo"), "{first}");
    assert!(message(&hospital, &id, 1).await.is_none());

    // The hospital's care team names a general practitioner too: both sectors hear what follows.
    push(&app, "gp", &[json!({"resourceType": "Practitioner", "id": "gp-doc",
        "identifier": [{"system": "urn:carebridge:test:practitioner", "value": "gp-doc"}], "name": [{"family": "Lund"}]})]).await;
    push(&app, "hospital", &[json!({"resourceType": "CareTeam", "id": "h-team", "status": "active",
        "subject": {"reference": format!("Patient/{h_pid}")},
        "participant": [{"member": {"reference": "Practitioner/h-doc"}},
                        {"member": {"type": "Practitioner", "identifier": {"system": "urn:carebridge:test:practitioner", "value": "gp-doc"}}}]})]).await;
    push(&app, "hospital", &[furosemide("h-furo", &h_pid, "stopped")]).await;
    let (_, closed) = app.get("careteam", &format!("/DetectedIssue/{id}")).await;
    assert_eq!(closed["status"], json!("cancelled"));
    let at_gp = wait_for("the closing message at gp", 30, || message(&gp, &id, 2)).await;
    let at_hospital = wait_for("the closing message at the hospital", 30, || {
        message(&hospital, &id, 2)
    })
    .await;
    assert!(
        at_gp["payload"][0]["contentString"]
            .as_str()
            .unwrap()
            .starts_with("Alert closed")
    );
    assert_eq!(
        at_hospital["subject"]["reference"],
        json!(format!("Patient/{h_pid}"))
    );
    let results = validate_with_lantana(&[first, at_gp, at_hospital]);
    assert!(
        results.iter().all(|r| r["valid"] == json!(true)),
        "{results:#?}"
    );
    drop(stream);
    app.stop().await;
}
