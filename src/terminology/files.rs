//! Finding and reading the terminology files of `fhir-profiles/`, and the error that names a bad
//! one.

use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::fhir::json::parse_strict;

/// Nesting limit for terminology files and for walking resources (the API's parser already bounds
/// incoming documents well below this).
pub(crate) const MAX_DEPTH: usize = 100;

/// A terminology file that cannot be used. `message` names the element path and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct MappingError {
    pub file: String,
    pub message: String,
}

pub(super) fn error(file: &Path, message: impl Into<String>) -> MappingError {
    MappingError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

/// The `*.json` files of a folder, sorted; none when the folder does not exist.
pub(super) fn json_files(dir: &Path) -> Result<Vec<PathBuf>, MappingError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(error(
                dir,
                format!("cannot read the folder ({e}); make it a readable folder or remove it"),
            ));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| error(dir, format!("cannot list the folder ({e})")))?
            .path();
        if path.is_file() && path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A file's JSON, parsed strictly (duplicate keys and excessive depth are errors), that must be an
/// object: `not_object` says what it should be.
pub(super) fn read_object(file: &Path, not_object: &str) -> Result<Value, MappingError> {
    let bytes = std::fs::read(file).map_err(|e| error(file, format!("cannot read ({e})")))?;
    let doc = parse_strict(&bytes, MAX_DEPTH).map_err(|e| {
        error(
            file,
            format!("not valid JSON: {e}; fix the syntax of this file"),
        )
    })?;
    if !doc.is_object() {
        return Err(error(file, not_object));
    }
    Ok(doc)
}

/// The `resourceType` of a FHIR resource, when it is a string.
pub(super) fn resource_type(doc: &Value) -> Option<&str> {
    doc.get("resourceType").and_then(Value::as_str)
}

/// Whether `s` is an absolute URI of the kinds code systems and canonical URLs use: http(s) with a
/// host, `urn:oid:` with numeric arcs, or another `urn:`.
pub(super) fn is_uri(s: &str) -> bool {
    let ok_chars = !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    let http = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    let oid = s.strip_prefix("urn:oid:").is_some_and(|oid| {
        !oid.is_empty()
            && oid
                .split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
    });
    let other_urn = s.starts_with("urn:") && !s.starts_with("urn:oid:") && s.len() > 4;
    ok_chars && (http || oid || other_urn)
}
