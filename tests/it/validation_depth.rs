//! Validation as deep as the R4 definitions: no false rejection over the official examples and
//! the Synthea bundles; a mutation corpus of the examples against two independent validators.

use crate::common::{official_examples, peers, read_json, shared_data, synthea};
use carebridge::validate::{FhirSchema, Validator};
use serde_json::{Value, json};

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

/// A step into a JSON value.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// Every value below the root, with its path (nested resources included).
fn sites(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if k == "resourceType" {
                    continue;
                }
                path.push(Seg::Key(k.clone()));
                out.push((path.clone(), c.clone()));
                sites(c, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, c) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push((path.clone(), c.clone()));
                sites(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Up to `n` items spread evenly over the list (deterministic).
fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    let len = items.len();
    (0..n.min(len))
        .map(|i| items[i * len / n.min(len)].clone())
        .collect()
}

fn number(lexeme: &str) -> Value {
    serde_json::from_str(lexeme).expect("a JSON number")
}

/// The mutations of one resource: (what was done, the mutated resource).
fn mutations(original: &Value) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    sites(original, &mut Vec::new(), &mut all);
    let big = original.to_string().len() > 100_000;
    let scale = |n: usize| if big { n.div_ceil(4) } else { n };
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut put = |what: &str, path: &[Seg], new: Option<Value>| {
        let mut m = original.clone();
        match (new, path.split_last()) {
            (Some(new), _) => *at_mut(&mut m, path) = new,
            (None, Some((Seg::Key(k), parent))) => {
                if let Some(obj) = at_mut(&mut m, parent).as_object_mut() {
                    obj.shift_remove(k);
                }
            }
            (None, _) => return,
        }
        out.push((what.to_owned(), m));
    };
    let key_of = |p: &[Seg]| match p.last() {
        Some(Seg::Key(k)) => k.clone(),
        _ => String::new(),
    };
    let top: Vec<&(Vec<Seg>, Value)> = all.iter().filter(|(p, _)| p.len() == 1).collect();
    for (p, _) in top.iter().take(scale(16)) {
        put("delete", p, None);
    }
    let nested_keys: Vec<_> = all
        .iter()
        .filter(|(p, _)| p.len() > 1 && matches!(p.last(), Some(Seg::Key(_))))
        .cloned()
        .collect();
    for (p, _) in spread(&nested_keys, scale(10)) {
        put("delete", &p, None);
    }
    for (p, v) in spread(&all, scale(4)) {
        let wrong = match v {
            Value::String(_) => json!(42),
            Value::Number(_) => json!("42"),
            Value::Bool(b) => json!(b.to_string()),
            Value::Object(_) => json!("text"),
            Value::Array(items) => items.first().cloned().unwrap_or(json!(1)),
            Value::Null => json!({}),
        };
        put("wrong-type", &p, Some(wrong));
    }
    let strings: Vec<_> = all.iter().filter(|(_, v)| v.is_string()).cloned().collect();
    for (p, v) in spread(&strings, scale(3)) {
        put(
            "control-char",
            &p,
            Some(json!(format!("{}\u{1}x", v.as_str().unwrap_or("")))),
        );
    }
    for (p, _) in spread(&strings, scale(1)) {
        put("nul-char", &p, Some(json!("a\u{0}b")));
    }
    let dates: Vec<_> = strings
        .iter()
        .filter(|(_, v)| {
            let s = v.as_str().unwrap_or("");
            s.len() >= 10 && s.as_bytes()[4] == b'-' && s[..4].bytes().all(|b| b.is_ascii_digit())
        })
        .cloned()
        .collect();
    for (p, _) in spread(&dates, scale(2)) {
        put("bad-date", &p, Some(json!("2023-02-30")));
    }
    let integers: Vec<_> = all
        .iter()
        .filter(|(_, v)| {
            v.as_number()
                .is_some_and(|n| n.to_string().bytes().all(|b| b.is_ascii_digit()))
        })
        .cloned()
        .collect();
    for (p, _) in spread(&integers, scale(2)) {
        for lexeme in ["1e+2", "1.5", "123456789012345678901234567890123456789"] {
            put("bad-integer", &p, Some(number(lexeme)));
        }
    }
    let coded: Vec<_> = strings
        .iter()
        .filter(|(p, _)| {
            matches!(
                key_of(p).as_str(),
                "status" | "code" | "use" | "gender" | "intent" | "system"
            )
        })
        .cloned()
        .collect();
    for (p, v) in spread(&coded, scale(2)) {
        put(
            "code-whitespace",
            &p,
            Some(json!(format!(" {}", v.as_str().unwrap_or("")))),
        );
        put("bad-code", &p, Some(json!("not-a-code-of-this-set")));
    }
    for (p, _) in all
        .iter()
        .filter(|(p, _)| key_of(p) == "data")
        .take(scale(2))
    {
        put("bad-base64", p, Some(json!("%%%2@()()")));
    }
    for (p, _) in all.iter().filter(|(p, _)| key_of(p) == "id").take(scale(1)) {
        put("bad-id", p, Some(json!("bad id!")));
    }
    for (p, _) in all
        .iter()
        .filter(|(p, _)| key_of(p) == "reference")
        .take(scale(1))
    {
        put("bad-local-reference", p, Some(json!("#nowhere")));
    }
    let divs: Vec<_> = all
        .iter()
        .filter(|(p, _)| key_of(p) == "div")
        .take(scale(1))
        .cloned()
        .collect();
    let ns = "xmlns=\"http://www.w3.org/1999/xhtml\"";
    for (p, _) in divs {
        for (what, div) in [
            (
                "narrative-script",
                format!("<div {ns}><script>alert(1)</script>x</div>"),
            ),
            (
                "narrative-event",
                format!("<div {ns}><p onclick=\"x()\">x</p></div>"),
            ),
            (
                "narrative-js-url",
                format!("<div {ns}><a href=\"javascript:x()\">x</a></div>"),
            ),
            ("narrative-malformed", format!("<div {ns}><p>x</div>")),
            (
                "narrative-element",
                format!("<div {ns}><iframe src=\"x\">x</iframe></div>"),
            ),
            ("narrative-empty", format!("<div {ns}> </div>")),
            ("narrative-namespace", "<div><p>x</p></div>".to_owned()),
        ] {
            put(what, &p, Some(json!(div)));
        }
    }
    let objects: Vec<_> = all.iter().filter(|(_, v)| v.is_object()).cloned().collect();
    for (p, _) in spread(&objects, scale(2)) {
        put("empty-object", &p, Some(json!({})));
    }
    let arrays: Vec<_> = all.iter().filter(|(_, v)| v.is_array()).cloned().collect();
    for (p, _) in spread(&arrays, scale(2)) {
        put("empty-array", &p, Some(json!([])));
    }
    for (p, v) in spread(&objects, scale(1)) {
        let mut with = v.clone();
        with["bogusElement"] = json!(1);
        put("unknown-element", &p, Some(with));
    }
    for (p, _) in spread(&all, scale(1)) {
        put("null", &p, Some(Value::Null));
    }
    out
}

