//! The care team's console (`/ui/`) against the real `carebridge demo`: sign-in through the
//! demo's one-time links, the inbox against the FHIR API's answer for the same person, the
//! patient page against `$total-plan`, acknowledging, CSRF, the live stream, languages.
//! (The same flows in a real browser, with axe-core, are in `tests/it/browser.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::demo::Demo;

/// A person's browser without a browser: the session cookie and the page's CSRF token.
pub(crate) struct Visitor {
    http: reqwest::Client,
    origin: String,
    cookie: String,
}

fn no_redirects() -> reqwest::Client {
    carebridge::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// Signs in with a demo link; panics unless it answers 303 with a session cookie.
pub(crate) async fn sign_in(demo: &Demo, person: &str) -> Visitor {
    let http = no_redirects();
    let resp = http.get(&demo.links[person]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/ui/inbox");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    Visitor {
        http,
        origin: demo.origin.clone(),
        cookie,
    }
}

impl Visitor {
    pub(crate) async fn get(&self, path: &str, lang: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.origin))
            .header("cookie", &self.cookie)
            .header("accept-language", lang)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.origin))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

/// Every value of `attr="…"` in a page.
pub(crate) fn attrs(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

pub(crate) fn csrf(html: &str) -> String {
    let i = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    attrs(&html[i..], "value")[0].clone()
}

pub(crate) async fn api(demo: &Demo, who: &str, path: &str) -> (u16, Value) {
    let resp = carebridge::outbound::client()
        .unwrap()
        .get(format!("{}/fhir{path}", demo.origin))
        .bearer_auth(&demo.tokens[who])
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The ids of the open alerts the FHIR API gives a person.
pub(crate) async fn open_alerts(demo: &Demo, who: &str) -> BTreeSet<String> {
    let (status, bundle) = api(demo, who, "/DetectedIssue?_count=1000").await;
    assert_eq!(status, 200);
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["status"] != "cancelled")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_sign_in_link_works_once_and_the_inbox_holds_exactly_the_persons_alerts() {
    let demo = Demo::start();
    let lassen = sign_in(&demo, "nurse-lassen").await;
    let again = no_redirects()
        .get(&demo.links["nurse-lassen"])
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::FORBIDDEN,
        "a used link is refused"
    );
    assert!(again.headers().get("set-cookie").is_none());

    for (person, other) in [("nurse-lassen", "nurse-dam"), ("nurse-dam", "nurse-lassen")] {
        let visitor = if person == "nurse-lassen" {
            Visitor {
                http: no_redirects(),
                origin: lassen.origin.clone(),
                cookie: lassen.cookie.clone(),
            }
        } else {
            sign_in(&demo, person).await
        };
        let (status, page) = visitor.get("/ui/inbox", "en").await;
        assert_eq!(status, 200);
        let shown: BTreeSet<String> = attrs(&page, "data-alert").into_iter().collect();
        let expected = open_alerts(&demo, person).await;
        assert!(!expected.is_empty(), "{person} has open alerts in the demo");
        assert_eq!(
            shown, expected,
            "{person}'s inbox is the API's answer for {person}"
        );
        let others = open_alerts(&demo, other).await;
        assert!(shown.is_disjoint(&others), "none of {other}'s alerts");
    }

    // Owners: an alert that nobody coordinates is listed under "nobody", never under a
    // coordinator.
    let (_, no_coordinator) = api(
        &demo,
        "nurse-lassen",
        "/DetectedIssue?code=no-care-coordinator",
    )
    .await;
    let uncoordinated: BTreeSet<String> = no_coordinator["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["status"] != "cancelled")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!uncoordinated.is_empty());
    let (_, nobody) = lassen.get("/ui/inbox?owner=nobody", "en").await;
    let (_, someone) = lassen.get("/ui/inbox?owner=coordinator", "en").await;
    let nobody: BTreeSet<String> = attrs(&nobody, "data-alert").into_iter().collect();
    let someone: BTreeSet<String> = attrs(&someone, "data-alert").into_iter().collect();
    assert!(uncoordinated.is_subset(&nobody) && uncoordinated.is_disjoint(&someone));
    assert_eq!(
        nobody.len() + someone.len(),
        open_alerts(&demo, "nurse-lassen").await.len()
    );

    // No session: the sign-in page; an unknown cookie: the sign-in page saying so.
    let anonymous = no_redirects()
        .get(format!("{}/ui/inbox", demo.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()["location"], "/ui/sign-in");
    let stale = no_redirects()
        .get(format!("{}/ui/inbox", demo.origin))
        .header("cookie", "cb_session=cb_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["location"], "/ui/sign-in?ended=1");
}

#[tokio::test]
async fn acknowledging_with_a_reason_changes_the_alert_in_the_api_and_forms_need_their_csrf_token()
{
    let demo = Demo::start();
    let v = sign_in(&demo, "nurse-lassen").await;
    let (_, page) = v.get("/ui/inbox", "da").await;
    let token = csrf(&page);
    let id = attrs(&page, "data-alert")[0].clone();
    let path = format!("/ui/alerts/{id}/acknowledge");
    let before = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}"))
        .await
        .1;

    // Without the token, with another token, with an unknown reason: refused, nothing changes.
    for form in [
        vec![("reason", "handled")],
        vec![("csrf", "cb_forged"), ("reason", "handled")],
    ] {
        let resp = v.post(&path, &form).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("Formularen"));
    }
    let resp = v
        .post(&path, &[("csrf", &token), ("reason", "no-such-reason")])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let after = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}"))
        .await
        .1;
    assert_eq!(after["meta"]["versionId"], before["meta"]["versionId"]);

    let resp = v
        .post(
            &path,
            &[
                ("csrf", &token),
                ("reason", "intended"),
                ("comment", "agreed with the GP"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], format!("/ui/alerts/{id}"));
    let (status, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(di["status"], "final");
    let m = di["mitigation"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(m["author"]["display"], "https://autregweb.sst.dk|N8SD2");
    let text = m["action"]["text"].as_str().unwrap();
    assert!(
        text.contains("(intended)") && text.contains("agreed with the GP"),
        "{text}"
    );

    // The detail page shows the acknowledgement in the history.
    let (status, detail) = v.get(&format!("/ui/alerts/{id}"), "en").await;
    assert_eq!(status, 200);
    assert!(detail.contains("agreed with the GP"));

    // Another person's alert is not theirs to acknowledge: the gateway refuses it.
    let dam_alert = open_alerts(&demo, "nurse-dam")
        .await
        .into_iter()
        .next()
        .unwrap();
    let resp = v
        .post(
            &format!("/ui/alerts/{dam_alert}/acknowledge"),
            &[("csrf", &token), ("reason", "handled")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (status, _) = v.get(&format!("/ui/alerts/{dam_alert}"), "en").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Signing out needs the token too; then the session is gone.
    assert_eq!(
        v.post("/ui/sign-out", &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let out = v.post("/ui/sign-out", &[("csrf", &token)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = v.get("/ui/inbox", "en").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_patient_page_shows_every_sectors_records_of_the_total_plan() {
    let demo = Demo::start();
    let v = sign_in(&demo, "nurse-lassen").await;
    let (_, page) = v.get("/ui/inbox", "en").await;
    let patient = attrs(&page, "href")
        .into_iter()
        .find_map(|h| h.strip_prefix("/ui/patients/").map(str::to_owned))
        .expect("a patient link");
    let (status, plan) = api(
        &demo,
        "nurse-lassen",
        &format!("/Patient/{patient}/$total-plan"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, html) = v.get(&format!("/ui/patients/{patient}"), "en").await;
    assert_eq!(status, 200);
    let mut sectors = BTreeSet::new();
    for e in plan["entry"].as_array().unwrap() {
        let r = &e["resource"];
        let concept = match r["resourceType"].as_str().unwrap() {
            "Condition" => &r["code"],
            "MedicationRequest" | "MedicationStatement" => &r["medicationCodeableConcept"],
            _ => continue,
        };
        let text = concept["text"]
            .as_str()
            .or(concept["coding"][0]["display"].as_str())
            .unwrap();
        assert!(html.contains(text), "the page lacks {text}");
        let sector = r["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["system"] == carebridge::fhir::SECTOR_TAG_SYSTEM)
            .unwrap();
        sectors.insert(sector["display"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        sectors.len(),
        3,
        "the demo patient has records of three sectors"
    );
    for s in &sectors {
        assert!(html.contains(&format!("<h3>{s}</h3>")), "a column for {s}");
    }
    // The heading names the patient as a sector's Patient does.
    let (_, gateway_patient) = api(&demo, "nurse-lassen", &format!("/Patient/{patient}")).await;
    let mut names = Vec::new();
    for link in gateway_patient["link"].as_array().unwrap() {
        let (_, p) = api(
            &demo,
            "nurse-lassen",
            &format!("/{}", link["other"]["reference"].as_str().unwrap()),
        )
        .await;
        let n = &p["name"][0];
        let given: Vec<&str> = n["given"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        names.push(format!(
            "{} {}",
            given.join(" "),
            n["family"].as_str().unwrap()
        ));
    }
    let h1 = &html[html.find("<h1>").unwrap()..html.find("</h1>").unwrap()];
    assert!(
        names.iter().any(|n| h1.contains(n.as_str())),
        "{h1} names one of {names:?}"
    );
    // A patient outside the person's care: the gateway refuses, the page says so.
    let (_, dam_page) = {
        let dam = sign_in(&demo, "nurse-dam").await;
        dam.get("/ui/inbox", "en").await
    };
    let theirs = attrs(&dam_page, "href")
        .into_iter()
        .find_map(|h| h.strip_prefix("/ui/patients/").map(str::to_owned))
        .unwrap();
    let (status, _) = v.get(&format!("/ui/patients/{theirs}"), "en").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A MedicationRequest of the hospital for Karen Holm with the active ingredient of her GP's
/// metoprolol: a duplicate medication across two sectors.
pub(crate) fn duplicate_metoprolol() -> Value {
    json!({ "resourceType": "MedicationRequest", "id": "console-dup-1", "status": "active", "intent": "order",
        "medicationCodeableConcept": { "coding": [{ "system": "http://www.whocc.no/atc", "code": "C07AB02", "display": "metoprolol" }], "text": "Metoprolol 50 mg" },
        "subject": { "reference": "Patient/9e95a454-d498-461e-a6c1-14a4aeedfae4" },
        "authoredOn": "2026-11-30",
        "dosageInstruction": [{ "text": "1 tablet twice daily", "route": { "coding": [{ "system": "http://snomed.info/sct", "code": "26643006", "display": "Oral use" }] } }] })
}

#[tokio::test]
async fn a_duplicate_pushed_by_a_sector_reaches_the_inbox_stream_and_the_inbox() {
    let demo = Demo::start();
    let v = sign_in(&demo, "nurse-lassen").await;
    let before: BTreeSet<String> = open_alerts(&demo, "nurse-lassen").await;
    let mut events = v
        .http
        .get(format!("{}/ui/events", demo.origin))
        .header("cookie", &v.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let pushed = carebridge::outbound::client()
        .unwrap()
        .put(format!(
            "{}/fhir/hospital/MedicationRequest/console-dup-1",
            demo.origin
        ))
        .bearer_auth(&demo.tokens["hospital-system"])
        .header("content-type", "application/fhir+json")
        .body(duplicate_metoprolol().to_string())
        .send()
        .await
        .unwrap();
    let status = pushed.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        pushed.text().await.unwrap()
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("\"raised\"") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("an event in time");
        seen.push_str(&String::from_utf8_lossy(
            &chunk.unwrap().expect("the stream stays open"),
        ));
    }
    assert!(seen.contains("event: alert"), "{seen}");
    assert!(
        !seen.contains("metoprolol"),
        "the stream carries no record contents: {seen}"
    );
    let after = open_alerts(&demo, "nurse-lassen").await;
    let new: Vec<&String> = after.difference(&before).collect();
    assert_eq!(new.len(), 1, "one new alert: {new:?}");
    let (_, page) = v.get("/ui/inbox?code=DUPTHPGEN", "en").await;
    assert!(attrs(&page, "data-alert").contains(new[0]));
    // Nurse Dam's stream never hears of Karen Holm's alert: her own inbox does not change.
    let dam = sign_in(&demo, "nurse-dam").await;
    let (_, page) = dam.get("/ui/inbox", "en").await;
    assert!(!attrs(&page, "data-alert").contains(new[0]));
}

#[tokio::test]
async fn pages_follow_the_browsers_language_and_the_switch() {
    let demo = Demo::start();
    let v = sign_in(&demo, "nurse-lassen").await;
    let (_, en) = v.get("/ui/inbox", "en-GB,en;q=0.9").await;
    assert!(en.contains("<html lang=\"en\">") && en.contains("Open alerts for your patients"));
    let (_, da) = v.get("/ui/inbox", "da-DK,da;q=0.9,en;q=0.5").await;
    assert!(da.contains("<html lang=\"da\">") && da.contains("Åbne advarsler for dine patienter"));
    // The switch sets a cookie and returns to the page; only to a console path.
    let resp = no_redirects()
        .get(format!("{}/ui/language/en?back=/ui/inbox", demo.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/ui/inbox");
    let lang = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(lang, "cb_lang=en");
    for evil in ["https://evil.example/", "//evil.example/ui/", "/ui/../x?y"] {
        let resp = no_redirects()
            .get(format!(
                "{}/ui/language/da?back={}",
                demo.origin,
                percent_encoding::utf8_percent_encode(evil, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["location"], "/ui/inbox", "{evil}");
    }
    let with_both = v
        .http
        .get(format!("{}/ui/inbox", demo.origin))
        .header("cookie", format!("{}; {lang}", v.cookie))
        .header("accept-language", "da")
        .send()
        .await
        .unwrap();
    assert!(
        with_both
            .text()
            .await
            .unwrap()
            .contains("<html lang=\"en\">"),
        "the switch wins"
    );
}

#[tokio::test]
async fn an_openid_sign_in_starts_with_pkce_and_takes_back_only_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let (demo, provider) = crate::common::oidc::demo_with_provider(dir.path());
    let http = no_redirects();
    let start = http
        .get(format!("{}/ui/oidc/start", demo.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let to = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        to.starts_with(&format!("{}/auth?", provider.issuer)),
        "{to}"
    );
    for part in [
        "response_type=code",
        "code_challenge_method=S256",
        "client_id=carebridge%2Dconsole",
        "state=",
        "code_challenge=",
    ] {
        assert!(to.contains(part), "{to} lacks {part}");
    }
    // A callback with a state the gateway never issued, or none: refused, no session.
    for query in ["?code=abc&state=cb_forged", "?code=abc"] {
        let resp = http
            .get(format!("{}/ui/oidc/callback{query}", demo.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get("set-cookie").is_none());
    }
    // The state it did issue, with a code the provider never gave: refused by the provider.
    let state = to
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let state = percent_encoding::percent_decode_str(state)
        .decode_utf8()
        .unwrap()
        .to_string();
    let resp = http
        .get(format!(
            "{}/ui/oidc/callback?code=not-a-code&state={state}",
            demo.origin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("set-cookie").is_none());
}
