//! P2: end-to-end push ingest over loopback against the real binary.
//!
//! Run through `benches/run`; by hand:
//!
//! ```sh
//! cargo bench --bench p2_ingest -- --backend sqlite|postgres|medplum --out p2-sqlite.json \
//!     [--smoke] [--clients 1,2,4,8] [--bundles N] [--half-bundles N] [--one-store] [--rounds N]
//! ```
//!
//! For each phase below, starts `carebridge serve` (the binary cargo built for this bench,
//! release profile) on 127.0.0.1 port 0 with a generated configuration and a fresh store (a
//! SQLite file in a temporary folder, or a fresh PostgreSQL database `cb_bench_<random>` that is
//! dropped afterwards), pushes warm-up Bundles (untimed: as many as the most clients of any
//! step, at least 3, sent by as many clients as the step has, so that the gateway's pool holds
//! that many used PostgreSQL connections before the clock starts, as the floor's clients connect
//! before theirs), then the phase's Synthea transaction Bundles to `POST /fhir/lab` as the `lab`
//! sector's client:
//!
//! - closed loop: for each client count, `--bundles` Bundles (the 50 patients in turn), each
//!   client sending its next Bundle when the previous one is answered;
//! - open loop at half the best rate reached: `--half-bundles` Bundles sent on a fixed schedule,
//!   latency counted from the scheduled send time (so a stall is not hidden).
//!
//! Every phase meets stores of the same size, so the client counts compare concurrency and
//! nothing else (each step adds about 17,000 resources; a store that large already writes each
//! Bundle's rows to pages all over its random-keyed indexes, which makes any later step slower
//! whatever its client count). `--one-store` runs all phases on one pair of stores in turn
//! instead, to measure that growth.
//!
//! **Rounds** (`--rounds`, 3; smoke 1): every phase above runs that many times, each round on
//! fresh stores. On a 2-core machine one 50-Bundle step's rate varied by a quarter from run to
//! run (the gateway's SQLite best ÷ floor best 0.43 to 0.51 in three runs of one hour), so the
//! issue-17 lines are taken as the median over the rounds (`round_medians`; every round's own
//! figures in `rounds`); the tables are the first round's.
//!
//! Every Bundle sent is a fresh copy: each UUID in it (ids, fullUrls, references, identifier
//! values) has its first 32 bits mixed with the copy number, and every identifier value (and
//! conditional reference by identifier) gets the suffix `-<copy>`, so every resource and every
//! business identifier is new and the gateway's "identical content, no new version" path is
//! never taken. Bodies are prepared before
//! each timed phase. At the end the store's tables are counted to check that everything answered
//! 2xx was written.
//!
//! **The durable-write floor** (`common/p2_floor.rs`), in the same run: right after each
//! closed-loop step (and each warm-up) the same Bundle copies are written by this process, with
//! the same number of clients (threads, each its own connection), straight into a second fresh
//! store of the gateway's schema (made by its own migrations) with the gateway's connection
//! settings, one transaction per Bundle and no FHIR work; the results hold its figures and the
//! gateway's rates as ratios of them. Both stores receive the same copies step by step, so they
//! have grown alike before every step.
//!
//! **The Medplum peer** (`--backend medplum`): the same fresh copies POSTed as transaction
//! Bundles to `tests/peers/fhir-server.mjs` (Medplum's FhirRouter over its MemoryRepository),
//! 1 and 2 clients (smoke: 1); refusals are counted by reason.

// In a benchmark, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/args.rs"]
mod args;
#[path = "../tests/common/conf.rs"]
mod conf;
#[path = "common/p2_floor.rs"]
mod p2_floor;
#[path = "../tests/common/peers.rs"]
mod peers;
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "../tests/common/server.rs"]
mod server;
#[path = "../tests/common/synthea.rs"]
mod synthea;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde_json::{Value, json};
use server::{Server, cpu_secs, start_server};
use std::collections::BTreeMap;
use std::path::PathBuf;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Opts {
    backend: String,
    out: PathBuf,
    smoke: bool,
    clients: Vec<usize>,
    bundles: usize,
    half_bundles: usize,
    one_store: bool,
    rounds: usize,
}

/// P2: end-to-end push ingest over loopback against the real binary (see the module
/// documentation).
#[derive(Parser)]
#[command(name = "p2_ingest", bin_name = "p2_ingest")]
struct Args {
    /// The gateway's store (a fresh SQLite file or a fresh PostgreSQL database; the floor gets
    /// one of its own beside it), or `medplum`: the Medplum peer instead of the gateway.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres", "medplum"])]
    backend: String,
    /// The JSON file for the results.
    #[arg(long)]
    out: PathBuf,
    /// Closed-loop client counts, comma-separated [default: 1,2,4,8; with --smoke: 1,2; the
    /// Medplum peer: 1,2; with --smoke: 1].
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Bundles per closed-loop step [default: 50; with --smoke: 4].
    #[arg(long)]
    bundles: Option<usize>,
    /// Bundles of the open loop at half the best rate [default: 100; with --smoke: 4].
    #[arg(long)]
    half_bundles: Option<usize>,
    /// Every phase on one pair of stores, in turn, instead of fresh stores for each: later
    /// phases then meet stores grown by the earlier ones (store growth, not the client count).
    #[arg(long)]
    one_store: bool,
    /// Rounds of every phase (each on fresh stores); issue 17's ratios are the median over the
    /// rounds [default: 3; with --smoke: 1].
    #[arg(long)]
    rounds: Option<usize>,
    #[command(flatten)]
    common: args::Common,
}