/// A peer's rejection the gateway does not share, with the mutation and what the peer said.
struct Disagreement {
    peer: &'static str,
    what: String,
    example: String,
    said: String,
}

#[test]
fn mutation_corpus_every_peer_rejection_is_shared_by_the_gateway() {
    let v = validator();
    let mut files = official_examples();
    files.retain(|p| !p.ends_with("Patient/json-edge-cases.json"));
    let originals: Vec<Value> = files.iter().map(|p| read_json(p)).collect();
    let mut corpus: Vec<(usize, String, Value)> = Vec::new();
    for (i, o) in originals.iter().enumerate() {
        corpus.extend(mutations(o).into_iter().map(|(what, m)| (i, what, m)));
    }
    assert!(
        corpus.len() >= 10_000,
        "only {} mutated resources",
        corpus.len()
    );
    let mutants: Vec<Value> = corpus.iter().map(|(_, _, m)| m.clone()).collect();
    let gateway: Vec<bool> = mutants
        .iter()
        .map(|m| !v.structural(m).is_empty())
        .collect();

    let lantana_base = peers::validate_with_lantana(&originals);
    let lantana = peers::validate_with_lantana(&mutants);
    let fr_base = peers::validate_with_fhir_resources(&originals);
    let fr = peers::validate_with_fhir_resources(&mutants);

    let mut disagreements = Vec::new();
    let mut peer_rejected = 0usize;
    let mut gateway_only = 0usize;
    let mut only_by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    for (n, (i, what, _)) in corpus.iter().enumerate() {
        let example = files[*i].display().to_string();
        let base: Vec<String> = peers::lantana_errors(&lantana_base[*i]);
        let new: Vec<String> = peers::lantana_errors(&lantana[n])
            .into_iter()
            .filter(|e| !base.contains(e))
            .collect();
        let fr_new = fr_base[*i]["valid"] == json!(true) && fr[n]["valid"] != json!(true);
        if !new.is_empty() || fr_new {
            peer_rejected += 1;
        } else if gateway[n] {
            gateway_only += 1;
            *only_by_kind.entry(what.clone()).or_default() += 1;
        }
        if gateway[n] {
            continue;
        }
        if !new.is_empty() {
            disagreements.push(Disagreement {
                peer: "lantana",
                what: what.clone(),
                example: example.clone(),
                said: new.join(" | "),
            });
        }
        if fr_new {
            let said = fr[n]["error"].as_str().unwrap_or("").to_owned();
            disagreements.push(Disagreement {
                peer: "fhir.resources",
                what: what.clone(),
                example,
                said,
            });
        }
    }
    let base_rejected = |results: &[Value]| -> Vec<String> {
        results
            .iter()
            .enumerate()
            .filter(|(_, r)| r["valid"] != json!(true))
            .map(|(i, _)| files[i].display().to_string())
            .collect()
    };
    eprintln!(
        "mutation corpus: {} resources, {} rejected by the gateway, {} by a peer (all shared by \
         the gateway: {}), {} by the gateway only: {only_by_kind:?}",
        corpus.len(),
        gateway.iter().filter(|g| **g).count(),
        peer_rejected,
        disagreements.is_empty(),
        gateway_only,
    );
    eprintln!(
        "official examples a peer rejects unmutated (their mutants are compared on new errors \
         only): Lantana {:?}, fhir.resources {:?}",
        base_rejected(&lantana_base),
        base_rejected(&fr_base)
    );
    // The peers must have had something to say, or the comparison proves nothing.
    assert!(
        peer_rejected >= 3_000,
        "peers rejected only {peer_rejected}"
    );
    let listed: Vec<String> = disagreements
        .iter()
        .map(|d| {
            let said: String = d.said.chars().take(400).collect();
            format!("{} {} {}: {said}", d.peer, d.what, d.example)
        })
        .collect();
    assert!(
        listed.is_empty(),
        "{} peer rejections the gateway does not share:\n{}",
        listed.len(),
        listed.join("\n")
    );
}
