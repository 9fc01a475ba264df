//! Trust no sector blindly: patient identity that one message cannot merge (held, released,
//! unmerged, each audited), no record pulled by a bare CPR number, no spoofed sector tag, no
//! character FHIR forbids on either backend, a resource once per transaction, and crossing
//! transactions on PostgreSQL that wait for each other instead of deadlocking.

use crate::common;

use crate::common::records::{CPR, ICPC2, condition, patient, transaction};
use crate::common::{Backend, TestApp, expressions};
use carebridge::access::Caller;
use carebridge::fhir::SECTOR_TAG_SYSTEM;
use carebridge::store::{AuditQuery, OutboxEntry};
use serde_json::{Value, json};

const SKSD: &str = "urn:oid:1.2.208.176.2.4.12";
const LAB_REPLACEMENT: &str = "urn:test:lab-replacement-cpr";

/// The test configuration with `lab` issuing its own replacement numbers and at most one new
/// patient per hour and sector before the care-join alert.
async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_config(backend, |url| {
        common::config_text(url, "")
            .replace(
                "[exchange]\nenabled = false\n",
                "[exchange]\nenabled = false\nmax_new_patients_per_hour = 1\n",
            )
            .replace(
                "id = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n",
                &format!(
                    "id = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n\
                     replacement_identifier_systems = [\"{LAB_REPLACEMENT}\"]\n"
                ),
            )
    })
    .await
}

fn sector_patient(id: &str, identifiers: &[(&str, &str)]) -> Value {
    let identifier: Vec<Value> = identifiers
        .iter()
        .map(|(s, v)| json!({"system": s, "value": v}))
        .collect();
    json!({"resourceType": "Patient", "id": id, "identifier": identifier,
           "name": [{"family": "Mortensen"}]})
}

