//! Checking a log against a signed checkpoint someone holds, without trusting the log's
//! operator: what the offline verifier (`carebridge audit verify --checkpoint`) and a witness
//! decide. Pure: the caller fetches the log's entries (a canonical row and its leaf per
//! sequence number, as `GET /audit/rows` serves them or `audit export --rows` writes them) and
//! its latest signed checkpoint, and passes in what it holds.
//!
//! The checks, in order: every row's content matches its hash, continues the previous row's
//! hash, and is the leaf the tree holds for its sequence number ("a row that is not in the
//! signed tree"); the leaves make the tree the log signed; and that tree extends the held
//! checkpoint's: a smaller tree is a rollback, the same size with another root a fork, a larger
//! one whose first `m` leaves do not make the held root a rewritten history. The first
//! affected sequence number is named exactly when the holder kept the leaves of its checkpoint
//! (a witness does, and so does an auditor's `--leaves` file); otherwise the rollback's first
//! missing row, or the range the change lies in.

use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::note::{self, Checkpoint};
use super::row::{AuditRow, row_hash};

/// One sequence number of the log: its leaf (base64), and its row unless it was pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: i64,
    pub leaf: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub row: Option<AuditRow>,
}

/// What a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finding {
    /// The log's tree is smaller than a held checkpoint's.
    Rollback,
    /// Two signed checkpoints of one size with different roots.
    Fork,
    /// The log's tree does not extend the held checkpoint's.
    Rewritten,
    /// The log's rows or leaves do not make the tree it signed.
    NotInSignedTree,
    /// A row whose content, chain link or sequence number is wrong.
    BrokenRow,
}

/// The verdict: `None` findings means the log extends what was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub finding: Option<Finding>,
    /// The first sequence number the finding affects, when it is known.
    pub first_affected_seq: Option<i64>,
    /// What was found, in words (sequence numbers and sizes only, never row content).
    pub detail: String,
    /// The verified leaves (on success: those of the log's latest signed tree).
    #[serde(skip)]
    pub leaves: Vec<Hash>,
}

impl Verdict {
    fn bad(finding: Finding, seq: Option<i64>, detail: String) -> Verdict {
        Verdict {
            finding: Some(finding),
            first_affected_seq: seq,
            detail,
            leaves: Vec::new(),
        }
    }
}

/// What a holder keeps: a checkpoint it trusts (signature already checked) and, if it kept
/// them, the leaves of that checkpoint's tree.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub checkpoint: Option<Checkpoint>,
    pub leaves: Option<Vec<Hash>>,
}

/// Reads the log's entries `1..=size` into leaves, checking each row on the way.
pub fn leaves_of(entries: &[LogEntry], size: u64) -> Result<Vec<Hash>, Verdict> {
    let mut leaves = Vec::with_capacity(size as usize);
    let mut prev: Option<&AuditRow> = None;
    for (i, e) in entries.iter().take(size as usize).enumerate() {
        let seq = i as i64 + 1;
        let leaf = entry_leaf(e, seq, prev)
            .map_err(|what| Verdict::bad(Finding::BrokenRow, Some(seq), what))?;
        prev = e.row.as_ref();
        leaves.push(leaf);
    }
    if (leaves.len() as u64) < size {
        let seq = leaves.len() as i64 + 1;
        return Err(Verdict::bad(
            Finding::BrokenRow,
            Some(seq),
            format!("row {seq} is missing from the log"),
        ));
    }
    Ok(leaves)
}

/// The leaf of the entry for `seq`, after checking its row (content against hash, link to the
/// previous row when that is known, hash against leaf); the problem in words otherwise.
pub fn entry_leaf(e: &LogEntry, seq: i64, prev: Option<&AuditRow>) -> Result<Hash, String> {
    if e.seq != seq {
        return Err(format!("row {seq} is missing from the log"));
    }
    let leaf = note::unb64(&e.leaf).ok_or(format!("the leaf of row {seq} is not a hash"))?;
    if let Some(r) = &e.row {
        row_problem(r, seq, prev, &leaf)?;
    }
    Ok(leaf)
}

fn row_problem(r: &AuditRow, seq: i64, prev: Option<&AuditRow>, leaf: &Hash) -> Result<(), String> {
    if r.seq != seq || row_hash(r) != r.hash {
        return Err(format!(
            "row {seq} was altered: its content does not match its hash"
        ));
    }
    if let Some(p) = prev
        && r.prev_hash != p.hash
    {
        return Err(format!(
            "row {seq} does not continue row {}'s hash",
            seq - 1
        ));
    }
    if merkle::row_leaf(&r.hash).as_ref() != Some(leaf) {
        return Err(format!(
            "row {seq} is not in the signed tree: its hash is not the tree's leaf {seq}"
        ));
    }
    Ok(())
}

/// The first index where two leaf lists differ, within the first `n`.
pub fn first_difference(a: &[Hash], b: &[Hash], n: usize) -> Option<usize> {
    (0..n.min(a.len()).min(b.len())).find(|&i| a[i] != b[i])
}

