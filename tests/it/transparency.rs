//! The audit log an auditor does not have to trust the operator for. The hashing is checked
//! against the published RFC 6962/9162 known answers; the store's tree (SQLite and PostgreSQL)
//! against the recursive definition. Then the real gateway (`carebridge serve`, signing
//! checkpoints with a key from a file) pushes its checkpoints to a second real carebridge in
//! `audit witness` mode that mirrors the leaves, and someone with write access to the database
//! (a) deletes the tail and moves the head back, (b) edits a row and recomputes every hash, the
//! head and the tree, (c) does the same holding the real key and signs a forked checkpoint:
//! each is caught by the witness and by the offline verifier (`carebridge audit verify
//! --checkpoint`), which name the first affected sequence number. An honest log that grew and
//! was pruned verifies, and its proofs check against its checkpoints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use carebridge::audit::merkle::{self, Frontier, Hash};
use carebridge::audit::note::{self, Checkpoint, Signer, Verifier};
use carebridge::audit::{AuditRow, Interaction, Outcome, row_hash};
use carebridge::gateway::transparency;
use carebridge::store::{SqlStore, Store};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};

use crate::common::{self, Backend, conf, server::Serve, wait_for};

const ORIGIN: &str = "carebridge.test/audit";
const BIN: &str = env!("CARGO_BIN_EXE_carebridge");

