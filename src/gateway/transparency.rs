//! The audit log's transparency: signed checkpoints over the Merkle tree of the chain
//! ([`sign_checkpoint`], every N rows or T seconds and at every prune), and for auditors the
//! latest checkpoint, inclusion and consistency proofs and the canonical rows with their leaves
//! (`GET /audit/checkpoint`, `/audit/proof/inclusion`, `/audit/proof/consistency`,
//! `/audit/rows`). Proofs are combined from the stored complete subtrees
//! ([`crate::audit::merkle`]): O(log n) nodes in one or two statements, never a rescan.
//!
//! The signing key comes from a file or an environment variable ([`load_signer`]), never from
//! the database: whoever can only write the database cannot sign.

use serde::Serialize;

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::merkle::{self, Frontier, Hash, Range};
use crate::audit::note::{self, Checkpoint, Signer};
use crate::audit::verify::LogEntry;
use crate::audit::{self, Action, Interaction, Outcome};
use crate::config::{AuditSettings, ConfigError};
use crate::fhir::outcome::Issue;
use crate::fhir::time::now_us;
use crate::store::{Store, StoreTx, StoredCheckpoint};

/// Rows served per `GET /audit/rows` request at most.
pub const MAX_ROWS: i64 = 10_000;

/// The signing key named by `[audit]`, if any; a key that cannot be read names the file, the
/// key and the fix.
pub fn load_signer(a: &AuditSettings, file: &str) -> Result<Option<Signer>, ConfigError> {
    let problem = |key: &str, what: String| ConfigError {
        file: file.to_owned(),
        key: key.to_owned(),
        problem: what,
        fix: "point it at a key written by `carebridge audit keygen --name <origin> --out <file>`"
            .into(),
    };
    let (key, text) = if let Some(path) = &a.signing_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| problem("audit.signing_key_file", format!("{}: {e}", path.display())))?;
        ("audit.signing_key_file", text)
    } else if let Some(var) = &a.signing_key_env {
        let text = std::env::var(var).map_err(|_| {
            problem(
                "audit.signing_key_env",
                format!("the variable {var} is not set"),
            )
        })?;
        ("audit.signing_key_env", text)
    } else {
        return Ok(None);
    };
    Signer::parse(&text)
        .map(Some)
        .map_err(|e| problem(key, format!("not a signing key: {e}")))
}

/// The root of the tree of `size` leaves, from its right edge.
pub async fn tree_root(tx: &mut dyn StoreTx, size: u64) -> crate::store::Result<Hash> {
    let nodes = Frontier::nodes_for(size);
    let found = tx.merkle_nodes(&nodes).await?;
    let hashes: Option<Vec<Hash>> = found.into_iter().collect();
    hashes
        .and_then(|h| Frontier::from_hashes(size, &h))
        .map(|f| f.root())
        .ok_or_else(|| missing(size))
}

fn missing(size: u64) -> crate::store::StoreError {
    crate::store::StoreError::Corrupt {
        what: format!("the audit Merkle tree of size {size}"),
        error: "a node is missing".into(),
    }
}

/// The hashes of `ranges`, fetched in one go.
async fn prove(tx: &mut dyn StoreTx, ranges: &[Range]) -> crate::store::Result<Vec<Hash>> {
    let parts: Vec<Vec<merkle::Node>> = ranges.iter().map(|r| merkle::parts(*r)).collect();
    let all: Vec<merkle::Node> = parts.iter().flatten().copied().collect();
    let found = tx.merkle_nodes(&all).await?;
    let mut at = 0;
    let mut out = Vec::with_capacity(ranges.len());
    for p in &parts {
        let hashes: Option<Vec<Hash>> = found[at..at + p.len()].iter().copied().collect();
        at += p.len();
        // An empty range is the empty tree (the root of size 0).
        let h = match hashes.as_deref() {
            Some([]) => Some(merkle::empty_root()),
            other => other.and_then(merkle::range_hash),
        };
        out.push(h.ok_or_else(|| missing(ranges.last().map_or(0, |r| r.1)))?);
    }
    Ok(out)
}

/// The leaf of row `seq`, its inclusion proof in the tree of `size` leaves and that tree's root,
/// from one read of the nodes (the root is the fold of the range `[0, size)`).
pub async fn inclusion_proof(
    tx: &mut dyn StoreTx,
    seq: u64,
    size: u64,
) -> crate::store::Result<(Hash, Vec<Hash>, Hash)> {
    let mut ranges = vec![(seq - 1, seq)];
    ranges.extend(merkle::inclusion_ranges(seq - 1, size));
    ranges.push((0, size));
    let mut hashes = prove(tx, &ranges).await?;
    let root = hashes.pop().ok_or_else(|| missing(size))?;
    let leaf = hashes.remove(0);
    Ok((leaf, hashes, root))
}

