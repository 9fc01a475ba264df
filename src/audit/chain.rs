//! The hash chain over the audit log: the walk that finds the first broken link.
//!
//! The walk is pure: it is fed the rows in `seq` order (the caller reads them page by page)
//! and then the head, and reports. The first row continues from [`GENESIS`]; after a prune,
//! the first remaining row continues from the hash that the latest checkpoint row records.
//! The head (`audit_head`) holds the last seq and hash, so rows removed from the end are
//! noticed too.

use serde::Serialize;

use super::row::{AuditRow, Checkpoint, GENESIS, RowKind, hash_with_seq, row_hash};

/// The first broken link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub problem: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub rows: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    pub broken: Option<Broken>,
}

/// A walk over the chain in `seq` order: feed it every row with [`Walk::row`] until it
/// answers `false` (a broken link was found), then [`Walk::finish`] with the head.
///
/// It reports a row whose content does not match its hash (edited), a row that does not
/// continue the previous row's hash (reordered, replaced), a gap in `seq` (deleted), a
/// renumbered row (inserted before it), a chain that ends before or after the head
/// (truncated, appended outside the gateway), or a start that no checkpoint accounts for.
#[derive(Debug, Default)]
pub struct Walk {
    found: Vec<Broken>,
    rows: i64,
    first: Option<(i64, String)>,
    last: Option<(i64, String)>,
    checkpoint: Option<Checkpoint>,
}

impl Walk {
    pub fn new() -> Walk {
        Walk::default()
    }

    /// Takes the next row; `false` when the walk found a broken link and needs no more rows.
    pub fn row(&mut self, r: &AuditRow) -> bool {
        self.rows += 1;
        let problem = self
            .note_checkpoint(r)
            .or_else(|| content_problem(r))
            .or_else(|| self.link_problem(r));
        if let Some(b) = problem {
            self.found.push(b);
            return false;
        }
        if self.last.is_none() {
            self.first = Some((r.seq, r.prev_hash.clone()));
        }
        self.last = Some((r.seq, r.hash.clone()));
        true
    }

    /// Remembers the latest checkpoint; a checkpoint whose record cannot be read is broken.
    fn note_checkpoint(&mut self, r: &AuditRow) -> Option<Broken> {
        if r.kind != RowKind::Checkpoint.code() {
            return None;
        }
        match serde_json::from_str::<Checkpoint>(r.detail.as_deref().unwrap_or("")) {
            Ok(c) => {
                if self
                    .checkpoint
                    .as_ref()
                    .is_none_or(|old| c.pruned_through > old.pruned_through)
                {
                    self.checkpoint = Some(c);
                }
                None
            }
            Err(_) => Some(Broken {
                seq: r.seq,
                problem: format!(
                    "row {} is a checkpoint without a readable segment record",
                    r.seq
                ),
            }),
        }
    }

    /// A gap before `r`, or `r` not continuing the previous row's hash.
    fn link_problem(&self, r: &AuditRow) -> Option<Broken> {
        let (prev_seq, prev_hash) = self.last.as_ref()?;
        if r.seq != prev_seq + 1 {
            return Some(Broken {
                seq: prev_seq + 1,
                problem: format!(
                    "row {} is missing: the chain jumps from {} to {}",
                    prev_seq + 1,
                    prev_seq,
                    r.seq
                ),
            });
        }
        (&r.prev_hash != prev_hash).then(|| Broken {
            seq: r.seq,
            problem: format!(
                "row {} does not continue the chain: its prev_hash is not row {}'s hash (one of the two was rewritten)",
                r.seq, prev_seq
            ),
        })
    }

    /// Where the chain starts: at 1 from the genesis, or right after a checkpointed prune.
    fn start_problem(&self) -> Option<Broken> {
        let (seq, prev_hash) = self.first.as_ref()?;
        let (expect_seq, expect_prev) = match &self.checkpoint {
            Some(c) => (c.pruned_through + 1, c.continues_from.as_str()),
            None => (1, GENESIS),
        };
        if *seq != expect_seq {
            return Some(Broken {
                seq: expect_seq.min(*seq),
                problem: if *seq > expect_seq {
                    format!(
                        "rows {expect_seq} to {} are missing and no checkpoint records their export",
                        seq - 1
                    )
                } else {
                    format!("row {seq} precedes the start recorded by the latest checkpoint")
                },
            });
        }
        (prev_hash != expect_prev).then(|| Broken {
            seq: *seq,
            problem: format!(
                "row {seq} does not continue from {}",
                if self.checkpoint.is_some() {
                    "the hash its checkpoint records"
                } else {
                    "the genesis"
                }
            ),
        })
    }

    /// Where the chain ends: at the head.
    fn end_problem(&self, head: Option<&(i64, String)>) -> Option<Broken> {
        match (&self.last, head) {
            (Some((seq, hash)), Some((head_seq, head_hash))) if self.found.is_empty() => {
                if head_seq > seq {
                    Some(Broken {
                        seq: seq + 1,
                        problem: format!(
                            "rows {} to {head_seq} are missing: the chain ends at {seq} but the head records {head_seq}",
                            seq + 1
                        ),
                    })
                } else if head_seq < seq {
                    Some(Broken {
                        seq: head_seq + 1,
                        problem: format!(
                            "row {} was appended outside the gateway: the head records {head_seq}",
                            head_seq + 1
                        ),
                    })
                } else {
                    (head_hash != hash).then(|| Broken {
                        seq: *seq,
                        problem: format!("row {seq} is not the row the head records"),
                    })
                }
            }
            (None, Some((head_seq, _))) => Some(Broken {
                seq: self.checkpoint.as_ref().map_or(1, |c| c.pruned_through + 1),
                problem: format!("the log is empty but the head records {head_seq} rows"),
            }),
            (Some((seq, _)), None) if self.found.is_empty() => Some(Broken {
                seq: *seq,
                problem: "the log has rows but no head: it was written outside the gateway".into(),
            }),
            _ => None,
        }
    }

    /// The report, given the chain's head (last appended seq and hash), if any.
    pub fn finish(mut self, head: Option<(i64, String)>) -> Report {
        if let Some(b) = self.start_problem() {
            self.found.push(b);
        }
        if let Some(b) = self.end_problem(head.as_ref()) {
            self.found.push(b);
        }
        let broken = self.found.into_iter().min_by_key(|b| b.seq);
        Report {
            ok: broken.is_none(),
            rows: self.rows,
            first_seq: self.first.map(|f| f.0),
            last_seq: self.last.as_ref().map(|l| l.0),
            head_seq: head.as_ref().map(|h| h.0),
            head_hash: head.map(|h| h.1),
            broken,
        }
    }
}

/// A row whose content does not match its hash: edited, or renumbered by an insertion.
fn content_problem(r: &AuditRow) -> Option<Broken> {
    if row_hash(r) == r.hash {
        return None;
    }
    Some(if r.seq > 1 && hash_with_seq(r, r.seq - 1) == r.hash {
        Broken {
            seq: r.seq - 1,
            problem: format!(
                "row {} was renumbered from {}: a row was inserted at {}",
                r.seq,
                r.seq - 1,
                r.seq - 1
            ),
        }
    } else {
        Broken {
            seq: r.seq,
            problem: format!(
                "row {} was altered: its content does not match its hash",
                r.seq
            ),
        }
    })
}
