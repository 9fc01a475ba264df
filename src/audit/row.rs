//! One audit row as the log keeps it, the closed sets its coded columns take, and the hash
//! that chains the rows together. Depends on nothing else in the crate: the store, the chain
//! walk and the AuditEvent rendering all build on it.
//!
//! [`AuditRow`] mirrors the stored columns verbatim (text), because the chain walk must report
//! a tampered row as it finds it, even one holding a code no enum knows; rows are *built* only
//! through [`Action`], [`Outcome`], [`Interaction`] and [`RowKind`] (see `audit::RowBuilder`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One audit row. `entities` are references (`Condition/<gid>`, `Patient/<gateway id>`).
///
/// `seq`, `prev_hash` and `hash` are assigned by the store when the row is appended to the
/// chain; callers leave them empty. Its JSON form (every column by name) is the canonical row
/// that `GET /audit/rows` serves and the offline verifier rehashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditRow {
    pub seq: i64,
    /// [`RowKind`]: `event` for what happened; `checkpoint` for a pruned segment's record.
    pub kind: String,
    pub recorded_us: i64,
    pub recorded: String,
    pub request_id: Option<String>,
    pub client_id: Option<String>,
    pub role: Option<String>,
    /// The sector the caller acted in (the source sector of a transfer).
    pub sector: Option<String>,
    /// The sector data was sent to (deliveries), if any.
    pub target_sector: Option<String>,
    /// [`Action`]: C, R, U, D or E (FHIR AuditEvent.action).
    pub action: String,
    /// [`Interaction`]: create, update, read, search-type, transaction, batch, …
    pub interaction: String,
    /// [`Outcome`]: 0 success, 4 minor failure, 8 serious failure (FHIR AuditEvent.outcome).
    pub outcome: String,
    pub patient_id: Option<String>,
    pub entities: Vec<String>,
    /// The query of a search, as received (it may name a patient: it stays in the audit log).
    pub query: Option<String>,
    /// purposeOfUse (a v3 ActReason code such as `TREAT`), where known.
    pub purpose: Option<String>,
    /// A short description without patient data.
    pub detail: Option<String>,
    /// The person acting through the client (`system|value`), when the client is one.
    pub person: Option<String>,
    /// Why access was granted or refused (`access::Basis::code`): `care-team CareTeam/<gid>`,
    /// `exchange …`, `launch`, `break-glass <grant>`, `own-sector <id>`, ….
    pub basis: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// Declares a closed set of codes: the enum, its code and its parse.
macro_rules! codes_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The code as stored and rendered.
            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            /// Every code, comma-separated (for messages that list what is accepted).
            pub fn codes() -> String {
                [$($code),+].join(", ")
            }

            /// The member with this code.
            pub fn parse(code: &str) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.code())
            }
        }
    };
}
pub(crate) use codes_enum as codes;

codes_enum! {
    /// FHIR `AuditEvent.action`.
    Action {
        Create = "C",
        Read = "R",
        Update = "U",
        Delete = "D",
        Execute = "E",
    }
}

codes_enum! {
    /// FHIR `AuditEvent.outcome`.
    Outcome {
        Success = "0",
        MinorFailure = "4",
        SeriousFailure = "8",
        MajorFailure = "12",
    }
}

codes_enum! {
    /// What a row records: a FHIR RESTful interaction, or one of the project's subtypes
    /// (`audit::SUBTYPES`).
    Interaction {
        Create = "create",
        Update = "update",
        Read = "read",
        SearchType = "search-type",
        Transaction = "transaction",
        Batch = "batch",
        Operation = "operation",
        Authenticate = "authenticate",
        Verify = "verify",
        Export = "export",
        Prune = "prune",
        Deliver = "deliver",
        RetryDelivery = "retry-delivery",
        Alert = "alert",
        Stream = "stream",
        BreakGlass = "break-glass",
        ReviewBreakGlass = "review-break-glass",
        Merge = "merge",
        Unmerge = "unmerge",
        HoldWrite = "hold-write",
        ReviewHeldWrite = "review-held-write",
        Backfill = "backfill",
    }
}

codes_enum! {
    /// What kind of row: an event, or the checkpoint a prune leaves.
    RowKind {
        Event = "event",
        Checkpoint = "checkpoint",
    }
}

/// What the first row of a never-pruned chain continues from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const FORMAT: &str = "carebridge-audit-1";

/// The detail of a checkpoint row: the segment it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub pruned_through: i64,
    pub continues_from: String,
}

/// SHA-256 (hex) over the row's canonical content, `prev_hash` included: a canonical JSON
/// array of every column but `hash` itself (the chain format version first, `prev_hash` last
/// of the original columns; `person` and `basis` follow only when either is set, so rows
/// written before they existed keep their hashes).
pub fn row_hash(a: &AuditRow) -> String {
    hash_with_seq(a, a.seq)
}

/// The hash the row would have at `seq` (the walk uses it to recognise a renumbered row).
pub fn hash_with_seq(a: &AuditRow, seq: i64) -> String {
    let mut canonical = json!([
        FORMAT,
        seq,
        a.kind,
        a.recorded_us,
        a.recorded,
        a.request_id,
        a.client_id,
        a.role,
        a.sector,
        a.target_sector,
        a.action,
        a.interaction,
        a.outcome,
        a.patient_id,
        a.entities,
        a.query,
        a.purpose,
        a.detail,
        a.prev_hash,
    ]);
    if (a.person.is_some() || a.basis.is_some())
        && let Some(cols) = canonical.as_array_mut()
    {
        cols.push(json!(a.person));
        cols.push(json!(a.basis));
    }
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.code()), Some(*a));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.code()), Some(*o));
        }
        for i in Interaction::ALL {
            assert_eq!(Interaction::parse(i.code()), Some(*i));
        }
        assert_eq!(Outcome::parse("5"), None);
    }

    #[test]
    fn basis_and_person_are_hashed_only_when_set() {
        let row = AuditRow {
            kind: "event".into(),
            action: "R".into(),
            prev_hash: GENESIS.into(),
            ..AuditRow::default()
        };
        // A row without them hashes as rows did before the columns existed.
        let before = hex::encode(Sha256::digest(
            json!([
                FORMAT,
                0,
                "event",
                0,
                "",
                null,
                null,
                null,
                null,
                null,
                "R",
                "",
                "",
                null,
                [],
                null,
                null,
                null,
                GENESIS
            ])
            .to_string()
            .as_bytes(),
        ));
        assert_eq!(row_hash(&row), before);
        let with = AuditRow {
            basis: Some("launch".into()),
            ..row.clone()
        };
        assert_ne!(row_hash(&with), before);
        let other = AuditRow {
            basis: Some("care-team CareTeam/x".into()),
            ..row
        };
        assert_ne!(row_hash(&with), row_hash(&other));
    }
}