fn hex32(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Every range of a proof, hashed from the leaves as the store's complete subtrees hold them.
fn range_from_leaves(leaves: &[Hash], r: merkle::Range) -> Hash {
    let parts: Vec<Hash> = merkle::parts(r)
        .iter()
        .map(|n| {
            let lo = (n.idx << n.level) as usize;
            merkle::root(&leaves[lo..lo + (1usize << n.level)])
        })
        .collect();
    merkle::range_hash(&parts).unwrap()
}

#[test]
fn hashing_matches_the_published_known_answers() {
    let kat = common::read_json(&common::shared_data().join("merkle/rfc6962-known-answers.json"));
    let strings = |k: &str| -> Vec<String> {
        kat[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let leaves: Vec<Hash> = strings("leaf_inputs")
        .iter()
        .map(|h| merkle::leaf_hash(&hex::decode(h).unwrap()))
        .collect();
    let want_leaves = strings("leaf_hashes");
    assert_eq!(leaves.len(), want_leaves.len());
    for (i, want) in want_leaves.iter().enumerate() {
        assert_eq!(&hex::encode(leaves[i]), want, "leaf hash {i}");
    }
    let roots: Vec<Hash> = strings("root_hashes").iter().map(|h| hex32(h)).collect();
    assert_eq!(roots.len(), leaves.len() + 1);
    assert_eq!(roots[0], merkle::empty_root());
    let mut frontier = Frontier::default();
    for n in 1..=leaves.len() {
        frontier.push(leaves[n - 1]);
        assert_eq!(merkle::root(&leaves[..n]), roots[n], "root of {n} leaves");
        assert_eq!(frontier.root(), roots[n], "the store's append, {n} leaves");
        for i in 0..n as u64 {
            let proof: Vec<Hash> = merkle::inclusion_ranges(i, n as u64)
                .into_iter()
                .map(|r| range_from_leaves(&leaves, r))
                .collect();
            assert!(merkle::verify_inclusion(
                i,
                n as u64,
                &leaves[i as usize],
                &proof,
                &roots[n]
            ));
        }
        for m in 0..=n {
            let proof: Vec<Hash> = merkle::consistency_ranges(m as u64, n as u64)
                .into_iter()
                .map(|r| range_from_leaves(&leaves, r))
                .collect();
            assert!(
                merkle::verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &proof),
                "consistency {m} -> {n}"
            );
            if m > 0 && m < n {
                assert!(!merkle::verify_consistency(
                    m as u64,
                    n as u64,
                    &roots[m - 1],
                    &roots[n],
                    &proof
                ));
            }
        }
    }
}

/// The store's nodes, appended commit by commit, give the recursive definition's root and
/// proofs that verify, for every size (SQLite and PostgreSQL).
async fn store_tree(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("t.db").display()),
            None,
        ),
        Backend::Postgres => {
            let (u, n) = common::fresh_pg_database().await;
            (u, Some(n))
        }
    };
    let store = SqlStore::connect(&url, 2).await.unwrap();
    let actor = carebridge::audit::Actor::gateway();
    for t in 0..13 {
        let mut tx = store.begin().await.unwrap();
        for _ in 0..(t % 4 + 1) {
            let row = carebridge::audit::row(
                &actor,
                Some("gp"),
                carebridge::audit::Action::Read,
                Interaction::Read,
                Outcome::Success,
            );
            tx.audit(&row).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx.audit_chain_page(0, 1_000).await.unwrap();
    let leaves: Vec<Hash> = rows
        .iter()
        .map(|r| merkle::row_leaf(&r.hash).unwrap())
        .collect();
    let n = leaves.len() as u64;
    assert!(n > 20);
    for size in 1..=n {
        let root = transparency::tree_root(tx.as_mut(), size).await.unwrap();
        assert_eq!(
            root,
            merkle::root(&leaves[..size as usize]),
            "root of {size}"
        );
        for seq in [1, size / 2 + 1, size] {
            let (leaf, proof, r) = transparency::inclusion_proof(tx.as_mut(), seq, size)
                .await
                .unwrap();
            assert_eq!(r, root);
            assert_eq!(leaf, leaves[seq as usize - 1]);
            assert!(merkle::verify_inclusion(
                seq - 1,
                size,
                &leaf,
                &proof,
                &root
            ));
        }
        let old_root = merkle::root(&leaves[..(size as usize).div_ceil(2)]);
        let (proof, a, b) = transparency::consistency_proof(tx.as_mut(), size.div_ceil(2), size)
            .await
            .unwrap();
        assert_eq!((a, b), (old_root, root));
        assert!(merkle::verify_consistency(
            size.div_ceil(2),
            size,
            &old_root,
            &root,
            &proof
        ));
    }
    drop(tx);
    store.close().await;
    if let Some(name) = pg {
        common::drop_pg_database(&name).await;
    }
}

#[tokio::test]
async fn the_stored_tree_is_the_rfc_tree_on_sqlite() {
    store_tree(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_stored_tree_is_the_rfc_tree_on_postgresql() {
    store_tree(Backend::Postgres).await;
}

/// `carebridge <args>`: success and stdout (stderr added on failure, for the message).
fn cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("CAREBRIDGE_AUDIT_TOKEN")
        .envs(envs.iter().copied())
        .current_dir(common::repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), format!("{text}{err}"))
}

/// A child process that logged "listening addr=…"; killed when dropped.
struct Listening {
    child: Child,
    addr: String,
}

impl Listening {
    fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Listening {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(common::repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(rest) = line.split("addr=").nth(1)
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the witness listens");
        Listening { child, addr }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway that signs checkpoints and a witness that mirrors its leaves, both real
/// processes; the auditor's folder holds a copy of what the witness held.
struct Log {
    dir: tempfile::TempDir,
    config: PathBuf,
    db: String,
    root: String,
    tokens: HashMap<String, String>,
    http: reqwest::Client,
    // Kept for its lifetime: the gateway process stops when the log is dropped.
    _gateway: common::server::Server,
    witness: Listening,
}

impl Log {
    async fn start() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f).display().to_string();
        let (ok, out) = cli(
            &["audit", "keygen", "--name", ORIGIN, "--out", &p("log.key")],
            &[],
        );
        assert!(ok, "{out}");
        assert!(
            out.contains(
                &std::fs::read_to_string(p("log.pub"))
                    .unwrap()
                    .trim()
                    .to_owned()
            )
        );
        let (ok, out) = cli(
            &[
                "audit",
                "keygen",
                "--name",
                "witness.test",
                "--out",
                &p("witness.key"),
            ],
            &[],
        );
        assert!(ok, "{out}");
        let (clients, tokens) = conf::mint(&common::ROLES);
        let config = dir.path().join("carebridge.toml");
        let db = format!("sqlite://{}", p("carebridge.db"));
        let mut attempt = 0;
        let (root, witness, gateway) = loop {
            attempt += 1;
            match Log::start_pair(dir.path(), &config, &db, &clients, &tokens["auditor"]) {
                Ok(started) => break started,
                Err(e) if attempt < 5 && e.contains("Address already in use") => {
                    // Both start afresh: nothing of the attempt that failed is kept.
                    let _ = std::fs::remove_dir_all(p("witness"));
                    for f in ["carebridge.db", "carebridge.db-wal", "carebridge.db-shm"] {
                        let _ = std::fs::remove_file(p(f));
                    }
                }
                Err(e) => panic!("{e}"),
            }
        };
        Log {
            dir,
            config,
            db,
            root,
            tokens,
            http: carebridge::outbound::client().unwrap(),
            _gateway: gateway,
            witness,
        }
    }

    /// The witness, then the gateway on a port taken from port 0 and let go, so that the
    /// witness can be told it first; another test may bind that port in between (then the
    /// gateway's error, and the witness is stopped).
    fn start_pair(
        dir: &std::path::Path,
        config: &std::path::Path,
        db: &str,
        clients: &str,
        auditor_token: &str,
    ) -> Result<(String, Listening, common::server::Server), String> {
        let p = |f: &str| dir.join(f).display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = format!("http://127.0.0.1:{port}");
        let witness = Listening::spawn(
            &[
                "audit",
                "witness",
                "--listen",
                "127.0.0.1:0",
                "--state",
                &p("witness"),
                "--key",
                &p("witness.key"),
                "--log-key",
                &p("log.pub"),
                "--log-url",
                &root,
            ],
            &[("CAREBRIDGE_WITNESS_TOKEN", auditor_token)],
        );
        let text = common::config_text(db, "")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "enabled = false",
                "enabled = false\nretry_initial_ms = 100\nretry_max_ms = 400",
            )
            + &format!(
                "\n[audit]\nsigning_key_file = \"{}\"\ncheckpoint_every_rows = 5\n\
                 checkpoint_every_secs = 3600\nwitnesses = [\"http://{}\"]\n",
                p("log.key"),
                witness.addr
            )
            + clients;
        std::fs::write(config, text).unwrap();
        let gateway = Serve::new(config).start().map_err(|e| e.to_string())?;
        Ok((root, witness, gateway))
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    /// `n` Patients written by general practice: each leaves audit rows.
    async fn traffic(&self, from: usize, n: usize) {
        for i in from..from + n {
            let patient = json!({ "resourceType": "Patient", "id": format!("tp{i}"),
                "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": format!("{:010}", 1_000_000 + i) }] });
            let resp = self
                .http
                .put(format!("{}/fhir/gp/Patient/tp{i}", self.root))
                .bearer_auth(&self.tokens["gp"])
                .header("content-type", "application/fhir+json")
                .body(patient.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.root))
            .bearer_auth(&self.tokens["auditor"])
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn latest(&self) -> Option<Checkpoint> {
        let (status, text) = self.get("/audit/checkpoint").await;
        (status == 200).then(|| Checkpoint::open(&text, &self.log_key()).unwrap())
    }

    fn log_key(&self) -> Verifier {
        Verifier::parse(&std::fs::read_to_string(self.path("log.pub")).unwrap()).unwrap()
    }

    async fn witness_status(&self) -> Value {
        let text = self
            .http
            .get(format!("http://{}/status", self.witness.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until the witness holds the latest checkpoint, twice a second apart; returns its
    /// size, and copies what it holds into the auditor's folder.
    async fn settle(&self) -> u64 {
        let mut last = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let size = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the witness never held the latest checkpoint"
            );
            let latest = self.latest().await.map(|c| c.size);
            let held = self.witness_status().await["size"].as_u64();
            if held.is_some() && held == latest && last == held {
                break held.unwrap_or_default();
            }
            last = held;
            tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        };
        std::fs::create_dir_all(self.path("auditor")).unwrap();
        for f in ["checkpoint", "leaves"] {
            std::fs::copy(
                self.path(&format!("witness/{f}")),
                self.path(&format!("auditor/{f}")),
            )
            .unwrap();
        }
        size
    }

    /// `audit verify --checkpoint` with the auditor's held checkpoint (and leaves).
    fn verify(&self, source: &[&str], leaves: bool) -> (bool, String) {
        let (c, l, k) = (
            self.path("auditor/checkpoint"),
            self.path("auditor/leaves"),
            self.path("log.pub"),
        );
        let mut args = vec!["audit", "verify", "--checkpoint", &c, "--key", &k];
        args.extend_from_slice(source);
        if leaves {
            args.extend_from_slice(&["--leaves", &l]);
        }
        cli(
            &args,
            &[("CAREBRIDGE_AUDIT_TOKEN", self.tokens["auditor"].as_str())],
        )
    }

    /// The witness's first alarm, once it raised one.
    async fn alarm(&self) -> Value {
        wait_for("the witness raises an alarm", 60, || async {
            let s = self.witness_status().await;
            s["alarms"].as_array().and_then(|a| a.first().cloned())
        })
        .await
    }

    /// A connection with the powers of someone who can write the database file.
    async fn attacker(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        let mut c = AnyConnection::connect(&self.db).await.unwrap();
        for sql in [
            "PRAGMA busy_timeout = 20000",
            "DROP TRIGGER audit_log_no_update",
            "DROP TRIGGER audit_log_no_delete",
        ] {
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
        c
    }
}

async fn exec(c: &mut AnyConnection, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const COLUMNS: &str = "seq, kind, recorded_us, recorded, request_id, client_id, role, sector, \
     target_sector, action, interaction, outcome, patient_id, entities, query, purpose, detail, \
     person, basis, prev_hash, hash";

async fn all_rows(c: &mut AnyConnection) -> Vec<AuditRow> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *c)
        .await
        .unwrap();
    rows.iter()
        .map(|r| AuditRow {
            seq: r.get("seq"),
            kind: r.get("kind"),
            recorded_us: r.get("recorded_us"),
            recorded: r.get("recorded"),
            request_id: r.get("request_id"),
            client_id: r.get("client_id"),
            role: r.get("role"),
            sector: r.get("sector"),
            target_sector: r.get("target_sector"),
            action: r.get("action"),
            interaction: r.get("interaction"),
            outcome: r.get("outcome"),
            patient_id: r.get("patient_id"),
            entities: serde_json::from_str(&r.get::<String, _>("entities")).unwrap(),
            query: r.get("query"),
            purpose: r.get("purpose"),
            detail: r.get("detail"),
            person: r.get("person"),
            basis: r.get("basis"),
            prev_hash: r.get("prev_hash"),
            hash: r.get("hash"),
        })
        .collect()
}

/// Edits row `s`, recomputes every later hash, keeps `keep` rows (all when `None`), moves the
/// head and rebuilds the whole Merkle tree; forgets the checkpoints from `s` on. Returns the
/// new root and size.
async fn rewrite(c: &mut AnyConnection, s: i64, keep: Option<i64>) -> (Hash, u64) {
    exec(c, "BEGIN IMMEDIATE").await;
    let mut rows = all_rows(c).await;
    if let Some(k) = keep {
        rows.truncate(k as usize);
    }
    let mut prev = rows[s as usize - 2].hash.clone();
    for r in rows.iter_mut().skip(s as usize - 1) {
        if r.seq == s {
            r.outcome = "8".into();
            r.detail = Some("refused".into());
        }
        r.prev_hash = prev;
        r.hash = row_hash(r);
        prev = r.hash.clone();
    }
    exec(c, &format!("DELETE FROM audit_log WHERE seq >= {s}")).await;
    for r in rows.iter().skip(s as usize - 1) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        )))
        .bind(r.seq).bind(&r.kind).bind(r.recorded_us).bind(&r.recorded)
        .bind(r.request_id.clone()).bind(r.client_id.clone()).bind(r.role.clone())
        .bind(r.sector.clone()).bind(r.target_sector.clone()).bind(&r.action)
        .bind(&r.interaction).bind(&r.outcome).bind(r.patient_id.clone())
        .bind(serde_json::to_string(&r.entities).unwrap()).bind(r.query.clone())
        .bind(r.purpose.clone()).bind(r.detail.clone()).bind(r.person.clone())
        .bind(r.basis.clone()).bind(&r.prev_hash).bind(&r.hash)
        .execute(&mut *c)
        .await
        .unwrap();
    }
    let last = rows.last().unwrap();
    exec(
        c,
        &format!(
            "UPDATE audit_head SET seq = {}, hash = '{}'",
            last.seq, last.hash
        ),
    )
    .await;
    exec(c, "DELETE FROM audit_merkle").await;
    let mut f = Frontier::default();
    for r in &rows {
        for (node, hash) in f.push(merkle::row_leaf(&r.hash).unwrap()) {
            sqlx::query("INSERT INTO audit_merkle (level, idx, hash) VALUES ($1, $2, $3)")
                .bind(i64::from(node.level))
                .bind(node.idx as i64)
                .bind(hash.to_vec())
                .execute(&mut *c)
                .await
                .unwrap();
        }
    }
    exec(
        c,
        &format!("DELETE FROM audit_checkpoints WHERE size >= {s}"),
    )
    .await;
    exec(c, "COMMIT").await;
    (f.root(), f.size())
}

