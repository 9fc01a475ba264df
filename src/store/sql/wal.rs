//! SQLite: the write-ahead log made durable by the gateway, outside the writer's turn, one
//! `fsync` for every commit that happened before it began (group commit).
//!
//! With `synchronous = FULL` SQLite syncs the WAL inside `COMMIT`, while the writer's turn is
//! still held: the next write cannot begin until the disk has answered, and two commits never
//! share a sync. The write connections run `synchronous = NORMAL` instead (in WAL mode: the
//! commit writes its frames, the WAL is synced before each checkpoint and the database file
//! after it) and [`WalSync::wait`] syncs the WAL file after the turn is released; the request
//! that committed is answered only once a sync that began after its commit has finished, so a
//! 2xx still means "on disk". Writers that commit while a sync runs share the next one.
//!
//! What changes against `FULL`: between its commit and that sync (one `fsync`, a few ms), a
//! commit is visible to other connections before it is durable. A process crash loses nothing
//! (the frames are in the operating system's cache); a power loss in that window loses the
//! commit, which no caller has been told about. A write that follows — a delivery's lease, the
//! next request — commits later and so waits for a sync that covers it too.
//!
//! Used only when the database is in WAL mode (see [`WalSync::open`]); otherwise every
//! connection keeps `synchronous = FULL`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::{Result, StoreError};

/// The pragma of the write connections when the gateway syncs the WAL itself.
pub const WRITER_SYNCHRONOUS: &str = "PRAGMA synchronous = NORMAL";

/// Commits counted in order, and the count the last finished sync covered.
pub struct WalSync {
    /// The WAL file (`<database>-wal`).
    path: PathBuf,
    /// The database file's directory: synced again whenever the WAL is a new file.
    dir: PathBuf,
    /// Write transactions committed: a commit takes its number inside the writer's turn, after
    /// its frames are written (the store's counter, also read by the checkpointer).
    commits: Arc<AtomicU64>,
    /// How many commits the last finished sync covered, and the WAL file it synced (inode);
    /// held while a sync runs, so that one runs at a time and the next covers the waiters.
    synced: tokio::sync::Mutex<(u64, Option<u64>)>,
}

impl WalSync {
    /// For the database file `db` when its journal mode is WAL (`journal_mode`, as the
    /// database reports it), else `None`: the write connections then stay at `FULL`.
    pub fn open(db: &str, journal_mode: &str, commits: Arc<AtomicU64>) -> Option<WalSync> {
        if !journal_mode.eq_ignore_ascii_case("wal") || db.is_empty() {
            return None;
        }
        let db = Path::new(db);
        let dir = db.parent()?.to_path_buf();
        Some(WalSync {
            path: PathBuf::from(format!("{}-wal", db.display())),
            dir,
            commits,
            synced: tokio::sync::Mutex::new((0, None)),
        })
    }

    /// How many commits the last finished sync covered.
    #[cfg(test)]
    pub async fn synced(&self) -> u64 {
        self.synced.lock().await.0
    }

    /// Returns once a sync of the WAL that began after commit `ticket` has finished.
    pub async fn wait(&self, ticket: u64) -> Result<()> {
        let mut synced = self.synced.lock().await;
        if synced.0 >= ticket {
            return Ok(());
        }
        // Every commit numbered up to here wrote its frames before taking its number.
        let upto = self.commits.load(Ordering::Acquire);
        let (path, dir, last) = (self.path.clone(), self.dir.clone(), synced.1);
        let inode = tokio::task::spawn_blocking(move || sync_wal(&path, &dir, last))
            .await
            .map_err(|e| StoreError::Durability(format!("the WAL sync task failed: {e}")))?
            .map_err(|e| StoreError::Durability(format!("syncing the SQLite WAL file: {e}")))?;
        *synced = (upto, Some(inode));
        Ok(())
    }
}

/// Syncs the WAL file's data (and its directory entry when it is a new file since `last`);
/// the WAL's inode.
fn sync_wal(path: &Path, dir: &Path, last: Option<u64>) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path)?;
    file.sync_data()?;
    let inode = file.metadata()?.ino();
    if last != Some(inode) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_wal_database_is_synced_by_the_gateway() {
        let commits = Arc::new(AtomicU64::new(0));
        assert!(WalSync::open("/tmp/x.db", "delete", commits.clone()).is_none());
        assert!(WalSync::open("", "wal", commits.clone()).is_none());
        let w = WalSync::open("/tmp/x.db", "WAL", commits).expect("wal");
        assert_eq!(w.path, PathBuf::from("/tmp/x.db-wal"));
        assert_eq!(w.dir, PathBuf::from("/tmp"));
    }

    #[tokio::test]
    async fn one_sync_covers_every_commit_before_it_began() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        std::fs::write(format!("{}-wal", db.display()), b"frames").expect("wal");
        let commits = Arc::new(AtomicU64::new(0));
        let committed = || commits.fetch_add(1, Ordering::AcqRel) + 1;
        let w = WalSync::open(&db.display().to_string(), "wal", commits.clone()).expect("wal");
        let (a, b) = (committed(), committed());
        w.wait(a).await.expect("sync");
        // Both commits were numbered before the sync began: it covered the second too.
        assert_eq!(w.synced.lock().await.0, b);
        w.wait(b).await.expect("covered");
        let c = committed();
        w.wait(c).await.expect("sync");
        assert_eq!(w.synced.lock().await.0, c);
    }

    #[tokio::test]
    async fn a_missing_wal_file_is_an_error_not_a_silent_success() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("gone.db");
        let commits = Arc::new(AtomicU64::new(0));
        let w = WalSync::open(&db.display().to_string(), "wal", commits.clone()).expect("wal");
        let t = commits.fetch_add(1, Ordering::AcqRel) + 1;
        let e = w.wait(t).await.expect_err("no WAL file");
        assert!(e.to_string().contains("WAL"), "{e}");
    }
}
