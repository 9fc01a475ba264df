//! The store: every sector version of every resource, patient links and the audit record.
//!
//! Only this module talks to the database. Work happens in a [`StoreTx`]: what a request changes
//! and the audit rows describing it are committed together, and a 2xx is sent only after
//! [`StoreTx::commit`] returned. The one implementation, [`sql::SqlStore`], runs the same SQL on
//! SQLite (the embedded default, a WAL file) and PostgreSQL (for several replicas); the schema
//! is kept in both dialects under `migrations/`.

pub mod access;
pub mod alerts;
mod busy;
pub mod identity;
pub mod merkle;
pub mod ops;
pub mod outbox;
pub mod sessions;
pub mod sql;
#[cfg(test)]
pub(crate) mod tests;

use async_trait::async_trait;

use crate::audit::{Action, AuditRow, Outcome};
use crate::fhir::time::instant;

pub use access::{AccessTx, Grant, Identified};
pub use alerts::{
    AlertQuery, AlertRow, AlertTx, HistoryRow, InboxQuery, InboxRow, Snooze, Snoozed,
};
pub use identity::{HeldNew, HeldWrite, IdentityTx, RoutedEntry, Unmerged};
pub use merkle::{StoredCheckpoint, TransparencyTx, WitnessState};
pub use ops::{AttemptCount, CursorStat, OpsTx, OutboxQuery, QueueStat, SectorHealth};
pub use outbox::{
    Delivered, DeliveredOutcome, DeliveryState, ExchangeTx, Finish, OutboxEntry, OutboxFilter,
    OutboxNew, PollCursor, ResyncCandidate, UNVERIFIED,
};
pub use sessions::{SessionRow, SessionTx};
pub use sql::SqlStore;

/// A store failure. `Busy` is worth retrying; everything else is reported as a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is busy, try again")]
    Busy,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the store URL is not usable: {0}")]
    Url(String),
    /// A commit was written but the write-ahead log could not be synced to disk (SQLite, see
    /// `sql::wal`): the request is not answered 2xx.
    #[error("a commit could not be made durable: {0}")]
    Durability(String),
    /// The lease on an outbox entry ended before its outcome was recorded (another replica
    /// may hold it now): nothing of the attempt may be committed.
    #[error("the lease on outbox entry {0} was lost before its outcome was recorded")]
    LeaseLost(i64),
    /// A stored body that is not the JSON the gateway wrote (the database was altered or
    /// damaged); names the record, never its content.
    #[error("stored {what} is not valid JSON: {error}")]
    Corrupt { what: String, error: String },
    /// An update's `If-Match` names another version than the current one (`None`: the resource
    /// does not exist).
    #[error("version conflict: expected {expected}, current {current:?}")]
    VersionConflict { expected: i64, current: Option<i64> },
    /// A Patient's identifiers name two gateway patients and the writing sector may not join
    /// them (see [`Prepared::authority_systems`]): nothing was stored. `patients` are the
    /// gateway patients the write would have joined.
    #[error("the write would join gateway patients: {reason}")]
    MergeHeld {
        reason: String,
        patients: Vec<String>,
    },
}

/// Parses a stored JSON body; a body that does not parse is logged (naming the record only),
/// counted and returned as [`StoreError::Corrupt`] — never silently replaced.
pub fn parse_body(what: impl FnOnce() -> String, body: &str) -> Result<serde_json::Value> {
    serde_json::from_str(body).map_err(|e| {
        let what = what();
        crate::metrics::CORRUPT_BODIES.inc();
        tracing::error!(record = %what, error = %e, "a stored body is not valid JSON");
        StoreError::Corrupt {
            what,
            error: e.to_string(),
        }
    })
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A resource ready to be stored: validated, ids and references resolved, hashed.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    /// The resource JSON exactly as it will be kept.
    pub body: String,
    /// SHA-256 (hex) of `body`.
    pub hash: String,
    /// The sector's reference to the resource's patient (`Patient/123`,
    /// `Patient?identifier=system|value`), if it has one.
    pub patient_ref: Option<String>,
    /// For Patients: the identifiers that link it to a gateway patient.
    pub link_identifiers: Vec<(String, String)>,
    /// Business identifiers (system, value), for conditional create.
    pub identifiers: Vec<(String, String)>,
    /// The gateway patient, when the writer knows it (what the gateway authors itself names
    /// the gateway patient, not a sector's Patient).
    pub patient_id: Option<String>,
    /// `If-Match`: the version the writer last saw; any other current version (or none) is
    /// [`StoreError::VersionConflict`], decided under the resource's lock.
    pub expected_version: Option<i64>,
    /// For Patients: the identifier systems the writing sector issues itself (its replacement
    /// numbers). Linking through one of them may join a gateway patient known only by the
    /// sector's own numbers to the one its real identifier names; any other join of two gateway
    /// patients is [`StoreError::MergeHeld`].
    pub authority_systems: Vec<String>,
    /// An operator released this write after review: joining gateway patients is allowed.
    pub allow_merge: bool,
}