/// The consistency proof from the tree of `old` leaves to that of `new`, with both roots, from
/// one read of the nodes.
pub async fn consistency_proof(
    tx: &mut dyn StoreTx,
    old: u64,
    new: u64,
) -> crate::store::Result<(Vec<Hash>, Hash, Hash)> {
    let mut ranges = merkle::consistency_ranges(old, new);
    ranges.push((0, old));
    ranges.push((0, new));
    let mut hashes = prove(tx, &ranges).await?;
    let new_root = hashes.pop().ok_or_else(|| missing(new))?;
    let old_root = hashes.pop().ok_or_else(|| missing(old))?;
    Ok((hashes, old_root, new_root))
}

/// Signs a checkpoint of the tree as it is (the chain's head is its size) unless the latest
/// one already covers it; returns the new checkpoint.
pub async fn sign_checkpoint(
    store: &dyn Store,
    signer: &Signer,
) -> crate::store::Result<Option<StoredCheckpoint>> {
    let mut tx = store.begin_read().await?;
    let Some((size, _)) = tx.audit_head().await? else {
        return Ok(None);
    };
    if tx
        .checkpoint_latest()
        .await?
        .is_some_and(|c| c.size >= size)
    {
        return Ok(None);
    }
    let root = tree_root(tx.as_mut(), size as u64).await?;
    drop(tx);
    let checkpoint = Checkpoint {
        origin: signer.name().to_owned(),
        size: size as u64,
        root,
    };
    let stored = StoredCheckpoint {
        size,
        root,
        note: signer.sign(&checkpoint.body()),
        signed_us: now_us(),
    };
    let mut tx = store.begin().await?;
    // Another replica may have signed this size in the meantime: then there is nothing to add.
    if tx
        .checkpoint_latest()
        .await?
        .is_some_and(|c| c.size >= size)
    {
        return Ok(None);
    }
    tx.checkpoint_insert(&stored).await?;
    tx.commit().await?;
    Ok(Some(stored))
}

/// The log's entries `from..=to`: each sequence number's leaf, and its row unless pruned.
pub async fn entries(
    tx: &mut dyn StoreTx,
    from: i64,
    to: i64,
) -> crate::store::Result<Vec<LogEntry>> {
    let leaves = tx.merkle_leaves((from - 1) as u64, (to - 1) as u64).await?;
    let mut rows = tx
        .audit_chain_page(from - 1, to - from + 1)
        .await?
        .into_iter()
        .peekable();
    let mut out = Vec::with_capacity(leaves.len());
    for (seq, leaf) in (from..=to).zip(leaves) {
        let leaf = leaf.ok_or_else(|| missing(seq as u64))?;
        let row = rows.next_if(|r| r.seq == seq);
        out.push(LogEntry {
            seq,
            leaf: note::b64(&leaf),
            row,
        });
    }
    Ok(out)
}

/// An inclusion proof as served.
#[derive(Debug, Serialize)]
pub struct InclusionProof {
    pub seq: i64,
    pub size: i64,
    pub leaf_index: u64,
    pub leaf: String,
    pub root: String,
    pub proof: Vec<String>,
}

/// A consistency proof as served.
#[derive(Debug, Serialize)]
pub struct ConsistencyProof {
    pub from: i64,
    pub to: i64,
    pub from_root: String,
    pub to_root: String,
    pub proof: Vec<String>,
}

fn bad(param: &str, what: &str) -> GatewayError {
    GatewayError::invalid(Issue::error("value", what).at(param))
}

