//! The FHIR API as clients use it: versioning and optimistic locking, history and vread,
//! conditional create, search (total, links, paging, result parameters, `_include`,
//! `_revinclude`, lenient and strict handling), the cross-sector view's references, links from
//! `server.public_base_url`, CORS, `Prefer`, content negotiation and Bundle checks; and the
//! CapabilityStatement, walked: every interaction, parameter, include and operation it claims
//! is exercised.

use crate::common::{Backend, TestApp, config_text, repo};
use reqwest::Method;
use serde_json::{Value, json};

const CPR: &str = "urn:oid:1.2.208.176.1.2";

/// A request with a token holder's bearer token.
fn req(app: &TestApp, who: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    let r = app.http.request(method, format!("{}{path}", app.base));
    match app.tokens.get(who) {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

async fn send(rb: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = rb.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn json_body(rb: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    rb.header("content-type", "application/fhir+json")
        .body(body.to_string())
}

fn patient(id: &str, cpr: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "identifier": [{ "system": CPR, "value": cpr }] })
}

fn condition(id: &str, patient: &str, code: &str, status: &str) -> Value {
    json!({ "resourceType": "Condition", "id": id,
        "identifier": [{ "system": "urn:test:condition", "value": id }],
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status }] },
        "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": code, "display": format!("Problem {code}") }], "text": format!("Problem {code}") },
        "onsetDateTime": "2021-04-05",
        "subject": { "reference": format!("Patient/{patient}") } })
}