fn assert_names(out: &str, finding: &str, seq: i64) {
    assert!(out.contains("MISBEHAVED"), "{out}");
    assert!(
        out.contains(&format!("({finding})")),
        "expected {finding}: {out}"
    );
    assert!(
        out.contains(&format!("first affected seq: {seq}\n")),
        "expected seq {seq}: {out}"
    );
}

#[tokio::test]
async fn a_deleted_tail_with_the_head_moved_back_is_a_rollback() {
    let log = Log::start().await;
    log.traffic(0, 8).await;
    let earlier = log.settle().await;
    log.traffic(8, 8).await;
    let m = log.settle().await;
    assert!(m > earlier);
    let mut c = log.attacker().await;
    // Back to an earlier signed size, so that the log's latest checkpoint matches its rows.
    let k: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT MAX(size) FROM audit_checkpoints WHERE size < {m}"
    )))
    .fetch_one(&mut c)
    .await
    .unwrap();
    exec(&mut c, "BEGIN IMMEDIATE").await;
    exec(&mut c, &format!("DELETE FROM audit_log WHERE seq > {k}")).await;
    exec(
        &mut c,
        &format!(
            "UPDATE audit_head SET seq = {k}, hash = (SELECT hash FROM audit_log WHERE seq = {k})"
        ),
    )
    .await;
    exec(
        &mut c,
        &format!("DELETE FROM audit_merkle WHERE (idx + 1) * (1 << level) > {k}"),
    )
    .await;
    exec(
        &mut c,
        &format!("DELETE FROM audit_checkpoints WHERE size > {k}"),
    )
    .await;
    exec(&mut c, "COMMIT").await;
    c.close().await.unwrap();
    // The chain alone no longer notices: it verifies.
    let (status, report) = log.get("/audit/verify").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&report).unwrap()["ok"],
        true,
        "{report}"
    );

    let alarm = log.alarm().await;
    assert_eq!(alarm["finding"], "rollback", "{alarm}");
    assert_eq!(alarm["first_affected_seq"], k + 1, "{alarm}");
    assert_eq!(alarm["held_size"], m);
    let (ok, out) = log.verify(&["--from-url", &log.root], true);
    assert!(!ok);
    assert_names(&out, "rollback", k + 1);
    let (ok, out) = log.verify(&["--from-url", &log.root], false);
    assert!(!ok);
    assert_names(&out, "rollback", k + 1);
}