/// What storing a [`Prepared`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub gid: String,
    pub version: i64,
    pub last_updated: String,
    /// False when the content was identical to the current version (nothing new was stored).
    pub changed: bool,
    /// True when this was the resource's first version.
    pub created: bool,
    pub patient_id: Option<String>,
    /// Gateway patients merged into `patient_id` by this write (a Patient's linking).
    pub merged: Vec<String>,
}

/// One stored version of a sector resource (the columns of `resources` joined with the body
/// from `resource_versions`, selected by these names).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub gid: String,
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    pub version: i64,
    pub last_updated: String,
    pub patient_id: Option<String>,
    pub body: String,
}

impl Stored {
    /// The stored body as JSON ([`StoreError::Corrupt`] when the row was damaged).
    pub fn json(&self) -> Result<serde_json::Value> {
        parse_body(|| format!("{}/{}", self.rtype, self.gid), &self.body)
    }
}

/// A gateway patient with its identifiers and the sector Patients linked to it.
#[derive(Debug, Clone)]
pub struct GatewayPatient {
    pub id: String,
    pub identifiers: Vec<(String, String)>,
    pub sector_patients: Vec<Stored>,
}

/// Filters for the audit search.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub patient_id: Option<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub outcome: Option<Outcome>,
    /// The client id of the requesting agent.
    pub agent: Option<String>,
    /// Rows whose source or target sector is this one.
    pub sector: Option<String>,
    pub action: Option<Action>,
    /// Rows naming a resource of this type among their entities.
    pub entity_type: Option<String>,
    /// The person (practitioner or organisation `system|value`) who acted.
    pub person: Option<String>,
    /// Rows whose basis begins with this (`break-glass`, `care-team`, `refused`, …).
    pub basis: Option<String>,
    /// The patient by a sector identifier (`system|value`, e.g. a CPR number); the gateway
    /// resolves it to `patient_id` before searching, so the identifier is never stored.
    pub patient_identifier: Option<String>,
    pub offset: i64,
    pub count: i64,
}

impl AuditQuery {
    /// The query as AuditEvent search parameters, for the audit row of the search itself.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        add("patient", &self.patient_id);
        add("outcome", &self.outcome.map(|o| o.code().to_owned()));
        add("agent", &self.agent);
        add("sector", &self.sector);
        add("action", &self.action.map(|a| a.code().to_owned()));
        add("entity-type", &self.entity_type);
        add("person", &self.person);
        add("basis", &self.basis);
        if let Some(f) = self.from_us {
            parts.push(format!("date=ge{}", instant(f)));
        }
        if let Some(t) = self.to_us {
            parts.push(format!("date=le{}", instant(t)));
        }
        parts.push(format!("_offset={}&_count={}", self.offset, self.count));
        format!("AuditEvent?{}", parts.join("&"))
    }
}

/// What a search reads from the store before the resources' own elements are matched: the
/// type and the selective conditions an index answers. Every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub rtype: String,
    pub sector: Option<String>,
    /// A gateway patient (merges followed).
    pub patient_id: Option<String>,
    /// Gateway ids (`_id`).
    pub gids: Option<Vec<String>>,
    /// Sector-local ids (`_id` on a sector base).
    pub rids: Option<Vec<String>>,
    /// A business identifier: (system, value), the system optional.
    pub identifier: Option<(Option<String>, String)>,
    /// `meta.lastUpdated` bounds, inclusive, as FHIR instants (they sort as text).
    pub updated_from: Option<String>,
    pub updated_to: Option<String>,
    /// At most this many rows are read.
    pub limit: i64,
}

/// Counts for summaries: (sector, resource type, resources).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by_sector_type: Vec<(String, String, i64)>,
    pub patients: i64,
    /// Gateway patients with Patients from two or more sectors.
    pub linked_patients: i64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Starts a transaction. Dropping it without `commit` rolls it back.
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
    /// Starts a transaction for reading only: nothing written in it counts (audit rows are
    /// refused at commit). On SQLite a deferred `BEGIN` (one WAL snapshot, no write lock); on
    /// PostgreSQL no transaction at all — each statement on one pool connection, with its own
    /// snapshot as under `READ COMMITTED`.
    async fn begin_read(&self) -> Result<Box<dyn StoreTx>>;
    /// Starts a transaction that reads and then writes little — an audited read, which leaves
    /// its audit row in the transaction it reads in. The same guarantees as [`Store::begin`];
    /// on SQLite it runs in the writer's turn on a connection of its own, so that the pages
    /// such a read touches do not fill the write connection's page cache, which holds the
    /// indexes the writes go through.
    async fn begin_audited(&self) -> Result<Box<dyn StoreTx>>;
    /// Counts for the demo summary and operations.
    async fn stats(&self) -> Result<Stats>;
    /// True when the database answers.
    async fn ping(&self) -> bool;
}

