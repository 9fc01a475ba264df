//! Why the core did not carry out a request. Each kind has one HTTP status and one set of
//! OperationOutcome issues, decided here so that every adapter (the HTTP API, a Bundle's
//! response entries, the console) answers alike; only `api` turns them into responses.

use crate::access::Denied;
use crate::fhir::outcome::Issue;
use crate::store::StoreError;

/// Why a request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 400: unparseable or structurally invalid, or a malformed request.
    #[error("invalid request ({} issues)", .0.len())]
    Invalid(Vec<Issue>),
    /// 422: valid FHIR that breaks a profile or business rule.
    #[error("unprocessable ({} issues)", .0.len())]
    Unprocessable(Vec<Issue>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 409: the request conflicts with what is stored (e.g. a grant already reviewed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 412: a precondition of the request does not hold (`If-Match` names another version,
    /// a conditional create matches several resources).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { expected, current } => {
                GatewayError::PreconditionFailed(match current {
                    Some(c) => format!(
                        "If-Match names version {expected}, but the current version is {c}; read it again and re-apply the change"
                    ),
                    None => format!(
                        "If-Match names version {expected}, but the resource does not exist"
                    ),
                })
            }
            other => GatewayError::Store(other),
        }
    }
}

impl From<Denied> for GatewayError {
    fn from(d: Denied) -> Self {
        GatewayError::Forbidden(d.0)
    }
}

impl GatewayError {
    pub fn invalid(issue: Issue) -> Self {
        GatewayError::Invalid(vec![issue])
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Invalid(_) => 400,
            GatewayError::Unprocessable(_) => 422,
            GatewayError::NotFound(_) => 404,
            GatewayError::Forbidden(_) => 403,
            GatewayError::Conflict(_) => 409,
            GatewayError::PreconditionFailed(_) => 412,
            GatewayError::Store(StoreError::Busy) => 503,
            GatewayError::Store(StoreError::MergeHeld { .. }) => 422,
            GatewayError::Store(_) => 500,
        }
    }

    /// The OperationOutcome issues this error answers with; a store failure says only that
    /// nothing was stored (its cause is logged, without patient data).
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            GatewayError::Invalid(i) | GatewayError::Unprocessable(i) => i.clone(),
            GatewayError::NotFound(what) => vec![Issue::error("not-found", what.clone())],
            GatewayError::Forbidden(why) => vec![Issue::error("forbidden", why.clone())],
            GatewayError::Conflict(why) => vec![Issue::error("conflict", why.clone())],
            GatewayError::PreconditionFailed(why) => vec![Issue::error("conflict", why.clone())],
            GatewayError::Store(StoreError::Busy) => vec![Issue::error(
                "transient",
                "the store is busy; nothing was stored, retry the request",
            )],
            GatewayError::Store(StoreError::MergeHeld { reason, .. }) => {
                vec![Issue::error("business-rule", reason.clone())]
            }
            GatewayError::Store(err) => {
                tracing::error!(error = %err, "store failure");
                vec![Issue::error(
                    "exception",
                    "the request could not be stored; nothing was stored, retry later",
                )]
            }
        }
    }
}