fn parse_opts() -> Opts {
    let a = Args::parse();
    let smoke = a.common.smoke;
    Opts {
        backend: a.backend.clone(),
        out: a.out,
        smoke,
        clients: a
            .clients
            .unwrap_or_else(|| match (a.backend.as_str(), smoke) {
                ("medplum", true) => vec![1],
                ("medplum", false) => vec![1, 2],
                (_, true) => vec![1, 2],
                (_, false) => vec![1, 2, 4, 8],
            }),
        bundles: a.common.pick(a.bundles, 50, 4),
        half_bundles: a.common.pick(a.half_bundles, 100, 4),
        one_store: a.one_store,
        rounds: a.common.pick(a.rounds, 3, 1).max(1),
    }
}

fn main() {
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run(opts)) {
        eprintln!("p2_ingest: {e:#}");
        std::process::exit(1);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared_data() -> PathBuf {
    std::env::var_os("CAREBRIDGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"))
}

fn pg_admin_url() -> String {
    std::env::var("CAREBRIDGE_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// One Synthea patient: its Bundle as compact JSON and its number of entries.
struct Template {
    text: String,
    entries: usize,
}

fn load_templates(smoke: bool) -> Result<Vec<Template>> {
    let shared = shared_data();
    let mut files =
        synthea::files(&shared).with_context(|| shared.join("synthea").display().to_string())?;
    if smoke {
        // the four smallest patients
        files.sort_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX));
        files.truncate(4);
    }
    files
        .iter()
        .map(|f| {
            let v: Value = serde_json::from_slice(&std::fs::read(f)?)
                .with_context(|| f.display().to_string())?;
            if v["type"] != "transaction" {
                bail!("{} is not a transaction Bundle", f.display());
            }
            let mut v = v;
            mark_identifiers(&mut v);
            Ok(Template {
                entries: v["entry"].as_array().map_or(0, Vec::len),
                text: serde_json::to_string(&v)?,
            })
        })
        .collect()
}

/// Stands for the copy number in identifier values (replaced in every copy).
const COPY_MARK: &str = "~cb-copy~";

/// Appends [`COPY_MARK`] to every identifier value and to every conditional reference or
/// `ifNoneExist` by identifier, so that each copy's business identifiers are its own too (NPIs,
/// for instance, are not UUIDs).
fn mark_identifiers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match (k.as_str(), &mut *child) {
                    ("identifier", Value::Array(items)) => {
                        for item in items.iter_mut() {
                            mark_value(item);
                        }
                    }
                    ("identifier", Value::Object(_)) => mark_value(child),
                    ("reference" | "ifNoneExist", Value::String(s))
                        if s.contains("identifier=") =>
                    {
                        s.push_str(COPY_MARK)
                    }
                    _ => {}
                }
                mark_identifiers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark_identifiers),
        _ => {}
    }
}

