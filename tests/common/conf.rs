//! Pieces of the configuration files that tests and benches generate: the four sectors of the
//! store tests, and static bearer tokens (a fresh token per client and the `[[clients]]` tables
//! that hold their SHA-256, what `carebridge token new` prints).
//!
//! Self-contained (no `super::` items): the tests include it as `common::conf`, the benches
//! with `#[path = "../tests/common/conf.rs"] mod conf;`.
#![allow(dead_code)]

use std::collections::HashMap;

/// The three Danish sectors with their profiles and base URLs that nobody serves (nothing is
/// delivered), and `lab`, a hospital-kind sector with structural validation only (official
/// examples and Synthea, which is US data).
pub const SECTORS: &str = r#"
[[sectors]]
id = "gp"
name = "General practice"
kind = "general-practice"
base_url = "http://gp.test/fhir"
profile = "dk-gp"

[[sectors]]
id = "hospital"
name = "Hospital"
kind = "hospital"
base_url = "http://hospital.test/fhir"
profile = "dk-hospital"

[[sectors]]
id = "municipality"
name = "Municipality"
kind = "municipality"
base_url = "http://municipality.test/fhir"
profile = "dk-municipality"

[[sectors]]
id = "lab"
name = "Laboratory"
kind = "hospital"
"#;

/// The `[[clients]]` table of one client holding `token`.
/// The three sectors as the benchmarks configure them: push mode, no base URL, no profile.
pub fn bench_sectors() -> String {
    let mut text = String::new();
    for (id, kind) in [
        ("gp", "general-practice"),
        ("hospital", "hospital"),
        ("municipality", "municipality"),
    ] {
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\n"
        ));
    }
    text
}

pub fn client_table(id: &str, role: &str, token: &str) -> String {
    // The suites' `careteam` client is a care-team system that asserts the treatment
    // relationship itself (tests/it/treatment.rs checks the persons' relationships).
    let asserts = if id == "careteam" {
        "asserts_relationship = true\n"
    } else {
        ""
    };
    format!(
        "\n[[clients]]\nid = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n{asserts}",
        carebridge::auth::token_hash(token)
    )
}

/// Fresh tokens for `(id, role)` clients: the `[[clients]]` tables to append to a
/// configuration, and each client's token by id.
pub fn mint(clients: &[(&str, &str)]) -> (String, HashMap<String, String>) {
    let mut text = String::new();
    let mut tokens = HashMap::new();
    for (id, role) in clients {
        let token = carebridge::auth::new_token();
        text.push_str(&client_table(id, role, &token));
        tokens.insert((*id).to_owned(), token);
    }
    (text, tokens)
}