async fn gateway_patient(app: &TestApp, cpr: &str) -> String {
    let (s, found) = app
        .get("careteam", &format!("/Patient?identifier={CPR}|{cpr}"))
        .await;
    assert_eq!(s, 200, "{found}");
    found["entry"][0]["resource"]["id"]
        .as_str()
        .expect("linked")
        .to_owned()
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn link(bundle: &Value, rel: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == rel)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// The path below `/fhir` of an absolute link of the test app.
fn below_base(app: &TestApp, url: &str) -> String {
    assert!(
        url.starts_with(&app.base),
        "{url} is not under {}",
        app.base
    );
    url[app.base.len()..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_locked_read_and_listed() {
    versions_are_locked_read_and_listed_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_locked_read_and_listed_on_postgresql() {
    versions_are_locked_read_and_listed_on(Backend::Postgres).await;
}

async fn versions_are_locked_read_and_listed_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (s, b, _) = app
        .put("gp", "/gp/Patient/vp1", &patient("vp1", "0101010101"))
        .await;
    assert_eq!(s, 201, "{b}");
    let c = condition("vc1", "vp1", "T90", "active");
    let (s, _, h) = app.put("gp", "/gp/Condition/vc1", &c).await;
    assert_eq!(s, 201);
    assert_eq!(h["etag"], "W/\"1\"");
    assert!(h.get("last-modified").is_some());
    let loc = h["location"].to_str().unwrap().to_owned();
    assert_eq!(loc, format!("{}/gp/Condition/vc1/_history/1", app.base));
    let v2 = condition("vc1", "vp1", "T90", "inactive");
    let (s, _, _) = app.put("gp", "/gp/Condition/vc1", &v2).await;
    assert_eq!(s, 200);

    // A stale If-Match is refused and changes nothing; the current one applies.
    let v3 = condition("vc1", "vp1", "T90", "resolved");
    let put = |tag: &'static str| {
        json_body(
            req(&app, "gp", Method::PUT, "/gp/Condition/vc1").header("if-match", tag),
            &v3,
        )
    };
    let (s, oo, _) = send(put("W/\"1\"")).await;
    assert_eq!(s, 412, "{oo}");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (s, _, _) = send(put("three")).await;
    assert_eq!(s, 400);
    let (_, now) = app.get("gp", "/gp/Condition/vc1").await;
    assert_eq!(now["meta"]["versionId"], "2");
    let (s, _, h) = send(put("W/\"2\"")).await;
    assert_eq!(s, 200);
    assert_eq!(h["etag"], "W/\"3\"");

    // A transaction entry's ifMatch is checked too: the whole transaction fails.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": condition("vc2", "vp1", "K86", "active"), "request": { "method": "PUT", "url": "Condition/vc2" } },
        { "resource": condition("vc1", "vp1", "T90", "active"), "request": { "method": "PUT", "url": "Condition/vc1", "ifMatch": "W/\"1\"" } } ] });
    let (s, oo, _) = app.post("gp", "/gp", &bundle).await;
    assert_eq!(s, 412, "{oo}");
    let (s, _) = app.get("gp", "/gp/Condition/vc2").await;
    assert_eq!(s, 404, "nothing of the failed transaction is stored");

    // If-None-Match → 304 on both views.
    let (s, _, h) =
        send(req(&app, "gp", Method::GET, "/gp/Condition/vc1").header("if-none-match", "W/\"3\""))
            .await;
    assert_eq!(s, 304);
    assert_eq!(h["etag"], "W/\"3\"");
    let (s, _, _) =
        send(req(&app, "gp", Method::GET, "/gp/Condition/vc1").header("if-none-match", "W/\"2\""))
            .await;
    assert_eq!(s, 200);

    // vread and instance history on the sector's base…
    let (s, v1) = app.get("gp", "/gp/Condition/vc1/_history/1").await;
    assert_eq!(s, 200);
    assert_eq!(v1["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(v1["meta"]["versionId"], "1");
    let (s, _) = app.get("gp", "/gp/Condition/vc1/_history/9").await;
    assert_eq!(s, 404);
    let (s, hist) = app.get("gp", "/gp/Condition/vc1/_history").await;
    assert_eq!(s, 200);
    assert_eq!(hist["type"], "history");
    let versions: Vec<String> = entries(&hist)
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(versions, ["3", "2", "1"]);
    assert!(
        entries(&hist)
            .iter()
            .all(|e| e["fullUrl"].as_str().unwrap().starts_with(&app.base))
    );

    // …and across sectors, by gateway id; type history lists every version.
    let gid = carebridge::ids::gateway_id("gp", "Condition", "vc1");
    let (s, v2) = app
        .get("careteam", &format!("/Condition/{gid}/_history/2"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v2["id"], gid.as_str());
    assert_eq!(v2["clinicalStatus"]["coding"][0]["code"], "inactive");
    let (s, hist) = app
        .get("careteam", &format!("/Condition/{gid}/_history"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(entries(&hist).len(), 3);
    let (s, hist) = app.get("careteam", "/Condition/_history?_count=2").await;
    assert_eq!(s, 200);
    assert_eq!(entries(&hist).len(), 2);
    let next = link(&hist, "next").expect("a next page");
    let (s, rest) = app.get("careteam", &below_base(&app, &next)).await;
    assert_eq!(s, 200);
    assert_eq!(entries(&rest).len(), 1);
    let (s, hist) = app.get("gp", "/gp/Condition/_history").await;
    assert_eq!(s, 200);
    assert_eq!(entries(&hist).len(), 3);
    // Another sector's system does not read the gp's history.
    let (s, _) = app
        .get("hospital", &format!("/Condition/{gid}/_history"))
        .await;
    assert_eq!(s, 403);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_follows_the_spec() {
    conditional_create_follows_the_spec_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_follows_the_spec_on_postgresql() {
    conditional_create_follows_the_spec_on(Backend::Postgres).await;
}

async fn conditional_create_follows_the_spec_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put("gp", "/gp/Patient/cp1", &patient("cp1", "0202020202"))
        .await;
    let mut c = condition("x", "cp1", "T90", "active");
    c.as_object_mut().unwrap().remove("id");
    let post = |q: &str, body: &Value| {
        json_body(
            req(&app, "gp", Method::POST, "/gp/Condition").header("if-none-exist", q.to_owned()),
            body,
        )
    };
    // No match: created. One match: 200 with it, nothing new.
    let (s, first, _) = send(post("identifier=urn:test:condition|x", &c)).await;
    assert_eq!(s, 201, "{first}");
    let (s, again, _) = send(post("identifier=urn:test:condition|x", &c)).await;
    assert_eq!(s, 200);
    assert_eq!(again["id"], first["id"]);
    // Several parameters: all must hold.
    let (s, same, _) = send(post(
        "identifier=urn:test:condition|x&code=urn:oid:1.2.208.176.2.31|T90",
        &c,
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(same["id"], first["id"]);
    let mut k86 = condition("x", "cp1", "K86", "active");
    k86.as_object_mut().unwrap().remove("id");
    let (s, other, _) = send(post("identifier=urn:test:condition|x&code=K86", &k86)).await;
    assert_eq!(s, 201, "the code differs: no match");
    assert_ne!(other["id"], first["id"]);
    // Two matches: 412.
    let (s, oo, _) = send(post("identifier=urn:test:condition|x", &c)).await;
    assert_eq!(s, 412, "{oo}");
    // A parameter the gateway does not search by is refused, not ignored.
    let (s, oo, _) = send(post("identifier=urn:test:condition|y&colour=blue", &c)).await;
    assert_eq!(s, 400, "{oo}");
    // Without If-None-Exist: the same content re-sent is recognised; changed content with the
    // same identifier is a new resource (the sector does not set resend_by_identifier).
    let mut d = condition("x", "cp1", "R96", "active");
    d.as_object_mut().unwrap().remove("id");
    d["identifier"][0]["value"] = json!("d");
    let (s, d1, _) = app.post("gp", "/gp/Condition", &d).await;
    assert_eq!(s, 201);
    let (s, d2, _) = app.post("gp", "/gp/Condition", &d).await;
    assert_eq!(s, 200);
    assert_eq!(d1["id"], d2["id"]);
    d["note"] = json!([{ "text": "changed" }]);
    let (s, d3, _) = app.post("gp", "/gp/Condition", &d).await;
    assert_eq!(s, 201);
    assert_ne!(d3["id"], d1["id"]);
    app.stop().await;
}

/// A transaction Bundle whose conditional create matches a stored resource: the entries that
/// name it by its fullUrl point at the stored one. (Ids and stored forms are worked out before
/// the transaction as if no conditional create matched; a match sets that guess aside.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_conditional_create_in_a_bundle_is_what_its_references_name() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.put("gp", "/gp/Patient/bp1", &patient("bp1", "0404040404"))
        .await;
    let shared = "urn:uuid:7d0c1e52-8a43-4d0f-9b61-2f6a1c3e4b01";
    let bundle = |second: &str| {
        let mut a = condition("bx", "bp1", "T90", "active");
        a.as_object_mut().unwrap().remove("id");
        // Other content each time (an id derived from it differs), the same identifier.
        a["note"] = json!([{ "text": format!("sent with {second}") }]);
        let mut b = condition(second, "bp1", "K86", "active");
        b.as_object_mut().unwrap().remove("id");
        b["evidence"] = json!([{ "detail": [{ "reference": shared }] }]);
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": shared, "resource": a, "request": { "method": "POST", "url": "Condition",
              "ifNoneExist": "identifier=urn:test:condition|bx" } },
            { "fullUrl": "urn:uuid:7d0c1e52-8a43-4d0f-9b61-2f6a1c3e4b02", "resource": b,
              "request": { "method": "POST", "url": "Condition" } } ] })
    };
    let rid = |answer: &Value, i: usize| -> (String, String) {
        let r = &answer["entry"][i]["response"];
        let location = r["location"].as_str().unwrap_or_default();
        let id = location
            .split('/')
            .rev()
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        (r["status"].as_str().unwrap_or_default().to_owned(), id)
    };
    // Nothing matches: both created, the second naming the first.
    let (s, first, _) = app.post("gp", "/gp", &bundle("by1")).await;
    assert_eq!(s, 200, "{first}");
    let (status, stored) = rid(&first, 0);
    assert!(status.starts_with("201"), "{first}");
    // The Condition again (its identifier matches; the stored one is kept) beside a new one
    // naming it by the same fullUrl.
    let (s, again, _) = app.post("gp", "/gp", &bundle("by2")).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        rid(&again, 0),
        ("200 OK".to_owned(), stored.clone()),
        "{again}"
    );
    let (status, naming) = rid(&again, 1);
    assert!(status.starts_with("201"), "{again}");
    let (s, read) = app.get("gp", &format!("/gp/Condition/{naming}")).await;
    assert_eq!(s, 200, "{read}");
    assert_eq!(
        read["evidence"][0]["detail"][0]["reference"],
        json!(format!("Condition/{stored}")),
        "the reference names the stored Condition: {read}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sector_set_to_resend_by_identifier_updates_the_known_resource() {
    let app = TestApp::spawn_config(Backend::Sqlite, |url| {
        config_text(url, "").replace(
            "profile = \"dk-gp\"",
            "profile = \"dk-gp\"\nresend_by_identifier = true",
        )
    })
    .await;
    app.put("gp", "/gp/Patient/rp1", &patient("rp1", "0303030303"))
        .await;
    let mut c = condition("x", "rp1", "T90", "active");
    c.as_object_mut().unwrap().remove("id");
    let (s, first, _) = app.post("gp", "/gp/Condition", &c).await;
    assert_eq!(s, 201);
    c["note"] = json!([{ "text": "changed" }]);
    let (s, second, _) = app.post("gp", "/gp/Condition", &c).await;
    assert_eq!(s, 200);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["meta"]["versionId"], "2");
    app.stop().await;
}

