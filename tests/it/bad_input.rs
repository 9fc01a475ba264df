//! The bad-input corpus: every case gets a 4xx with an OperationOutcome naming the path (where
//! there is one) and the reason, nothing is stored, and nothing answers 5xx.

use crate::common::{Backend, TestApp, expressions};
use reqwest::Method;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    who: &'static str,
    method: Method,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    /// A location the OperationOutcome must name (prefix match), if the case has one.
    expression: Option<&'static str>,
}

fn case(
    name: &'static str,
    who: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    expression: Option<&'static str>,
) -> Case {
    Case {
        name,
        who,
        method: Method::POST,
        path,
        content_type: "application/fhir+json",
        body: body.to_string().into_bytes(),
        status,
        expression,
    }
}

fn raw(
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: &[u8],
    status: u16,
    expression: Option<&'static str>,
) -> Case {
    Case {
        name,
        who: "lab",
        method: Method::POST,
        path,
        content_type,
        body: body.to_vec(),
        status,
        expression,
    }
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0101701234" }],
        "name": [{ "family": "Testesen", "given": ["Tove"] }],
        "gender": "female",
        "birthDate": "1970-01-01"
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn condition(system: &str, code: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": system, "code": code }] },
        "subject": { "reference": "Patient/p1" }
    })
}

fn transaction(kind: &str, resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let t = r["resourceType"].as_str().unwrap_or("Patient").to_owned();
            json!({ "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000000{i}"), "resource": r, "request": { "method": "POST", "url": t } })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

