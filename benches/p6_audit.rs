//! P6: the audit log's Merkle tree — proofs on a 10-million-row tree, and what appending to the
//! tree costs per audited write, next to the build from before the tree, in one run.
//!
//! Run through `benches/run p6`; by hand:
//!
//! ```sh
//! cargo bench --bench p6_audit -- proofs --out p6-proofs.json [--leaves N] [--queries N] [--smoke]
//! cargo bench --bench p6_audit -- append --out p6-append.json --baseline PATH \
//!     [--backend sqlite|postgres] [--writes N] [--rounds N] [--smoke]
//! ```
//!
//! `proofs` builds a SQLite store whose tree has `--leaves` leaves (10,000,000; synthetic: leaf
//! i is `SHA-256(0x00 ‖ i)`, every complete subtree stored as the gateway stores it, in the
//! table of `migrations/sqlite/0005_merkle.sql`), then times `--queries` inclusion proofs (with
//! the root of the requested size) and as many consistency proofs (with both roots) between random sizes of the
//! upper half, each as the gateway computes it for `GET /audit/proof/…` (a read transaction,
//! the nodes fetched, the hashes combined), and checks a sample of them with the RFC 9162
//! verification algorithms.
//!
//! `append` starts the real binary (`carebridge serve`, fresh store, no signing key: the tree is
//! appended with every audit row either way) and, alternating with the `--baseline` binary (the
//! gateway built from the commit before the tree, see `benches/run`), PUTs `--writes` new
//! Patients one after the other (one client; each PUT is one audited write: a resource version,
//! its patient link and one audit row, committed together), `--rounds` times each; the figure
//! is the median of the rounds' mean cost per write, and the ratio current / baseline (and the
//! same for the best round of each, the least disturbed on a shared machine).

// In a benchmark, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/args.rs"]
mod args;
#[path = "../tests/common/conf.rs"]
mod conf;
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "../tests/common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carebridge::audit::merkle::{self, Frontier, Hash};
use carebridge::gateway::transparency;
use carebridge::store::{SqlStore, Store};
use clap::{Parser, Subcommand};
use rand::RngExt;
use serde_json::{Value, json};
use sqlx::Connection;

/// P6: the audit log's Merkle tree (see the module documentation).
#[derive(Parser)]
#[command(name = "p6_audit", bin_name = "p6_audit")]
struct Args {
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand)]
enum Part {
    /// Inclusion and consistency proofs on a large synthetic tree.
    Proofs {
        #[arg(long)]
        out: PathBuf,
        /// Leaves of the tree (default 10,000,000; smoke 100,000).
        #[arg(long)]
        leaves: Option<usize>,
        /// Proofs of each kind timed (default 2,000; smoke 200).
        #[arg(long)]
        queries: Option<usize>,
        /// Where the store is built (a temporary folder by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        common: args::Common,
    },
    /// The cost of an audited write, this build against a baseline binary.
    Append {
        #[arg(long)]
        out: PathBuf,
        /// The gateway binary to compare with (the build from before the tree).
        #[arg(long)]
        baseline: PathBuf,
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        backend: String,
        /// Writes per round (default 2,000; smoke 50).
        #[arg(long)]
        writes: Option<usize>,
        /// Rounds per binary, alternating (default 5; smoke 1).
        #[arg(long)]
        rounds: Option<usize>,
        #[command(flatten)]
        common: args::Common,
    },
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        match Args::parse().part {
            Part::Proofs {
                out,
                leaves,
                queries,
                dir,
                common,
            } => {
                let leaves = common.pick(leaves, 10_000_000, 100_000);
                let queries = common.pick(queries, 2_000, 200);
                proofs(&out, leaves, queries, dir.as_deref()).await
            }
            Part::Append {
                out,
                baseline,
                backend,
                writes,
                rounds,
                common,
            } => {
                let writes = common.pick(writes, 2_000, 50);
                let rounds = common.pick(rounds, 5, 1);
                append(&out, &baseline, &backend, writes, rounds).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("p6_audit: {e:#}");
        std::process::exit(1);
    }
}

fn leaf(i: u64) -> Hash {
    merkle::leaf_hash(&i.to_be_bytes())
}

/// A SQLite store whose tree holds `n` synthetic leaves, written in bulk (synchronous off: the
/// build is not what is measured).
async fn build_tree(url: &str, n: usize) -> anyhow::Result<()> {
    SqlStore::connect(url, 1).await?.close().await;
    let mut c = sqlx::AnyConnection::connect(url).await?;
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut c)
        .await?;
    let mut frontier = Frontier::default();
    let mut pending: Vec<(u32, u64, Hash)> = Vec::with_capacity(4_096);
    let t = Instant::now();
    sqlx::query("BEGIN").execute(&mut c).await?;
    for i in 0..n as u64 {
        for (node, h) in frontier.push(leaf(i)) {
            pending.push((node.level, node.idx, h));
        }
        if pending.len() >= 4_000 {
            flush(&mut c, &mut pending).await?;
        }
        if i % 1_000_000 == 999_999 {
            sqlx::query("COMMIT").execute(&mut c).await?;
            sqlx::query("BEGIN").execute(&mut c).await?;
            eprintln!("  {} leaves, {:.0} s", i + 1, t.elapsed().as_secs_f64());
        }
    }
    flush(&mut c, &mut pending).await?;
    sqlx::query("COMMIT").execute(&mut c).await?;
    c.close().await?;
    Ok(())
}