#[tokio::test]
async fn an_edited_row_with_every_hash_recomputed_is_a_rewritten_history() {
    let log = Log::start().await;
    log.traffic(0, 14).await;
    let m = log.settle().await;
    let (ok, out) = log.verify(&["--from-url", &log.root], true);
    assert!(ok, "{out}");
    let mut c = log.attacker().await;
    rewrite(&mut c, 3, None).await;
    c.close().await.unwrap();
    let (_, report) = log.get("/audit/verify").await;
    assert_eq!(
        serde_json::from_str::<Value>(&report).unwrap()["ok"],
        true,
        "{report}"
    );

    // The gateway signs the rewritten tree as it finds it; the witness refuses it.
    let alarm = log.alarm().await;
    assert_eq!(alarm["finding"], "rewritten", "{alarm}");
    assert_eq!(alarm["first_affected_seq"], 3, "{alarm}");
    assert_eq!(alarm["held_size"], m);
    let (ok, out) = log.verify(&["--from-url", &log.root], true);
    assert!(!ok);
    assert_names(&out, "rewritten", 3);
    // Without the leaves the rewrite is still found, its place only bounded.
    let (ok, out) = log.verify(&["--from-url", &log.root], false);
    assert!(
        !ok && out.contains("(rewritten)") && out.contains("first affected seq: unknown"),
        "{out}"
    );
}

