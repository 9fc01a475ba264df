//! The console in a real browser: Debian's chromium, headless, driven through chromedriver
//! against the real `carebridge demo`. Each page is checked by axe-core against WCAG 2.1 A
//! and AA in English and in Danish; the flows of `tests/it/console.rs` are done as a person
//! would: clicking a sign-in link, watching an alert arrive, acknowledging it with a reason.
//!
//! `CAREBRIDGE_SCREENSHOTS=docs/screenshots cargo test --test it browser::` also writes the
//! screenshots README shows.

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;

use super::console::{api, duplicate_metoprolol, open_alerts};
use crate::common::browser::Browser;
use crate::common::demo::Demo;

/// axe-core finds nothing on the current page, or the test fails naming what it found.
pub(crate) async fn accessible(b: &Browser, page: &str) {
    let v = b.axe_violations().await;
    assert!(
        v.is_empty(),
        "WCAG 2.1 A/AA violations on {page}: {}",
        Value::Array(v)
    );
}

/// The `data-alert` ids of the inbox rows in the browser.
async fn rows(b: &Browser) -> BTreeSet<String> {
    // One script call: the live script may swap the table between two WebDriver commands.
    let ids = b
        .client
        .execute(
            "return [...document.querySelectorAll('tr[data-alert]')].map(r => r.dataset.alert);",
            vec![],
        )
        .await
        .unwrap();
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn push_duplicate(demo: &Demo) {
    let resp = carebridge::outbound::client()
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
    assert!(resp.status().is_success());
}

/// Every page in both languages: axe-core, and a screenshot of each (the alert: `alert`, with
/// its history; the inbox's snoozed view besides the default one).
async fn every_page_is_accessible(b: &Browser, demo: &Demo, lang: &str, alert: &str) {
    b.client
        .goto(&format!("{}/ui/inbox", demo.origin))
        .await
        .unwrap();
    let html_lang = b
        .client
        .execute("return document.documentElement.lang;", vec![])
        .await
        .unwrap();
    assert_eq!(html_lang, lang);
    accessible(b, &format!("the inbox ({lang})")).await;
    b.screenshot(&format!("inbox-{lang}")).await;
    let alert_href = format!("/ui/alerts/{alert}");
    let patient = b
        .client
        .find(Locator::Css("tr[data-alert] a[href^='/ui/patients/']"))
        .await
        .unwrap();
    let patient_href = patient.attr("href").await.unwrap().unwrap();
    b.client
        .goto(&format!("{}{patient_href}", demo.origin))
        .await
        .unwrap();
    accessible(b, &format!("the patient page ({lang})")).await;
    b.screenshot(&format!("patient-{lang}")).await;
    b.client
        .goto(&format!("{}{alert_href}", demo.origin))
        .await
        .unwrap();
    accessible(b, &format!("an alert with its history ({lang})")).await;
    b.screenshot(&format!("alert-{lang}")).await;
    b.client
        .goto(&format!("{}/ui/inbox?status=snoozed", demo.origin))
        .await
        .unwrap();
    accessible(b, &format!("the snoozed alerts ({lang})")).await;
    b.client
        .goto(&format!("{}/ui/sign-in", demo.origin))
        .await
        .unwrap();
    accessible(b, &format!("the sign-in page ({lang})")).await;
}

/// Snoozes the alert shown on its detail page with the form: it leaves the inbox, the snoozed
/// view lists it, and its history shows it raised, acknowledged and snoozed, by whom.
async fn snooze_on_the_detail_page(b: &Browser, demo: &Demo, id: &str) {
    b.client
        .execute(
            "document.querySelector('form.snooze input[name=until]').value = '2999-01-01';",
            vec![],
        )
        .await
        .unwrap();
    let form = b.client.find(Locator::Css("form.snooze")).await.unwrap();
    form.find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("until the medication review")
        .await
        .unwrap();
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .wait()
        .for_element(Locator::XPath(
            "//ol[@class='history']/li[contains(., 'Snoozed until')]",
        ))
        .await
        .expect("the history shows the snooze");
    let history = b
        .client
        .find(Locator::Css("ol.history"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for step in [
        "Raised",
        "Acknowledged",
        "Snoozed until",
        "until the medication review",
    ] {
        assert!(history.contains(step), "{step} in {history}");
    }
    let (_, di) = api(demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert!(
        di["extension"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with("alert-snooze")
    );
    b.client
        .goto(&format!("{}/ui/inbox", demo.origin))
        .await
        .unwrap();
    assert!(!rows(b).await.contains(id), "out of the default inbox");
    b.client
        .goto(&format!("{}/ui/inbox?status=snoozed", demo.origin))
        .await
        .unwrap();
    assert_eq!(rows(b).await, BTreeSet::from([id.to_owned()]));
    assert!(b.text().await.contains("snoozed until 2999-01-01"));
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let demo = Demo::start();
    let b = Browser::start("en").await;

    // A demo link signs in once and lands on the inbox: exactly the person's open alerts.
    let link = demo.links["nurse-lassen"].clone();
    b.client.goto(&link).await.unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/inbox")
    );
    let mut expected = open_alerts(&demo, "nurse-lassen").await;
    assert_eq!(rows(&b).await, expected);

    // Live: a duplicate medication pushed by the hospital appears without a reload.
    b.client
        .execute("window.__sameDocument = true;", vec![])
        .await
        .unwrap();
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//p[@id='live' and normalize-space(.) != '']",
        ))
        .await
        .expect("the script is listening");
    push_duplicate(&demo).await;
    expected = open_alerts(&demo, "nurse-lassen").await;
    let mut shown = BTreeSet::new();
    for _ in 0..100 {
        shown = rows(&b).await;
        if shown == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, expected, "the new alert appeared");
    let same = b
        .client
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, Value::Bool(true), "without a reload");

    // Acknowledge the new duplicate with a reason: the API shows it acknowledged.
    b.client
        .goto(&format!("{}/ui/inbox?code=DUPTHPGEN", demo.origin))
        .await
        .unwrap();
    let row = b.client.find(Locator::Css("tr[data-alert]")).await.unwrap();
    let id = row.attr("data-alert").await.unwrap().unwrap();
    row.find(Locator::Css("select[name=reason]"))
        .await
        .unwrap()
        .select_by_value("handled")
        .await
        .unwrap();
    row.find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("stopped at the hospital")
        .await
        .unwrap();
    row.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .wait()
        .for_url(&url::Url::parse(&format!("{}/ui/alerts/{id}", demo.origin)).unwrap())
        .await
        .unwrap();
    let (_, di) = api(&demo, "nurse-lassen", &format!("/DetectedIssue/{id}")).await;
    assert_eq!(di["status"], "final");
    snooze_on_the_detail_page(&b, &demo, &id).await;

    // A form sent without its CSRF token is refused.
    b.client
        .goto(&format!("{}/ui/inbox", demo.origin))
        .await
        .unwrap();
    b.client
        .execute("const f = document.querySelector('form.ack'); f.querySelector('input[name=csrf]').remove(); f.submit();", vec![])
        .await
        .unwrap();
    b.client
        .wait()
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap();
    assert!(
        b.text().await.contains("The form had expired"),
        "{}",
        b.text().await
    );

    // The patient page lists every sector's records of the patient.
    let patient = di["patient"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    b.client
        .goto(&format!("{}/ui/patients/{patient}", demo.origin))
        .await
        .unwrap();
    let text = b.text().await;
    for sector in ["General practice", "Hospital", "Municipality"] {
        assert!(text.contains(sector), "{sector} on the patient page");
    }
    assert!(text.contains("Metoprolol 50 mg") && text.contains("Duplicate medication"));

    every_page_is_accessible(&b, &demo, "en", &id).await;
    // The language switch: every page again in Danish.
    b.client
        .goto(&format!("{}/ui/inbox", demo.origin))
        .await
        .unwrap();
    b.client
        .find(Locator::Css("a[lang=da]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    every_page_is_accessible(&b, &demo, "da", &id).await;

    // The link, used again, is refused.
    b.client.goto(&link).await.unwrap();
    assert!(
        b.text().await.contains("Linket er allerede brugt"),
        "{}",
        b.text().await
    );
    b.stop().await;
}

#[tokio::test]
async fn signing_in_through_a_real_openid_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (demo, _provider) = crate::common::oidc::demo_with_provider(dir.path());
    let b = Browser::start("en").await;
    b.client
        .goto(&format!("{}/ui/sign-in", demo.origin))
        .await
        .unwrap();
    accessible(&b, "the sign-in page with the organisation's login").await;
    b.client
        .find(Locator::Css("a[href='/ui/oidc/start']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The provider's own login form (its development interactions): account and password.
    let login = b
        .client
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .unwrap();
    login.send_keys("nurse-lassen").await.unwrap();
    b.client
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let inbox = url::Url::parse(&format!("{}/ui/inbox", demo.origin)).unwrap();
    if b.client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_url(&inbox)
        .await
        .is_err()
    {
        let at = b.client.current_url().await.unwrap();
        panic!("the sign-in ended at {at}: {}", b.text().await);
    }
    // The session is the person the provider's token names: Pia Lassen's alerts, exactly.
    assert_eq!(rows(&b).await, open_alerts(&demo, "nurse-lassen").await);
    assert!(b.text().await.contains("nurse-lassen"));
    accessible(&b, "the inbox after an OpenID sign-in").await;
    b.stop().await;
}
