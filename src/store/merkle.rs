//! The audit log's Merkle tree, signed checkpoints and witness state (`migrations/*/0005`):
//! [`TransparencyTx`]. Nodes are appended with the rows they cover, inside `append_audit`
//! (`SqlTx::merkle_append`): the right edge of the tree is read (one statement, one node per set
//! bit of the size), each new leaf completes at most one node per level, and the new nodes are
//! written in one statement (on PostgreSQL the same statement as the rows and the chain's new
//! head, `SqlTx::append_rows_pg`). Nodes are never updated or deleted, not even by a prune.

use async_trait::async_trait;
use sqlx::FromRow;
use std::collections::HashMap;

use super::sql::{SqlStore, SqlTx, map_err};
use super::{Result, StoreError, StoreTx};
use crate::audit::merkle::{Frontier, Hash, Node, row_leaf};

/// A signed checkpoint as kept: its size, root and the signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: i64,
    pub root: Hash,
    pub note: String,
    pub signed_us: i64,
}

/// What a configured witness holds, as far as this log knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WitnessState {
    pub url: String,
    /// The size of the last checkpoint it countersigned (0: none yet).
    pub size: i64,
    /// Its cosignature line(s) of that checkpoint.
    pub cosigned: Option<String>,
    /// Failed pushes since the last success (the back-off grows with it).
    pub failures: i64,
    /// When the next push is due (microseconds since the epoch).
    pub next_us: i64,
    pub last_error: Option<String>,
}

/// The transparency tables inside a transaction.
#[async_trait]
pub trait TransparencyTx: Send {
    /// The hashes of these nodes, in the same order (`None` where a node is not stored).
    async fn merkle_nodes(&mut self, nodes: &[Node]) -> Result<Vec<Option<Hash>>>;
    /// The leaves `from..=to` (by index), in order, in one statement (`None` where missing).
    async fn merkle_leaves(&mut self, from: u64, to: u64) -> Result<Vec<Option<Hash>>>;
    async fn checkpoint_insert(&mut self, c: &StoredCheckpoint) -> Result<()>;
    /// The checkpoint of the largest signed size.
    async fn checkpoint_latest(&mut self) -> Result<Option<StoredCheckpoint>>;
    /// Every signed checkpoint, by size.
    async fn checkpoints(&mut self) -> Result<Vec<StoredCheckpoint>>;
    async fn witness_get(&mut self, url: &str) -> Result<Option<WitnessState>>;
    async fn witness_put(&mut self, w: &WitnessState) -> Result<()>;
}

#[derive(FromRow)]
struct NodeRecord {
    level: i64,
    idx: i64,
    hash: Vec<u8>,
}

#[derive(FromRow)]
struct CheckpointRecord {
    size: i64,
    root: Vec<u8>,
    note: String,
    signed_us: i64,
}

impl TryFrom<CheckpointRecord> for StoredCheckpoint {
    type Error = StoreError;
    fn try_from(r: CheckpointRecord) -> Result<StoredCheckpoint> {
        Ok(StoredCheckpoint {
            size: r.size,
            root: to_hash(r.root, || format!("checkpoint {}", r.size))?,
            note: r.note,
            signed_us: r.signed_us,
        })
    }
}

#[derive(FromRow)]
struct WitnessRecord {
    url: String,
    size: i64,
    cosigned: Option<String>,
    failures: i64,
    next_us: i64,
    last_error: Option<String>,
}

fn to_hash(bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<Hash> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: what(),
        error: "a stored hash is not 32 bytes".into(),
    })
}

/// Nodes per statement (three parameters each).
const CHUNK: usize = 200;

impl SqlTx {
    /// Extends the tree of `size` leaves (whose last row has hash `head`, when known) by the
    /// rows with these hashes (hex), in order.
    pub(super) async fn merkle_append(
        &mut self,
        size: u64,
        head: Option<&str>,
        row_hashes: &[String],
    ) -> Result<()> {
        let made = self.merkle_extend(size, head, row_hashes).await?;
        self.insert_nodes(&made).await
    }