async fn flush(
    c: &mut sqlx::AnyConnection,
    pending: &mut Vec<(u32, u64, Hash)>,
) -> anyhow::Result<()> {
    for chunk in pending.chunks(300) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO audit_merkle (level, idx, hash) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (level, idx, h) in chunk {
            q = q.bind(i64::from(*level)).bind(*idx as i64).bind(h.to_vec());
        }
        q.execute(&mut *c).await?;
    }
    pending.clear();
    Ok(())
}

fn stats_ms(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    json!({
        "n": v.len(),
        "mean_ms": v.iter().sum::<f64>() / v.len() as f64,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

async fn proofs(out: &Path, n: usize, queries: usize, dir: Option<&Path>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir_in(dir.unwrap_or(&std::env::temp_dir()))?;
    let url = format!("sqlite://{}", tmp.path().join("tree.db").display());
    let t = Instant::now();
    build_tree(&url, n).await?;
    let build_secs = t.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(tmp.path().join("tree.db"))?.len();
    eprintln!("tree of {n} leaves built in {build_secs:.0} s, {db_bytes} bytes");
    let store = SqlStore::connect(&url, 2).await?;
    let mut rng = rand::rng();
    let n = n as u64;
    let (mut incl, mut cons, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for q in 0..queries * 2 {
        let size = rng.random_range(n / 2..=n);
        let t = Instant::now();
        let mut tx = store.begin_read().await?;
        if q % 2 == 0 {
            let seq = rng.random_range(1..=size);
            let (l, proof, root) = transparency::inclusion_proof(tx.as_mut(), seq, size).await?;
            drop(tx);
            incl.push(t.elapsed().as_secs_f64() * 1e3);
            sizes.push(proof.len());
            assert_eq!(l, leaf(seq - 1));
            assert!(merkle::verify_inclusion(seq - 1, size, &l, &proof, &root));
        } else {
            let old = rng.random_range(n / 2..=size);
            let (proof, a, b) = transparency::consistency_proof(tx.as_mut(), old, size).await?;
            drop(tx);
            cons.push(t.elapsed().as_secs_f64() * 1e3);
            if q % 20 == 1 {
                let mut tx = store.begin_read().await?;
                assert_eq!(a, transparency::tree_root(tx.as_mut(), old).await?);
                assert_eq!(b, transparency::tree_root(tx.as_mut(), size).await?);
                assert!(merkle::verify_consistency(old, size, &a, &b, &proof));
            }
        }
    }
    store.close().await;
    let result = json!({
        "leaves": n,
        "stored_nodes_bytes": db_bytes,
        "build_secs": build_secs,
        "inclusion_with_root": stats_ms(incl),
        "consistency": stats_ms(cons),
        "inclusion_proof_hashes_max": sizes.iter().max(),
        "target_ms": 5.0,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    Ok(())
}

fn config_text(store_url: &str, token: &str) -> String {
    format!(
        "# generated by benches/p6_audit.rs\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [store]\nurl = \"{store_url}\"\n\n[fhir]\nprofiles_dir = \"{}\"\n\n\
         [exchange]\nenabled = false\n{}{}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fhir-profiles")
            .display(),
        conf::SECTORS,
        conf::client_table("gp", "sector:gp", token),
    )
}

/// One round: a fresh store, `writes` Patients PUT one after another; the mean ms per write.
async fn round(
    program: Option<&Path>,
    backend: &str,
    writes: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let admin = std::env::var("CAREBRIDGE_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (url, pg_name) = if backend == "postgres" {
        let (u, name) = pg::create_database(&admin, "cb_bench_")
            .await
            .map_err(|e| anyhow::anyhow!("PostgreSQL at {admin}: {e:?}"))?;
        (u, Some(name))
    } else {
        (
            format!("sqlite://{}", dir.path().join("p6.db").display()),
            None,
        )
    };
    let token = carebridge::auth::new_token();
    let config = dir.path().join("p6.toml");
    std::fs::write(&config, config_text(&url, &token))?;
    let mut serve = server::Serve::new(&config);
    if let Some(p) = program {
        serve = serve.program(p);
    }
    let mut srv = serve.start()?;
    let http = carebridge::outbound::client()?;
    let t = Instant::now();
    for i in 0..writes {
        let body = json!({ "resourceType": "Patient", "id": format!("{tag}{i}"),
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": format!("{:010}", 2_000_000 + i) }] });
        let resp = http
            .put(format!("{}/gp/Patient/{tag}{i}", srv.base))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().as_u16() == 201,
            "PUT answered {}",
            resp.status()
        );
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / writes as f64;
    srv.stop();
    if let Some(name) = pg_name {
        pg::drop_database(&admin, &name).await;
    }
    Ok(ms)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn append(
    out: &Path,
    baseline: &Path,
    backend: &str,
    writes: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let (mut current, mut before) = (Vec::new(), Vec::new());
    // Warm-up of both binaries (page cache, first connection), not counted.
    round(None, backend, writes.min(50), "w").await?;
    round(Some(baseline), backend, writes.min(50), "w").await?;
    for r in 0..rounds {
        // Alternate which goes first, so that drift on the machine hits both alike.
        let order: [Option<&Path>; 2] = if r % 2 == 0 {
            [None, Some(baseline)]
        } else {
            [Some(baseline), None]
        };
        for program in order {
            let ms = round(program, backend, writes, "p").await?;
            eprintln!(
                "  round {r} {}: {ms:.3} ms per audited write",
                if program.is_some() {
                    "baseline"
                } else {
                    "current"
                }
            );
            if program.is_some() {
                before.push(ms)
            } else {
                current.push(ms)
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (c, b) = (median(current.clone()), median(before.clone()));
    // The best round of each: on a machine shared with other work, the least disturbed.
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (cb, bb) = (best(&current), best(&before));
    let result = json!({
        "backend": backend,
        "writes_per_round": writes,
        "rounds": rounds,
        "baseline": baseline.display().to_string(),
        "current_ms_per_write": current,
        "baseline_ms_per_write": before,
        "current_median_ms": c,
        "baseline_median_ms": b,
        "ratio": c / b,
        "current_best_ms": cb,
        "baseline_best_ms": bb,
        "ratio_best": cb / bb,
        "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "target_ratio_max": 1.10,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    Ok(())
}