impl Gateway {
    /// `GET /audit/checkpoint`: the latest signed checkpoint note.
    pub async fn audit_checkpoint(&self, caller: &Caller) -> Result<String, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let mut tx = self.store.begin_read().await?;
        tx.checkpoint_latest()
            .await?
            .map(|c| c.note)
            .ok_or_else(|| GatewayError::NotFound("no checkpoint has been signed yet".into()))
    }

    /// The tree size now (the chain's head), for checking requested sizes.
    async fn tree_size(tx: &mut dyn StoreTx) -> Result<i64, GatewayError> {
        Ok(tx.audit_head().await?.map_or(0, |h| h.0))
    }

    /// `GET /audit/proof/inclusion?seq=&size=`: row `seq` in the tree of `size` rows.
    pub async fn audit_inclusion(
        &self,
        caller: &Caller,
        seq: i64,
        size: i64,
    ) -> Result<InclusionProof, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let mut tx = self.store.begin_read().await?;
        if size < 1 || size > Self::tree_size(tx.as_mut()).await? {
            return Err(bad(
                "size",
                "size must be between 1 and the log's tree size",
            ));
        }
        if seq < 1 || seq > size {
            return Err(bad("seq", "seq must be between 1 and size"));
        }
        let (leaf, proof, root) = inclusion_proof(tx.as_mut(), seq as u64, size as u64).await?;
        Ok(InclusionProof {
            seq,
            size,
            leaf_index: seq as u64 - 1,
            leaf: note::b64(&leaf),
            root: note::b64(&root),
            proof: proof.iter().map(note::b64).collect(),
        })
    }

    /// `GET /audit/proof/consistency?from=&to=`: the tree of `to` rows extends that of `from`.
    pub async fn audit_consistency(
        &self,
        caller: &Caller,
        from: i64,
        to: i64,
    ) -> Result<ConsistencyProof, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let mut tx = self.store.begin_read().await?;
        if to < 1 || to > Self::tree_size(tx.as_mut()).await? {
            return Err(bad("to", "to must be between 1 and the log's tree size"));
        }
        if from < 1 || from > to {
            return Err(bad("from", "from must be between 1 and to"));
        }
        let (proof, from_root, to_root) =
            consistency_proof(tx.as_mut(), from as u64, to as u64).await?;
        Ok(ConsistencyProof {
            from,
            to,
            from_root: note::b64(&from_root),
            to_root: note::b64(&to_root),
            proof: proof.iter().map(note::b64).collect(),
        })
    }

    /// `GET /audit/rows?from=&to=`: the canonical rows (and every leaf, pruned rows' too) of
    /// `from..=to`, at most [`MAX_ROWS`]; audited, since rows name patients.
    pub async fn audit_rows(
        &self,
        caller: &Caller,
        from: i64,
        to: i64,
    ) -> Result<Vec<LogEntry>, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let entries = {
            let mut tx = self.store.begin_read().await?;
            let size = Self::tree_size(tx.as_mut()).await?;
            if to < 1 || to > size {
                return Err(bad("to", "to must be between 1 and the log's tree size"));
            }
            if from < 1 || from > to || to - from >= MAX_ROWS {
                return Err(bad(
                    "from",
                    "from must be between 1 and to, at most 10000 rows before it",
                ));
            }
            entries(tx.as_mut(), from, to).await?
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Export,
            Outcome::Success,
        );
        row.entities = vec!["AuditEvent".into()];
        row.query = Some(format!("rows?from={from}&to={to}"));
        self.write_audit(row).await;
        Ok(entries)
    }

    /// Signs a checkpoint now if rows were appended since the last one (the checkpoint worker
    /// and tests); `None` without a key or when nothing is new.
    pub async fn sign_checkpoint(&self) -> crate::store::Result<Option<StoredCheckpoint>> {
        match self.signer() {
            Some(s) => sign_checkpoint(self.store.as_ref(), s).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(file: &std::path::Path) -> AuditSettings {
        AuditSettings {
            signing_key_file: Some(file.to_path_buf()),
            ..AuditSettings::default()
        }
    }

    #[test]
    fn a_key_that_cannot_be_read_names_file_key_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.key");
        let e = load_signer(&settings(&missing), "cb.toml").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("cb.toml", "audit.signing_key_file")
        );
        assert!(
            e.problem.contains("none.key") && e.fix.contains("audit keygen"),
            "{e}"
        );
        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key").unwrap();
        let e = load_signer(&settings(&garbage), "cb.toml").unwrap_err();
        assert!(e.problem.starts_with("not a signing key"), "{e}");
        let good = dir.path().join("good.key");
        let signer = Signer::from_seed("log.example", [1; 32]).unwrap();
        std::fs::write(&good, signer.encode() + "\n").unwrap();
        let loaded = load_signer(&settings(&good), "cb.toml").unwrap().unwrap();
        assert_eq!(loaded.verifier(), signer.verifier());
        assert!(
            load_signer(&AuditSettings::default(), "cb.toml")
                .unwrap()
                .is_none()
        );
    }
}
