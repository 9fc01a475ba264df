//! The console's alert work beyond the first views: snoozing (the form, `$snooze`, the inbox's
//! snoozed filter, the snooze ending by itself), the durable history of each alert (raised,
//! amended, acknowledged, snoozed, closed, reopened) on the detail page, the rule in plain words
//! in both languages, and the inbox read one page at a time in order with one audit row naming
//! exactly what was shown.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::demo::Demo;
use crate::common::{Backend, TestApp};
use crate::console::{api, attrs, csrf, duplicate_metoprolol, open_alerts, sign_in};

async fn push(demo: &Demo, sector: &str, resource: &Value) {
    let rtype = resource["resourceType"].as_str().unwrap();
    let id = resource["id"].as_str().unwrap();
    let resp = carebridge::outbound::client()
        .unwrap()
        .put(format!("{}/fhir/{sector}/{rtype}/{id}", demo.origin))
        .bearer_auth(&demo.tokens[&format!("{sector}-system")])
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        resp.text().await.unwrap()
    );
}

async fn fhir_post(demo: &Demo, who: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = carebridge::outbound::client()
        .unwrap()
        .post(format!("{}/fhir{path}", demo.origin))
        .bearer_auth(&demo.tokens[who])
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The DUPTHPGEN alert of Karen Holm's duplicate metoprolol, after it was raised, amended by a
/// third prescription, closed (both hospital prescriptions stopped) and reopened.
async fn alert_through_its_life(demo: &Demo) -> String {
    let before = open_alerts(demo, "nurse-lassen").await;
    let mut first = duplicate_metoprolol();
    push(demo, "hospital", &first).await;
    let raised: Vec<String> = open_alerts(demo, "nurse-lassen")
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let mut second = duplicate_metoprolol();
    second["id"] = json!("console-dup-2");
    push(demo, "hospital", &second).await;
    for r in [&mut first, &mut second] {
        r["status"] = json!("stopped");
        push(demo, "hospital", r).await;
    }
    assert!(!open_alerts(demo, "nurse-lassen").await.contains(&raised[0]));
    first["status"] = json!("active");
    push(demo, "hospital", &first).await;
    assert!(open_alerts(demo, "nurse-lassen").await.contains(&raised[0]));
    raised[0].clone()
}

#[tokio::test]
async fn snoozing_hides_an_alert_until_its_date_and_the_history_shows_every_change() {
    let demo = Demo::start();
    let id = alert_through_its_life(&demo).await;
    let v = sign_in(&demo, "nurse-lassen").await;
    let (_, page) = v.get(&format!("/ui/alerts/{id}"), "en").await;
    let token = csrf(&page);
    let path = format!("/ui/alerts/{id}/snooze");
    // Without the token, or with a date that has passed: refused, nothing changes.
    let resp = v.post(&path, &[("until", "2999-01-01")]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = v
        .post(&path, &[("csrf", &token), ("until", "2001-01-01")])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (_, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert!(di.get("extension").is_none(), "{di}");

    let form = [
        ("csrf", token.as_str()),
        ("until", "2999-01-01"),
        ("comment", "after the visit"),
    ];
    let resp = v.post(&path, &form).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // Out of the default inbox, in the snoozed view, with its date and author.
    let (_, inbox) = v.get("/ui/inbox", "en").await;
    assert!(!attrs(&inbox, "data-alert").contains(&id));
    let (_, snoozed) = v.get("/ui/inbox?status=snoozed", "en").await;
    assert_eq!(attrs(&snoozed, "data-alert"), std::slice::from_ref(&id));
    assert!(snoozed.contains("snoozed until") && snoozed.contains("2999-01-01"));
    assert!(snoozed.contains("https://autregweb.sst.dk|N8SD2"));
    let (_, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    let ext = &di["extension"][0];
    assert_eq!(
        ext["url"],
        "http://carebridge.example.org/fhir/StructureDefinition/alert-snooze"
    );
    assert_eq!(
        ext["extension"][0]["valueDateTime"],
        "2999-01-01T00:00:00.000Z"
    );

    // The detail page tells the whole story, from the durable history.
    let (_, detail) = v.get(&format!("/ui/alerts/{id}"), "en").await;
    let history = &detail[detail.find("id=\"h-history\"").unwrap()..];
    let history = &history[..history.find("</section>").unwrap()];
    let mut at = 0;
    for step in [
        "Raised",
        "Amended",
        "Records added",
        "Closed",
        "Reopened",
        "Snoozed until",
    ] {
        let found = history[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step} after {at} in {history}"));
        at += found;
    }
    assert!(history.contains("after the visit") && history.contains("carebridge (automatic)"));
    let (_, dansk) = v.get(&format!("/ui/alerts/{id}"), "da").await;
    assert!(dansk.contains("Genåbnet") && dansk.contains("Udsat til"));

    // Acknowledging is a change: it joins the history and ends the snooze.
    let ack = [("csrf", token.as_str()), ("reason", "intended")];
    let resp = v.post(&format!("/ui/alerts/{id}/acknowledge"), &ack).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert!(di.get("extension").is_none() && di["status"] == "final");
    let (_, detail) = v.get(&format!("/ui/alerts/{id}"), "en").await;
    assert!(detail.contains("Acknowledged"));
    let (_, inbox) = v.get("/ui/inbox", "en").await;
    assert!(attrs(&inbox, "data-alert").contains(&id));
}

#[tokio::test]
async fn snooze_is_a_fhir_operation_and_a_snooze_ends_by_itself() {
    let demo = Demo::start();
    let id = open_alerts(&demo, "nurse-lassen")
        .await
        .into_iter()
        .next()
        .unwrap();
    let path = format!("/DetectedIssue/{id}/$snooze");
    // Bad input: an OperationOutcome naming where and why.
    for (body, expected) in [
        (
            json!({ "resourceType": "Parameters", "parameter": [
            { "name": "author", "valueString": "Dr. Test" } ] }),
            "Parameters.parameter",
        ),
        (
            json!({ "resourceType": "Parameters", "parameter": [
            { "name": "until", "valueDate": "2001-01-01" },
            { "name": "author", "valueString": "Dr. Test" } ] }),
            "until",
        ),
        (
            json!({ "resourceType": "Parameters", "parameter": [
            { "name": "until", "valueDate": "2999-01-01" } ] }),
            "Parameters.parameter",
        ),
    ] {
        let (status, oo) = fhir_post(&demo, "nurse-lassen", &path, &body).await;
        assert_eq!(status, 400, "{oo}");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo.to_string().contains(expected), "{oo}");
    }
    // Until a moment three seconds from now: hidden, then back by itself.
    let until = carebridge::fhir::time::instant(carebridge::fhir::time::now_us() + 3_000_000);
    let body = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "until", "valueDateTime": until },
        { "name": "author", "valueString": "Dr. Test" },
        { "name": "note", "valueString": "waiting for the lab" } ] });
    let (status, di) = fhir_post(&demo, "nurse-lassen", &path, &body).await;
    assert_eq!(status, 200, "{di}");
    assert_eq!(
        di["extension"][0]["extension"][1]["valueString"],
        "Dr. Test"
    );
    let v = sign_in(&demo, "nurse-lassen").await;
    let (_, inbox) = v.get("/ui/inbox", "en").await;
    assert!(!attrs(&inbox, "data-alert").contains(&id));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (_, inbox) = v.get("/ui/inbox", "en").await;
    assert!(
        attrs(&inbox, "data-alert").contains(&id),
        "back after its date"
    );
    let (_, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert!(di.get("extension").is_none());
    // Another person's alert: refused; the claim is in the CapabilityStatement.
    let dam = open_alerts(&demo, "nurse-dam")
        .await
        .into_iter()
        .next()
        .unwrap();
    let (status, _) = fhir_post(
        &demo,
        "nurse-lassen",
        &format!("/DetectedIssue/{dam}/$snooze"),
        &json!({ "resourceType": "Parameters", "parameter": [
            { "name": "until", "valueDate": "2999-01-01" },
            { "name": "author", "valueString": "Dr. Test" } ] }),
    )
    .await;
    assert_eq!(status, 403);
    let (_, cap) = api(&demo, "nurse-lassen", "/metadata").await;
    let ops: Vec<&str> = cap["rest"][0]["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(ops.contains(&"snooze"), "{ops:?}");
}

/// `n` alerts for each of `patients`, every severity, of sectors gp and (every third) hospital.
fn alert_row(pid: &str, n: usize, now: i64) -> carebridge::store::AlertRow {
    let (code, severity) = [
        ("DUPTHPGEN", "high"),
        ("polypharmacy", "moderate"),
        ("unanswered-communication", "low"),
    ][n % 3];
    let id = carebridge::ids::content_hash(format!("{pid}|{n}").as_bytes())[..24].to_owned();
    let mut implicated =
        vec![json!({ "reference": format!("Condition/{id}a"), "display": "gp Condition" })];
    if n % 3 == 1 {
        implicated.push(
            json!({ "reference": format!("Condition/{id}b"), "display": "hospital Condition" }),
        );
    }
    let created = now - (n as i64 + 1) * 1_000_000;
    let body = json!({ "resourceType": "DetectedIssue", "id": id, "status": "preliminary",
        "code": { "coding": [{ "code": code }], "text": code }, "severity": severity,
        "patient": { "reference": format!("Patient/{pid}") }, "identifiedDateTime": "2026-12-01T10:00:00Z",
        "implicated": implicated, "detail": "test alert" });
    carebridge::store::AlertRow {
        id,
        patient_id: pid.to_owned(),
        fingerprint: format!("t-{n}"),
        code: code.to_owned(),
        status: "preliminary".into(),
        open: true,
        evidence: String::new(),
        version: 1,
        created_us: created,
        updated_us: created,
        body: body.to_string(),
    }
}

async fn inbox_pages_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 30 patients of the gp (the person's relationship: the gp's exchanges) and 6 of the
    // hospital only (no relationship).
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..36 {
        let sector = if i < 30 { "gp" } else { "hospital" };
        let patient = json!({ "resourceType": "Patient", "id": format!("p{i}"),
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": format!("{:010}", 2_000_000 + i) }] });
        let (s, _, _) = app
            .put(sector, &format!("/{sector}/Patient/p{i}"), &patient)
            .await;
        assert!(s == 200 || s == 201, "{s}");
    }
    let store = app.app_gateway.store().clone();
    let mut tx = store.begin().await.unwrap();
    let now = carebridge::fhir::time::now_us();
    let mut expected = Vec::new();
    for i in 0..36 {
        let pid = tx
            .patient_by_identifier("urn:oid:1.2.208.176.1.2", &format!("{:010}", 2_000_000 + i))
            .await
            .unwrap()
            .unwrap();
        for n in 0..4 {
            let row = alert_row(&pid, n, now);
            tx.alert_put(&row).await.unwrap();
            if i < 30 {
                let rank = carebridge::store::alerts::severity_rank(&row.body);
                expected.push((rank, row.created_us, row.id.clone()));
            }
        }
        if i < 30 {
            mine.push(pid)
        } else {
            theirs.push(pid)
        }
    }
    tx.commit().await.unwrap();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(expected.len(), 120);
    check_pages(&app, &expected, &theirs).await;
    exact_pages(&app).await;
    app.stop().await;
}

/// The gp's care-team person (the relationship: the gp's exchanges).
fn gp_person() -> carebridge::access::Client {
    let mut person = carebridge::access::Client::system("u-gp", carebridge::access::Role::CareTeam);
    person.person = Some(carebridge::access::Person {
        practitioner: carebridge::access::Ident::parse("https://autregweb.sst.dk|TEST1"),
        organization: None,
        sector: Some("gp".into()),
    });
    person
}

/// 120 alerts in pages of 40: the third page is full and says that none follow.
async fn exact_pages(app: &TestApp) {
    let caller = carebridge::access::Caller {
        client: gp_person(),
        request_id: None,
    };
    let filter = carebridge::gateway::inbox::InboxFilter::default();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = app
            .app_gateway
            .inbox(&caller, &filter, after.as_deref(), 40)
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.alerts.len(), 40, "page {pages}");
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3, "no empty fourth page");
}