/// A transaction: the foundation's operations here, the exchange's in [`ExchangeTx`].
#[async_trait]
pub trait StoreTx:
    ExchangeTx + AlertTx + AccessTx + TransparencyTx + OpsTx + SessionTx + IdentityTx + Send
{
    /// The sector-local id of the resource holding this business identifier, if any.
    async fn find_by_identifier(
        &mut self,
        sector: &str,
        rtype: &str,
        system: &str,
        value: &str,
    ) -> Result<Option<String>>;
    /// Stores a new version (or recognises identical content), links the patient.
    async fn put(&mut self, resource: &Prepared) -> Result<PutOutcome>;
    /// Stores many resources as `put` would one after another, in a few multi-row statements:
    /// takes all their locks first, in one sorted order, links Patients first (so that the other
    /// resources' patient references resolve through them), and answers an outcome per
    /// resource in the order given.
    async fn put_many(&mut self, resources: &[&Prepared]) -> Result<Vec<PutOutcome>>;
    /// Queues outbox entries in multi-row statements; an entry of the same resource version
    /// for the same target already queued is left as it is. Returns the targets that got a new
    /// entry.
    async fn outbox_add_many(
        &mut self,
        entries: &[OutboxNew],
    ) -> Result<std::collections::BTreeSet<String>>;
    async fn get(&mut self, gid: &str) -> Result<Option<Stored>>;
    async fn get_sector(&mut self, sector: &str, rtype: &str, rid: &str) -> Result<Option<Stored>>;
    /// Current versions of a gateway patient's resources of one type (all types when `None`).
    async fn by_patient(
        &mut self,
        patient_id: &str,
        rtype: Option<&str>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>>;
    /// Current versions of a gateway patient's resources of these types, in one read (ordered
    /// by type, sector and id).
    async fn by_patient_types(&mut self, patient_id: &str, rtypes: &[&str]) -> Result<Vec<Stored>>;
    /// Every version of a resource, newest first.
    async fn versions(&mut self, gid: &str) -> Result<Vec<Stored>>;
    /// One version of a resource.
    async fn version(&mut self, gid: &str, version: i64) -> Result<Option<Stored>>;
    /// Versions of every resource of a type (of one sector, when given), newest first.
    async fn type_history(
        &mut self,
        rtype: &str,
        sector: Option<&str>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>>;
    /// Current resources matching the filter (at most `limit`), in gateway id order.
    async fn search(&mut self, filter: &SearchFilter) -> Result<Vec<Stored>>;
    /// Current resources by gateway id (those that exist).
    async fn get_many(&mut self, gids: &[String]) -> Result<Vec<Stored>>;
    /// Which of these gateway ids name a stored resource.
    async fn existing(&mut self, gids: &[String]) -> Result<Vec<String>>;
    /// A gateway patient (following merges).
    async fn patient(&mut self, patient_id: &str) -> Result<Option<GatewayPatient>>;
    /// The gateway patient holding an identifier (a CPR number, or a sector Patient's key
    /// `urn:carebridge:sector-patient:<sector>|<id>`).
    async fn patient_by_identifier(&mut self, system: &str, value: &str) -> Result<Option<String>>;
    /// Appends an audit row to the chain when the transaction commits (the chain lock is held
    /// only for the append itself).
    async fn audit(&mut self, row: &AuditRow) -> Result<()>;
    async fn audit_search(&mut self, query: &AuditQuery) -> Result<Vec<AuditRow>>;
    /// How many rows `query` matches, paging aside.
    async fn audit_count(&mut self, query: &AuditQuery) -> Result<i64>;
    /// Rows (events and checkpoints) with `seq > after`, in chain order, at most `limit`.
    async fn audit_chain_page(&mut self, after: i64, limit: i64) -> Result<Vec<AuditRow>>;
    /// Rows recorded in `[from_us, to_us]` with `seq > after`, in chain order, at most `limit`.
    async fn audit_range_page(
        &mut self,
        after: i64,
        from_us: i64,
        to_us: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>>;
    /// How many rows were recorded in `[from_us, to_us]`.
    async fn audit_range_count(&mut self, from_us: i64, to_us: i64) -> Result<i64>;
    /// The last seq recorded before `before_us`, if any.
    async fn audit_last_seq_before(&mut self, before_us: i64) -> Result<Option<i64>>;
    /// The chain's head (last appended seq and hash), if anything was ever appended.
    async fn audit_head(&mut self) -> Result<Option<(i64, String)>>;
    /// Deletes the rows with `seq <= upto` (the caller exported them) and appends a checkpoint
    /// row recording the hash the remaining chain continues from. Returns the rows deleted.
    async fn audit_prune(&mut self, upto: i64, checkpoint: AuditRow) -> Result<i64>;
    async fn commit(self: Box<Self>) -> Result<()>;
}
