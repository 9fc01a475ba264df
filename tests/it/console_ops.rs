//! The auditor's and IT staff's console (`/ui/audit/…`, `/ui/it/…`) in a real browser (headless
//! chromium, axe-core on every page in both languages) against the real demo, real SQLite
//! files and a real Medplum sector server: an auditor finds a patient's accesses by CPR and
//! date and downloads them, sees a tampered copy's broken link and reviews a break-the-glass
//! access; IT staff watch a sector fail and recover, replay a dead letter that then arrives,
//! and find one entry among 10,000 without a body being read. And who may open which page.
//!
//! `CAREBRIDGE_SCREENSHOTS=docs/screenshots cargo test --test it console_ops::` also writes
//! the screenshots of these pages.

use std::time::Duration;

use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::browser::accessible;
use crate::common::browser::Browser;
use crate::common::demo::Demo;
use crate::common::peers::{Peer, PeerOptions};
use crate::common::records::{CPR, ICPC2, condition, patient, transaction};
use crate::common::{Backend, TestApp, config_text, copy_at, repo, wait_for};
use carebridge::access::Role;

/// The demo patients' CPR numbers and family names (what no IT page may show).
fn demo_patients() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("fixtures/demo/gp")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bundle: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Patient" {
                let cpr = r["identifier"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|i| i["system"] == CPR)
                    .unwrap()["value"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let family = r["name"][0]["family"].as_str().unwrap().to_owned();
                out.push((cpr, family));
            }
        }
    }
    out
}

async fn fhir(
    demo: &Demo,
    who: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = carebridge::outbound::client()
        .unwrap()
        .request(method, format!("{}/fhir{path}", demo.origin))
        .bearer_auth(&demo.tokens[who]);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The gateway patient a person reads by CPR (an audited look-up), if they may.
async fn look_up(demo: &Demo, who: &str, cpr: &str) -> Option<String> {
    let (status, bundle) = fhir(
        demo,
        who,
        reqwest::Method::GET,
        &format!("/Patient?identifier={CPR}|{cpr}"),
        None,
    )
    .await;
    (status == 200)
        .then(|| {
            bundle["entry"][0]["resource"]["id"]
                .as_str()
                .map(str::to_owned)
        })
        .flatten()
}

fn today() -> String {
    carebridge::fhir::time::instant(carebridge::fhir::time::now_us())[..10].to_owned()
}

async fn goto(b: &Browser, origin: &str, path: &str) {
    b.client.goto(&format!("{origin}{path}")).await.unwrap();
}

async fn path_now(b: &Browser) -> String {
    b.client.current_url().await.unwrap().path().to_owned()
}

async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Clicks and waits until the page that follows shows `until` (a click does not wait for the
/// navigation it starts).
async fn click_until(b: &Browser, css: &str, until: &str) {
    click(b, css).await;
    b.client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(until))
        .await
        .unwrap_or_else(|e| panic!("after {css}, no {until}: {e}"));
}

async fn set_value(b: &Browser, id: &str, value: &str) {
    b.client
        .execute(
            "document.getElementById(arguments[0]).value = arguments[1];",
            vec![json!(id), json!(value)],
        )
        .await
        .unwrap();
}

async fn count(b: &Browser, css: &str) -> usize {
    b.client.find_all(Locator::Css(css)).await.unwrap().len()
}

/// The page checked by axe-core and photographed.
async fn checked(b: &Browser, name: &str, lang: &str) {
    accessible(b, &format!("{name} ({lang})")).await;
    b.screenshot(&format!("{name}-{lang}")).await;
}

/// Submits the result page's paging form to the export action, as the browser would, and
/// returns (status, content type, disposition, body).
async fn download_export(b: &Browser) -> (u64, String, String, String) {
    let out = b
        .client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const form = document.querySelector('form.pages');
               fetch('/ui/audit/export', { method: 'POST', body: new URLSearchParams(new FormData(form)) })
                 .then(r => r.text().then(t => done([r.status, r.headers.get('content-type'),
                        r.headers.get('content-disposition'), t])));"#,
            vec![],
        )
        .await
        .unwrap();
    let a = out.as_array().unwrap();
    (
        a[0].as_u64().unwrap(),
        a[1].as_str().unwrap_or("").to_owned(),
        a[2].as_str().unwrap_or("").to_owned(),
        a[3].as_str().unwrap_or("").to_owned(),
    )
}