/// Signs the gp's person in and walks the inbox's pages.
async fn check_pages(app: &TestApp, expected: &[String], theirs: &[String]) {
    let link = app.sessions().mint_link(gp_person()).await.unwrap();
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let http = carebridge::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed = http
        .get(format!("{root}/ui/sign-in/{link}"))
        .send()
        .await
        .unwrap();
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let get = |path: String| {
        let req = http.get(format!("{root}{path}")).header("cookie", &cookie);
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let mut shown = Vec::new();
    let mut next = "/ui/inbox".to_owned();
    loop {
        let page = get(next.clone()).await;
        let rows = attrs(&page, "data-alert");
        assert!(rows.len() <= 50);
        let audit = last_audit_entities(app).await;
        let alerts: Vec<String> = audit
            .iter()
            .filter_map(|e| e.strip_prefix("DetectedIssue/").map(str::to_owned))
            .collect();
        assert_eq!(alerts, rows, "the audit row names exactly the alerts shown");
        assert!(
            audit
                .iter()
                .all(|e| !theirs.iter().any(|t| e.ends_with(t.as_str())))
        );
        shown.extend(rows);
        match attrs(&page, "name=\"after\" value").first() {
            Some(after) => {
                assert!(page.contains("50+ "), "a full page says more follow");
                next = format!("/ui/inbox?after={after}");
            }
            None => break,
        }
    }
    assert_eq!(
        shown, expected,
        "every page in inbox order, none of another's patients"
    );
    // Filters answered by the store: sector, severity, code.
    let hospital = attrs(&get("/ui/inbox?sector=hospital".into()).await, "data-alert");
    assert_eq!(hospital.len(), 30);
    let high = attrs(
        &get("/ui/inbox?severity=high&code=DUPTHPGEN".into()).await,
        "data-alert",
    );
    assert_eq!(high, expected[..high.len()]);
    assert_eq!(high.len(), 50, "60 high alerts: the first page is full");
    let none: BTreeSet<String> = attrs(&get("/ui/inbox?code=DUPTHPCLS".into()).await, "data-alert")
        .into_iter()
        .collect();
    assert!(none.is_empty());
}

/// The entities of the newest audit row of the inbox (deliveries may write rows beside it).
async fn last_audit_entities(app: &TestApp) -> Vec<String> {
    let mut tx = app.app_gateway.store().begin_read().await.unwrap();
    let head = tx.audit_head().await.unwrap().unwrap();
    let rows = tx.audit_chain_page(head.0 - 50, 50).await.unwrap();
    let inbox = rows
        .iter()
        .rev()
        .find(|r| {
            r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("console inbox"))
        })
        .expect("the inbox's audit row");
    inbox.entities.clone()
}

#[tokio::test]
async fn the_inbox_reads_one_page_in_order_and_audits_only_what_it_shows_sqlite() {
    inbox_pages_in_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_inbox_reads_one_page_in_order_and_audits_only_what_it_shows_postgres() {
    inbox_pages_in_order(Backend::Postgres).await;
}