/// Pushes one alert scenario's resources for the patient `pid` of `sector`.
pub(crate) async fn push_scenario(app: &TestApp, name: &str, cpr: &str) {
    let scenario: Value = serde_json::from_slice(
        &std::fs::read(repo().join("fixtures/scenarios").join(name)).unwrap(),
    )
    .unwrap();
    for (sector, resources) in scenario["sectors"].as_object().unwrap() {
        let pid = format!("{sector}-{cpr}");
        let mut list = vec![
            json!({ "resource": patient(&pid, cpr), "request": { "method": "PUT", "url": format!("Patient/{pid}") } }),
        ];
        for r in resources.as_array().unwrap() {
            let r: Value = serde_json::from_str(
                &r.to_string()
                    .replace("Patient/PAT", &format!("Patient/{pid}")),
            )
            .unwrap();
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            );
            list.push(json!({ "resource": r, "request": { "method": "PUT", "url": url } }));
        }
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": list });
        let (s, b, _) = app.post(sector, &format!("/{sector}"), &bundle).await;
        assert_eq!(s, 200, "{b}");
    }
}

/// Follows `next` links to the end; every page's entries.
async fn all_pages(app: &TestApp, who: &str, first: &str) -> (Vec<Value>, Vec<Value>) {
    let mut pages = Vec::new();
    let mut found = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let (s, page) = app.get(who, &path).await;
        assert_eq!(s, 200, "{path}: {page}");
        found.extend(entries(&page));
        next = link(&page, "next").map(|u| below_base(app, &u));
        pages.push(page);
        assert!(pages.len() < 100, "paging does not end");
    }
    (pages, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_say_what_they_did_and_page_to_the_end() {
    searches_say_what_they_did_and_page_to_the_end_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_say_what_they_did_and_page_to_the_end_on_postgresql() {
    searches_say_what_they_did_and_page_to_the_end_on(Backend::Postgres).await;
}

async fn searches_say_what_they_did_and_page_to_the_end_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cpr = "0404040404";
    for s in [
        "dupthpgen-two-sectors.json",
        "dupthpcls-two-ace-inhibitors.json",
        "dupthpgen-combination.json",
        "unaddressed-condition.json",
        "polypharmacy.json",
    ] {
        push_scenario(&app, s, cpr).await;
    }
    let pid = gateway_patient(&app, cpr).await;

    // Alerts: more than _count, every one reached by next links, total accurate.
    let (pages, alerts) = all_pages(
        &app,
        "careteam",
        &format!("/DetectedIssue?patient={pid}&_count=2"),
    )
    .await;
    assert!(alerts.len() > 2, "{} alerts", alerts.len());
    assert_eq!(pages[0]["total"], json!(alerts.len()));
    assert!(link(&pages[1], "previous").is_some());
    for e in &alerts {
        assert!(
            e["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/DetectedIssue/", app.base)),
            "{e}"
        );
    }
    // The alert Communications are found by patient, subject and about.
    let (s, comms) = app
        .get("careteam", &format!("/Communication?patient={pid}"))
        .await;
    assert_eq!(s, 200);
    assert!(
        comms["total"].as_u64().unwrap() >= alerts.len() as u64,
        "{comms}"
    );
    let (_, by_subject) = app
        .get("careteam", &format!("/Communication?subject=Patient/{pid}"))
        .await;
    assert_eq!(by_subject["total"], comms["total"]);
    let alert_id = alerts[0]["resource"]["id"].as_str().unwrap();
    let (_, about) = app
        .get(
            "careteam",
            &format!("/Communication?about=DetectedIssue/{alert_id}&_include=Communication:about"),
        )
        .await;
    assert!(about["total"].as_u64().unwrap() >= 1, "{about}");
    assert!(
        entries(&about)
            .iter()
            .any(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == alert_id),
        "{about}"
    );

    // Medication orders: total, self link with the query as executed (the unknown parameter left out).
    let (s, meds) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&colour=blue&_count=3"),
        )
        .await;
    assert_eq!(s, 200, "{meds}");
    let total = meds["total"].as_u64().unwrap();
    assert!(total > 3);
    let me = link(&meds, "self").unwrap();
    assert!(
        me.contains(&format!("patient={pid}")) && !me.contains("colour"),
        "{me}"
    );
    let (_, all) = all_pages(
        &app,
        "careteam",
        &format!("/MedicationRequest?patient={pid}&_count=3"),
    )
    .await;
    assert_eq!(all.len() as u64, total);
    // Strict handling refuses the unknown parameter.
    let (s, oo, _) = send(
        req(
            &app,
            "careteam",
            Method::GET,
            &format!("/MedicationRequest?patient={pid}&colour=blue"),
        )
        .header("prefer", "handling=strict"),
    )
    .await;
    assert_eq!(s, 400, "{oo}");
    // _count=0 and _summary=count: the total only.
    for q in ["_count=0", "_summary=count"] {
        let (_, b) = app
            .get("careteam", &format!("/MedicationRequest?patient={pid}&{q}"))
            .await;
        assert_eq!(b["total"].as_u64(), Some(total), "{q}");
        assert!(b.get("entry").is_none(), "{q}: {b}");
    }
    let (_, b) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&_total=none"),
        )
        .await;
    assert!(b.get("total").is_none());
    // Token searches: system|code, code, :text; an ATC code of the gp's furosemide.
    let (_, furo) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&code=http://www.whocc.no/atc|C03CA01"),
        )
        .await;
    assert!(furo["total"].as_u64().unwrap() >= 2, "{furo}");
    let (_, text) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&code:text=furosemid"),
        )
        .await;
    assert_eq!(text["total"], furo["total"]);
    let (_, none) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&code=http://snomed.info/sct|C03CA01"),
        )
        .await;
    assert_eq!(none["total"], 0);
    // _lastUpdated, _sort, _elements.
    let (_, recent) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&_lastUpdated=ge2000-01-01"),
        )
        .await;
    assert_eq!(recent["total"].as_u64(), Some(total));
    let (_, future) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&_lastUpdated=gt2999-01-01"),
        )
        .await;
    assert_eq!(future["total"], 0);
    let (_, sorted) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&_sort=-_lastUpdated"),
        )
        .await;
    let stamps: Vec<String> = entries(&sorted)
        .iter()
        .map(|e| {
            e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut desc = stamps.clone();
    desc.sort_by(|a, b| b.cmp(a));
    assert_eq!(stamps, desc);
    let (_, slim) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&_elements=status"),
        )
        .await;
    let r = &entries(&slim)[0]["resource"];
    assert!(
        r.get("status").is_some() && r.get("medicationCodeableConcept").is_none(),
        "{r}"
    );
    // A bad value of a known parameter is an error, not ignored.
    let (s, _) = app
        .get(
            "careteam",
            &format!("/MedicationRequest?patient={pid}&authoredon=someday"),
        )
        .await;
    assert_eq!(s, 400);
    // A sector's own search by its own Patient id.
    let (s, own) = app
        .get("gp", &format!("/gp/MedicationRequest?patient=gp-{cpr}"))
        .await;
    assert_eq!(s, 200);
    assert!(entries(&own).iter().all(|e| {
        e["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/gp/MedicationRequest/", app.base))
    }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cross_sector_view_resolves_references_and_includes_them() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cpr = "0505050505";
    let plan = json!({ "resourceType": "CarePlan", "id": "ip1", "status": "active", "intent": "plan",
        "subject": { "reference": "Patient/ip" },
        "addresses": [{ "reference": "Condition/ic1" }, { "reference": "Condition/not-sent", "identifier": { "system": "urn:x", "value": "1" } }],
        "author": { "reference": "Practitioner/nobody" } });
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": patient("ip", cpr), "request": { "method": "PUT", "url": "Patient/ip" } },
        { "resource": condition("ic1", "ip", "T90", "active"), "request": { "method": "PUT", "url": "Condition/ic1" } },
        { "resource": plan, "request": { "method": "PUT", "url": "CarePlan/ip1" } } ] });
    let (s, b, _) = app.post("gp", "/gp/", &bundle).await;
    assert_eq!(
        s, 200,
        "a sector base with a trailing slash takes the Bundle: {b}"
    );
    let pid = gateway_patient(&app, cpr).await;
    let (_, plans) = app
        .get(
            "careteam",
            &format!(
                "/CarePlan?patient={pid}&_include=CarePlan:addresses&_include=CarePlan:patient"
            ),
        )
        .await;
    let matched: Vec<Value> = entries(&plans)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .collect();
    assert_eq!(matched.len(), 1);
    let p = &matched[0]["resource"];
    let cid = carebridge::ids::gateway_id("gp", "Condition", "ic1");
    assert_eq!(p["addresses"][0]["reference"], format!("Condition/{cid}"));
    assert_eq!(
        p["addresses"][1]["reference"], "Condition/not-sent",
        "unresolvable: left as sent"
    );
    assert_eq!(p["addresses"][1]["identifier"]["value"], "1");
    assert_eq!(p["subject"]["reference"], format!("Patient/{pid}"));
    let included: Vec<String> = entries(&plans)
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        included.contains(&format!("Condition/{cid}"))
            && included.contains(&format!("Patient/{pid}")),
        "{included:?}"
    );
    // Every resolved reference reads.
    let (s, _) = app.get("careteam", &format!("/Condition/{cid}")).await;
    assert_eq!(s, 200);
    // _revinclude: the plans addressing a condition.
    let (_, conds) = app
        .get(
            "careteam",
            &format!("/Condition?patient={pid}&_revinclude=CarePlan:addresses"),
        )
        .await;
    assert!(
        entries(&conds).iter().any(
            |e| e["search"]["mode"] == "include" && e["resource"]["resourceType"] == "CarePlan"
        ),
        "{conds}"
    );
    // $total-plan: absolute fullUrls, references resolved.
    let (s, tp) = app
        .get("careteam", &format!("/Patient/{pid}/$total-plan"))
        .await;
    assert_eq!(s, 200);
    for e in entries(&tp) {
        assert!(e["fullUrl"].as_str().unwrap().starts_with(&app.base), "{e}");
    }
    // The sector's own view keeps its own references.
    let (_, own) = app.get("gp", "/gp/CarePlan/ip1").await;
    assert_eq!(own["addresses"][0]["reference"], "Condition/ic1");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_cors_prefer_media_types_and_bundles() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        "public_base_url = \"https://carebridge.example.dk/\"\ncors_origins = [\"https://app.example.dk\"]",
    )
    .await;
    // Links come from public_base_url, never from the Host header.
    let (s, _, h) = send(json_body(
        req(&app, "gp", Method::PUT, "/gp/Patient/lp1").header("host", "evil.example"),
        &patient("lp1", "0606060606"),
    ))
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        h["location"],
        "https://carebridge.example.dk/fhir/gp/Patient/lp1/_history/1"
    );
    // Prefer: return=minimal and OperationOutcome.
    let c = condition("lc1", "lp1", "T90", "active");
    let (s, body, h) = send(json_body(
        req(&app, "gp", Method::PUT, "/gp/Condition/lc1").header("prefer", "return=minimal"),
        &c,
    ))
    .await;
    assert_eq!(s, 201);
    assert_eq!(body, Value::String(String::new()));
    assert!(h.get("etag").is_some());
    let (s, body, _) = send(json_body(
        req(&app, "gp", Method::PUT, "/gp/Condition/lc1")
            .header("prefer", "return=OperationOutcome"),
        &c,
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["resourceType"], "OperationOutcome");
    // 406 for what the gateway does not serve.
    for (name, value) in [
        ("accept", "application/fhir+xml"),
        ("accept", "application/fhir+json; fhirVersion=3.0"),
    ] {
        let (s, oo, _) =
            send(req(&app, "gp", Method::GET, "/gp/Condition/lc1").header(name, value)).await;
        assert_eq!(s, 406, "{value}: {oo}");
        assert_eq!(oo["resourceType"], "OperationOutcome");
    }
    let (s, _, _) = send(req(
        &app,
        "gp",
        Method::GET,
        "/gp/Condition/lc1?_format=xml",
    ))
    .await;
    assert_eq!(s, 406);
    let (s, _, _) = send(
        req(&app, "gp", Method::GET, "/gp/Condition/lc1")
            .header("accept", "application/fhir+json; fhirVersion=4.0"),
    )
    .await;
    assert_eq!(s, 200);
    // Bundles: duplicate fullUrls and dangling urn:uuid references are refused.
    let dup = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:6f1b1b5e-0000-4000-8000-000000000001", "resource": condition("lc2", "lp1", "T90", "active"), "request": { "method": "PUT", "url": "Condition/lc2" } },
        { "fullUrl": "urn:uuid:6f1b1b5e-0000-4000-8000-000000000001", "resource": condition("lc3", "lp1", "T90", "active"), "request": { "method": "PUT", "url": "Condition/lc3" } } ] });
    let (s, oo, _) = app.post("gp", "/gp", &dup).await;
    assert_eq!(s, 400, "{oo}");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1].fullUrl");
    let mut dangling = condition("lc4", "lp1", "T90", "active");
    dangling["subject"]["reference"] = json!("urn:uuid:6f1b1b5e-0000-4000-8000-00000000dead");
    let b = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": dangling, "request": { "method": "PUT", "url": "Condition/lc4" } } ] });
    let (s, oo, _) = app.post("gp", "/gp", &b).await;
    assert_eq!(s, 400, "{oo}");
    // CORS: the configured origin only.
    let preflight = |origin: &'static str| {
        req(&app, "", Method::OPTIONS, "/Condition")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
    };
    let (_, _, h) = send(preflight("https://app.example.dk")).await;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.dk");
    let (_, _, h) = send(preflight("https://other.example")).await;
    assert!(h.get("access-control-allow-origin").is_none());
    // metadata names the public base and CORS.
    let (s, cap) = app.get("", "/metadata").await;
    assert_eq!(s, 200);
    assert_eq!(
        cap["implementation"]["url"],
        "https://carebridge.example.dk/fhir"
    );
    assert_eq!(cap["rest"][0]["security"]["cors"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_origins_there_is_no_cors_and_smart_discovery_needs_a_token_endpoint() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, _, h) = send(
        req(&app, "", Method::OPTIONS, "/Condition")
            .header("origin", "https://app.example.dk")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    let (s, oo, _) = send(
        app.http.get(
            app.base
                .replace("/fhir", "/.well-known/smart-configuration"),
        ),
    )
    .await;
    assert_eq!(s, 404, "{oo}");
    app.stop().await;

    let app = TestApp::spawn_config(Backend::Sqlite, |url| {
        config_text(url, "") + "\n[auth]\ntoken_endpoint = \"https://idp.example.dk/token\"\n"
    })
    .await;
    for url in [
        app.base
            .replace("/fhir", "/.well-known/smart-configuration"),
        format!("{}/.well-known/smart-configuration", app.base),
    ] {
        let (s, smart, _) = send(app.http.get(url)).await;
        assert_eq!(s, 200, "{smart}");
        assert_eq!(smart["token_endpoint"], "https://idp.example.dk/token");
    }
    let (_, cap) = app.get("", "/metadata").await;
    let sec = &cap["rest"][0]["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        sec["extension"][0]["extension"][0]["valueUri"],
        "https://idp.example.dk/token"
    );
    app.stop().await;
}

/// A value for a claimed search parameter of a type.
fn probe_value(kind: &str, name: &str, pid: &str) -> String {
    match (kind, name) {
        (_, "outcome") => "0".into(),
        (_, "action") => "R".into(),
        (_, "entity-type") => "Condition".into(),
        (_, "sector") => "gp".into(),
        ("reference", "patient" | "subject") => pid.to_owned(),
        ("reference", _) => "Practitioner/nobody".into(),
        ("date", _) => "ge2000-01-01".into(),
        ("token", "_id") => "nothing".into(),
        ("string", _) => "gp".into(),
        _ => "active".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capability_statement_claims_exactly_what_works() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cpr = "0707070707";
    push_scenario(&app, "dupthpgen-two-sectors.json", cpr).await;
    push_scenario(&app, "no-care-coordinator.json", cpr).await;
    let pid = gateway_patient(&app, cpr).await;
    let (s, cap) = app.get("", "/metadata").await;
    assert_eq!(s, 200);
    let rest = &cap["rest"][0];
    let strict = |path: String| {
        send(req(&app, "careteam", Method::GET, &path).header("prefer", "handling=strict"))
    };
    let mut exercised = 0;
    for r in rest["resource"].as_array().unwrap() {
        let rtype = r["type"].as_str().unwrap();
        let interactions: Vec<&str> = r["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        // Every stored type: one search per claimed parameter, strictly (an unclaimed or
        // unknown parameter would be 400).
        for p in r["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            let value = probe_value(p["type"].as_str().unwrap(), name, &pid);
            let value = if rtype == "Patient" && name == "identifier" {
                format!("{CPR}|{cpr}")
            } else {
                value
            };
            let who = if rtype == "AuditEvent" {
                "auditor"
            } else {
                "careteam"
            };
            let (s, b, _) = send(
                req(
                    &app,
                    who,
                    Method::GET,
                    &format!("/{rtype}?{name}={}", urlencode(&value)),
                )
                .header("prefer", "handling=strict"),
            )
            .await;
            assert_eq!(s, 200, "{rtype}?{name}={value}: {b}");
            exercised += 1;
        }
        for inc in r["searchInclude"].as_array().into_iter().flatten() {
            let (s, b, _) = strict(format!(
                "/{rtype}?patient={pid}&_include={}",
                inc.as_str().unwrap()
            ))
            .await;
            assert_eq!(s, 200, "{rtype} _include {inc}: {b}");
            exercised += 1;
        }
        for inc in r["searchRevInclude"].as_array().into_iter().flatten() {
            let (s, b, _) = strict(format!(
                "/{rtype}?patient={pid}&_revinclude={}",
                inc.as_str().unwrap()
            ))
            .await;
            assert_eq!(s, 200, "{rtype} _revinclude {inc}: {b}");
            exercised += 1;
        }
        // Read, vread and histories of the mission types the scenarios stored.
        if ["MedicationRequest", "CarePlan", "CareTeam"].contains(&rtype) {
            let (_, found) = app
                .get("careteam", &format!("/{rtype}?patient={pid}"))
                .await;
            let id = entries(&found)[0]["resource"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            for (code, path) in [
                ("read", format!("/{rtype}/{id}")),
                ("vread", format!("/{rtype}/{id}/_history/1")),
                ("history-instance", format!("/{rtype}/{id}/_history")),
                ("history-type", format!("/{rtype}/_history")),
                ("search-type", format!("/{rtype}?patient={pid}")),
            ] {
                assert!(
                    interactions.contains(&code),
                    "{rtype} does not claim {code}"
                );
                let (s, b) = app.get("careteam", &path).await;
                assert_eq!(s, 200, "{path}: {b}");
                exercised += 1;
            }
        }
    }
    assert!(exercised > 200, "{exercised} claims exercised");
    // The operations, with their definitions.
    let ops: Vec<&str> = rest["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["total-plan", "acknowledge", "snooze"]);
    let mut documents = vec![cap.clone()];
    for o in rest["operation"].as_array().unwrap() {
        let url = o["definition"].as_str().unwrap();
        let (s, def) = app.get("careteam", &below_base(&app, url)).await;
        assert_eq!(s, 200, "{url}");
        assert_eq!(def["resourceType"], "OperationDefinition");
        assert_eq!(def["url"], url);
        assert_eq!(Some(def["code"].as_str().unwrap()), o["name"].as_str());
        documents.push(def);
    }
    let (s, _) = app
        .get("careteam", &format!("/Patient/{pid}/$total-plan"))
        .await;
    assert_eq!(s, 200);
    let (_, alerts) = app
        .get("careteam", &format!("/DetectedIssue?patient={pid}"))
        .await;
    let id = entries(&alerts)[0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ack = json!({ "resourceType": "Parameters", "parameter": [{ "name": "author", "valueString": "Dr. Test" }] });
    let (s, _, _) = app
        .post(
            "careteam",
            &format!("/DetectedIssue/{id}/$acknowledge"),
            &ack,
        )
        .await;
    assert_eq!(s, 200);
    let snooze = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "until", "valueDate": "2999-01-01" },
        { "name": "author", "valueString": "Dr. Test" } ] });
    let (s, snoozed, _) = app
        .post("careteam", &format!("/DetectedIssue/{id}/$snooze"), &snooze)
        .await;
    assert_eq!(s, 200, "{snoozed}");
    documents.push(snoozed);
    // The sector's base claims the writes it takes; every route of the router is claimed.
    let (_, sector) = app.get("gp", "/gp/metadata").await;
    let condition = sector["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Condition")
        .unwrap()
        .clone();
    let codes: Vec<&str> = condition["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for code in [
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search-type",
        "create",
        "update",
    ] {
        assert!(codes.contains(&code), "{code}");
    }
    assert_eq!(condition["conditionalCreate"], true);
    let whole: Vec<&str> = sector["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(whole, ["transaction", "batch"]);
    documents.push(sector.clone());
    // What was claimed is valid R4 for an independent validator.
    let invalid: Vec<String> = tokio::task::spawn_blocking(move || {
        crate::common::peers::lantana_invalid(&documents)
            .iter()
            .map(|r| {
                format!(
                    "{}: {:?}",
                    r["resourceType"],
                    crate::common::peers::lantana_errors(r)
                )
            })
            .collect()
    })
    .await
    .unwrap();
    assert!(invalid.is_empty(), "{invalid:#?}");
    // Unclaimed: a parameter the registry lacks is refused under strict handling.
    let (s, _, _) = strict(format!("/Condition?patient={pid}&severity=high")).await;
    assert_eq!(s, 400);
    app.stop().await;
}

fn urlencode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every `reference` string anywhere in `v`.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_of_the_demo_in_the_cross_sector_view_resolves() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut cprs = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeSet::from(["Communication".to_owned()]);
    for sector in ["gp", "hospital", "municipality"] {
        let dir = repo().join("fixtures/demo").join(sector);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let bundle: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            for e in entries(&bundle) {
                let r = &e["resource"];
                types.insert(r["resourceType"].as_str().unwrap().to_owned());
                for i in r["identifier"].as_array().into_iter().flatten() {
                    if r["resourceType"] == "Patient" && i["system"] == CPR {
                        cprs.insert(i["value"].as_str().unwrap().to_owned());
                    }
                }
            }
            let (s, b, _) = app.post(sector, &format!("/{sector}"), &bundle).await;
            assert_eq!(s, 200, "{}: {b}", f.display());
        }
    }
    types.remove("Patient");
    let mut refs = Vec::new();
    for cpr in &cprs {
        let pid = gateway_patient(&app, cpr).await;
        for t in &types {
            let (_, found) =
                all_pages(&app, "careteam", &format!("/{t}?patient={pid}&_count=500")).await;
            for e in found {
                references(&e["resource"], &mut refs);
            }
        }
        let (_, alerts) =
            all_pages(&app, "careteam", &format!("/DetectedIssue?patient={pid}")).await;
        for e in alerts {
            references(&e["resource"], &mut refs);
        }
        let (s, plan) = app
            .get("careteam", &format!("/Patient/{pid}/$total-plan"))
            .await;
        assert_eq!(s, 200);
        references(&plan, &mut refs);
    }
    refs.sort();
    refs.dedup();
    assert!(refs.len() > 100, "{} distinct references", refs.len());
    let mut unresolved = Vec::new();
    for r in &refs {
        let (s, _) = app.get("careteam", &format!("/{r}")).await;
        if s != 200 {
            unresolved.push(format!("{r}: {s}"));
        }
    }
    assert!(
        unresolved.is_empty(),
        "{} of {} references do not resolve: {unresolved:#?}",
        unresolved.len(),
        refs.len()
    );
    println!(
        "demo: {} distinct references in the cross-sector view and $total-plan, all resolve",
        refs.len()
    );
    app.stop().await;
}
