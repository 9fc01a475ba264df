//! Sector profile rules: JSON Schema documents in `fhir-profiles/rules/`, applied after the
//! structural check.
//!
//! Layout: `fhir-profiles/rules/<set>/<ResourceType>.schema.json`. The set `common` applies to
//! every sector; a sector's `profile` names one more set. Each document is JSON Schema 2020-12
//! (unless it says otherwise in `$schema`). The `description` of the subschema whose keyword
//! failed (or of its nearest ancestor) becomes the issue's diagnostics, so rule authors word the
//! error the sender sees.

use jsonschema::Validator;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::schema::issues_from_error;
use crate::fhir::outcome::Issue;

/// The set that applies to every sector.
pub const COMMON: &str = "common";

struct Rule {
    schema: Value,
    validator: Validator,
}

/// Every rule set found under the rules folder, by set name and resource type.
#[derive(Default)]
pub struct Profiles {
    sets: HashMap<String, HashMap<String, Vec<Rule>>>,
}

/// A profile rule file that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ProfileError {
    pub file: String,
    pub reason: String,
}

impl Profiles {
    /// Loads `<dir>/rules/*/*.schema.json`. A missing `rules` folder means no rules.
    pub fn load(dir: &Path) -> Result<Self, ProfileError> {
        let rules = dir.join("rules");
        let mut profiles = Profiles::default();
        let Ok(sets) = std::fs::read_dir(&rules) else {
            return Ok(profiles);
        };
        let err = |file: &Path, reason: String| ProfileError {
            file: file.display().to_string(),
            reason,
        };
        for set in sets {
            let set = set.map_err(|e| err(&rules, e.to_string()))?.path();
            if !set.is_dir() {
                continue;
            }
            let set_name = set
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&set)
                .map_err(|e| err(&set, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".schema.json"))
                .collect();
            files.sort();
            for file in files {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let resource_type = name.trim_end_matches(".schema.json").to_owned();
                let text = std::fs::read(&file).map_err(|e| err(&file, e.to_string()))?;
                let schema: Value = serde_json::from_slice(&text).map_err(|e| {
                    err(
                        &file,
                        format!("not valid JSON ({e}); fix the syntax of this rule file"),
                    )
                })?;
                let validator = jsonschema::options()
                    .with_pattern_options(jsonschema::PatternOptions::regex())
                    .build(&schema)
                    .map_err(|e| err(&file, format!("not a usable JSON Schema: {e}")))?;
                profiles
                    .sets
                    .entry(set_name.clone())
                    .or_default()
                    .entry(resource_type)
                    .or_default()
                    .push(Rule { schema, validator });
            }
        }
        Ok(profiles)
    }

    pub fn has_set(&self, name: &str) -> bool {
        self.sets.contains_key(name)
    }

    fn rules<'a>(
        &'a self,
        set: Option<&'a str>,
        resource_type: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        [Some(COMMON), set]
            .into_iter()
            .flatten()
            .filter_map(move |s| self.sets.get(s)?.get(resource_type))
            .flatten()
    }

    /// Whether `set` (or `common`) has a rule for `resource_type`.
    pub fn applies(&self, set: Option<&str>, resource_type: &str) -> bool {
        self.rules(set, resource_type).next().is_some()
    }

    /// Applies the rules of `set` (and `common`) for the resource's type.
    pub fn check(&self, set: Option<&str>, resource_type: &str, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        for rule in self.rules(set, resource_type) {
            if rule.validator.is_valid(resource) {
                continue;
            }
            let describe = |e: &jsonschema::ValidationError<'_>| description_at(&rule.schema, e);
            for e in rule.validator.iter_errors(resource) {
                issues.extend(
                    issues_from_error(resource_type, &e, Some(&describe))
                        .into_iter()
                        .map(|mut i| {
                            if i.code == "structure" || i.code == "invalid" {
                                i.code = "business-rule";
                            }
                            i
                        }),
                );
            }
        }
        issues
    }
}

/// The `description` nearest to the failing keyword in the rule's schema.
fn description_at(schema: &Value, err: &jsonschema::ValidationError<'_>) -> Option<String> {
    let segs: Vec<String> = err
        .schema_path()
        .as_str()
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    // Drop the failing keyword itself, then look for a description from there up to the root.
    for end in (0..segs.len()).rev() {
        let mut node = schema;
        let mut ok = true;
        for s in &segs[..end] {
            node = match node {
                Value::Object(m) => match m.get(s) {
                    Some(n) => n,
                    None => {
                        ok = false;
                        break;
                    }
                },
                Value::Array(a) => match s.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(n) => n,
                    None => {
                        ok = false;
                        break;
                    }
                },
                _ => {
                    ok = false;
                    break;
                }
            };
        }
        if ok && let Some(d) = node.get("description").and_then(Value::as_str) {
            return Some(d.to_owned());
        }
    }
    None
}