#[tokio::test]
async fn a_history_re_signed_with_the_real_key_is_a_fork() {
    let log = Log::start().await;
    log.traffic(0, 14).await;
    let m = log.settle().await;
    let mut c = log.attacker().await;
    let (root, size) = rewrite(&mut c, 4, Some(m as i64)).await;
    assert_eq!(size, m);
    // The key holder signs the rewritten tree at the size the witness and the auditor hold.
    let key = Signer::parse(&std::fs::read_to_string(log.path("log.key")).unwrap()).unwrap();
    let forged = Checkpoint {
        origin: ORIGIN.into(),
        size,
        root,
    };
    let note_text = key.sign(&forged.body());
    sqlx::query(
        "INSERT INTO audit_checkpoints (size, root, note, signed_us) VALUES ($1, $2, $3, $4)",
    )
    .bind(size as i64)
    .bind(root.to_vec())
    .bind(&note_text)
    .bind(0i64)
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    // Presented to the witness for a countersignature: refused, and the fork named.
    let resp = log
        .http
        .post(format!("http://{}/add-checkpoint", log.witness.addr))
        .body(note::add_checkpoint_body(m, &[], &note_text))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let alarm = log.alarm().await;
    assert_eq!(alarm["finding"], "fork", "{alarm}");
    assert_eq!(alarm["first_affected_seq"], 4, "{alarm}");
    // The operator's export carries the forged checkpoint; the auditor's verifier finds the fork.
    let export = log.path("forged.ndjson");
    let (ok, out) = cli(
        &[
            "audit",
            "export",
            "--rows",
            "--config",
            &log.config.display().to_string(),
            "--out",
            &export,
        ],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = log.verify(&["--export", &export], true);
    assert!(!ok);
    assert_names(&out, "fork", 4);
    let (ok, out) = log.verify(&["--export", &export], false);
    assert!(!ok && out.contains("(fork)"), "{out}");
}

#[tokio::test]
async fn an_honest_log_that_grew_and_was_pruned_verifies() {
    let log = Log::start().await;
    log.traffic(0, 12).await;
    let held = log.settle().await;
    let (ok, out) = log.verify(&["--from-url", &log.root], true);
    assert!(ok, "{out}");
    // Prune everything recorded so far; the prune signs a checkpoint.
    let before = carebridge::fhir::time::instant(carebridge::fhir::time::now_us());
    let (ok, out) = cli(
        &[
            "audit",
            "prune",
            "--config",
            &log.config.display().to_string(),
            "--before",
            &before,
            "--export",
            &log.path("segment.ndjson"),
        ],
        &[],
    );
    assert!(ok && out.contains("signed a checkpoint"), "{out}");
    log.traffic(100, 12).await;
    // The signer signs every 5 rows: had it signed during the traffic, the last rows may wait
    // for 5 more. One more write per look until the witness holds a checkpoint past them.
    let more = std::sync::atomic::AtomicUsize::new(200);
    let grown = wait_for(
        "the witness holds a checkpoint past the prune",
        60,
        || async {
            let s = log.witness_status().await["size"].as_u64()?;
            if s > held + 12 {
                return Some(s);
            }
            let i = more.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log.traffic(i, 1).await;
            None
        },
    )
    .await;
    assert!(
        log.witness_status().await["alarms"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The auditor's checkpoint from before the prune: the grown, pruned log extends it.
    let (ok, out) = log.verify(&["--from-url", &log.root], true);
    assert!(ok && out.contains("extends the held checkpoint"), "{out}");
    let (_, report) = log.get("/audit/verify").await;
    assert_eq!(
        serde_json::from_str::<Value>(&report).unwrap()["ok"],
        true,
        "{report}"
    );
    // Proofs over HTTP check against the signed checkpoints, for a pruned row too.
    let latest = log.latest().await.unwrap();
    assert!(latest.size >= grown);
    let (status, text) = log
        .get(&format!(
            "/audit/proof/inclusion?seq=1&size={}",
            latest.size
        ))
        .await;
    assert_eq!(status, 200, "{text}");
    let p: Value = serde_json::from_str(&text).unwrap();
    let hashes = |v: &Value| -> Vec<Hash> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| note::unb64(h.as_str().unwrap()).unwrap())
            .collect()
    };
    let leaf = note::unb64(p["leaf"].as_str().unwrap()).unwrap();
    assert!(merkle::verify_inclusion(
        0,
        latest.size,
        &leaf,
        &hashes(&p["proof"]),
        &latest.root
    ));
    let old = Checkpoint::parse(&std::fs::read_to_string(log.path("auditor/checkpoint")).unwrap())
        .unwrap();
    let (status, text) = log
        .get(&format!(
            "/audit/proof/consistency?from={}&to={}",
            old.size, latest.size
        ))
        .await;
    assert_eq!(status, 200, "{text}");
    let p: Value = serde_json::from_str(&text).unwrap();
    assert!(merkle::verify_consistency(
        old.size,
        latest.size,
        &old.root,
        &latest.root,
        &hashes(&p["proof"])
    ));
    // Bad parameters name the parameter.
    let (status, text) = log.get("/audit/proof/inclusion?seq=0&size=1").await;
    assert_eq!(status, 400);
    assert!(text.contains("seq"), "{text}");
    let (status, _) = log.get("/audit/proof/consistency?from=a&to=1").await;
    assert_eq!(status, 400);
}
