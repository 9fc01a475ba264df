//! OperationOutcome: the one shape every FHIR error of the gateway takes.

use serde_json::{Value, json};

use super::json::PathSeg;

/// FHIR `issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One `OperationOutcome.issue`: a code from `http://hl7.org/fhir/issue-type`, a reason that
/// never quotes patient data, and the FHIRPath-like location it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// Prefixes the location, e.g. `Patient.name` becomes `Bundle.entry[2].resource.name` when
    /// the resource sat in entry 2 (the prefix replaces the leading resource type).
    pub fn nested_under(mut self, prefix: &str) -> Self {
        self.expression = Some(match self.expression.take() {
            Some(expr) => match expr.split_once('.') {
                Some((_, rest)) => format!("{prefix}.{rest}"),
                None => prefix.to_owned(),
            },
            None => prefix.to_owned(),
        });
        self
    }
}

/// Renders issues as an OperationOutcome resource.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v = json!({
                "severity": i.severity.as_str(),
                "code": i.code,
                "diagnostics": i.diagnostics,
            });
            if let Some(expr) = &i.expression {
                v["expression"] = json!([expr]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// An informational OperationOutcome (used for successful operations without a resource).
pub fn information(diagnostics: &str) -> Value {
    operation_outcome(&[Issue {
        severity: Severity::Information,
        code: "informational",
        diagnostics: diagnostics.to_owned(),
        expression: None,
    }])
}

/// Turns JSON location segments into a FHIRPath-like expression rooted at `root`
/// (`["code","coding",0,"system"]` under `Condition` is `Condition.code.coding[0].system`).
pub fn fhirpath<'a, I>(root: &str, segments: I) -> String
where
    I: IntoIterator<Item = PathRef<'a>>,
{
    let mut out = String::from(root);
    for seg in segments {
        match seg {
            PathRef::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathRef::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// A borrowed path segment.
#[derive(Debug, Clone, Copy)]
pub enum PathRef<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> From<&'a PathSeg> for PathRef<'a> {
    fn from(s: &'a PathSeg) -> Self {
        match s {
            PathSeg::Key(k) => PathRef::Key(k),
            PathSeg::Index(i) => PathRef::Index(*i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_as_fhirpath() {
        let segs = [
            PathSeg::Key("code".into()),
            PathSeg::Key("coding".into()),
            PathSeg::Index(0),
        ];
        assert_eq!(
            fhirpath("Condition", segs.iter().map(PathRef::from)),
            "Condition.code.coding[0]"
        );
    }

    #[test]
    fn nesting_replaces_the_root() {
        let i = Issue::error("value", "x")
            .at("Patient.gender")
            .nested_under("Bundle.entry[1].resource");
        assert_eq!(
            i.expression.as_deref(),
            Some("Bundle.entry[1].resource.gender")
        );
        let i = Issue::error("value", "x")
            .at("Patient")
            .nested_under("Bundle.entry[1].resource");
        assert_eq!(i.expression.as_deref(), Some("Bundle.entry[1].resource"));
    }

    #[test]
    fn outcome_shape() {
        let oo = operation_outcome(&[Issue::error("required", "missing").at("Patient.x")]);
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.x");
        assert_eq!(oo["issue"][0]["severity"], "error");
    }
}