fn deep(levels: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"resourceType":"Patient","extension":"#);
    for _ in 0..levels {
        s.push_str(r#"[{"url":"http://x","extension":"#);
    }
    s.push_str("[]");
    for _ in 0..levels {
        s.push_str("}]");
    }
    s.push('}');
    s.into_bytes()
}

fn cases() -> Vec<Case> {
    let mut big = patient();
    big["text"] = json!({ "status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(5 * 1024 * 1024)) });
    let mut many_entries = Vec::new();
    for _ in 0..5001 {
        many_entries.push(json!({ "resourceType": "Basic", "code": { "text": "x" } }));
    }
    vec![
        raw(
            "non-JSON body",
            "/lab/Patient",
            "application/fhir+json",
            b"this is not json",
            400,
            Some("Patient"),
        ),
        raw(
            "truncated JSON",
            "/lab/Patient",
            "application/fhir+json",
            br#"{"resourceType": "Patient", "name": [{"#,
            400,
            Some("Patient"),
        ),
        raw(
            "JSON null",
            "/lab/Patient",
            "application/fhir+json",
            b"null",
            400,
            Some("Patient"),
        ),
        raw(
            "JSON array",
            "/lab/Patient",
            "application/json",
            b"[]",
            400,
            Some("Patient"),
        ),
        raw(
            "empty body",
            "/lab/Patient",
            "application/fhir+json",
            b"",
            400,
            None,
        ),
        raw(
            "wrong media type (text/plain)",
            "/lab/Patient",
            "text/plain",
            br#"{"resourceType":"Patient"}"#,
            415,
            None,
        ),
        raw(
            "wrong media type (XML)",
            "/lab/Patient",
            "application/fhir+xml",
            b"<Patient/>",
            415,
            None,
        ),
        raw(
            "no media type",
            "/lab/Patient",
            "",
            br#"{"resourceType":"Patient"}"#,
            415,
            None,
        ),
        raw(
            "duplicate keys",
            "/lab/Patient",
            "application/fhir+json",
            br#"{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}"#,
            400,
            Some("Patient.name[0].family"),
        ),
        raw(
            "nesting deeper than the limit",
            "/lab/Patient",
            "application/fhir+json",
            &deep(80),
            400,
            Some("Patient.extension"),
        ),
        case(
            "unknown element",
            "lab",
            "/lab/Patient",
            with(patient(), "favouriteColour", json!("blue")),
            400,
            Some("Patient.favouriteColour"),
        ),
        case(
            "wrong type",
            "lab",
            "/lab/Patient",
            with(patient(), "gender", json!(1)),
            400,
            Some("Patient.gender"),
        ),
        case(
            "code not in the value set",
            "lab",
            "/lab/Patient",
            with(patient(), "gender", json!("yes")),
            400,
            Some("Patient.gender"),
        ),
        case(
            "bad date (30 February)",
            "lab",
            "/lab/Patient",
            with(patient(), "birthDate", json!("1970-02-30")),
            400,
            Some("Patient.birthDate"),
        ),
        case(
            "bad date format",
            "lab",
            "/lab/Patient",
            with(patient(), "birthDate", json!("01-01-1970")),
            400,
            Some("Patient.birthDate"),
        ),
        case(
            "bad id",
            "lab",
            "/lab/Patient",
            with(patient(), "id", json!("not an id!")),
            400,
            Some("Patient.id"),
        ),
        case(
            "missing resourceType",
            "lab",
            "/lab/Patient",
            json!({ "gender": "male" }),
            400,
            Some("Patient.resourceType"),
        ),
        case(
            "unknown resourceType",
            "lab",
            "/lab/Patient",
            json!({ "resourceType": "Patiant" }),
            400,
            Some("Patient.resourceType"),
        ),
        case(
            "type not matching the URL",
            "lab",
            "/lab/Condition",
            patient(),
            400,
            Some("Condition.resourceType"),
        ),
        case(
            "no such resource type in the URL",
            "lab",
            "/lab/Patiant",
            patient(),
            404,
            None,
        ),
        case(
            "no such sector",
            "lab",
            "/nowhere/Patient",
            patient(),
            404,
            None,
        ),
        case(
            "empty array",
            "lab",
            "/lab/Patient",
            with(patient(), "name", json!([])),
            400,
            Some("Patient.name"),
        ),
        case(
            "object expected, string given",
            "lab",
            "/lab/Condition",
            with(
                condition("urn:oid:1.2.208.176.2.4.12", "DE119"),
                "subject",
                json!("Patient/p1"),
            ),
            400,
            Some("Condition.subject"),
        ),
        case(
            "two forms of one choice element",
            "lab",
            "/lab/Condition",
            with(
                with(
                    condition("urn:oid:1.2.208.176.2.4.12", "DE119"),
                    "onsetDateTime",
                    json!("2020-01-01"),
                ),
                "onsetString",
                json!("spring"),
            ),
            400,
            Some("Condition.onset"),
        ),
        case(
            "clinical status outside its required binding",
            "lab",
            "/lab/Condition",
            with(
                condition("urn:oid:1.2.208.176.2.4.12", "DE119"),
                "clinicalStatus",
                json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "cured" }] }),
            ),
            400,
            Some("Condition.clinicalStatus.coding[0].code"),
        ),
        case(
            "extension without url",
            "lab",
            "/lab/Patient",
            with(patient(), "extension", json!([{ "valueString": "x" }])),
            400,
            Some("Patient.extension[0].url"),
        ),
        case(
            "fractional integer",
            "lab",
            "/lab/Patient",
            with(patient(), "multipleBirthInteger", json!(1.5)),
            400,
            Some("Patient.multipleBirthInteger"),
        ),
        case("oversized body", "lab", "/lab/Patient", big, 413, None),
        case(
            "transaction with one bad entry",
            "lab",
            "/lab",
            transaction(
                "transaction",
                vec![
                    patient(),
                    with(patient(), "gender", json!("unknown-gender")),
                ],
            ),
            400,
            Some("Bundle.entry[1].resource.gender"),
        ),
        case(
            "Bundle that is neither transaction nor batch",
            "lab",
            "/lab",
            with(
                transaction("collection", vec![patient()]),
                "type",
                json!("collection"),
            ),
            400,
            Some("Bundle.type"),
        ),
        case(
            "transaction entry with an unsupported method",
            "lab",
            "/lab",
            json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{ "request": { "method": "DELETE", "url": "Patient/1" } }] }),
            400,
            Some("Bundle.entry[0].request.method"),
        ),
        case(
            "transaction with too many entries",
            "lab",
            "/lab",
            transaction("transaction", many_entries),
            400,
            Some("Bundle.entry"),
        ),
        case(
            "reference to another sector's patient",
            "hospital",
            "/hospital/Condition",
            with(
                condition("urn:oid:1.2.208.176.2.4.12", "DE119"),
                "subject",
                json!({ "reference": "http://gp.test/fhir/Patient/123" }),
            ),
            422,
            Some("Condition.subject.reference"),
        ),
        case(
            "hospital Condition without an SKS-D or ICD-10 code",
            "hospital",
            "/hospital/Condition",
            condition("urn:oid:1.2.208.176.2.31", "T90"),
            422,
            Some("Condition.code"),
        ),
        case(
            "municipal CarePlan without an FSIII intervention",
            "municipality",
            "/municipality/CarePlan",
            json!({ "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": { "reference": "Patient/p1" },
                    "activity": [{ "detail": { "status": "in-progress", "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "385763009" }] } } }] }),
            422,
            Some("CarePlan.activity"),
        ),
        case(
            "Patient without a CPR number",
            "gp",
            "/gp/Patient",
            with(
                patient(),
                "identifier",
                json!([{ "system": "urn:x", "value": "1" }]),
            ),
            422,
            Some("Patient.identifier"),
        ),
        case(
            "Condition without a subject (required by R4)",
            "lab",
            "/lab/Condition",
            json!({ "resourceType": "Condition", "code": { "text": "x" } }),
            400,
            Some("Condition.subject"),
        ),
        case(
            "Communication without a subject (a common sector rule)",
            "lab",
            "/lab/Communication",
            json!({ "resourceType": "Communication", "status": "completed" }),
            422,
            Some("Communication.subject"),
        ),
        Case {
            name: "update with an id differing from the URL",
            who: "lab",
            method: Method::PUT,
            path: "/lab/Patient/abc",
            content_type: "application/fhir+json",
            body: with(patient(), "id", json!("xyz")).to_string().into_bytes(),
            status: 400,
            expression: Some("Patient.id"),
        },
        Case {
            name: "update without an id",
            who: "lab",
            method: Method::PUT,
            path: "/lab/Patient/abc",
            content_type: "application/fhir+json",
            body: patient().to_string().into_bytes(),
            status: 400,
            expression: Some("Patient.id"),
        },
        Case {
            name: "update with an invalid id in the URL",
            who: "lab",
            method: Method::PUT,
            path: "/lab/Patient/a$b",
            content_type: "application/fhir+json",
            body: with(patient(), "id", json!("a$b")).to_string().into_bytes(),
            status: 400,
            expression: Some("Patient.id"),
        },
        case("no token", "", "/lab/Patient", patient(), 401, None),
        case(
            "unknown token",
            "cb_not-a-real-token",
            "/lab/Patient",
            patient(),
            401,
            None,
        ),
        case(
            "a sector client writing under another sector",
            "gp",
            "/hospital/Patient",
            patient(),
            403,
            None,
        ),
        case(
            "a care-team client writing",
            "careteam",
            "/gp/Patient",
            patient(),
            403,
            None,
        ),
    ]
}

async fn run_corpus(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    for c in cases {
        let (status, body, headers) = app
            .send(
                c.who,
                c.method.clone(),
                c.path,
                Some(c.body.clone()),
                c.content_type,
            )
            .await;
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/fhir+json"),
            "{}",
            c.name
        );
        assert_eq!(
            body["resourceType"], "OperationOutcome",
            "{}: {body}",
            c.name
        );
        let issues = body["issue"].as_array().cloned().unwrap_or_default();
        assert!(!issues.is_empty(), "{}", c.name);
        for i in &issues {
            let d = i["diagnostics"].as_str().unwrap_or_default();
            assert!(d.len() > 5, "{}: an issue without a reason: {i}", c.name);
            assert!(
                !d.contains("Testesen") && !d.contains("0101701234"),
                "{}: diagnostics quote patient data: {d}",
                c.name
            );
        }
        if let Some(expected) = c.expression {
            let exprs = expressions(&body);
            assert!(
                exprs.iter().any(|e| e.starts_with(expected)),
                "{}: expected a location under {expected}, got {exprs:?}",
                c.name
            );
        }
        assert_eq!(
            app.stored_count().await,
            0,
            "{}: something was stored",
            c.name
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_on_sqlite() {
    run_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_on_postgres() {
    run_corpus(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fails_only_its_bad_entry() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let bundle = transaction(
        "batch",
        vec![patient(), with(patient(), "gender", json!(7))],
    );
    let (status, body, _) = app.post("lab", "/lab", &bundle).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    assert_eq!(body["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(body["entry"][1]["response"]["status"], "400");
    let exprs = expressions(&body["entry"][1]["response"]["outcome"]);
    assert!(
        exprs.iter().any(|e| e == "Bundle.entry[1].resource.gender"),
        "{exprs:?}"
    );
    assert_eq!(app.stored_count().await, 1, "only the good entry is stored");
    app.stop().await;
}