fn mark_value(identifier: &mut Value) {
    if let Some(Value::String(s)) = identifier.get_mut("value") {
        s.push_str(COPY_MARK);
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// A copy of `text` in which every UUID has its first 32 bits mixed with `copy` (a bijection for
/// each copy, so references stay consistent and distinct copies never share an id), and every
/// [`COPY_MARK`] is `-<copy>`.
fn reidentify(text: &str, copy: u32) -> String {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    let mix = copy.wrapping_mul(0x9E37_79B1);
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i + 36 <= b.len() {
        let is_uuid = (0..36).all(|j| {
            if DASHES.contains(&j) {
                b[i + j] == b'-'
            } else {
                is_hex(b[i + j])
            }
        }) && (i == 0 || !is_hex(b[i - 1]))
            && b.get(i + 36).is_none_or(|c| !is_hex(*c));
        if is_uuid {
            let head = u32::from_str_radix(&text[i..i + 8], 16).unwrap_or(0);
            out.push_str(&text[last..i]);
            out.push_str(&format!("{:08x}", head ^ mix));
            last = i + 8;
            i += 36;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[last..]);
    out.replace(COPY_MARK, &format!("-{copy}"))
}

/// Hands out fresh copies of the patients, in turn.
struct Source {
    templates: Vec<Template>,
    next: usize,
}

impl Source {
    fn take(&mut self, n: usize) -> Vec<(String, usize)> {
        (0..n)
            .map(|_| {
                let k = self.next;
                self.next += 1;
                let t = &self.templates[k % self.templates.len()];
                (reidentify(&t.text, k as u32 + 1), t.entries)
            })
            .collect()
    }
}

/// Jiffies of the whole machine since boot: (busy, iowait, all), from the `cpu` line of /proc/stat.
fn machine_jiffies() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    let all: f64 = (0..8).map(get).sum();
    (all - get(3) - get(4), get(4), all)
}

/// CPU use of a phase: the server's and this client's CPU seconds, and the whole machine's busy
/// and iowait time in cores (the database server, PostgreSQL included, shows up there).
struct CpuProbe {
    server: f64,
    client: f64,
    machine: (f64, f64, f64),
}

impl CpuProbe {
    fn start(server: &Server) -> Self {
        CpuProbe {
            server: server.cpu_secs(),
            client: cpu_secs("/proc/self/stat"),
            machine: machine_jiffies(),
        }
    }

    fn finish(&self, server: &Server, secs: f64, into: &mut Value) {
        let (b1, w1, a1) = machine_jiffies();
        let (b0, w0, a0) = self.machine;
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let share = |d: f64| {
            if a1 > a0 {
                d / (a1 - a0) * cores
            } else {
                f64::NAN
            }
        };
        into["server_cpu_cores"] = json!((server.cpu_secs() - self.server) / secs);
        into["client_cpu_cores"] = json!((cpu_secs("/proc/self/stat") - self.client) / secs);
        into["machine_busy_cores"] = json!(share(b1 - b0));
        into["machine_iowait_cores"] = json!(share(w1 - w0));
    }
}

fn config_text(store_url: &str, token: &str) -> String {
    format!(
        r#"# generated by benches/p2_ingest.rs
[server]
listen = "127.0.0.1:0"

[store]
url = "{store_url}"

[fhir]
profiles_dir = "{profiles}"

# The outbox is written in every accepting transaction (what lab sends is routed to gp and
# hospital); the delivery workers do not run, so that P2 measures ingest alone (P4 measures
# delivery). Detection ([alerts], on by default) runs for every patient a Bundle touches.
[exchange]
enabled = false

[[exchange.routes]]
from = ["lab"]
types = ["Condition", "CarePlan", "CareTeam", "MedicationRequest", "MedicationStatement", "Communication", "Goal"]
to = ["gp", "hospital"]

# gp, hospital and municipality with their profiles; lab (Synthea is US data) with structural
# validation only.
{sectors}{lab}"#,
        profiles = repo().join("fhir-profiles").display(),
        sectors = conf::SECTORS,
        lab = conf::client_table("lab", "sector:lab", token),
    )
}

/// The answer to one Bundle.
struct Sample {
    /// When the Bundle was sent (or scheduled), from the start of the phase.
    at: Duration,
    latency: Duration,
    status: u16,
    resources: usize,
    created: usize,
    /// Why it was refused (an error answer's OperationOutcome diagnostics, shortened).
    refusal: Option<String>,
}

/// What `post` learnt of one answer: status, entries answered 201, refusal.
type Answer = (u16, usize, Option<String>);

/// POSTs one Bundle (with the bearer token unless it is empty).
async fn post(http: &reqwest::Client, url: &str, token: &str, body: String) -> Answer {
    let mut req = http
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let bytes = r.bytes().await.unwrap_or_default();
            // Entries answered 201 (`"201 Created"` from the gateway, `"201"` from Medplum).
            let created = bytes
                .windows(br#""status":"201"#.len())
                .filter(|w| *w == br#""status":"201"#)
                .count();
            let refusal = (status != 200).then(|| refusal_reason(&bytes));
            (status, created, refusal)
        }
        Err(e) => (0, 0, Some(format!("no answer: {e}"))),
    }
}

/// The diagnostics of an OperationOutcome answer (or the start of the answer), at most 200
/// characters, with UUIDs and numbers as `#` so that equal reasons count together.
fn refusal_reason(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = v["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    let d = i["diagnostics"].as_str().or(i["details"]["text"].as_str());
                    format!("{}: {}", i["code"].as_str().unwrap_or("?"), d.unwrap_or(""))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
    static UUID: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let uuid = UUID.get_or_init(|| {
        regex::Regex::new(
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9]+",
        )
        .unwrap()
    });
    let out = uuid.replace_all(&text, "#");
    out.chars().take(200).collect()
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    // nearest rank
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    sorted_ms[rank.clamp(1, sorted_ms.len()) - 1]
}

fn summarise(samples: &[Sample], secs: f64) -> Value {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let mut order: Vec<&Sample> = samples.iter().collect();
    order.sort_by_key(|s| s.at);
    let timeline: Vec<Value> = order
        .iter()
        .map(|s| {
            json!([
                (s.at.as_secs_f64() * 1000.0).round() / 1000.0,
                (s.latency.as_secs_f64() * 10000.0).round() / 10.0,
                s.status,
                s.resources
            ])
        })
        .collect();
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let resources: usize = ok.iter().map(|s| s.resources).sum();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        *statuses.entry(s.status.to_string()).or_default() += 1;
        if let Some(r) = &s.refusal {
            *refusals.entry(format!("{} {r}", s.status)).or_default() += 1;
        }
    }
    json!({
        "bundles": samples.len(),
        "bundles_ok": ok.len(),
        "resources": resources,
        "created": ok.iter().map(|s| s.created).sum::<usize>(),
        "statuses": statuses,
        "refusals": refusals,
        "seconds": secs,
        "resources_per_s": resources as f64 / secs,
        "bundles_per_s": ok.len() as f64 / secs,
        "p50_ms": percentile(&ms, 50.0),
        "p90_ms": percentile(&ms, 90.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        // every Bundle: [sent at (s from the phase start), latency (ms), status, entries]
        "timeline": timeline,
    })
}

/// `clients` clients, each sending its next Bundle when the last one is answered.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<(String, usize)>,
    clients: usize,
) -> (Vec<Sample>, f64) {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, resources)) = bodies.get(i) else {
                    break;
                };
                let t = Instant::now();
                let (status, created, refusal) = post(&http, &url, &token, body.clone()).await;
                samples.push(Sample {
                    at: t - t0,
                    latency: t.elapsed(),
                    status,
                    resources: *resources,
                    created,
                    refusal,
                });
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("client task"));
    }
    (samples, t0.elapsed().as_secs_f64())
}

