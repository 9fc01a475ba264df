//! `carebridge audit witness`: a witness of another carebridge's audit log. It takes
//! checkpoints by the C2SP tlog-witness protocol (`POST /add-checkpoint`: the size it holds,
//! a consistency proof, the signed note), checks the log's signature and that the new tree
//! extends the one it holds, and only then countersigns (`cosignature/v1`) and keeps the new
//! checkpoint. Given the log's URL and an auditor's token it also mirrors the leaves: it reads
//! the new rows (`GET /audit/rows`), checks them against their leaves and the signed root, and
//! keeps the leaves, so that when the log misbehaves it names the first affected sequence
//! number, not only the fact.
//!
//! What it holds lives in its state folder: `checkpoint` (the last note it countersigned),
//! `leaves` (32 bytes per leaf, appended and synced before it answers) and `alarms.ndjson`
//! (one line per misbehaviour found: kind, first affected seq, sizes; never row content).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::merkle::{self, Frontier, Hash};
use crate::audit::note::{self, Checkpoint, Signer, Verifier};
use crate::audit::verify::{Finding, entry_leaf, first_difference, read_leaves};
use crate::fhir::time::{instant, now_us};
use crate::outbound::audit_log::LogClient;

/// A misbehaviour the witness found.
#[derive(Debug, Clone, Serialize)]
pub struct Alarm {
    pub finding: Finding,
    pub first_affected_seq: Option<i64>,
    pub held_size: u64,
    pub log_size: u64,
    pub detail: String,
    pub at: String,
}

/// The answer to an add-checkpoint request: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn answer(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        status,
        body: body.into(),
    }
}

#[derive(Default)]
struct State {
    held: Option<(Checkpoint, String)>,
    /// The mirrored leaves (only with a log URL).
    leaves: Vec<Hash>,
    frontier: Frontier,
    alarms: Vec<Alarm>,
}

/// A witness: its key, the log's key, its state folder and (optionally) the log to mirror.
pub struct Witness {
    key: Signer,
    log_key: Verifier,
    dir: PathBuf,
    log: Option<LogClient>,
    state: tokio::sync::Mutex<State>,
}