/// The auditor searches by CPR and today's date, pages and downloads the result.
async fn auditor_searches(b: &Browser, demo: &Demo, cpr: &str, gid: &str, lang: &str) {
    goto(b, &demo.origin, "/ui/audit/search").await;
    checked(b, "audit-search-form", lang).await;
    set_value(b, "a-cpr", cpr).await;
    set_value(b, "a-from", &today()).await;
    set_value(b, "a-to", &today()).await;
    click_until(
        b,
        "form[action='/ui/audit/search'] fieldset button[type=submit]",
        "#h-result",
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("N8SD2"),
        "the nurse's look-up is found: {text}"
    );
    assert!(!b.client.current_url().await.unwrap().as_str().contains(cpr));
    let rows = count(b, "#events tr[data-seq]").await;
    assert!(rows >= 1);
    let total: usize = b
        .client
        .find(Locator::Css("#h-result"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    checked(b, "audit-search", lang).await;
    let (status, kind, disposition, body) = download_export(b).await;
    assert_eq!(status, 200);
    assert_eq!(kind, "application/fhir+ndjson");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The whole result, and the search that showed it (itself audited, under the patient).
    assert_eq!(events.len(), total + 1, "the export holds the whole result");
    let last = &events[total];
    assert!(
        last["outcomeDesc"]
            .as_str()
            .unwrap()
            .starts_with("audit search"),
        "{last}"
    );
    assert!(
        !body.contains(cpr),
        "the export names the patient by gateway id only"
    );
    for e in &events {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert!(e.to_string().contains(gid), "{e}");
    }
}

/// The break-the-glass access appears in the queue and is reviewed with a note.
async fn auditor_reviews(b: &Browser, demo: &Demo, grant: &str, lang: &str) {
    goto(b, &demo.origin, "/ui/audit/break-glass").await;
    checked(b, "audit-break-glass", lang).await;
    if lang == "en" {
        assert_eq!(count(b, &format!("tr[data-grant='{grant}'] form")).await, 1);
        set_value(
            b,
            &format!("note-{grant}"),
            "Checked with the ward: emergency admission",
        )
        .await;
        click_until(
            b,
            &format!("tr[data-grant='{grant}'] button[type=submit]"),
            "#bg-status option[value='reviewed'][selected]",
        )
        .await;
        assert_eq!(path_now(b).await, "/ui/audit/break-glass");
        let text = b.text().await;
        assert!(text.contains("Checked with the ward"), "{text}");
        assert_eq!(count(b, &format!("tr[data-grant='{grant}'] form")).await, 0);
    }
}

/// The verification page, the access report by CPR and by person.
async fn auditor_verifies_and_reports(b: &Browser, demo: &Demo, cpr: &str, lang: &str) {
    goto(b, &demo.origin, "/ui/audit/verify").await;
    assert_eq!(count(b, "p.state-ok#chain-status").await, 1);
    checked(b, "audit-verify", lang).await;
    goto(b, &demo.origin, "/ui/audit/access").await;
    set_value(b, "a-cpr", cpr).await;
    click_until(
        b,
        "form[action='/ui/audit/access'] button[type=submit]",
        "#h-report",
    )
    .await;
    assert!(count(b, "#accesses tr[data-seq]").await >= 1);
    assert!(b.text().await.contains("N8SD2"));
    checked(b, "audit-access", lang).await;
    set_value(b, "a-person", "https://autregweb.sst.dk|N8SD2").await;
    // The patient's report above has a #h-report too: wait for the person's report's own table,
    // not for a heading the page being left also holds.
    click_until(
        b,
        "div.sectors form:nth-of-type(2) button[type=submit]",
        "#events tr[data-seq]",
    )
    .await;
    assert!(
        count(b, "#events tr[data-seq]").await >= 1,
        "the person's rows"
    );
    checked(b, "audit-access-person", lang).await;
}

#[tokio::test]
async fn an_auditor_finds_accesses_by_cpr_downloads_them_and_reviews_break_the_glass() {
    let demo = Demo::start();
    let patients = demo_patients();
    // The nurse looks up the patients in her care (audited), and breaks the glass for one of
    // the other nurse's patients.
    let mut hers = None;
    let mut other = None;
    for (cpr, _) in &patients {
        match look_up(&demo, "nurse-lassen", cpr).await {
            Some(gid) => hers = hers.or(Some((cpr.clone(), gid))),
            None => other = other.or(look_up(&demo, "nurse-dam", cpr).await),
        }
    }
    let (cpr, gid) = hers.expect("a patient in the nurse's care");
    let other = other.expect("a patient in the other nurse's care");
    let (status, granted) = fhir(
        &demo,
        "nurse-lassen",
        reqwest::Method::POST,
        &format!("/Patient/{other}/$break-glass"),
        Some(json!({ "resourceType": "Parameters", "parameter": [
            { "name": "reason", "valueCode": "emergency" },
            { "name": "text", "valueString": "Unconscious at the emergency ward" } ] })),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    let grant = granted["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_owned();

    let b = Browser::start("en").await;
    b.client.goto(&demo.links["auditor"]).await.unwrap();
    assert_eq!(
        path_now(&b).await,
        "/ui/audit/search",
        "the auditor lands on the search"
    );
    auditor_searches(&b, &demo, &cpr, &gid, "en").await;
    auditor_verifies_and_reports(&b, &demo, &cpr, "en").await;
    auditor_reviews(&b, &demo, &grant, "en").await;
    switch_language_and_check(&b, &demo, &cpr, &gid, &grant).await;
    b.stop().await;
    // Every view of the log was itself recorded.
    let views = auditor_rows(&demo).await;
    for what in [
        "audit search",
        "audit chain verified",
        "access report",
        "break-the-glass review queue",
        "break-the-glass grant reviewed",
    ] {
        assert!(
            views.iter().any(|d| d.contains(what)),
            "{what} is audited: {views:?}"
        );
    }
}

/// The same pages in Danish (the language switch of the same session).
async fn switch_language_and_check(b: &Browser, demo: &Demo, cpr: &str, gid: &str, grant: &str) {
    goto(b, &demo.origin, "/ui/language/da?back=/ui/audit/search").await;
    let lang = b
        .client
        .execute("return document.documentElement.lang;", vec![])
        .await
        .unwrap();
    assert_eq!(lang, "da");
    auditor_searches(b, demo, cpr, gid, "da").await;
    auditor_verifies_and_reports(b, demo, cpr, "da").await;
    auditor_reviews(b, demo, grant, "da").await;
}

/// The details of the audit rows the auditor's own requests left.
async fn auditor_rows(demo: &Demo) -> Vec<String> {
    let (status, bundle) = fhir(
        demo,
        "auditor",
        reqwest::Method::GET,
        "/AuditEvent?agent=auditor&_count=1000",
        None,
    )
    .await;
    assert_eq!(status, 200);
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["outcomeDesc"].as_str().map(str::to_owned))
        .collect()
}

/// Writes a few audited records through the FHIR API.
async fn some_records(app: &TestApp) {
    let cpr = "0101700001";
    let mut p = patient(cpr, "Mortensen");
    p["id"] = json!("p1");
    let (status, body, _) = app.put("gp", "/gp/Patient/p1", &p).await;
    assert!(status == 201 || status == 200, "{body}");
    for i in 0..3 {
        let c = condition(&format!("c{i}"), "p1", ICPC2, "K77", "Hjerteinsufficiens");
        let (status, body, _) = app.put("gp", &format!("/gp/Condition/c{i}"), &c).await;
        assert!(status == 201 || status == 200, "{body}");
    }
}

/// A copy of a live SQLite store (`VACUUM INTO`), with one row of its log edited the way
/// someone with the file would: triggers dropped, then an UPDATE.
async fn tampered_copy(app: &TestApp, seq: i64) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let live = format!(
        "sqlite://{}",
        app.dir.path().join("carebridge.db").display()
    );
    let copy = app.dir.path().join("copy.db");
    let mut c = sqlx::AnyConnection::connect(&live).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        copy.display()
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let url = format!("sqlite://{}", copy.display());
    let mut t = sqlx::AnyConnection::connect(&url).await.unwrap();
    for sql in [
        "DROP TRIGGER audit_log_no_update".to_owned(),
        "DROP TRIGGER audit_log_no_delete".to_owned(),
        format!("UPDATE audit_log SET detail = 'nothing happened' WHERE seq = {seq}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut t)
            .await
            .unwrap();
    }
    url
}

#[tokio::test]
async fn a_tampered_copy_of_the_store_shows_its_first_broken_link() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    some_records(&app).await;
    let copy_url = tampered_copy(&app, 3).await;
    let copy = TestApp::spawn_config(Backend::Sqlite, |_| config_text(&copy_url, "")).await;
    let b = Browser::start("en").await;
    for (which, expected) in [(&app, None), (&copy, Some("3"))] {
        b.client
            .goto(&which.sign_in_link("auditor-2", Role::Auditor).await)
            .await
            .unwrap();
        let origin = which.base.trim_end_matches("/fhir").to_owned();
        goto(&b, &origin, "/ui/audit/verify").await;
        match expected {
            None => assert_eq!(count(&b, "p.state-ok#chain-status").await, 1),
            Some(seq) => {
                assert_eq!(count(&b, "p.state-bad#chain-status").await, 1);
                let broken = b
                    .client
                    .find(Locator::Css("#broken-seq"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert_eq!(broken, seq);
                accessible(&b, "the verification of a broken chain").await;
                b.screenshot("audit-verify-broken-en").await;
            }
        }
    }
    b.stop().await;
    copy.stop().await;
    app.stop().await;
}

/// Fast retries, dead after four attempts, failing after two.
const FAST: &str = "retry_initial_ms = 100\nretry_max_ms = 400\nidle_poll_ms = 100\n\
                    poll_interval_ms = 400\nrequest_timeout_ms = 3000\nmax_attempts = 4\n\
                    failing_after_failures = 2\n";

/// The hospital is a real sector server; the others only send.
fn exchange_config(store_url: &str, hospital: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n[store]\nurl = \"{store_url}\"\n\
         max_connections = 4\n\n[fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\n{FAST}\n\
         [[sectors]]\nid = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n\n\
         [[sectors]]\nid = \"hospital\"\nname = \"Hospital\"\nkind = \"hospital\"\n\
         base_url = \"{hospital}\"\nprofile = \"dk-hospital\"\njoin_care_on_patient = true\n",
        repo().join("fhir-profiles").display()
    );
    for (id, kind) in [("gp", "general-practice"), ("municipality", "municipality")] {
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\nprofile = \"dk-{}\"\n",
            if id == "gp" { "gp" } else { "municipality" }
        ));
    }
    text
}

/// The patient at the hospital's server and the gateway, and at the GP.
async fn shared_patient(app: &TestApp, hospital: &Peer) {
    let cpr = "1901420116";
    let created = hospital.create(&patient(cpr, "Holm")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut body = patient(cpr, "Holm");
    body["id"] = json!(id);
    let (status, out, _) = app
        .put("hospital", &format!("/hospital/Patient/{id}"), &body)
        .await;
    assert!(status == 201 || status == 200, "{out}");
    let mut p = patient(cpr, "Holm");
    p["id"] = json!("gp-p1");
    let (status, out, _) = app.put("gp", "/gp/Patient/gp-p1", &p).await;
    assert!(status == 201 || status == 200, "{out}");
}

async fn gp_condition(app: &TestApp, id: &str) {
    let c = condition(id, "gp-p1", ICPC2, "K77", "Hjerteinsufficiens");
    let (status, body, _) = app.post("gp", "/gp", &transaction(&[c])).await;
    assert_eq!(status, 200, "{body}");
}

/// Reloads the board until the hospital shows `state`.
async fn board_shows(b: &Browser, origin: &str, state: &str) {
    let css = format!("tr[data-sector='hospital'][data-state='{state}']");
    for _ in 0..300 {
        goto(b, origin, "/ui/it/board").await;
        if count(b, &css).await == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the board never showed the hospital {state}: {}",
        b.text().await
    );
}

/// The metric lines of the hospital's state.
fn sector_metrics(app: &TestApp) -> (String, String, String) {
    let text = app.app_gateway.metrics().render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map_or_else(String::new, str::to_owned)
    };
    (
        line("carebridge_sector_failing{target=\"hospital\"}"),
        line("carebridge_sector_state_changes_total{target=\"hospital\",state=\"failing\"}"),
        line("carebridge_sector_state_changes_total{target=\"hospital\",state=\"recovered\"}"),
    )
}

/// The hospital goes down: the board turns failing once, however many attempts fail, and the
/// entry is dead-lettered.
async fn hospital_fails(app: &TestApp, b: &Browser, origin: &str, hospital: &mut Peer) {
    hospital.stop().await;
    gp_condition(app, "c1").await;
    board_shows(b, origin, "failing").await;
    wait_for("the dead letter", 60, || async {
        let dead = crate::common::outbox(app.app_gateway.store().as_ref(), Some("dead")).await;
        (!dead.is_empty()).then_some(())
    })
    .await;
    goto(b, origin, "/ui/it/board").await;
    let row = b
        .client
        .find(Locator::Css("tr[data-sector='hospital']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("0 / 1"), "nothing waits, one dead: {row}");
    let (failing, raised, cleared) = sector_metrics(app);
    assert!(failing.ends_with(" 1"), "{failing}");
    assert!(
        raised.ends_with(" 1"),
        "raised once after four failed attempts: {raised}"
    );
    assert!(cleared.is_empty(), "{cleared}");
    checked(b, "it-board-failing", "en").await;
    goto(b, origin, "/ui/it/dead").await;
    assert_eq!(count(b, "#dead tr[data-entry] form").await, 1);
    checked(b, "it-dead-letter", "en").await;
}

/// The admin replays the dead letter with a reason; the copy arrives, the board recovers once.
async fn admin_replays(app: &TestApp, b: &Browser, origin: &str, hospital: &Peer) {
    goto(b, origin, "/ui/it/dead").await;
    let id = b
        .client
        .find(Locator::Css("#dead tr[data-entry]"))
        .await
        .unwrap()
        .attr("data-entry")
        .await
        .unwrap()
        .unwrap();
    set_value(b, &format!("reason-{id}"), "The hospital's server is back").await;
    click_until(
        b,
        &format!("tr[data-entry='{id}'] button[type=submit]"),
        "#done",
    )
    .await;
    wait_for("the replayed copy at the hospital", 30, || async {
        copy_at(hospital, "gp", "Condition", "c1").await
    })
    .await;
    board_shows(b, origin, "healthy").await;
    let (failing, raised, cleared) = sector_metrics(app);
    assert!(failing.ends_with(" 0"), "{failing}");
    assert!(
        raised.ends_with(" 1") && cleared.ends_with(" 1"),
        "{raised} {cleared}"
    );
}

/// The admin resends the first, delivered entry to the restarted (empty) hospital server.
async fn admin_resends(b: &Browser, origin: &str, hospital: &Peer) {
    let gid = carebridge::ids::gateway_id("gp", "Condition", "c0");
    goto(
        b,
        origin,
        &format!("/ui/it/messages?resource={gid}&state=delivered"),
    )
    .await;
    let id = b
        .client
        .find(Locator::Css("#messages tr[data-entry]"))
        .await
        .unwrap()
        .attr("data-entry")
        .await
        .unwrap()
        .unwrap();
    set_value(
        b,
        &format!("why-{id}"),
        "Lost when the hospital's server was rebuilt",
    )
    .await;
    click(b, &format!("tr[data-entry='{id}'] button[type=submit]")).await;
    wait_for("the resent copy at the hospital", 30, || async {
        copy_at(hospital, "gp", "Condition", "c0").await
    })
    .await;
}

/// Every IT page in one language: axe-core and a screenshot; the probes run.
async fn it_pages_checked(b: &Browser, origin: &str, lang: &str) {
    for (path, name) in [
        ("/ui/it/board", "it-board"),
        ("/ui/it/dead", "it-dead"),
        ("/ui/it/messages", "it-messages"),
        ("/ui/it/system", "it-system"),
    ] {
        goto(b, origin, path).await;
        checked(b, name, lang).await;
    }
    click(b, "form[action='/ui/it/system/probe'] button").await;
    b.client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#probes"))
        .await
        .unwrap_or_else(|_| panic!("no probes shown"));
    let text = b.text().await;
    assert_eq!(
        count(b, "#probes tr[data-sector='hospital']").await,
        1,
        "{text}"
    );
    checked(b, "it-probes", lang).await;
}

#[tokio::test]
async fn an_admin_sees_a_sector_fail_and_recover_and_replays_a_dead_letter() {
    let mut hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let base = hospital.base.clone();
    let app = TestApp::spawn_config(Backend::Sqlite, |url| exchange_config(url, &base)).await;
    let origin = app.base.trim_end_matches("/fhir").to_owned();
    shared_patient(&app, &hospital).await;
    gp_condition(&app, "c0").await;
    wait_for("the first copy at the hospital", 30, || async {
        copy_at(&hospital, "gp", "Condition", "c0").await
    })
    .await;
    let b = Browser::start("en").await;
    b.client
        .goto(&app.sign_in_link("it-staff", Role::Admin).await)
        .await
        .unwrap();
    assert_eq!(
        path_now(&b).await,
        "/ui/it/board",
        "IT staff land on the board"
    );
    board_shows(&b, &origin, "healthy").await;
    hospital_fails(&app, &b, &origin, &mut hospital).await;
    hospital.restart().await;
    admin_replays(&app, &b, &origin, &hospital).await;
    admin_resends(&b, &origin, &hospital).await;
    it_pages_checked(&b, &origin, "en").await;
    goto(&b, &origin, "/ui/language/da?back=/ui/it/board").await;
    it_pages_checked(&b, &origin, "da").await;
    b.stop().await;
    app.stop().await;
}

/// 10,000 outbox entries of made-up resources, plus one for a stored Condition.
async fn ten_thousand_entries(app: &TestApp) -> String {
    use carebridge::store::OutboxNew;
    let real = carebridge::ids::gateway_id("gp", "Condition", "c1");
    let mut tx = app.app_gateway.store().begin().await.unwrap();
    for i in 0..10_000 {
        let gid = if i == 4_321 {
            real.clone()
        } else {
            format!("{i:024x}")
        };
        let added = tx
            .outbox_add(&OutboxNew {
                target: ["hospital", "municipality"][i % 2].into(),
                source: "gp".into(),
                gid,
                version: 1,
                rtype: ["Condition", "CarePlan", "MedicationRequest"][i % 3].into(),
                patient_id: Some(format!("patient-{}", i % 500)),
                route: "care".into(),
            })
            .await
            .unwrap();
        assert!(added || i == 4_321);
    }
    tx.commit().await.unwrap();
    real
}

#[tokio::test]
async fn the_message_browser_finds_an_entry_among_10000_without_reading_bodies() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    some_records(&app).await;
    let gid = ten_thousand_entries(&app).await;
    // Every stored body made unreadable: a page that read one would fail.
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = format!(
            "sqlite://{}",
            app.dir.path().join("carebridge.db").display()
        );
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE resource_versions SET body = 'not json'")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let (status, _) = app.get("gp", "/gp/Condition/c1").await;
    assert_eq!(status, 500, "the bodies are unreadable");
    let origin = app.base.trim_end_matches("/fhir").to_owned();
    let b = Browser::start("en").await;
    b.client
        .goto(&app.sign_in_link("it-staff", Role::Admin).await)
        .await
        .unwrap();
    goto(&b, &origin, "/ui/it/messages").await;
    assert_eq!(
        count(&b, "#messages tr[data-entry]").await,
        50,
        "a page of 50"
    );
    set_value(&b, "m-resource", &gid).await;
    click(&b, "form[action='/ui/it/messages'] button[type=submit]").await;
    wait_for("the search's page", 30, || async {
        let url = b.client.current_url().await.unwrap();
        url.as_str().contains(&gid).then_some(())
    })
    .await;
    let found: Vec<String> = {
        let mut out = Vec::new();
        for row in b
            .client
            .find_all(Locator::Css("#messages tr[data-gid]"))
            .await
            .unwrap()
        {
            out.push(row.attr("data-gid").await.unwrap().unwrap());
        }
        out
    };
    assert!(
        !found.is_empty() && found.iter().all(|g| *g == gid),
        "{found:?}"
    );
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&gid)
    );
    // The next page of everything, by the link the page gives.
    goto(&b, &origin, "/ui/it/messages?type=CarePlan").await;
    click(&b, "nav.pages a").await;
    wait_for("the next page", 30, || async {
        let url = b.client.current_url().await.unwrap();
        url.as_str().contains("before=").then_some(())
    })
    .await;
    assert_eq!(count(&b, "#messages tr[data-entry]").await, 50);
    let text = b.text().await;
    assert!(!text.contains("patient-"), "no patient id on the page");
    b.stop().await;
    app.stop().await;
}