/// Bundles sent on a fixed schedule (`rate` per second) whatever the answers; latency is counted
/// from the scheduled time.
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<(String, usize)>,
    rate: f64,
) -> (Vec<Sample>, f64) {
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, (body, resources)) in bodies.into_iter().enumerate() {
        let at = t0 + Duration::from_secs_f64(i as f64 / rate);
        let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let (status, created, refusal) = post(&http, &url, &token, body).await;
            Sample {
                at: at - t0,
                latency: at.elapsed(),
                status,
                resources,
                created,
                refusal,
            }
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(t.await.expect("client task"));
    }
    (samples, t0.elapsed().as_secs_f64())
}

async fn count_rows(store_url: &str) -> Result<Value> {
    use sqlx::Connection;
    let mut out = serde_json::Map::new();
    let tables = [
        "resources",
        "resource_versions",
        "identifier_index",
        "resource_identifiers",
        "audit_log",
        "patients",
        "outbox",
        "alerts",
    ];
    if let Some(path) = store_url.strip_prefix("sqlite://") {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
        for t in tables {
            let q = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}"));
            let n: i64 = sqlx::query_scalar(q).fetch_one(&mut c).await?;
            out.insert(t.into(), n.into());
        }
    } else {
        let mut c = sqlx::PgConnection::connect(store_url).await?;
        for t in tables {
            let q = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}"));
            let n: i64 = sqlx::query_scalar(q).fetch_one(&mut c).await?;
            out.insert(t.into(), n.into());
        }
    }
    Ok(Value::Object(out))
}

/// A fresh database `cb_bench_<random>`; for diagnosis, CAREBRIDGE_BENCH_PG_SETTINGS=
/// "plan_cache_mode=force_custom_plan,..." sets these parameters on it (ALTER DATABASE ... SET).
async fn create_pg_database() -> Result<(String, String)> {
    let admin = pg_admin_url();
    let (url, name) = pg::create_database(&admin, "cb_bench_")
        .await
        .with_context(|| format!("PostgreSQL at {admin}"))?;
    let mut settings = Vec::new();
    for setting in std::env::var("CAREBRIDGE_BENCH_PG_SETTINGS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
    {
        let (key, value) = setting
            .split_once('=')
            .context("CAREBRIDGE_BENCH_PG_SETTINGS takes key=value,...")?;
        if !key
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            bail!("not a parameter name: {key}");
        }
        settings.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    if !settings.is_empty() {
        let mut conn = pg::connect(&admin).await.map_err(|e| anyhow!(e))?;
        for (key, value) in settings {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} SET {key} = '{}'",
                value.replace('\'', "''")
            )))
            .execute(&mut conn)
            .await?;
            eprintln!("  (diagnosis) {name}: {key} = {value}");
        }
    }
    Ok((url, name))
}

/// The server settings that decide durability and speed, for the record.
async fn pg_settings() -> Result<Value> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await?;
    let mut out = serde_json::Map::new();
    for key in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "shared_buffers",
        "max_wal_size",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {key}")))
            .fetch_one(&mut conn)
            .await?;
        out.insert(key.into(), v.into());
    }
    Ok(Value::Object(out))
}

async fn drop_pg_database(name: &str) {
    pg::drop_database(&pg_admin_url(), name).await;
}