    /// The nodes that extending the tree of `size` leaves by these rows completes (the leaves
    /// included), for the caller to write; the tree's new right edge is remembered for after
    /// the commit.
    pub(super) async fn merkle_extend(
        &mut self,
        size: u64,
        head: Option<&str>,
        row_hashes: &[String],
    ) -> Result<Vec<(Node, Hash)>> {
        let cached = self.tree.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(n, h, _)| *n == size && Some(h.as_str()) == head)
                .map(|e| e.2.clone())
        });
        let mut frontier = match cached {
            Some(f) => f,
            None => self.frontier(size).await?,
        };
        let mut made = Vec::with_capacity(row_hashes.len() * 2);
        for h in row_hashes {
            // The store computed these hashes itself: always 64 hex digits.
            let leaf = row_leaf(h).ok_or_else(|| StoreError::Corrupt {
                what: "an audit row hash".into(),
                error: "not 32 bytes of hex".into(),
            })?;
            made.extend(frontier.push(leaf));
        }
        if let Some(last) = row_hashes.last() {
            self.tree_after = Some((frontier.size(), last.clone(), frontier));
        }
        Ok(made)
    }

    /// The right edge of the tree of `size` leaves, from its stored nodes.
    pub(super) async fn frontier(&mut self, size: u64) -> Result<Frontier> {
        let nodes = Frontier::nodes_for(size);
        let found = self.fetch_nodes(&nodes).await?;
        let hashes: Option<Vec<Hash>> = found.into_iter().collect();
        hashes
            .and_then(|h| Frontier::from_hashes(size, &h))
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("the audit Merkle tree at size {size}"),
                error: "a node of its right edge is missing (run `carebridge audit verify`)".into(),
            })
    }

    pub(super) async fn insert_nodes(&mut self, nodes: &[(Node, Hash)]) -> Result<()> {
        for chunk in nodes.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            // Only placeholders are formatted into the statement.
            let sql = sqlx::AssertSqlSafe(format!(
                "{} INTO audit_merkle (level, idx, hash) VALUES {}",
                super::sql::insert(self.dialect),
                values.join(", ")
            ));
            let mut q = sqlx::query(sql);
            for (n, h) in chunk {
                q = q
                    .bind(i64::from(n.level))
                    .bind(n.idx as i64)
                    .bind(h.to_vec());
            }
            q.execute(&mut *self.tx).await.map_err(map_err)?;
        }
        Ok(())
    }

    async fn fetch_nodes(&mut self, nodes: &[Node]) -> Result<Vec<Option<Hash>>> {
        let mut found: HashMap<Node, Hash> = HashMap::with_capacity(nodes.len());
        let mut wanted: Vec<Node> = nodes.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        for chunk in wanted.chunks(CHUNK) {
            let terms: Vec<String> = (0..chunk.len())
                .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            // Only placeholders are formatted into the statement.
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT level, idx, hash FROM audit_merkle WHERE {}",
                terms.join(" OR ")
            ));
            let mut q = sqlx::query_as::<_, NodeRecord>(sql);
            for n in chunk {
                q = q.bind(i64::from(n.level)).bind(n.idx as i64);
            }
            for r in q.fetch_all(&mut *self.tx).await.map_err(map_err)? {
                let node = Node {
                    level: r.level as u32,
                    idx: r.idx as u64,
                };
                found.insert(node, to_hash(r.hash, || format!("Merkle node {node:?}"))?);
            }
        }
        Ok(nodes.iter().map(|n| found.get(n).copied()).collect())
    }
}

#[async_trait]
impl TransparencyTx for SqlTx {
    async fn merkle_nodes(&mut self, nodes: &[Node]) -> Result<Vec<Option<Hash>>> {
        self.fetch_nodes(nodes).await
    }