impl Witness {
    /// Opens (or starts) the state in `dir`.
    pub fn open(
        dir: &Path,
        key: Signer,
        log_key: Verifier,
        log: Option<LogClient>,
    ) -> anyhow::Result<Witness> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let mut state = State::default();
        if let Ok(text) = std::fs::read_to_string(dir.join("checkpoint")) {
            let c = Checkpoint::open(&text, &log_key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("checkpoint").display()))?;
            let bytes = std::fs::read(dir.join("leaves")).unwrap_or_default();
            state.leaves = read_leaves(&bytes).ok_or_else(|| {
                anyhow::anyhow!("{}: not whole hashes", dir.join("leaves").display())
            })?;
            state.leaves.truncate(c.size as usize);
            for l in &state.leaves {
                state.frontier.push(*l);
            }
            if log.is_some() && (state.frontier.size() != c.size || state.frontier.root() != c.root)
            {
                anyhow::bail!(
                    "{}: the leaves kept there do not make the checkpoint's tree; start the \
                     witness on a fresh state folder",
                    dir.display()
                );
            }
            state.held = Some((c, text));
        }
        Ok(Witness {
            key,
            log_key,
            dir: dir.to_path_buf(),
            log,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// What the witness holds and the alarms it raised.
    pub async fn status(&self) -> serde_json::Value {
        let s = self.state.lock().await;
        serde_json::json!({
            "origin": self.log_key.name(),
            "size": s.held.as_ref().map_or(0, |h| h.0.size),
            "root": s.held.as_ref().map(|h| note::b64(&h.0.root)),
            "mirrored_leaves": s.leaves.len(),
            "alarms": s.alarms,
        })
    }

    /// Handles one add-checkpoint request body.
    pub async fn add_checkpoint(&self, body: &str) -> Answer {
        let Ok((old, proof, text)) = note::parse_add_checkpoint(body) else {
            return answer(400, "not an add-checkpoint body\n");
        };
        let c = match Checkpoint::open(text, &self.log_key) {
            Ok(c) => c,
            Err(e) => return answer(403, format!("{e}\n")),
        };
        let mut s = self.state.lock().await;
        let (m, held_root) = s
            .held
            .as_ref()
            .map_or((0, merkle::empty_root()), |h| (h.0.size, h.0.root));
        if old != m {
            return answer(409, format!("{m}\n"));
        }
        if let Some(alarm) = self.misbehaviour(&s, m, &held_root, &c, &proof).await {
            return self.raise(&mut s, alarm);
        }
        let new_leaves = match self.mirror(&s, m, &c).await {
            Ok(l) => l,
            Err(Ok(alarm)) => return self.raise(&mut s, alarm),
            Err(Err(e)) => return answer(503, format!("cannot read the log's rows: {e}\n")),
        };
        if let Err(e) = self.keep(&mut s, &c, text, new_leaves) {
            tracing::error!(error = %e, "the witness could not keep a checkpoint");
            return answer(500, "the witness could not store the checkpoint\n");
        }
        let time = (now_us() / 1_000_000).max(0) as u64;
        answer(200, self.key.cosign(&c.body(), time))
    }

    /// A rollback, a fork or a tree that does not extend the held one.
    async fn misbehaviour(
        &self,
        s: &State,
        m: u64,
        held_root: &Hash,
        c: &Checkpoint,
        proof: &[Hash],
    ) -> Option<Alarm> {
        let n = c.size;
        let (finding, detail) = if n < m {
            (
                Finding::Rollback,
                format!("rollback: the log signs {n} rows, the witness holds {m}"),
            )
        } else if n == m && c.root != *held_root {
            (
                Finding::Fork,
                format!("fork: two signed checkpoints of size {m} with different roots"),
            )
        } else if n > m && !merkle::verify_consistency(m, n, held_root, &c.root, proof) {
            (
                Finding::Rewritten,
                format!("the log's tree of {n} rows does not extend the {m} the witness holds"),
            )
        } else {
            return None;
        };
        let upto = n.min(m);
        let seq = self.locate(s, upto).await;
        let seq = match (seq, &finding) {
            (None, Finding::Rollback) if self.log.is_some() => Some(n as i64 + 1),
            (seq, _) => seq,
        };
        Some(self.alarm(finding, seq, m, n, detail))
    }

    fn alarm(&self, finding: Finding, seq: Option<i64>, m: u64, n: u64, detail: String) -> Alarm {
        let detail = match seq {
            Some(q) => format!("{detail}; the first affected row is {q}"),
            None => detail,
        };
        Alarm {
            finding,
            first_affected_seq: seq,
            held_size: m,
            log_size: n,
            detail,
            at: instant(now_us()),
        }
    }

    /// The first of the log's current leaves `1..=upto` that differs from the mirror.
    async fn locate(&self, s: &State, upto: u64) -> Option<i64> {
        let log = self.log.as_ref()?;
        if upto == 0 || s.leaves.is_empty() {
            return None;
        }
        let entries = log.entries(1, upto as i64).await.ok()?;
        let current: Vec<Hash> = entries
            .iter()
            .filter_map(|e| note::unb64(&e.leaf))
            .collect();
        let n = (upto as usize).min(s.leaves.len());
        first_difference(&s.leaves, &current, n)
            .or((current.len() < n).then_some(current.len()))
            .map(|i| i as i64 + 1)
    }

    /// The new leaves `m+1..=n`, read from the log and checked against the signed root (empty
    /// without a log URL). `Err(Ok)` is misbehaviour, `Err(Err)` a failure to read.
    async fn mirror(
        &self,
        s: &State,
        m: u64,
        c: &Checkpoint,
    ) -> Result<Vec<Hash>, Result<Alarm, anyhow::Error>> {
        let Some(log) = &self.log else {
            return Ok(Vec::new());
        };
        if c.size <= m {
            return Ok(Vec::new());
        }
        let entries = log
            .entries(m as i64 + 1, c.size as i64)
            .await
            .map_err(Err)?;
        let mut frontier = s.frontier.clone();
        let mut leaves = Vec::with_capacity(entries.len());
        let mut prev = None;
        for (i, e) in entries.iter().enumerate() {
            let seq = m as i64 + 1 + i as i64;
            match entry_leaf(e, seq, prev) {
                Ok(l) => {
                    frontier.push(l);
                    leaves.push(l);
                }
                Err(what) => {
                    return Err(Ok(self.alarm(
                        Finding::NotInSignedTree,
                        Some(seq),
                        m,
                        c.size,
                        what,
                    )));
                }
            }
            prev = e.row.as_ref();
        }
        if frontier.size() != c.size || frontier.root() != c.root {
            let detail = format!(
                "the log's rows up to {} do not make the tree it signed",
                c.size
            );
            return Err(Ok(self.alarm(
                Finding::NotInSignedTree,
                Some(m as i64 + 1),
                m,
                c.size,
                detail,
            )));
        }
        Ok(leaves)
    }

    /// Records an alarm (log line and file, no row content) and answers 422.
    fn raise(&self, s: &mut State, alarm: Alarm) -> Answer {
        tracing::warn!(
            finding = ?alarm.finding,
            first_affected_seq = ?alarm.first_affected_seq,
            held_size = alarm.held_size,
            log_size = alarm.log_size,
            "the audit log misbehaved"
        );
        let line = serde_json::to_string(&alarm).unwrap_or_default();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("alarms.ndjson"))
            .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.sync_all()));
        if let Err(e) = written {
            tracing::error!(error = %e, "the witness could not write its alarm file");
        }
        let body = format!("{}\n", alarm.detail);
        s.alarms.push(alarm);
        answer(422, body)
    }

    /// Keeps the new checkpoint and leaves: leaves appended and synced, then the checkpoint
    /// replaced atomically.
    fn keep(
        &self,
        s: &mut State,
        c: &Checkpoint,
        text: &str,
        leaves: Vec<Hash>,
    ) -> std::io::Result<()> {
        if !leaves.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("leaves"))?;
            for l in &leaves {
                f.write_all(l)?;
            }
            f.sync_all()?;
        }
        let tmp = self.dir.join("checkpoint.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("checkpoint"))?;
        for l in leaves {
            s.frontier.push(l);
            s.leaves.push(l);
        }
        s.held = Some((c.clone(), text.to_owned()));
        Ok(())
    }
}