async fn run(opts: Opts) -> Result<()> {
    if opts.backend == "medplum" {
        let result = medplum(&opts).await?;
        std::fs::write(&opts.out, serde_json::to_string_pretty(&result)?)
            .with_context(|| opts.out.display().to_string())?;
        return Ok(());
    }
    if !matches!(opts.backend.as_str(), "sqlite" | "postgres") {
        bail!(
            "--backend takes sqlite, postgres or medplum, not {}",
            opts.backend
        );
    }
    let mut rounds = Vec::with_capacity(opts.rounds);
    for round in 1..=opts.rounds {
        eprintln!("  round {round} of {}", opts.rounds);
        rounds.push(drive(&opts).await?);
    }
    let mut result = combine(rounds);
    if opts.backend == "postgres" {
        result["postgres_settings"] = pg_settings().await.unwrap_or_else(|e| json!(e.to_string()));
    }
    if let Ok(diag) = std::env::var("CAREBRIDGE_BENCH_PG_SETTINGS") {
        result["diagnosis_pg_settings"] = json!(diag);
    }
    if let Ok(diag) = std::env::var("CAREBRIDGE_BENCH_SERVER_WRAP") {
        result["diagnosis_server_wrap"] = json!(diag);
    }
    result["backend"] = json!(opts.backend);
    result["database"] = json!(if opts.backend == "sqlite" {
        "a fresh SQLite file (WAL, synchronous=FULL)"
    } else {
        "a fresh PostgreSQL database cb_bench_<random> (dropped after)"
    });
    result["floor"]["database"] = json!(if opts.backend == "sqlite" {
        "a second fresh SQLite file beside the gateway's (WAL, synchronous=FULL)"
    } else {
        "a second fresh PostgreSQL database cb_floor_<random> on the same server (dropped after)"
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| opts.out.display().to_string())?;
    Ok(())
}

/// The rounds in one result: the first round's tables and figures, every round's issue-17 lines
/// ([`round_lines`]) with their medians, and the counts (resources answered, rows stored, server
/// log) over all rounds.
fn combine(rounds: Vec<Value>) -> Value {
    let lines: Vec<Value> = rounds.iter().map(round_lines).collect();
    let total = |f: &dyn Fn(&Value) -> u64| rounds.iter().map(f).sum::<u64>();
    let answered = total(&|r| r["resources_answered_2xx"].as_u64().unwrap_or(0));
    let errors = total(&|r| r["server_log"]["errors"].as_u64().unwrap_or(0));
    let warnings = total(&|r| r["server_log"]["warnings"].as_u64().unwrap_or(0));
    let rows = |key: &str, floor: bool| -> Vec<Value> {
        rounds
            .iter()
            .flat_map(|r| {
                let at = if floor { &r["floor"][key] } else { &r[key] };
                at.as_array().cloned().unwrap_or_default()
            })
            .collect()
    };
    let (store_rows, floor_rows) = (rows("store_rows", false), rows("store_rows", true));
    let mut result = rounds.into_iter().next().unwrap_or(Value::Null);
    result["round_medians"] = medians(&lines);
    result["rounds"] = json!(lines);
    result["resources_answered_2xx"] = json!(answered);
    result["store_rows"] = json!(store_rows);
    result["floor"]["store_rows"] = json!(floor_rows);
    result["server_log"]["errors"] = json!(errors);
    result["server_log"]["warnings"] = json!(warnings);
    result
}

/// One round's issue-17 lines: the gateway's and the floor's rate per client count, best ÷
/// floor best, 2 ÷ 1 clients, 4 clients ÷ floor best, and the half load's p99 ÷ p50.
fn round_lines(r: &Value) -> Value {
    let rates = |steps: &Value| -> serde_json::Map<String, Value> {
        let steps = steps.as_array().cloned().unwrap_or_default();
        steps
            .iter()
            .map(|s| (s["clients"].to_string(), s["resources_per_s"].clone()))
            .collect()
    };
    let (gateway, floor) = (rates(&r["closed_loop"]), rates(&r["floor"]["closed_loop"]));
    let rate = |c: &str| gateway.get(c).and_then(Value::as_f64);
    let floor_best = r["floor"]["best_resources_per_s"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let half = &r["half_load"];
    let (p50, p99) = (half["p50_ms"].as_f64(), half["p99_ms"].as_f64());
    json!({
        "gateway_resources_per_s": gateway,
        "floor_resources_per_s": floor,
        "best_of_floor_best": r["ratios"]["gateway_best_of_floor_best"],
        "two_over_one_client": rate("2").zip(rate("1")).map(|(b, a)| b / a),
        "four_clients_of_floor_best": rate("4").map(|x| x / floor_best),
        "half_load_p50_ms": p50,
        "half_load_p99_ms": p99,
        "half_load_p99_over_p50": p99.zip(p50).map(|(b, a)| b / a),
    })
}

/// The median of each line over the rounds ([`round_lines`]; rates per client count too).
fn medians(lines: &[Value]) -> Value {
    let median = |mut v: Vec<f64>| -> Value {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => Value::Null,
            n if n % 2 == 1 => json!(v[n / 2]),
            n => json!((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let of = |key: &str| median(lines.iter().filter_map(|l| l[key].as_f64()).collect());
    let per_clients = |key: &str| -> serde_json::Map<String, Value> {
        let counts = lines[0][key].as_object().cloned().unwrap_or_default();
        counts
            .keys()
            .map(|c| {
                let v = lines.iter().filter_map(|l| l[key][c].as_f64()).collect();
                (c.clone(), median(v))
            })
            .collect()
    };
    json!({
        "rounds": lines.len(),
        "gateway_resources_per_s": per_clients("gateway_resources_per_s"),
        "floor_resources_per_s": per_clients("floor_resources_per_s"),
        "best_of_floor_best": of("best_of_floor_best"),
        "two_over_one_client": of("two_over_one_client"),
        "four_clients_of_floor_best": of("four_clients_of_floor_best"),
        "half_load_p99_over_p50": of("half_load_p99_over_p50"),
    })
}

/// A fresh pair of stores, the gateway's and the floor's, with the gateway serving the first.
struct Stores {
    dir: tempfile::TempDir,
    store_url: String,
    /// PostgreSQL: the gateway's database and the floor's (URL, name).
    pg_db: Option<String>,
    floor_db: Option<(String, String)>,
    floor: p2_floor::Floor,
    server: Server,
}

impl Stores {
    /// New stores (a SQLite file and a second one beside it, or two fresh PostgreSQL
    /// databases) and the gateway started on the first, as `lab`'s client with `token`.
    async fn fresh(backend: &str, token: &str) -> Result<Stores> {
        let dir = tempfile::tempdir()?;
        let (store_url, pg_db) = if backend == "postgres" {
            let (url, name) = create_pg_database().await?;
            (url, Some(name))
        } else {
            let path = dir.path().join("carebridge.db");
            (format!("sqlite://{}", path.display()), None)
        };
        let floor_db = match &pg_db {
            Some(_) => Some(
                pg::create_database(&pg_admin_url(), "cb_floor_")
                    .await
                    .with_context(|| format!("PostgreSQL at {}", pg_admin_url()))?,
            ),
            None => None,
        };
        let floor = match &floor_db {
            Some((url, _)) => p2_floor::Floor::postgres(url).await?,
            None => p2_floor::Floor::sqlite(dir.path()).await?,
        };
        let config = dir.path().join("carebridge.toml");
        std::fs::write(&config, config_text(&store_url, token))?;
        let server = start_server(&config)?;
        Ok(Stores {
            dir,
            store_url,
            pg_db,
            floor_db,
            floor,
            server,
        })
    }

    /// Stops the gateway, counts both stores' rows and drops them; what the stores held and
    /// what the server logged.
    async fn finish(mut self) -> Value {
        let log = {
            let l = self.server.log.lock().expect("log stats");
            json!({ "errors": l.errors, "warnings": l.warnings, "sample": l.sample })
        };
        let startup = self.server.startup_secs;
        self.server.stop();
        let out = json!({
            "store_rows": count_rows(&self.store_url).await.unwrap_or_else(|e| json!(e.to_string())),
            "floor_store_rows": self.floor.count_rows().await.unwrap_or_else(|e| json!(e.to_string())),
            "floor_connection_settings": self.floor.settings().await.unwrap_or_else(|e| json!(e.to_string())),
            "server_log": log,
            "server_startup_seconds": startup,
        });
        for name in self
            .pg_db
            .iter()
            .chain(self.floor_db.as_ref().map(|(_, n)| n))
        {
            drop_pg_database(name).await;
        }
        drop(self.dir);
        out
    }
}

/// One closed-loop step's line on stderr.
fn print_step(side: &str, step: &Value) {
    eprintln!(
        "  {side} {} clients: {:.0} resources/s, {:.2} bundles/s, p50 {:.0} ms, p99 {:.0} ms, statuses {}",
        step["clients"],
        step["resources_per_s"].as_f64().unwrap_or(0.0),
        step["bundles_per_s"].as_f64().unwrap_or(0.0),
        step["p50_ms"].as_f64().unwrap_or(0.0),
        step["p99_ms"].as_f64().unwrap_or(0.0),
        step["statuses"]
    );
}

/// The floor's step on the same Bundle copies as the gateway's, as a summary like the gateway's.
async fn floor_step(
    floor: &p2_floor::Floor,
    bodies: Vec<(String, usize)>,
    clients: usize,
) -> Result<Value> {
    let cpu = (cpu_secs("/proc/self/stat"), machine_jiffies());
    let (done, secs) = floor.step(Arc::new(bodies), clients).await?;
    let samples: Vec<Sample> = done
        .into_iter()
        .map(|d| Sample {
            at: d.at,
            latency: d.latency,
            status: 200,
            resources: d.resources,
            created: d.resources,
            refusal: None,
        })
        .collect();
    let mut step = summarise(&samples, secs);
    step["clients"] = json!(clients);
    // The floor runs in this process: its CPU is the bench's own.
    step["floor_cpu_cores"] = json!((cpu_secs("/proc/self/stat") - cpu.0) / secs);
    let ((b1, w1, a1), (b0, w0, a0)) = (machine_jiffies(), cpu.1);
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    if a1 > a0 {
        step["machine_busy_cores"] = json!((b1 - b0) / (a1 - a0) * cores);
        step["machine_iowait_cores"] = json!((w1 - w0) / (a1 - a0) * cores);
    }
    Ok(step)
}

/// The gateway's closed-loop rates as ratios of the floor's: of its best, and of the floor at
/// the same client count.
fn ratios(gateway: &[Value], floor: &[Value], floor_best: f64) -> Value {
    let rows: Vec<Value> = gateway
        .iter()
        .zip(floor)
        .map(|(g, f)| {
            let (gr, fr) = (
                g["resources_per_s"].as_f64().unwrap_or(0.0),
                f["resources_per_s"].as_f64().unwrap_or(f64::NAN),
            );
            json!({
                "clients": g["clients"],
                "gateway_resources_per_s": gr,
                "floor_resources_per_s": fr,
                "of_floor_same_clients": gr / fr,
                "of_floor_best": gr / floor_best,
            })
        })
        .collect();
    let best = gateway
        .iter()
        .filter_map(|g| g["resources_per_s"].as_f64())
        .fold(0.0, f64::max);
    json!({ "per_clients": rows, "gateway_best_of_floor_best": best / floor_best })
}

/// Warm-up (untimed) on fresh stores: the first Bundles compile the validators of the types
/// they hold, and they are sent by as many clients as the step that follows has, so that the
/// gateway's pool has opened and used as many PostgreSQL connections as the step will (a new
/// backend loads its catalog caches and plans each statement on its first executions) before
/// the clock starts — as the floor's clients connect before its clock starts, and as a gateway
/// in service holds warm connections. The floor writes the same copies, so both stores hold the
/// same resources before the step that follows. The resources answered 2xx.
async fn warm_up(
    opts: &Opts,
    http: &reqwest::Client,
    st: &Stores,
    source: &mut Source,
    token: &str,
    clients: usize,
) -> Result<usize> {
    let warm = source.take(warm_up_bundles(opts));
    floor_step(&st.floor, warm.clone(), clients).await?;
    let url = format!("{}/lab", st.server.base);
    let (samples, _) = closed_loop(http, &url, token, warm, clients).await;
    if let Some(bad) = samples.iter().find(|s| s.status != 200) {
        return Err(anyhow!("warm-up Bundle answered {}", bad.status));
    }
    Ok(samples.iter().map(|s| s.resources).sum())
}

/// How many Bundles each warm-up sends: the same for every phase, so that every client count
/// meets stores of the same size, and at least one for each client of the most.
fn warm_up_bundles(opts: &Opts) -> usize {
    let most = most_clients(opts);
    if opts.smoke { most } else { most.max(3) }
}

/// The most clients of any closed-loop step.
fn most_clients(opts: &Opts) -> usize {
    opts.clients.iter().copied().max().unwrap_or(1)
}

/// One closed-loop step with `clients` clients on `st`, then the floor on the same copies.
async fn closed_step(
    opts: &Opts,
    http: &reqwest::Client,
    st: &Stores,
    source: &mut Source,
    token: &str,
    clients: usize,
) -> Result<(Value, Value)> {
    let url = format!("{}/lab", st.server.base);
    let bodies = source.take(opts.bundles);
    let same = bodies.clone();
    let probe = CpuProbe::start(&st.server);
    let (samples, secs) = closed_loop(http, &url, token, bodies, clients).await;
    let mut step = summarise(&samples, secs);
    probe.finish(&st.server, secs, &mut step);
    step["clients"] = json!(clients);
    print_step("gateway", &step);
    // The floor on the same copies, right after (the same machine state, the same growth).
    let f = floor_step(&st.floor, same, clients).await?;
    print_step("floor  ", &f);
    Ok((step, f))
}

/// The open loop at `half_rps` resources/s on `st`.
async fn half_step(
    opts: &Opts,
    http: &reqwest::Client,
    st: &Stores,
    source: &mut Source,
    token: &str,
    (half_rps, mean_entries): (f64, f64),
) -> Value {
    let url = format!("{}/lab", st.server.base);
    let rate = (half_rps / mean_entries).max(0.01);
    let bodies = source.take(opts.half_bundles);
    let probe = CpuProbe::start(&st.server);
    let (samples, secs) = open_loop(http, &url, token, bodies, rate).await;
    let mut half = summarise(&samples, secs);
    probe.finish(&st.server, secs, &mut half);
    half["target_resources_per_s"] = json!(half_rps);
    half["target_bundles_per_s"] = json!(rate);
    eprintln!(
        "  half load ({:.0} resources/s offered): {:.0} resources/s, p50 {:.0} ms, p99 {:.0} ms, statuses {}",
        half_rps,
        half["resources_per_s"].as_f64().unwrap_or(0.0),
        half["p50_ms"].as_f64().unwrap_or(0.0),
        half["p99_ms"].as_f64().unwrap_or(0.0),
        half["statuses"]
    );
    half
}

/// Every phase: each closed-loop step and the half load on fresh stores of their own (after
/// the same warm-up), or with `--one-store` all of them one after another on one pair of stores
/// (which then grow by every step's Bundles: that measures growth with the client count).
async fn drive(opts: &Opts) -> Result<Value> {
    let token = carebridge::auth::new_token();
    let templates = load_templates(opts.smoke)?;
    let mean_entries =
        templates.iter().map(|t| t.entries).sum::<usize>() as f64 / templates.len() as f64;
    let mut source = Source { templates, next: 0 };
    let http = carebridge::outbound::client_builder()
        .timeout(Duration::from_secs(120))
        .build()?;

    let mut stores_done = Vec::new();
    let mut steps = Vec::new();
    let mut floor_steps = Vec::new();
    let mut sent_ok = 0usize;
    let mut shared: Option<Stores> = None;
    for &c in &opts.clients {
        let st = match shared.take() {
            Some(st) => st,
            None => {
                let st = Stores::fresh(&opts.backend, &token).await?;
                // One store for every step: warmed for the most clients any step has.
                let warm = if opts.one_store {
                    most_clients(opts)
                } else {
                    c
                };
                sent_ok += warm_up(opts, &http, &st, &mut source, &token, warm).await?;
                st
            }
        };
        let (step, f) = closed_step(opts, &http, &st, &mut source, &token, c).await?;
        sent_ok += step["resources"].as_u64().unwrap_or(0) as usize;
        steps.push(step);
        floor_steps.push(f);
        if opts.one_store {
            shared = Some(st);
        } else {
            stores_done.push(st.finish().await);
        }
    }
    let best_rps = steps
        .iter()
        .filter_map(|s| s["resources_per_s"].as_f64())
        .fold(0.0, f64::max);
    let floor_best = floor_steps
        .iter()
        .filter_map(|f| f["resources_per_s"].as_f64())
        .fold(0.0, f64::max);

    // Open loop at half the best closed-loop rate.
    let st = match shared.take() {
        Some(st) => st,
        None => {
            let st = Stores::fresh(&opts.backend, &token).await?;
            // The half load's Bundles overlap now and then: two warm connections.
            sent_ok += warm_up(opts, &http, &st, &mut source, &token, 2).await?;
            st
        }
    };
    let half = half_step(
        opts,
        &http,
        &st,
        &mut source,
        &token,
        (best_rps / 2.0, mean_entries),
    )
    .await;
    sent_ok += half["resources"].as_u64().unwrap_or(0) as usize;
    stores_done.push(st.finish().await);

    let first = stores_done.first().cloned().unwrap_or(Value::Null);
    let sum = |key: &str| {
        stores_done
            .iter()
            .map(|s| s["server_log"][key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    Ok(json!({
        "what": "POST /fhir/lab transaction Bundles (Synthea, re-identified per copy) to carebridge serve over loopback",
        "smoke": opts.smoke,
        "stores": if opts.one_store {
            "one pair of stores for every phase (the warm-up, then each step and the half load in turn): later phases run on stores grown by the earlier ones"
        } else {
            "a fresh pair of stores (the gateway's and the floor's) and a freshly started gateway for each closed-loop step and for the half load, each after the same warm-up, so that every client count meets stores of the same size"
        },
        "patients_in_rotation": source.templates.len(),
        "mean_entries_per_bundle": mean_entries,
        "closed_loop": steps,
        "best_resources_per_s": best_rps,
        "half_load": half,
        "resources_answered_2xx": sent_ok,
        "detection_and_outbox": "on: detection for every patient a Bundle touches; outbox entries for lab's Conditions, CarePlans, CareTeams, medications, Communications and Goals to gp and hospital (delivery workers off)",
        "ratios": ratios(&steps, &floor_steps, floor_best),
        "store_rows": stores_done.iter().map(|s| s["store_rows"].clone()).collect::<Vec<_>>(),
        "server_log": { "errors": sum("errors"), "warnings": sum("warnings"), "sample": first["server_log"]["sample"] },
        "server_startup_seconds": first["server_startup_seconds"],
        "floor": {
            "what": FLOOR_WHAT,
            "closed_loop": floor_steps,
            "best_resources_per_s": floor_best,
            "store_rows": stores_done.iter().map(|s| s["floor_store_rows"].clone()).collect::<Vec<_>>(),
            "connection_settings": first["floor_connection_settings"],
            "growth": "the floor's store receives the same Bundle copies as the gateway's, phase by phase (the warm-up, then the closed-loop step right after the gateway's); it has no half-load phase",
        },
    }))
}

const FLOOR_WHAT: &str = "the same Bundle copies written by this process into a fresh store with the gateway's schema (its own migrations) and connection settings, one transaction per Bundle: per entry resource_versions (version 1, the resource bytes as sent), resources, identifier_index and resource_identifiers rows; per Bundle one patients and one patient_identifiers row (the sector Patient key) and one audit_log row naming every entry (seq from an in-process counter; no hash chain, no Merkle tree). No FHIR work: no validation, no id assignment or reference rewriting, no patient lookup, no locks beyond SQLite's one writer, no detection, no outbox. SQLite: multi-row INSERT ... VALUES (up to 128 rows per statement, prepared once per connection), writers queued first come first served in the process as the gateway's; PostgreSQL: one INSERT ... SELECT FROM UNNEST(arrays) per table";

/// The Medplum peer's own transaction rate for the same Bundle copies: the end-to-end tests'
/// `tests/peers/fhir-server.mjs` (Medplum's FhirRouter over its MemoryRepository, one request at
/// a time) with `--log`, a fresh peer, the Bundles POSTed to its base as transaction Bundles.
async fn medplum(opts: &Opts) -> Result<Value> {
    let templates = load_templates(opts.smoke)?;
    let mean_entries =
        templates.iter().map(|t| t.entries).sum::<usize>() as f64 / templates.len() as f64;
    let mut source = Source { templates, next: 0 };
    let mut peer = peers::Peer::start(
        "p2-medplum",
        &peers::PeerOptions {
            log: true,
            ..peers::PeerOptions::default()
        },
    )
    .await;
    let http = carebridge::outbound::client_builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let url = peer.base.clone();
    let warm = source.take(if opts.smoke { 1 } else { 3 });
    let (warm_samples, _) = closed_loop(&http, &url, "", warm, 1).await;
    let mut steps = Vec::new();
    let mut seen = peer_bundle_ms(&peer).len();
    for &c in &opts.clients {
        let bodies = source.take(opts.bundles);
        let cpu = (peer_cpu(), machine_jiffies());
        let (samples, secs) = closed_loop(&http, &url, "", bodies, c).await;
        let mut step = summarise(&samples, secs);
        step["clients"] = json!(c);
        step["peer_cpu_cores"] = json!((peer_cpu() - cpu.0) / secs);
        let own = peer_bundle_ms(&peer);
        let mut mine: Vec<f64> = own[seen.min(own.len())..].to_vec();
        seen = own.len();
        mine.sort_by(f64::total_cmp);
        step["peer_own_p50_ms"] = json!(percentile(&mine, 50.0));
        step["peer_own_p99_ms"] = json!(percentile(&mine, 99.0));
        step["peer_own_mean_ms"] = json!(mine.iter().sum::<f64>() / mine.len().max(1) as f64);
        print_step("medplum", &step);
        steps.push(step);
    }
    let best = steps
        .iter()
        .filter_map(|s| s["resources_per_s"].as_f64())
        .fold(0.0, f64::max);
    peer.stop().await;
    Ok(json!({
        "what": "the same fresh Bundle copies POSTed as transaction Bundles to the Medplum peer's base (tests/peers/fhir-server.mjs: Medplum FhirRouter over MemoryRepository, requests one at a time, transactions atomic by a snapshot of the repository's maps; no validation) over loopback",
        "peer": format!(
            "tests/peers/fhir-server.mjs with --log, Node {}",
            std::process::Command::new(peers::node_bin())
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        ),
        "smoke": opts.smoke,
        "patients_in_rotation": source.templates.len(),
        "mean_entries_per_bundle": mean_entries,
        "warm_up_statuses": warm_samples.iter().map(|s| s.status).collect::<Vec<_>>(),
        "closed_loop": steps,
        "best_resources_per_s": best,
    }))
}

/// Milliseconds inside the peer of each `POST /fhir` (a Bundle), from its `--log` lines.
fn peer_bundle_ms(peer: &peers::Peer) -> Vec<f64> {
    peer.logged_ms(" POST /fhir ")
}

/// CPU seconds of the peer's node process (this process's `node` child, found in /proc).
fn peer_cpu() -> f64 {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    for e in dir.flatten() {
        let stat = e.path().join("stat");
        let Ok(text) = std::fs::read_to_string(&stat) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((head, rest)) = text.rsplit_once(") ") else {
            continue;
        };
        if head.ends_with("(node") && rest.split(' ').nth(1) == Some(me.as_str()) {
            return cpu_secs(&stat.display().to_string());
        }
    }
    f64::NAN
}