/// Checks the log (its latest signed checkpoint, already opened with the log's key, and its
/// entries) against what is held.
pub fn check(held: &Held, latest: &Checkpoint, entries: &[LogEntry]) -> Verdict {
    let leaves = match leaves_of(entries, latest.size) {
        Ok(l) => l,
        Err(v) => return v,
    };
    if merkle::root(&leaves) != latest.root {
        let seq = held
            .leaves
            .as_ref()
            .and_then(|h| first_difference(h, &leaves, h.len()))
            .map(|i| i as i64 + 1);
        return Verdict::bad(
            Finding::NotInSignedTree,
            seq,
            format!(
                "the log's {} leaves do not make the tree its checkpoint of size {} signs",
                leaves.len(),
                latest.size
            ),
        );
    }
    match &held.checkpoint {
        Some(c) => against(c, held.leaves.as_deref(), latest, leaves),
        None => ok(leaves, latest),
    }
}

fn ok(leaves: Vec<Hash>, latest: &Checkpoint) -> Verdict {
    Verdict {
        finding: None,
        first_affected_seq: None,
        detail: format!(
            "the log's tree of {} rows is the one it signed",
            latest.size
        ),
        leaves,
    }
}

/// The log's verified leaves against a held checkpoint (and its leaves, if kept).
fn against(
    held: &Checkpoint,
    held_leaves: Option<&[Hash]>,
    latest: &Checkpoint,
    leaves: Vec<Hash>,
) -> Verdict {
    let (m, n) = (held.size, latest.size);
    let diff = |upto: u64| {
        held_leaves
            .and_then(|h| first_difference(h, &leaves, upto as usize))
            .map(|i| i as i64 + 1)
    };
    if n < m {
        let seq = diff(n).unwrap_or(n as i64 + 1);
        return Verdict::bad(
            Finding::Rollback,
            Some(seq),
            format!(
                "rollback: the log's tree has {n} rows, a held checkpoint signs {m}; the first affected row is {seq}"
            ),
        );
    }
    if merkle::root(&leaves[..m as usize]) == held.root {
        let mut v = ok(leaves, latest);
        v.detail = format!("the log's tree of {n} rows extends the held checkpoint of {m}");
        return v;
    }
    let seq = diff(m);
    let at = seq.map_or(format!("somewhere in rows 1 to {m}"), |s| {
        format!("row {s}")
    });
    if n == m {
        Verdict::bad(
            Finding::Fork,
            seq,
            format!(
                "fork: two signed checkpoints of size {m} with different roots; the histories part at {at}"
            ),
        )
    } else {
        Verdict::bad(
            Finding::Rewritten,
            seq,
            format!(
                "the log's tree of {n} rows does not extend the held checkpoint of {m}: history was rewritten at {at}"
            ),
        )
    }
}

/// Reads a leaves file (32 bytes per leaf, in order).
pub fn read_leaves(bytes: &[u8]) -> Option<Vec<Hash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: i64, edit: Option<i64>) -> Vec<LogEntry> {
        let mut prev = super::super::row::GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRow {
                    seq,
                    kind: "event".into(),
                    action: "C".into(),
                    detail: Some(if Some(seq) == edit {
                        "edited".into()
                    } else {
                        format!("row {seq}")
                    }),
                    prev_hash: prev.clone(),
                    ..AuditRow::default()
                };
                r.hash = row_hash(&r);
                prev = r.hash.clone();
                LogEntry {
                    seq,
                    leaf: note::b64(&merkle::row_leaf(&r.hash).unwrap()),
                    row: Some(r),
                }
            })
            .collect()
    }

    fn checkpoint(e: &[LogEntry], size: u64) -> Checkpoint {
        let leaves = leaves_of(e, size).unwrap();
        Checkpoint {
            origin: "log".into(),
            size,
            root: merkle::root(&leaves),
        }
    }

    #[test]
    fn names_what_changed() {
        let honest = entries(20, None);
        let held = Held {
            checkpoint: Some(checkpoint(&honest, 12)),
            leaves: Some(leaves_of(&honest, 12).unwrap()),
        };
        let v = check(&held, &checkpoint(&honest, 20), &honest);
        assert_eq!(v.finding, None, "{}", v.detail);
        let rewritten = entries(20, Some(7));
        let v = check(&held, &checkpoint(&rewritten, 20), &rewritten);
        assert_eq!(
            (v.finding, v.first_affected_seq),
            (Some(Finding::Rewritten), Some(7))
        );
        let v = check(&held, &checkpoint(&rewritten, 12), &rewritten);
        assert_eq!(
            (v.finding, v.first_affected_seq),
            (Some(Finding::Fork), Some(7))
        );
        let v = check(&held, &checkpoint(&honest, 9), &honest[..9]);
        assert_eq!(
            (v.finding, v.first_affected_seq),
            (Some(Finding::Rollback), Some(10))
        );
        let no_leaves = Held {
            checkpoint: held.checkpoint.clone(),
            leaves: None,
        };
        let v = check(&no_leaves, &checkpoint(&rewritten, 20), &rewritten);
        assert_eq!(
            (v.finding, v.first_affected_seq),
            (Some(Finding::Rewritten), None)
        );
        let mut edited = honest.clone();
        edited[4].row.as_mut().unwrap().detail = Some("changed".into());
        let v = check(&held, &checkpoint(&honest, 20), &edited);
        assert_eq!(
            (v.finding, v.first_affected_seq),
            (Some(Finding::BrokenRow), Some(5))
        );
    }
}