/// A person's console without a browser: the session cookie.
struct Visitor {
    http: reqwest::Client,
    origin: String,
    cookie: String,
}

impl Visitor {
    async fn sign_in(link: &str, origin: &str) -> Visitor {
        let http = carebridge::outbound::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = http.get(link).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        Visitor {
            http,
            origin: origin.to_owned(),
            cookie: set.split(';').next().unwrap().to_owned(),
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> StatusCode {
        self.http
            .post(format!("{}{path}", self.origin))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.origin))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

const AUDIT_PAGES: [&str; 4] = [
    "/ui/audit/search",
    "/ui/audit/verify",
    "/ui/audit/access",
    "/ui/audit/break-glass",
];
const IT_PAGES: [&str; 4] = [
    "/ui/it/board",
    "/ui/it/dead",
    "/ui/it/messages",
    "/ui/it/system",
];

#[tokio::test]
async fn each_role_opens_only_its_own_pages_and_admins_see_no_patient_data() {
    let demo = Demo::start();
    let nurse = Visitor::sign_in(&demo.links["nurse-lassen"], &demo.origin).await;
    let auditor = Visitor::sign_in(&demo.links["auditor"], &demo.origin).await;
    let admin = Visitor::sign_in(&demo.links["admin"], &demo.origin).await;
    let patient = crate::console::open_alerts(&demo, "nurse-lassen").await;
    assert!(!patient.is_empty());
    let (_, alert) = crate::console::api(&demo, "nurse-lassen", "/DetectedIssue?_count=1").await;
    let pid = alert["entry"][0]["resource"]["patient"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    let clinical = ["/ui/inbox".to_owned(), format!("/ui/patients/{pid}")];
    for path in AUDIT_PAGES.iter().chain(IT_PAGES.iter()) {
        assert_eq!(
            nurse.get(path).await.0,
            StatusCode::FORBIDDEN,
            "careteam: {path}"
        );
    }
    for path in clinical.iter().map(String::as_str).chain(IT_PAGES) {
        assert_eq!(
            auditor.get(path).await.0,
            StatusCode::FORBIDDEN,
            "auditor: {path}"
        );
    }
    for path in clinical.iter().map(String::as_str).chain(AUDIT_PAGES) {
        assert_eq!(
            admin.get(path).await.0,
            StatusCode::FORBIDDEN,
            "admin: {path}"
        );
    }
    let patients = demo_patients();
    for path in IT_PAGES
        .iter()
        .chain(["/ui/it/messages?state=delivered"].iter())
    {
        let (status, page) = admin.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!page.contains(&pid), "{path} shows a patient id");
        for (cpr, family) in &patients {
            assert!(
                !page.contains(cpr) && !page.contains(family),
                "{path} shows {family}"
            );
        }
    }
    for path in AUDIT_PAGES {
        assert_eq!(auditor.get(path).await.0, StatusCode::OK, "auditor: {path}");
    }
    // A page number past any result is an empty page, not a failure.
    let csrf_of = |page: &str| {
        let i = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[i..i + page[i..].find('"').unwrap()].to_owned()
    };
    let token = csrf_of(&auditor.get("/ui/audit/search").await.1);
    let far = [("csrf", token.as_str()), ("page", "9223372036854775807")];
    assert_eq!(auditor.post("/ui/audit/search", &far).await, StatusCode::OK);
    // Forms without the session's CSRF token are refused.
    let forged = [
        ("csrf", "forged"),
        ("cpr", "1503570721"),
        ("target", "gp"),
        ("reason", "x"),
    ];
    assert_eq!(
        auditor.post("/ui/audit/search", &forged).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        auditor.post("/ui/audit/export", &forged).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin.post("/ui/it/dead/replay-sector", &forged).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin.post("/ui/it/system/probe", &forged).await,
        StatusCode::FORBIDDEN
    );
}
