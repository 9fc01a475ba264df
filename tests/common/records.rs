//! The records the exchange tests and the P4 bench send: a Patient with a CPR number, a
//! Condition with an ICPC-2 code (and an extension and a primitive extension that must pass
//! through every hop), and a transaction Bundle that PUTs them.
//!
//! Self-contained (no `super::` items): the tests include it as `common::records`, the benches
//! with `#[path = "../tests/common/records.rs"] mod records;`.
#![allow(dead_code)]

use serde_json::{Value, json};

/// The Danish CPR number's identifier system.
pub const CPR: &str = "urn:oid:1.2.208.176.1.2";
/// ICPC-2, the general practitioners' code system (the hospital's ConceptMap translates it).
pub const ICPC2: &str = "urn:oid:1.2.208.176.2.31";

pub fn patient(cpr: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": CPR, "value": cpr}],
        "name": [{"family": family, "given": ["Test"]}],
        "gender": "female",
        "birthDate": "1948-03-14"
    })
}

/// An active, confirmed Condition of `Patient/<patient>` with a business identifier, the
/// given code, an extension and a primitive extension (`_recordedDate`).
pub fn condition(id: &str, patient: &str, system: &str, code: &str, display: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "id": id,
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/carebridge-test-note", "valueString": "kept as is"}],
        "identifier": [{"system": format!("urn:carebridge:test:{id}"), "value": id}],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": system, "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "recordedDate": "2026-10-01",
        "_recordedDate": {"extension": [{"url": "http://example.org/fhir/StructureDefinition/carebridge-test-precision", "valueCode": "day"}]}
    })
}

/// Heart failure, ICPC-2 K77.
pub fn heart_failure(id: &str, patient: &str) -> Value {
    condition(id, patient, ICPC2, "K77", "Hjerteinsufficiens")
}

/// Heart failure without the two extensions.
pub fn plain_heart_failure(id: &str, patient: &str) -> Value {
    let mut c = heart_failure(id, patient);
    let fields = c.as_object_mut().expect("an object");
    fields.shift_remove("extension");
    fields.shift_remove("_recordedDate");
    c
}

/// A transaction Bundle that PUTs each resource at `<Type>/<id>`.
pub fn transaction(resources: &[Value]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": resources.iter().map(|r| json!({
            "resource": r,
            "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default())}
        })).collect::<Vec<_>>()
    })
}