    async fn merkle_leaves(&mut self, from: u64, to: u64) -> Result<Vec<Option<Hash>>> {
        let rows = sqlx::query_as::<_, NodeRecord>(
            "SELECT level, idx, hash FROM audit_merkle WHERE level = 0 AND idx >= $1 AND idx <= $2 \
             ORDER BY idx",
        )
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        let mut out = vec![None; (to + 1).saturating_sub(from) as usize];
        for r in rows {
            let i = (r.idx as u64 - from) as usize;
            out[i] = Some(to_hash(r.hash, || format!("Merkle leaf {}", r.idx))?);
        }
        Ok(out)
    }

    async fn checkpoint_insert(&mut self, c: &StoredCheckpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, root, note, signed_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(c.size)
        .bind(c.root.to_vec())
        .bind(&c.note)
        .bind(c.signed_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn checkpoint_latest(&mut self) -> Result<Option<StoredCheckpoint>> {
        let r = sqlx::query_as::<_, CheckpointRecord>(
            "SELECT size, root, note, signed_us FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
        )
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        r.map(StoredCheckpoint::try_from).transpose()
    }

    async fn checkpoints(&mut self) -> Result<Vec<StoredCheckpoint>> {
        let rs = sqlx::query_as::<_, CheckpointRecord>(
            "SELECT size, root, note, signed_us FROM audit_checkpoints ORDER BY size",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        rs.into_iter().map(StoredCheckpoint::try_from).collect()
    }

    async fn witness_get(&mut self, url: &str) -> Result<Option<WitnessState>> {
        let r = sqlx::query_as::<_, WitnessRecord>(
            "SELECT url, size, cosigned, failures, next_us, last_error FROM audit_witnesses \
             WHERE url = $1",
        )
        .bind(url)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(r.map(|r| WitnessState {
            url: r.url,
            size: r.size,
            cosigned: r.cosigned,
            failures: r.failures,
            next_us: r.next_us,
            last_error: r.last_error,
        }))
    }

    async fn witness_put(&mut self, w: &WitnessState) -> Result<()> {
        sqlx::query("DELETE FROM audit_witnesses WHERE url = $1")
            .bind(&w.url)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO audit_witnesses (url, size, cosigned, failures, next_us, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&w.url)
        .bind(w.size)
        .bind(w.cosigned.as_deref())
        .bind(w.failures)
        .bind(w.next_us)
        .bind(w.last_error.as_deref())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}

impl SqlStore {
    /// Brings the tree up to the chain's head: a store whose rows were written before the tree
    /// existed gets their leaves now, from the rows themselves. A chain pruned before that has
    /// lost the rows the first leaves need: that is an error naming the fix.
    pub(super) async fn merkle_backfill(&self) -> Result<()> {
        let mut tx = self.begin_sql().await?;
        let Some((head, _)) = StoreTx::audit_head(&mut tx).await? else {
            return Ok(());
        };
        let mut size = tx.merkle_leaf_count().await?;
        while (size as i64) < head {
            let rows = tx.audit_chain_page(size as i64, 10_000).await?;
            let contiguous = rows
                .iter()
                .enumerate()
                .all(|(i, r)| r.seq == size as i64 + 1 + i as i64);
            if rows.is_empty() || !contiguous {
                return Err(StoreError::Corrupt {
                    what: "the audit log".into(),
                    error: format!(
                        "the Merkle tree covers {size} rows and row {} is not kept (pruned \
                         before the tree existed, or deleted): restore the rows from the pruned \
                         segment or start a new log",
                        size + 1
                    ),
                });
            }
            let hashes: Vec<String> = rows.into_iter().map(|r| r.hash).collect();
            tx.merkle_append(size, None, &hashes).await?;
            size += hashes.len() as u64;
        }
        tx.tx.commit().await.map_err(map_err)
    }
}

impl SqlTx {
    /// The number of leaves: one more than the last leaf's index (leaves are only appended).
    async fn merkle_leaf_count(&mut self) -> Result<u64> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(idx) FROM audit_merkle WHERE level = 0")
                .fetch_one(&mut *self.tx)
                .await
                .map_err(map_err)?;
        Ok(last.map_or(0, |l| l as u64 + 1))
    }
}