async fn put(app: &TestApp, sector: &str, r: &Value) -> (u16, Value) {
    let path = format!(
        "/{sector}/{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    );
    let (status, body, _) = app.put(sector, &path, r).await;
    (status, body)
}

async fn put_ok(app: &TestApp, sector: &str, r: &Value) {
    let (status, body) = put(app, sector, r).await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

/// The gateway patient a sector's Patient is linked to.
async fn gateway_patient(app: &TestApp, sector: &str, rid: &str) -> Option<String> {
    patient_of(app, sector, "Patient", rid).await
}

/// The gateway patient a sector's resource is filed under.
async fn patient_of(app: &TestApp, sector: &str, rtype: &str, rid: &str) -> Option<String> {
    let mut tx = app.app_gateway.store().begin_read().await.unwrap();
    tx.get_sector(sector, rtype, rid)
        .await
        .unwrap()
        .and_then(|s| s.patient_id)
}

/// Every audit row of an interaction (`merge`, `hold-write`, …).
async fn audit_rows(app: &TestApp, interaction: &str) -> Vec<carebridge::audit::AuditRow> {
    let mut tx = app.app_gateway.store().begin_read().await.unwrap();
    let rows = tx
        .audit_search(&AuditQuery {
            count: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    rows.into_iter()
        .filter(|r| r.interaction == interaction)
        .collect()
}

/// The sum of a metric's samples whose line contains `labels`.
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
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn diagnostics(oo: &Value) -> String {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Two people, then a GP Patient naming both CPR numbers: held (422, nothing stored, kept,
/// audited, counted); released by the operator it merges them (audited with both); unmerged,
/// each has their own identifiers and records again (audited).
async fn merge_held_released_and_undone(backend: Backend) {
    let app = spawn(backend).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0202802222")).await;
    put_ok(&app, "hospital", &hospital_condition("hc1", "h1")).await;
    let a = gateway_patient(&app, "gp", "g1").await.unwrap();
    let b = gateway_patient(&app, "hospital", "h1").await.unwrap();
    assert_ne!(a, b);
    assert_eq!(
        patient_of(&app, "hospital", "Condition", "hc1").await,
        Some(b.clone())
    );

    let both = sector_patient("g2", &[(CPR, "0101701111"), (CPR, "0202802222")]);
    let (status, oo) = put(&app, "gp", &both).await;
    assert_eq!(status, 422, "{oo}");
    assert!(
        diagnostics(&oo).contains("held for review as held write"),
        "{oo}"
    );
    assert_eq!(
        gateway_patient(&app, "gp", "g2").await,
        None,
        "nothing stored"
    );
    let gw = app.app_gateway.clone();
    let operator = Caller::operator();
    let held = gw.held_writes(&operator, Some("held")).await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(held[0].patients.contains(&a) && held[0].patients.contains(&b));
    assert_eq!(audit_rows(&app, "hold-write").await.len(), 1);
    assert_eq!(
        metric(&app, "carebridge_held_writes_total", "sector=\"gp\"").await,
        1.0
    );
    let careteam = Caller {
        client: carebridge::access::Client::system("t", carebridge::access::Role::CareTeam),
        request_id: None,
    };
    assert!(
        gw.release_held(&careteam, held[0].id).await.is_err(),
        "admins only"
    );

    assert_eq!(gw.release_held(&operator, held[0].id).await.unwrap(), 1);
    assert!(
        gw.release_held(&operator, held[0].id).await.is_err(),
        "once"
    );
    assert_eq!(gateway_patient(&app, "gp", "g2").await.as_ref(), Some(&a));
    assert_eq!(
        gateway_patient(&app, "hospital", "h1").await.as_ref(),
        Some(&a)
    );
    assert_eq!(
        patient_of(&app, "hospital", "Condition", "hc1")
            .await
            .as_ref(),
        Some(&a),
        "the merge moves what the merged patient held"
    );
    let merges = audit_rows(&app, "merge").await;
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].patient_id.as_ref(), Some(&a));
    assert_eq!(merges[0].entities, vec![format!("Patient/{b}")]);
    assert_eq!(audit_rows(&app, "review-held-write").await.len(), 1);

    let report = gw.unmerge(&operator, &b).await.unwrap();
    assert_eq!(report.unmerged.into, a);
    assert_eq!(
        gateway_patient(&app, "hospital", "h1").await.as_ref(),
        Some(&b)
    );
    assert_eq!(gateway_patient(&app, "gp", "g1").await.as_ref(), Some(&a));
    assert_eq!(
        patient_of(&app, "hospital", "Condition", "hc1")
            .await
            .as_ref(),
        Some(&b),
        "relinked by its own reference, Patient/h1"
    );
    let mut tx = gw.store().begin_read().await.unwrap();
    let restored = tx.patient(&b).await.unwrap().unwrap();
    assert_eq!(restored.id, b);
    assert_eq!(
        restored.identifiers,
        vec![(CPR.to_owned(), "0202802222".to_owned())]
    );
    drop(tx);
    assert_eq!(audit_rows(&app, "unmerge").await.len(), 1);
    assert!(gw.unmerge(&operator, &b).await.is_err(), "no longer merged");
    app.stop().await;
}

fn patient_with_id(id: &str, cpr: &str) -> Value {
    let mut p = patient(cpr, "Mortensen");
    p["id"] = json!(id);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_is_held_audited_released_and_undone_on_sqlite() {
    merge_held_released_and_undone(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_is_held_audited_released_and_undone_on_postgres() {
    merge_held_released_and_undone(Backend::Postgres).await;
}

/// A sector's own replacement number linked to the real CPR joins the two gateway patients
/// (audited); another sector cannot use that number to join anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_number_links_only_within_its_sectors_authority() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    let unknown = sector_patient("l1", &[(LAB_REPLACEMENT, "R-1")]);
    put_ok(&app, "lab", &unknown).await;
    let real = gateway_patient(&app, "gp", "g1").await.unwrap();
    let replacement = gateway_patient(&app, "lab", "l1").await.unwrap();
    assert_ne!(real, replacement);

    // The GP names the lab's replacement number beside a real CPR: not its authority, so the
    // number links nothing.
    put_ok(
        &app,
        "lab",
        &sector_patient("l2", &[(LAB_REPLACEMENT, "R-2")]),
    )
    .await;
    let foreign = sector_patient("g3", &[(CPR, "0101701111"), (LAB_REPLACEMENT, "R-2")]);
    put_ok(&app, "gp", &foreign).await;
    assert_eq!(
        gateway_patient(&app, "gp", "g3").await.as_ref(),
        Some(&real)
    );
    assert_ne!(
        gateway_patient(&app, "lab", "l2").await.as_ref(),
        Some(&real)
    );

    // The lab learns who R-1 stood for.
    let known = sector_patient("l1", &[(LAB_REPLACEMENT, "R-1"), (CPR, "0101701111")]);
    put_ok(&app, "lab", &known).await;
    assert_eq!(
        gateway_patient(&app, "lab", "l1").await.as_ref(),
        Some(&real)
    );
    let merges = audit_rows(&app, "merge").await;
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].entities, vec![format!("Patient/{replacement}")]);
    app.stop().await;
}

fn hospital_condition(id: &str, patient: &str) -> Value {
    condition(id, patient, SKSD, "DI50", "Hjerteinsufficiens")
}

async fn entries_for(app: &TestApp, target: &str) -> Vec<OutboxEntry> {
    common::outbox(app.app_gateway.store().as_ref(), None)
        .await
        .into_iter()
        .filter(|e| e.target == target)
        .collect()
}

/// A hospital that PUTs a Patient with someone's CPR receives nothing; with its first clinical
/// record of that patient it joins the care: the GP's records are queued for it (audited as a
/// disclosure naming them); a second new patient within the hour raises the care-join alert.
async fn bare_cpr_pulls_nothing(backend: Backend) {
    let app = spawn(backend).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(
        &app,
        "gp",
        &condition("gc1", "g1", ICPC2, "K77", "Hjerteinsufficiens"),
    )
    .await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0101701111")).await;
    assert_eq!(
        gateway_patient(&app, "gp", "g1").await,
        gateway_patient(&app, "hospital", "h1").await
    );
    put_ok(
        &app,
        "gp",
        &condition("gc2", "g1", ICPC2, "T90", "Diabetes"),
    )
    .await;
    assert!(
        entries_for(&app, "hospital").await.is_empty(),
        "a bare CPR pulls nothing"
    );
    assert!(audit_rows(&app, "backfill").await.is_empty());

    put_ok(&app, "hospital", &hospital_condition("hc1", "h1")).await;
    let to_hospital = entries_for(&app, "hospital").await;
    assert_eq!(to_hospital.len(), 2, "{to_hospital:?}");
    assert!(
        to_hospital
            .iter()
            .all(|e| e.route == "backfill" && e.source == "gp")
    );
    let rows = audit_rows(&app, "backfill").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].target_sector.as_deref(), Some("hospital"));
    assert_eq!(rows[0].entities.len(), 2);
    assert!(
        rows[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("first clinical record")
    );
    let to_gp: Vec<OutboxEntry> = entries_for(&app, "gp")
        .await
        .into_iter()
        .filter(|e| e.source == "hospital")
        .collect();
    assert_eq!(
        to_gp.len(),
        1,
        "the hospital's record goes to the GP: {to_gp:?}"
    );
    assert_eq!(
        metric(&app, "carebridge_care_join_alerts_total", "hospital").await,
        0.0
    );

    put_ok(&app, "gp", &patient_with_id("g2", "0303903333")).await;
    put_ok(
        &app,
        "gp",
        &condition("gc3", "g2", ICPC2, "K77", "Hjerteinsufficiens"),
    )
    .await;
    put_ok(&app, "hospital", &patient_with_id("h2", "0303903333")).await;
    put_ok(&app, "hospital", &hospital_condition("hc2", "h2")).await;
    assert_eq!(audit_rows(&app, "backfill").await.len(), 2);
    assert_eq!(
        metric(&app, "carebridge_care_join_alerts_total", "hospital").await,
        1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cpr_pulls_nothing_on_sqlite() {
    bare_cpr_pulls_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cpr_pulls_nothing_on_postgres() {
    bare_cpr_pulls_nothing(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_sector_tag_is_refused() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    let mut c = condition("gc1", "g1", ICPC2, "K77", "Hjerteinsufficiens");
    c["meta"] = json!({"tag": [{"system": "urn:other", "code": "x"},
                               {"system": SECTOR_TAG_SYSTEM, "code": "hospital"}]});
    let (status, oo) = put(&app, "gp", &c).await;
    assert_eq!(status, 422, "{oo}");
    assert_eq!(expressions(&oo), ["Condition.meta.tag[1]"]);
    let (status, oo, _) = app.post("gp", "/gp", &transaction(&[c.clone()])).await;
    assert_eq!(status, 422, "{oo}");
    assert_eq!(expressions(&oo), ["Bundle.entry[0].resource.meta.tag[1]"]);
    let (status, _) = app.get("gp", "/gp/Condition/gc1").await;
    assert_eq!(status, 404, "nothing stored");
    // The writer's own tag, as the gateway served it, comes back in a read-modify-write.
    c["meta"] = json!({"tag": [{"system": SECTOR_TAG_SYSTEM, "code": "gp"}]});
    put_ok(&app, "gp", &c).await;
    app.stop().await;
}

/// U+0000 (and the other control characters FHIR forbids) in a body, anywhere, or in a URL:
/// 400, nothing stored, never a 500.
async fn forbidden_characters_refused(backend: Backend) {
    let app = spawn(backend).await;
    put_ok(&app, "lab", &sector_patient("p1", &[(CPR, "0101701111")])).await;
    let mut named = sector_patient("p2", &[(CPR, "0101702222")]);
    named["name"][0]["family"] = json!("Mor\u{0}tensen");
    let mut extended = sector_patient("p3", &[(CPR, "0101703333")]);
    extended["extension"] = json!([{"url": "urn:x", "valueString": "a\u{0}b"}]);
    let mut unknown = sector_patient("p4", &[(CPR, "0101704444")]);
    unknown["_birthDate"] = json!({"extension": [{"url": "urn:x", "valueString": "bell\u{7}"}]});
    for body in [&named, &extended, &unknown] {
        let (status, oo) = put(&app, "lab", body).await;
        assert_eq!(status, 400, "{oo}");
        assert!(diagnostics(&oo).contains("U+00"), "{oo}");
    }
    let (status, oo, _) = app
        .post("lab", "/lab", &transaction(&[named.clone()]))
        .await;
    assert_eq!(status, 400, "{oo}");
    for path in [
        "/lab/Patient?identifier=a%00b",
        "/lab/Patient?name=x%01",
        "/lab/Patient/p1%00",
        "/Patient?identifier=urn:oid:1.2.208.176.1.2%7C%00",
    ] {
        let (status, oo) = app.get("auditor", path).await;
        assert_eq!(status, 400, "{path}: {oo}");
    }
    let mut conditional = transaction(&[sector_patient("p5", &[(CPR, "0101705555")])]);
    conditional["entry"][0]["request"] =
        json!({"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x%00y"});
    let (status, oo, _) = app.post("lab", "/lab", &conditional).await;
    assert_eq!(status, 400, "{oo}");
    assert_eq!(app.stored_count().await, 1, "only the first Patient");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_characters_are_refused_on_sqlite() {
    forbidden_characters_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_characters_are_refused_on_postgres() {
    forbidden_characters_refused(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_twice_in_one_transaction_is_refused() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    let first = condition("gc1", "g1", ICPC2, "K77", "Hjerteinsufficiens");
    let second = condition("gc1", "g1", ICPC2, "T90", "Diabetes");
    let other = condition("gc2", "g1", ICPC2, "T90", "Diabetes");
    let (status, oo, _) = app
        .post("gp", "/gp", &transaction(&[first, other, second]))
        .await;
    assert_eq!(status, 400, "{oo}");
    assert_eq!(expressions(&oo), ["Bundle.entry[0]", "Bundle.entry[2]"]);
    assert!(diagnostics(&oo).contains("Condition/gc1"), "{oo}");
    assert_eq!(
        app.stored_count().await,
        1,
        "nothing of the transaction stored"
    );
    app.stop().await;
}

/// Forty transactions at once, each writing the same eight resources, half of them in the
/// opposite order: every one answers 200 (locks taken in one order; a deadlock or serialisation
/// failure retried), and each resource has exactly one version per transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_transactions_on_postgres_all_succeed() {
    let app = spawn(Backend::Postgres).await;
    put_ok(&app, "lab", &sector_patient("p1", &[(CPR, "0101701111")])).await;
    let bundles: Vec<Value> = (0..40)
        .map(|n| {
            let mut list: Vec<Value> = (0..8)
                .map(|i| {
                    let mut c = condition(&format!("c{i}"), "p1", ICPC2, "K77", "x");
                    c["note"] = json!([{"text": format!("transaction {n}")}]);
                    c
                })
                .collect();
            if n % 2 == 1 {
                list.reverse();
            }
            transaction(&list)
        })
        .collect();
    let sends = bundles.iter().map(|b| app.post("lab", "/lab", b));
    let answers = futures_util::future::join_all(sends).await;
    let failed: Vec<String> = answers
        .iter()
        .filter(|(s, _, _)| *s != 200)
        .map(|(s, oo, _)| format!("{s} {oo}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    let mut tx = app.app_gateway.store().begin_read().await.unwrap();
    for i in 0..8 {
        let c = tx
            .get_sector("lab", "Condition", &format!("c{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tx.versions(&c.gid).await.unwrap().len(), 40);
    }
    drop(tx);
    app.stop().await;
}

/// A GP Condition naming the hospital's Patient h1, every way a URL can spell it (and in
/// elements beside `subject`): each refused with the location of the reference. The GP's own
/// Patient by a URL in another spelling is accepted and linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_another_sectors_patient_is_refused() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0101701111")).await;
    let own = app.base.clone();
    let local = own.replace("127.0.0.1", "localhost");
    let subjects = [
        "HTTP://HOSPITAL.TEST/fhir/Patient/h1".to_owned(),
        "http://hospital.test:80/fhir/Patient/h1".to_owned(),
        "http://someone@hospital.test/fhir/Patient/h1".to_owned(),
        "http://hospital.test/fhir//Patient/h1/_history/1".to_owned(),
        format!("http://hospital.test/fhir/Patient?identifier={CPR}%7C0101701111"),
        format!("{own}/hospital/Patient/h1"),
        format!("{local}/hospital/Patient/h1"),
        format!("{own}/Patient/any-gateway-patient"),
    ];
    for (i, subject) in subjects.iter().enumerate() {
        let mut c = condition(&format!("c{i}"), "g1", ICPC2, "K77", "x");
        c["subject"] = json!({"reference": subject});
        let (status, oo) = put(&app, "gp", &c).await;
        assert_eq!(status, 422, "{subject}: {oo}");
        assert_eq!(
            expressions(&oo),
            ["Condition.subject.reference"],
            "{subject}"
        );
    }
    let foreign = "http://hospital.test/fhir/Patient/h1";
    let mut detail = condition("d1", "g1", ICPC2, "K77", "x");
    detail["evidence"] = json!([{"detail": [{"reference": foreign}]}]);
    let mut extended = condition("e1", "g1", ICPC2, "K77", "x");
    extended["extension"] = json!([{"url": "urn:x", "valueReference": {"reference": foreign}}]);
    for (c, at) in [
        (&detail, "Condition.evidence[0].detail[0].reference"),
        (&extended, "Condition.extension[0].valueReference.reference"),
    ] {
        let (status, oo) = put(&app, "gp", c).await;
        assert_eq!(status, 422, "{oo}");
        assert_eq!(expressions(&oo), [at]);
    }
    assert_eq!(app.stored_count().await, 2, "only the two Patients");

    let mut mine = condition("m1", "g1", ICPC2, "K77", "x");
    mine["subject"] = json!({"reference": "HTTP://user@GP.test:80/fhir/Patient/g1"});
    put_ok(&app, "gp", &mine).await;
    let mut tx = app.app_gateway.store().begin_read().await.unwrap();
    let stored = tx
        .get_sector("gp", "Condition", "m1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.patient_id, gateway_patient(&app, "gp", "g1").await);
    drop(tx);
    app.stop().await;
}

mod end_to_end {
    use super::*;
    use crate::common::peers::{Peer, PeerOptions, start_three};
    use crate::common::{copy_at, wait_for};

    /// Three sectors with real servers; the hospital and the municipality take part in a
    /// patient's care from its Patient on, so that the GP's CareTeam goes to both.
    fn config(store_url: &str, peers: [&Peer; 3]) -> String {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n\
             [store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
             [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\nretry_initial_ms = 100\n\
             retry_max_ms = 1000\nidle_poll_ms = 100\nrequest_timeout_ms = 5000\n\n\
             [alerts]\nenabled = false\n\n\
             [[sectors]]\nid = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n",
            common::repo().join("fhir-profiles").display()
        );
        for (id, kind, peer) in [
            ("gp", "general-practice", peers[0]),
            ("hospital", "hospital", peers[1]),
            ("municipality", "municipality", peers[2]),
        ] {
            text.push_str(&format!(
                "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\n\
                 base_url = \"{}\"\nprofile = \"dk-{id}\"\njoin_care_on_patient = {}\n",
                peer.base,
                id != "gp"
            ));
        }
        text
    }

    async fn register(app: &TestApp, peer: &Peer, sector: &str) -> String {
        let created = peer.create(&patient("1403482196", "Mortensen")).await;
        let id = created["id"].as_str().unwrap().to_owned();
        put_ok(app, sector, &patient_with_id(&id, "1403482196")).await;
        id
    }

    /// The municipality's home-care Organization named by the GP's CareTeam in every spelling
    /// of its URL: the municipality's copy names its own `Organization/<id>` each time, the
    /// hospital's a logical reference by the Organization's identifier, never a URL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_sectors_resource_is_mapped_alike_in_every_spelling() {
        let (gp, hospital, municipality) = start_three(&PeerOptions::default()).await;
        let app = TestApp::spawn_config(Backend::Sqlite, |url| {
            config(url, [&gp, &hospital, &municipality])
        })
        .await;
        let g = register(&app, &gp, "gp").await;
        register(&app, &hospital, "hospital").await;
        register(&app, &municipality, "municipality").await;
        let org = json!({"resourceType": "Organization", "name": "Hjemmeplejen",
                         "identifier": [{"system": "urn:test:org", "value": "home-care-1"}]});
        let oid = municipality.create(&org).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut stored_org = org.clone();
        stored_org["id"] = json!(oid);
        put_ok(&app, "municipality", &stored_org).await;

        let base = municipality.base.clone();
        let spellings = [
            format!("{base}/Organization/{oid}"),
            format!(
                "{}/Organization/{oid}",
                base.replace("http://127.0.0.1", "HTTP://LOCALHOST")
            ),
            format!(
                "{}/Organization/{oid}",
                base.replace("http://", "http://someone@")
            ),
            format!("{base}//Organization/{oid}/"),
            format!("{}/municipality/Organization/{oid}", app.base),
        ];
        let members: Vec<Value> = spellings
            .iter()
            .map(|r| json!({"member": {"reference": r, "display": "Hjemmeplejen"}}))
            .collect();
        let team = json!({"resourceType": "CareTeam", "id": "gp-team", "status": "active",
                          "subject": {"reference": format!("Patient/{g}")},
                          "participant": members});
        put_ok(&app, "gp", &team).await;

        let at_municipality = wait_for("the copy at the municipality", 60, || async {
            copy_at(&municipality, "gp", "CareTeam", "gp-team").await
        })
        .await;
        let at_hospital = wait_for("the copy at the hospital", 60, || async {
            copy_at(&hospital, "gp", "CareTeam", "gp-team").await
        })
        .await;
        for (i, p) in at_municipality["participant"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(
                p["member"],
                json!({"reference": format!("Organization/{oid}"), "display": "Hjemmeplejen"}),
                "{}",
                spellings[i]
            );
        }
        for (i, p) in at_hospital["participant"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(
                p["member"],
                json!({"display": "Hjemmeplejen", "type": "Organization",
                       "identifier": {"system": "urn:test:org", "value": "home-care-1"}}),
                "{}",
                spellings[i]
            );
        }
        assert_eq!(
            at_hospital["participant"].as_array().unwrap().len(),
            spellings.len()
        );
        app.stop().await;
    }
}

/// A Communication addressed to the municipality makes it take part in the patient's care: the
/// other sectors' records are queued for it, audited with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_communication_addressed_to_a_sector_joins_it_to_the_care() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(
        &app,
        "gp",
        &condition("gc1", "g1", ICPC2, "K77", "Hjerteinsufficiens"),
    )
    .await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0101701111")).await;
    put_ok(&app, "hospital", &hospital_condition("hc1", "h1")).await;
    assert!(entries_for(&app, "municipality").await.is_empty());
    let referral = json!({"resourceType": "Communication", "id": "ref1", "status": "completed",
        "subject": {"reference": "Patient/g1"},
        "recipient": [{"reference": "HTTP://municipality.TEST/fhir/Organization/home-care"}],
        "payload": [{"contentString": "Please visit"}]});
    put_ok(&app, "gp", &referral).await;
    let to_municipality = entries_for(&app, "municipality").await;
    let mut routes: Vec<(&str, &str)> = to_municipality
        .iter()
        .map(|e| (e.rtype.as_str(), e.route.as_str()))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            ("Communication", "recipients"),
            ("Condition", "backfill"),
            ("Condition", "backfill")
        ]
    );
    let rows: Vec<_> = audit_rows(&app, "backfill")
        .await
        .into_iter()
        .filter(|r| r.target_sector.as_deref() == Some("municipality"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("Communication addressed to it")
    );
    app.stop().await;
}

/// The operator lists and rejects a held write with the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_are_listed_and_rejected_on_the_command_line() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0202802222")).await;
    let both = sector_patient("g2", &[(CPR, "0101701111"), (CPR, "0202802222")]);
    assert_eq!(put(&app, "gp", &both).await.0, 422);
    let config = app.dir.path().join("carebridge.toml");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_carebridge"))
            .current_dir(common::repo())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let listed = cli(&["patients", "held", "list", "--state", "held"]);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let line = text
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("a held write: {text}"));
    let id = line.split('\t').next().unwrap().to_owned();
    assert!(line.contains("\theld\tgp\tupdate\t"), "{line}");
    let rejected = cli(&["patients", "held", "reject", &id]);
    assert!(
        rejected.status.success(),
        "{}",
        String::from_utf8_lossy(&rejected.stderr)
    );
    let again = cli(&["patients", "held", "reject", &id]);
    assert!(
        !again.status.success(),
        "a decided write is not decided again"
    );
    let operator = Caller::operator();
    let held = app.app_gateway.held_writes(&operator, None).await.unwrap();
    assert_eq!(held[0].state, "rejected");
    assert_eq!(held[0].decided_by.as_deref(), Some("cli"));
    assert_eq!(gateway_patient(&app, "gp", "g2").await, None);
    app.stop().await;
}

fn furosemide(id: &str, patient: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
           "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C03CA01"}]},
           "subject": {"reference": format!("Patient/{patient}")}})
}

/// The same drug ordered for two people is a duplicate only while a wrong merge makes them
/// one: unmerging decides both patients' alerts again and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerging_decides_both_patients_alerts_again() {
    let app = spawn(Backend::Sqlite).await;
    put_ok(&app, "gp", &patient_with_id("g1", "0101701111")).await;
    put_ok(&app, "gp", &furosemide("gm1", "g1")).await;
    put_ok(&app, "hospital", &patient_with_id("h1", "0202802222")).await;
    put_ok(&app, "hospital", &furosemide("hm1", "h1")).await;
    let a = gateway_patient(&app, "gp", "g1").await.unwrap();
    let b = gateway_patient(&app, "hospital", "h1").await.unwrap();
    let duplicates = |status: &'static str| {
        let app = &app;
        let a = a.clone();
        async move {
            let mut tx = app.app_gateway.store().begin_read().await.unwrap();
            let rows = tx.alerts_of_patient(&a).await.unwrap();
            rows.iter()
                .filter(|r| r.code == "DUPTHPGEN" && r.status == status)
                .count()
        }
    };
    assert_eq!(
        duplicates("preliminary").await,
        0,
        "two people, no duplicate"
    );
    let both = sector_patient("g2", &[(CPR, "0101701111"), (CPR, "0202802222")]);
    assert_eq!(put(&app, "gp", &both).await.0, 422);
    let gw = app.app_gateway.clone();
    let operator = Caller::operator();
    let held = gw.held_writes(&operator, Some("held")).await.unwrap();
    gw.release_held(&operator, held[0].id).await.unwrap();
    assert_eq!(
        duplicates("preliminary").await,
        1,
        "one (wrongly merged) person"
    );
    gw.unmerge(&operator, &b).await.unwrap();
    assert_eq!(duplicates("preliminary").await, 0);
    assert_eq!(
        duplicates("cancelled").await,
        1,
        "closed when the merge was undone"
    );
    app.stop().await;
}
