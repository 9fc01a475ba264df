//! P4: the delivery rate to one Medplum sector, next to that server's own POST rate measured
//! the same way.
//!
//! Run through `benches/run`; by hand:
//!
//! ```sh
//! cargo bench --bench p4_delivery -- --backend sqlite|postgres --out p4-sqlite.json \
//!     [--smoke] [--n 2000] [--window 500] [--rounds 3] [--passes reference,backlog,profile,direct]
//! ```
//!
//! Passes (each with its own fresh peer, and the gateway ones with a fresh store):
//!
//! - `reference`: one Medplum peer (`tests/peers/fhir-server.mjs`, started through
//!   `tests/common/peers.rs`) as the `hospital` sector, the real binary `carebridge serve`
//!   (release profile in the full run) with the hospital as the only sector that has a base URL,
//!   on a fresh SQLite file or a fresh PostgreSQL database. One Patient registered in `gp` and
//!   `hospital`; then `gp` pushes N Conditions in transaction Bundles of 100, one client,
//!   sequentially, and the bench waits until the outbox holds N `delivered` entries. Rates:
//!   (a) first delivery to last (`outbox.updated_us` of the delivered entries, the instant the
//!   worker recorded the outcome), (b) first push to last delivery; and per window of
//!   `--window` deliveries (the server held k·window Conditions before the window's first).
//! - `backlog`: the same pushes with deliveries off (`[exchange] enabled = false`), then the
//!   gateway restarted on the same store with them on: it delivers a backlog of N with nothing
//!   else running, as the direct client below sends its N. `--rounds` times, each followed by a
//!   direct `If-None-Exist` pass on a fresh peer (the peer's own speed drifts by several per
//!   cent between passes minutes apart); the ratio of the sums of the rates is issue 17's
//!   "≥ 0.95 of the peer's own rate". The reference pass shows what ingest beside the
//!   deliveries costs them. Each round also keeps the peer's own time and CPU per request on
//!   both sides and the ratio at the direct pass's peer time ([`round_figures`]): what the
//!   gateway adds, with the peer's drift between passes left out.
//! - `profile`: the same as `reference`, with the gateway's own log switched on for the statements it runs
//!   (`sqlx::query=debug`: every statement with its duration) and its outbound connection pool
//!   (`hyper_util` pool checkout and return, which bracket each HTTP exchange); where the time of
//!   one delivery goes is read from that log after the last push (nothing but the delivery
//!   worker runs then). The worker is pipelined, so a delivery is the cycle from one request's
//!   start to the next's: the request, the gap outside it (what the gateway adds per delivery)
//!   and the statements that ran in the cycle by class, with the part of them inside the gap.
//!   A diagnosis pass: its rates are reported but are not the reference.
//! - `direct`: the bodies the gateway sent, read back from the reference pass's peer (id,
//!   `meta.versionId` and `meta.lastUpdated` removed, then checked byte for byte against the
//!   SHA-256 the gateway recorded in `delivered.hash`), POSTed to a fresh peer by one client,
//!   sequentially, with the gateway's own HTTP client (`exchange::outbound::Outbound`) and the
//!   same headers: (i) with `If-None-Exist: identifier=<source-resource identifier>` exactly as
//!   `exchange::deliver` builds it, (ii) on another fresh peer, without it, (iii) on a third,
//!   as `PUT Condition/<id>` with an id derived from the source-resource identifier (update as
//!   create, which the peer's CapabilityStatement declares): idempotent without a search.
//!
//! Every peer runs with `--log`, so each request's time inside the server is known too.
//!
//! CPUs: a sector system runs on a machine of its own. On this benchmark's one machine,
//! `benches/run` gives the peers CPU 1 (`--peer-cpus 1`) and runs this process, and with it the
//! gateway, on CPU 0, and the local PostgreSQL server too for the PostgreSQL half
//! (`--postgres-cpus 0`, given back at the end): the direct client and the gateway then drive a
//! peer that shares its core with nothing of theirs. Unpinned, the peer (Node's main thread and
//! its garbage collector's helper threads) shares both cores with the gateway and PostgreSQL,
//! and its own time per request moved by up to a quarter between passes minutes apart.

// In a benchmark, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/args.rs"]
mod args;
#[path = "../tests/common/conf.rs"]
mod conf;
#[path = "../tests/common/peers.rs"]
mod peers;
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "../tests/common/records.rs"]
mod records;
#[path = "../tests/common/server.rs"]
mod server;

use anyhow::{Context, Result, anyhow, bail};
use carebridge::exchange::SOURCE_ID_SYSTEM;
use carebridge::store::{OutboxEntry, OutboxFilter, SqlStore, Store};
use clap::Parser;
use peers::{Peer, PeerOptions};
use records::{heart_failure, transaction};
use serde_json::{Value, json};
use server::{Serve, Server, clock_ticks};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Opts {
    backend: String,
    /// `--peer-cpus`, for every peer this process starts.
    peer_cpus: Option<String>,
    postgres_cpus: Option<String>,
    out: PathBuf,
    smoke: bool,
    n: usize,
    bundle: usize,
    window: usize,
    passes: Vec<String>,
    /// Conditions per dead-sector sub-pass.
    dead_n: usize,
    /// Backlog passes, each with a direct pass after it.
    rounds: usize,
    /// Rounds of the dead-sector pass (baseline, refused, silent), with one more baseline after.
    dead_rounds: usize,
}

/// P4: the delivery rate to one Medplum sector, next to that server's own POST rate (see the
/// module documentation).
#[derive(Parser)]
#[command(name = "p4_delivery", bin_name = "p4_delivery")]
struct Args {
    /// The gateway's store: a fresh SQLite file or a fresh PostgreSQL database.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    backend: String,
    /// The JSON file for the results.
    #[arg(long)]
    out: PathBuf,
    /// Conditions per gateway pass [default: 2000; with --smoke: 100].
    #[arg(long)]
    n: Option<usize>,
    /// Conditions per transaction Bundle.
    #[arg(long, default_value_t = 100)]
    bundle: usize,
    /// Deliveries per rate window, at least 2 [default: 500; with --smoke: 25].
    #[arg(long)]
    window: Option<usize>,
    /// The passes, comma-separated: reference, backlog, profile, direct, dead-sector
    /// [default: all; with --smoke: backlog,profile,direct,dead-sector].
    #[arg(long, value_delimiter = ',',
          value_parser = ["reference", "backlog", "profile", "direct", "dead-sector"])]
    passes: Option<Vec<String>>,
    /// Conditions per dead-sector sub-pass [default: 1000; with --smoke: 40].
    #[arg(long)]
    dead_n: Option<usize>,
    /// Backlog passes, each followed by a direct `If-None-Exist` pass on a fresh peer (the
    /// peer's speed drifts by several per cent from one pass to the next, and now and then one
    /// pass of either side runs 20-30 % slow, so the ratio is taken over alternating pairs)
    /// [default: 6; with --smoke: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Rounds of the dead-sector pass: each runs a baseline, a refused and a silent sub-pass;
    /// one more baseline closes them, so that each dead sub-pass is measured against the
    /// baselines on either side of its round (single sub-passes against the peer move by more
    /// than the 10 % line) [default: 3; with --smoke: 1].
    #[arg(long)]
    dead_rounds: Option<usize>,
    /// Run every peer on these CPUs only (`taskset -c`), e.g. `1` with this process (and the
    /// gateway it starts) under `taskset -c 0`: the peer gets a core of its own, as a sector
    /// system on another machine has, and the gateway's store does not share it. `benches/run`
    /// does so on a machine of two or more CPUs.
    #[arg(long)]
    peer_cpus: Option<String>,
    /// Run the local PostgreSQL server (the one listening on the store's port, its running
    /// processes and the backends it starts) on these CPUs for the run, e.g. `0` beside the
    /// gateway, and give it back its CPUs at the end: the gateway and its database on one
    /// machine, the peer on another. Needs the right to change the server's affinity (root);
    /// without it the run goes on unpinned and says so in its results.
    #[arg(long)]
    postgres_cpus: Option<String>,
    #[command(flatten)]
    common: args::Common,
}

/// The options of every peer: `--log` as asked, on `--peer-cpus`.
fn peer_options(opts: &Opts, log: bool) -> PeerOptions {
    PeerOptions {
        log,
        cpus: opts.peer_cpus.clone(),
        ..PeerOptions::default()
    }
}

/// The CPUs process `pid` may run on (`Cpus_allowed_list` of its /proc status).
fn cpus_of(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The CPUs this process may run on.
fn own_cpus() -> Option<String> {
    cpus_of("self")
}

/// The local PostgreSQL server held to some CPUs for the run (`--postgres-cpus`); dropping it
/// gives the server and its processes their CPUs back.
struct PinnedPostgres {
    postmaster: u32,
    before: String,
}

impl PinnedPostgres {
    /// Pins the server listening on `port` and its running processes to `cpus` (backends it
    /// starts later inherit the postmaster's CPUs).
    fn pin(port: u16, cpus: &str) -> Result<PinnedPostgres> {
        let postmaster = pid_listening_on(port)
            .ok_or_else(|| anyhow!("no local process listens on port {port}"))?;
        let before = cpus_of(&postmaster.to_string())
            .ok_or_else(|| anyhow!("the CPUs of process {postmaster} are not readable"))?;
        set_cpus(postmaster, cpus)?;
        eprintln!(
            "  PostgreSQL (process {postmaster} and its children) on CPUs {cpus} for this run; \
             should the run be killed: taskset -a -p -c {before} for each of them"
        );
        Ok(PinnedPostgres { postmaster, before })
    }
}

impl Drop for PinnedPostgres {
    fn drop(&mut self) {
        if let Err(e) = set_cpus(self.postmaster, &self.before) {
            eprintln!(
                "p4_delivery: could not give PostgreSQL its CPUs back ({e:#}); run `taskset -a -p -c {} {}` and the same for its children",
                self.before, self.postmaster
            );
        }
    }
}

/// `taskset -a -p -c cpus` for `pid` and each of its children.
fn set_cpus(pid: u32, cpus: &str) -> Result<()> {
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .context("pgrep")?;
    let children = String::from_utf8_lossy(&children.stdout).into_owned();
    for p in std::iter::once(pid.to_string()).chain(children.split_whitespace().map(str::to_owned))
    {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &p])
            .output()
            .context("taskset")?;
        // A child that ended meanwhile is no failure; the postmaster must take it.
        if !out.status.success() && p == pid.to_string() {
            bail!(
                "taskset -a -p -c {cpus} {p}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

fn parse_opts() -> Result<Opts> {
    let a = Args::parse();
    let smoke = a.common.smoke;
    let passes = a.passes.unwrap_or_else(|| {
        // The smoke run has the backlog pass and the profile pass (log on), so that every part
        // runs.
        let all: &[&str] = if smoke {
            &["backlog", "profile", "direct", "dead-sector"]
        } else {
            &["reference", "backlog", "profile", "direct", "dead-sector"]
        };
        all.iter().map(|p| (*p).to_owned()).collect()
    });
    let opts = Opts {
        backend: a.backend,
        peer_cpus: a.peer_cpus,
        postgres_cpus: a.postgres_cpus,
        out: a.out,
        smoke,
        n: a.common.pick(a.n, 2000, 100),
        bundle: a.bundle,
        window: a.common.pick(a.window, 500, 25),
        passes,
        dead_n: a.common.pick(a.dead_n, 1000, 40),
        rounds: a.common.pick(a.rounds, 6, 1).max(1),
        dead_rounds: a.common.pick(a.dead_rounds, 3, 1).max(1),
    };
    if opts.n == 0 || opts.bundle == 0 || opts.window < 2 {
        bail!("--n and --bundle must be positive, --window at least 2");
    }
    Ok(opts)
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("p4_delivery: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run(opts)) {
        eprintln!("p4_delivery: {e:#}");
        std::process::exit(1);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pg_admin_url() -> String {
    std::env::var("CAREBRIDGE_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

// ------------------------------------------------------------------------------------------
// Processes and CPU
// ------------------------------------------------------------------------------------------

/// (command name, user + system CPU seconds) of a process.
fn proc_cpu(pid: u32) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the command name: state is field 3 (index 0 here); utime 14 and stime 15.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|x| x.parse::<f64>().ok()))
        .sum();
    Some((comm, ticks))
}

fn pid_cpu_secs(pid: Option<u32>, ticks: f64) -> f64 {
    pid.and_then(proc_cpu).map_or(f64::NAN, |(_, t)| t / ticks)
}

/// CPU seconds of every `postgres` process on the machine (other users' sessions included).
fn postgres_cpu_secs(ticks: f64) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_cpu)
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, t)| t / ticks)
        .sum()
}

/// Jiffies of the whole machine since boot: (busy, iowait, all).
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
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    let all: f64 = (0..8).map(get).sum();
    (all - get(3) - get(4), get(4), all)
}

/// The pid of the process listening on a local TCP port (the peer's `node`).
fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let p = cols[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.to_string_lossy() == *i)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU use over a phase: the gateway, the peer's node, this client, every postgres process and
/// the whole machine (busy and iowait), in cores.
struct CpuProbe {
    ticks: f64,
    gateway: Option<u32>,
    peer: Option<u32>,
    at: Instant,
    values: [f64; 4],
    machine: (f64, f64, f64),
}

impl CpuProbe {
    fn start(gateway: Option<u32>, peer: Option<u32>) -> Self {
        let ticks = clock_ticks();
        let mut p = CpuProbe {
            ticks,
            gateway,
            peer,
            at: Instant::now(),
            values: [0.0; 4],
            machine: machine_jiffies(),
        };
        p.values = p.read();
        p
    }

    fn read(&self) -> [f64; 4] {
        [
            pid_cpu_secs(self.gateway, self.ticks),
            pid_cpu_secs(self.peer, self.ticks),
            pid_cpu_secs(Some(std::process::id()), self.ticks),
            postgres_cpu_secs(self.ticks),
        ]
    }

    fn finish(&self) -> Value {
        let secs = self.at.elapsed().as_secs_f64();
        let now = self.read();
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
        let rate = |i: usize| {
            let d = now[i] - self.values[i];
            if d.is_finite() {
                json!(d / secs)
            } else {
                Value::Null
            }
        };
        json!({
            "seconds": secs,
            "gateway_cpu_cores": if self.gateway.is_some() { rate(0) } else { Value::Null },
            "gateway_cpu_seconds": if self.gateway.is_some() { json!(now[0] - self.values[0]) } else { Value::Null },
            "peer_cpu_cores": rate(1),
            "peer_cpu_seconds": json!(now[1] - self.values[1]),
            "client_cpu_cores": rate(2),
            "postgres_cpu_cores": rate(3),
            "machine_busy_cores": share(b1 - b0),
            "machine_iowait_cores": share(w1 - w0),
        })
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

// ------------------------------------------------------------------------------------------
// The gateway process and its log
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvKind {
    /// A statement ended (`ts_us`) after `elapsed_us`.
    Stmt,
    /// The outbound client took a connection from its pool (or opened one): a request starts.
    HttpStart,
    /// The connection went back to the pool: the response was read to its end.
    HttpEnd,
}

#[derive(Debug, Clone)]
struct Event {
    ts_us: i64,
    kind: EvKind,
    elapsed_us: i64,
    /// Rows the statement returned (`RETURNING` included).
    rows: i64,
    /// Index into `LogState::statements`.
    stmt: usize,
    /// Logged inside an API request span (ingest), not by the delivery worker.
    in_request: bool,
}

#[derive(Default)]
struct LogState {
    events: Vec<Event>,
    statements: Vec<String>,
    index: HashMap<String, usize>,
}

impl LogState {
    fn intern(&mut self, key: String) -> usize {
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        self.statements.push(key.clone());
        self.index.insert(key, self.statements.len() - 1);
        self.statements.len() - 1
    }
}

/// The value of `name="..."` in a log line (Debug-escaped), unescaped.
fn quoted_field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next() {
                Some('n') | Some('t') | Some('r') => out.push(' '),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// A statement's text with whitespace collapsed, cut at 150 characters: its key in the profile.
fn statement_key(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(150) {
        Some((i, _)) => format!("{}…", &collapsed[..i]),
        None => collapsed,
    }
}

fn parse_ts(tok: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(tok, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000).ok()
}

fn parse_log_line(state: &mut LogState, line: &str) {
    let Some(ts) = line.split_whitespace().next().and_then(parse_ts) else {
        return;
    };
    if let Some(at) = line.find(" sqlx::query: ") {
        let in_request = line[..at].contains('{');
        let text = quoted_field(line, "db.statement")
            .filter(|s| !s.trim().is_empty())
            .or_else(|| quoted_field(line, "summary"))
            .unwrap_or_default();
        let elapsed = line
            .split("elapsed_secs=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let rows = line
            .split("rows_returned=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let stmt = state.intern(statement_key(&text));
        state.events.push(Event {
            ts_us: ts,
            kind: EvKind::Stmt,
            elapsed_us: (elapsed * 1e6).round() as i64,
            rows,
            stmt,
            in_request,
        });
    } else if line.contains("hyper_util::client::legacy") {
        let kind = if line.contains("reuse idle connection") || line.contains("connecting to") {
            EvKind::HttpStart
        } else if line.contains("pooling idle connection") {
            EvKind::HttpEnd
        } else {
            return;
        };
        state.events.push(Event {
            ts_us: ts,
            kind,
            elapsed_us: 0,
            rows: 0,
            stmt: usize::MAX,
            in_request: false,
        });
    }
}

/// The gateway process (`tests/common/server.rs`) and, in the profile pass, what its log said.
struct Gateway {
    server: Server,
    log: Arc<Mutex<LogState>>,
    /// Its configuration file.
    config: PathBuf,
}

const PROFILE_LOG: &str = "info,sqlx=warn,sqlx::query=debug,\
    hyper_util::client::legacy::pool=debug,hyper_util::client::legacy::connect::http=debug";

fn start_gateway(config: &Path, profile: bool) -> Result<Gateway> {
    let log = Arc::new(Mutex::new(LogState::default()));
    let sink = log.clone();
    let server = Serve::new(config)
        .rust_log(if profile {
            PROFILE_LOG
        } else {
            "info,sqlx=warn"
        })
        .echo_startup()
        .on_line(move |line| {
            if profile {
                parse_log_line(&mut sink.lock().expect("log state"), line);
            }
        })
        .start()?;
    Ok(Gateway {
        server,
        log,
        config: config.to_owned(),
    })
}

// ------------------------------------------------------------------------------------------
// Configuration, stores, resources
// ------------------------------------------------------------------------------------------

/// The exchange settings of the run: the gateway's defaults, written out for the record.
const EXCHANGE: &str = "max_attempts = 0\nmax_age_secs = 604800\nlease_secs = 10\nretry_initial_ms = 1000\n\
    retry_max_ms = 300000\nrequest_timeout_ms = 30000\nbatch = 16\nidle_poll_ms = 1000\n";

fn config_text(
    store_url: &str,
    hospital_base: &str,
    tokens: &[(&str, &str, String)],
    deliveries: bool,
) -> String {
    let mut text = format!(
        "# generated by benches/p4_delivery.rs\n\
         [server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n\
         [store]\nurl = \"{store_url}\"\n\n\
         [fhir]\nprofiles_dir = \"{profiles}\"\n\n\
         [exchange]\nenabled = {deliveries}\n{EXCHANGE}\n\
         [[sectors]]\nid = \"gp\"\nname = \"General practice\"\nkind = \"general-practice\"\nprofile = \"dk-gp\"\n\n\
         [[sectors]]\nid = \"hospital\"\nname = \"Hospital\"\nkind = \"hospital\"\nbase_url = \"{hospital_base}\"\nmode = \"push\"\nprofile = \"dk-hospital\"\njoin_care_on_patient = true\n\n\
         [[sectors]]\nid = \"municipality\"\nname = \"Municipality\"\nkind = \"municipality\"\nprofile = \"dk-municipality\"\n",
        profiles = repo().join("fhir-profiles").display()
    );
    for (id, role, token) in tokens {
        text.push_str(&conf::client_table(id, role, token));
    }
    text
}

async fn create_pg_database() -> Result<(String, String)> {
    let admin = pg_admin_url();
    pg::create_database(&admin, "cb_bench_")
        .await
        .with_context(|| format!("PostgreSQL at {admin}"))
}

async fn drop_pg_database(name: &str) {
    pg::drop_database(&pg_admin_url(), name).await;
}

async fn pg_settings() -> Result<Value> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await?;
    let mut out = serde_json::Map::new();
    for key in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {key}")))
            .fetch_one(&mut conn)
            .await?;
        out.insert(key.into(), v.into());
    }
    Ok(Value::Object(out))
}

/// The Patient of the runs (`tests/common/records.rs`).
fn patient(cpr: &str) -> Value {
    records::patient(cpr, "Rahimi")
}

/// The Condition of `tests/it/exchange.rs` (`tests/common/records.rs`: an extension, a
/// primitive extension, an ICPC-2 code the hospital's ConceptMap translates).
fn condition(id: &str, patient: &str) -> Value {
    heart_failure(id, patient)
}

/// The `If-None-Exist` value the gateway sends for a mapped body.
fn if_none_exist(body: &Value) -> Option<String> {
    body["identifier"].as_array()?.iter().find_map(|i| {
        (i["system"].as_str() == Some(SOURCE_ID_SYSTEM)).then(|| {
            format!(
                "identifier={}|{}",
                carebridge::workers::deliver::encode(SOURCE_ID_SYSTEM),
                carebridge::workers::deliver::encode(i["value"].as_str().unwrap_or_default())
            )
        })
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// `POST /fhir/Condition` durations (ms) in the peer's `--log` lines, in order.
fn peer_post_ms(peer: &Peer) -> Vec<f64> {
    peer.logged_ms(" POST /fhir/Condition ")
}

/// `PUT /fhir/Condition/<id>` durations (ms) in the peer's `--log` lines, in order.
fn peer_put_ms(peer: &Peer) -> Vec<f64> {
    peer.logged_ms(" PUT /fhir/Condition/")
}

/// Rates per window of `w` completions (times in µs, in order): the k-th completion found the
/// server holding k resources. A window's rate counts the intervals from the completion before
/// its first (the very first window: from its own first completion).
fn windows(done_us: &[i64], w: usize, server_ms: &[f64], latency_ms: Option<&[f64]>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < done_us.len() {
        let end = (start + w).min(done_us.len());
        let (from, intervals) = if start == 0 {
            (done_us[0], end - 1)
        } else {
            (done_us[start - 1], end - start)
        };
        let secs = (done_us[end - 1] - from) as f64 / 1e6;
        let srv = server_ms
            .get(start..end.min(server_ms.len()))
            .unwrap_or(&[]);
        let mut row = json!({
            "from": start,
            "to": end - 1,
            "completions": end - start,
            "seconds": secs,
            "per_s": if secs > 0.0 { intervals as f64 / secs } else { f64::NAN },
            "server_ms_mean": mean(srv),
        });
        if let Some(lat) = latency_ms {
            row["latency_ms_mean"] = json!(mean(&lat[start..end]));
        }
        out.push(row);
        start = end;
    }
    out
}

// ------------------------------------------------------------------------------------------
// One gateway pass
// ------------------------------------------------------------------------------------------

/// A gateway pass: how its deliveries meet its pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Deliveries run from the first push on, beside the ingest of the rest.
    Reference,
    /// Everything pushed with deliveries off (`[exchange] enabled = false`), then the gateway
    /// restarted on the same store with them on: the worker delivers a backlog of N with
    /// nothing else running, as the direct client sends its N.
    Backlog,
    /// As `Reference`, with the gateway's statement and connection-pool log on.
    Profile,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Reference => "reference",
            Pass::Backlog => "backlog",
            Pass::Profile => "profile",
        }
    }

    fn profile(self) -> bool {
        self == Pass::Profile
    }
}

struct GatewayPass {
    result: Value,
    /// What the gateway sent, in delivery order (for the direct pass).
    bodies: Vec<Value>,
    patient_ref: String,
}

async fn gateway_pass(opts: &Opts, pass: Pass) -> Result<GatewayPass> {
    let dir = tempfile::tempdir()?;
    let (store_url, pg_db) = match opts.backend.as_str() {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("carebridge.db").display()),
            None,
        ),
        "postgres" => {
            let (url, name) = create_pg_database().await?;
            (url, Some(name))
        }
        other => bail!("--backend takes sqlite or postgres, not {other}"),
    };
    let result = gateway_measure(opts, pass, dir.path(), &store_url).await;
    if let Some(name) = &pg_db {
        drop_pg_database(name).await;
    }
    let mut pass = result?;
    pass.result["database"] = json!(pg_db.map_or(
        "a fresh SQLite file (WAL, synchronous=FULL)".into(),
        |n| format!("fresh PostgreSQL database {n} (dropped after)")
    ));
    Ok(pass)
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let resp = http
        .request(method, url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn gateway_measure(
    opts: &Opts,
    pass: Pass,
    dir: &Path,
    store_url: &str,
) -> Result<GatewayPass> {
    let profile = pass.profile();
    let mut hospital = Peer::start("hospital", &peer_options(opts, true)).await;
    let peer_pid = pid_listening_on(hospital.port);
    let tokens = [
        ("gp", "sector:gp", carebridge::auth::new_token()),
        ("hospital", "sector:hospital", carebridge::auth::new_token()),
    ];
    let config = dir.join("carebridge.toml");
    let deliveries = pass != Pass::Backlog;
    std::fs::write(
        &config,
        config_text(store_url, &hospital.base, &tokens, deliveries),
    )?;
    let mut gw = start_gateway(&config, profile)?;
    let outcome = drive(opts, pass, &hospital, peer_pid, &mut gw, &tokens, store_url).await;
    gw.server.stop();
    let mut outcome = outcome?;
    let (events, statements, log_summary) = {
        let l = gw.log.lock().expect("log state");
        let s = gw.server.log.lock().expect("log stats");
        (
            l.events.clone(),
            l.statements.clone(),
            json!({ "errors": s.errors, "warnings": s.warnings, "sample": s.sample }),
        )
    };
    outcome.result["gateway_log"] = log_summary;
    outcome.result["gateway_startup_seconds"] = json!(gw.server.startup_secs);
    outcome.result["gateway_log_filter"] = json!(if profile {
        PROFILE_LOG
    } else {
        "info,sqlx=warn"
    });
    let server_ms = peer_post_ms(&hospital);
    outcome.result["peer_requests_logged"] = json!(server_ms.len());
    if profile {
        let push_end = outcome.result["push"]["end_us"].as_i64().unwrap_or(0);
        outcome.result["breakdown"] =
            breakdown(&events, &statements, push_end, &server_ms, opts.window);
    }
    hospital.stop().await;
    eprintln!("  ({} pass done)", pass.name());
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Opts,
    pass: Pass,
    hospital: &Peer,
    peer_pid: Option<u32>,
    gw: &mut Gateway,
    tokens: &[(&str, &str, String); 2],
    store_url: &str,
) -> Result<GatewayPass> {
    let profile = pass.profile();
    let http = carebridge::outbound::client_builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let token = |id: &str| {
        tokens
            .iter()
            .find(|t| t.0 == id)
            .map(|t| t.2.clone())
            .unwrap_or_default()
    };
    // The patient, known at the hospital (its own server and the gateway) and in general practice.
    let cpr = "1503570721";
    let created = hospital.create(&patient(cpr)).await;
    let h_pid = created["id"]
        .as_str()
        .context("the hospital's Patient id")?
        .to_owned();
    let mut hp = patient(cpr);
    hp["id"] = json!(h_pid);
    let url = format!("{}/hospital/Patient/{h_pid}", gw.server.base);
    let (status, body) = send(&http, reqwest::Method::PUT, &url, &token("hospital"), &hp).await?;
    if status >= 300 {
        bail!("registering the hospital Patient answered {status}: {body}");
    }
    let mut gp = patient(cpr);
    gp["id"] = json!("gp-p1");
    let url = format!("{}/gp/Patient/gp-p1", gw.server.base);
    let (status, body) = send(&http, reqwest::Method::PUT, &url, &token("gp"), &gp).await?;
    if status >= 300 {
        bail!("registering the gp Patient answered {status}: {body}");
    }

    // The Bundles, prepared before the clock starts.
    let bundles: Vec<Value> = (0..opts.n)
        .collect::<Vec<_>>()
        .chunks(opts.bundle)
        .enumerate()
        .map(|(b, ids)| {
            transaction(
                &ids.iter()
                    .map(|i| condition(&format!("c-{b}-{i}"), "gp-p1"))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let bodies: Vec<String> = bundles.iter().map(Value::to_string).collect();
    let store = SqlStore::connect(store_url, 2)
        .await
        .context("a connection to the gateway's store")?;

    let load_before = loadavg();
    let push_probe = CpuProbe::start(Some(gw.server.child.id()), peer_pid);
    let t0 = now_us();
    let started = Instant::now();
    let push_url = format!("{}/gp", gw.server.base);
    let mut push_ms = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for body in &bodies {
        let t = Instant::now();
        let resp = http
            .post(&push_url)
            .bearer_auth(token("gp"))
            .header("content-type", "application/fhir+json")
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        push_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        *statuses.entry(status).or_default() += 1;
    }
    let push_end = now_us();
    let push_cpu = push_probe.finish();
    if statuses.keys().any(|s| *s != 200) {
        bail!("pushes answered {statuses:?}");
    }
    let mut restart_s = None;
    if pass == Pass::Backlog {
        // The backlog: the same store and configuration with deliveries on.
        let t = Instant::now();
        gw.server.stop();
        let config = gw.config.clone();
        let text = std::fs::read_to_string(&config)?;
        std::fs::write(&config, text.replace("enabled = false", "enabled = true"))?;
        *gw = start_gateway(&config, profile)?;
        restart_s = Some(t.elapsed().as_secs_f64());
    }
    let tail_probe = CpuProbe::start(Some(gw.server.child.id()), peer_pid);

    // Wait for N delivered entries.
    let deadline = Instant::now() + Duration::from_secs(120 + opts.n as u64 / 5);
    let mut last = (0i64, Instant::now());
    loop {
        let counts = {
            let mut tx = store.begin_read().await?;
            tx.outbox_counts().await?
        };
        let of = |state: &str| -> i64 {
            counts
                .iter()
                .filter(|(_, s, _)| s == state)
                .map(|(_, _, n)| *n)
                .sum()
        };
        let delivered = of("delivered");
        if of("dead") > 0 {
            bail!("entries were dead-lettered: {counts:?}");
        }
        if delivered >= opts.n as i64 {
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("no delivery for 60 s: {counts:?}");
        }
        if Instant::now() > deadline {
            bail!("not all delivered in time: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = started.elapsed().as_secs_f64();
    let tail_cpu = tail_probe.finish();
    let load_after = loadavg();

    // The outbox as the gateway recorded it.
    let all: Vec<OutboxEntry> = carebridge::gateway::admin::list_deliveries(
        &store,
        &OutboxFilter {
            state: None,
            target: None,
            offset: 0,
            count: 1_000_000,
        },
    )
    .await?;
    let mut delivered: Vec<&OutboxEntry> = all
        .iter()
        .filter(|e| e.state.code() == "delivered")
        .collect();
    if delivered.len() != opts.n || all.len() != opts.n {
        bail!(
            "{} outbox entries, {} delivered; expected {}",
            all.len(),
            delivered.len(),
            opts.n
        );
    }
    delivered.sort_by_key(|e| (e.updated_us, e.id));
    let done: Vec<i64> = delivered.iter().map(|e| e.updated_us).collect();
    let first = done[0];
    let last_done = done[done.len() - 1];
    let during_push = done.iter().filter(|t| **t <= push_end).count();
    let retried = delivered.iter().filter(|e| e.attempts > 1).count();
    let mut queue_ms: Vec<f64> = delivered
        .iter()
        .map(|e| (e.updated_us - e.created_us) as f64 / 1000.0)
        .collect();
    queue_ms.sort_by(f64::total_cmp);
    let hashes = {
        let mut tx = store.begin_read().await?;
        let mut out = Vec::with_capacity(delivered.len());
        for e in &delivered {
            out.push(
                tx.delivered_get("hospital", &e.gid)
                    .await?
                    .map(|d| d.hash)
                    .unwrap_or_default(),
            );
        }
        out
    };
    store.close().await;

    // What the hospital holds: exactly once, and the bodies as sent.
    let held = hospital.search_resources("Condition").await;
    if held.len() != opts.n {
        bail!(
            "the hospital holds {} Conditions, not {}",
            held.len(),
            opts.n
        );
    }
    let by_id: HashMap<String, Value> = held
        .into_iter()
        .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r)))
        .collect();
    let mut bodies = Vec::with_capacity(opts.n);
    let mut identical = 0;
    for (e, hash) in delivered.iter().zip(&hashes) {
        let id = e.target_id.as_deref().unwrap_or_default();
        let mut r = by_id
            .get(id)
            .cloned()
            .with_context(|| format!("Condition/{id} is not at the hospital"))?;
        if let Some(obj) = r.as_object_mut() {
            obj.remove("id");
            if let Some(meta) = obj.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
        }
        if carebridge::ids::content_hash(r.to_string().as_bytes()) == *hash {
            identical += 1;
        }
        bodies.push(r);
    }

    let server_ms = peer_post_ms(hospital);
    let span = (last_done - first) as f64 / 1e6;
    let e2e = (last_done - t0) as f64 / 1e6;
    let mut push_sorted = push_ms.clone();
    push_sorted.sort_by(f64::total_cmp);
    let rate = (opts.n - 1) as f64 / span;
    eprintln!(
        "  {} gateway ({}): pushed {} in {:.2} s; deliveries first→last {:.1}/s, end to end {:.1}/s ({} of them during the push); bodies identical to what was sent: {}/{}",
        opts.backend,
        pass.name(),
        opts.n,
        (push_end - t0) as f64 / 1e6,
        rate,
        opts.n as f64 / e2e,
        during_push,
        identical,
        opts.n
    );
    let result = json!({
        "pass": pass.name(),
        "restart_seconds": restart_s,
        "n": opts.n,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "push": {
            "bundles": bundles.len(),
            "bundle_size": opts.bundle,
            "seconds": (push_end - t0) as f64 / 1e6,
            "resources_per_s": opts.n as f64 / ((push_end - t0) as f64 / 1e6),
            "statuses": statuses,
            "p50_ms": percentile(&push_sorted, 50.0),
            "max_ms": push_sorted.last().copied().unwrap_or(f64::NAN),
            "start_us": t0,
            "end_us": push_end,
            "cpu": push_cpu,
        },
        "delivery": {
            "first_delivery_after_first_push_s": (first - t0) as f64 / 1e6,
            "last_delivery_after_first_push_s": e2e,
            "seconds_first_to_last": span,
            "per_s_first_to_last": rate,
            "per_s_end_to_end": opts.n as f64 / e2e,
            "delivered_during_push": during_push,
            "entries_retried": retried,
            "queue_latency_ms": {
                "p50": percentile(&queue_ms, 50.0),
                "p99": percentile(&queue_ms, 99.0),
                "max": queue_ms.last().copied().unwrap_or(f64::NAN),
            },
            "server_ms_mean": mean(&server_ms),
            "windows": windows(&done, opts.window, &server_ms, None),
            "cpu_after_push": tail_cpu,
            "bench_wait_seconds": waited,
        },
        "hospital_conditions": opts.n,
        "bodies_identical_to_sent": identical,
    });
    Ok(GatewayPass {
        result,
        bodies,
        patient_ref: format!("Patient/{h_pid}"),
    })
}

// ------------------------------------------------------------------------------------------
// Where the time of one delivery goes (the profile pass's log)
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
    Claim,
    Gauge,
    Begin,
    Commit,
    Rollback,
}

/// A statement's class by its text alone: the worker's transactions overlap, so the statement
/// before a COMMIT need not be of its transaction. Writes are the outcomes' transactions (their
/// audit rows, Merkle nodes, the endpoint's health and attempts, and their COMMIT); reads the
/// read transactions with the mapping (ended by a ROLLBACK).
fn classify(key: &str) -> Class {
    let k = key.trim_start();
    if k.starts_with("UPDATE outbox SET lease_owner") {
        Class::Claim
    } else if k.contains("COUNT(*) FROM outbox") {
        Class::Gauge
    } else if k.starts_with("BEGIN") {
        Class::Begin
    } else if k.starts_with("COMMIT") {
        Class::Commit
    } else if k.starts_with("ROLLBACK") {
        Class::Rollback
    } else if k.starts_with("INSERT")
        || k.starts_with("UPDATE")
        || k.starts_with("DELETE")
        || k.contains("pg_advisory_xact_lock")
        || k.contains("audit_head")
        || k.contains("FROM sector_health")
        || k.contains("FROM audit_merkle")
    {
        Class::Write
    } else {
        Class::Read
    }
}

/// One delivery's share of the worker's time: from its request's start to the next request's
/// start. The worker is pipelined (`workers::deliver`): the next entry's read and mapping and
/// the earlier outcomes' write run while a request is in flight, so a delivery's statements
/// are counted where they ran, and the part of the cycle outside the request (the *gap*) is
/// what the gateway adds per delivery.
#[derive(Default, Clone)]
struct Cycle {
    k: usize,
    http_start: i64,
    http_end: i64,
    next_start: i64,
    /// Statement time by class within the cycle, and the part of it inside the gap.
    read_db: i64,
    read_gap: i64,
    read_n: usize,
    write_db: i64,
    write_gap: i64,
    write_n: usize,
    claim_db: i64,
    claim_gap: i64,
    claim_n: usize,
    claimed: i64,
    other_db: i64,
}

impl Cycle {
    /// Adds a statement that ran from `start` to `end` (µs) to its class.
    fn add(&mut self, class: Class, start: i64, end: i64, counted: usize, rows: i64) {
        let el = end - start;
        // The part of the statement after the response was read (inside the gap). Events come
        // in the order of their end: a statement that ended before the response was read is
        // seen while `http_end` is still unset.
        let gap = if self.http_end > 0 {
            (end - start.max(self.http_end)).clamp(0, el)
        } else {
            0
        };
        match class {
            Class::Read => {
                self.read_db += el;
                self.read_gap += gap;
                self.read_n += counted;
            }
            Class::Write => {
                self.write_db += el;
                self.write_gap += gap;
                self.write_n += counted;
            }
            Class::Claim => {
                self.claim_db += el;
                self.claim_gap += gap;
                self.claim_n += counted;
                self.claimed += rows;
            }
            _ => self.other_db += el,
        }
    }
}

/// Splits the delivery worker's time after the last push into one cycle per HTTP exchange
/// (pool checkout to the next checkout): the request (checkout to the response read to its
/// end), the gap (response read to the next request), and the statements that ran in the cycle
/// by class — read transactions with the mapping, write transactions (the outcomes and their
/// audit rows), claims — each also counted for the part of it inside the gap. sqlx does not log
/// SQLite's BEGIN and COMMIT: on SQLite their time is in the gap but in no class.
fn breakdown(
    events: &[Event],
    statements: &[String],
    push_end_us: i64,
    server_ms: &[f64],
    window: usize,
) -> Value {
    let mut evs: Vec<&Event> = events.iter().filter(|e| !e.in_request).collect();
    evs.sort_by_key(|e| e.ts_us);
    // Number the HTTP exchanges over the whole run: the k-th is the k-th POST the peer logged.
    let mut cycles: Vec<Cycle> = Vec::new();
    let mut cur: Option<Cycle> = None;
    let mut http_k = 0usize;
    let mut pending_begin: i64 = 0;
    let mut per_stmt: BTreeMap<usize, (usize, i64)> = BTreeMap::new();
    for e in evs {
        match e.kind {
            EvKind::HttpStart => {
                if let Some(mut c) = cur.take() {
                    c.next_start = e.ts_us;
                    if c.http_end > 0 && c.http_start > push_end_us {
                        cycles.push(c);
                    }
                }
                cur = Some(Cycle {
                    k: http_k,
                    http_start: e.ts_us,
                    ..Cycle::default()
                });
                http_k += 1;
            }
            EvKind::HttpEnd => {
                if let Some(c) = cur.as_mut() {
                    c.http_end = e.ts_us;
                }
            }
            EvKind::Stmt => {
                // A COMMIT ends a write transaction, a ROLLBACK a read one: their time counts
                // there, but not as one of its statements.
                let raw = classify(&statements[e.stmt]);
                let class = match raw {
                    Class::Commit => Class::Write,
                    Class::Rollback => Class::Read,
                    c => c,
                };
                if e.ts_us > push_end_us {
                    let s = per_stmt.entry(e.stmt).or_default();
                    s.0 += 1;
                    s.1 += e.elapsed_us;
                }
                if class == Class::Begin {
                    pending_begin += e.elapsed_us;
                    continue;
                }
                let start = e.ts_us - e.elapsed_us - std::mem::take(&mut pending_begin);
                if let Some(c) = cur.as_mut() {
                    let counted = usize::from(!matches!(raw, Class::Commit | Class::Rollback));
                    c.add(class, start, e.ts_us, counted, e.rows);
                }
            }
        }
    }
    if cycles.is_empty() {
        return json!({ "note": "no complete delivery cycle after the last push was found in the log" });
    }
    let by_window: Vec<Value> = {
        let mut groups: BTreeMap<usize, Vec<Cycle>> = BTreeMap::new();
        for c in &cycles {
            groups.entry(c.k / window).or_default().push(c.clone());
        }
        groups
            .into_iter()
            .map(|(w, cs)| {
                let mut v = summarise_cycles(&cs, server_ms);
                v["window"] = json!(format!("{}-{}", w * window, (w + 1) * window - 1));
                v
            })
            .collect()
    };
    let n = cycles.len() as f64;
    let stmts: Vec<Value> = per_stmt
        .iter()
        .map(|(i, (count, us))| {
            json!({
                "statement": statements[*i],
                "class": format!("{:?}", classify(&statements[*i])),
                "per_delivery": *count as f64 / n,
                "mean_ms": *us as f64 / *count as f64 / 1000.0,
                "ms_per_delivery": *us as f64 / n / 1000.0,
            })
        })
        .collect();
    // How many entries each claim after the last push took.
    let mut claim_rows: BTreeMap<i64, usize> = BTreeMap::new();
    for e in events {
        if e.kind == EvKind::Stmt
            && e.ts_us > push_end_us
            && classify(&statements[e.stmt]) == Class::Claim
        {
            *claim_rows.entry(e.rows).or_default() += 1;
        }
    }
    json!({
        "claims_by_entries_taken": claim_rows,
        "what": "the pipelined delivery worker's cycles after the last push (request start to the next request's start), from the gateway's log (sqlx::query=debug, hyper_util pool): the request, the gap outside it (what the gateway adds per delivery), and the statements run in the cycle by class, with the part of them inside the gap",
        "all": summarise_cycles(&cycles, server_ms),
        "by_window": by_window,
        "statements": stmts,
    })
}

/// Means per delivery of a run of cycles (ms).
fn summarise_cycles(cs: &[Cycle], server_ms: &[f64]) -> Value {
    let n = cs.len() as f64;
    let ms = |f: &dyn Fn(&Cycle) -> i64| cs.iter().map(f).sum::<i64>() as f64 / n / 1000.0;
    let server: Vec<f64> = cs
        .iter()
        .filter_map(|c| server_ms.get(c.k).copied())
        .collect();
    let total = ms(&|c| c.next_start - c.http_start);
    let http = ms(&|c| c.http_end - c.http_start);
    let gap = ms(&|c| c.next_start - c.http_end);
    json!({
        "deliveries": cs.len(),
        "first_k": cs.first().map(|c| c.k),
        "last_k": cs.last().map(|c| c.k),
        "ms_per_delivery": total,
        "per_s": 1000.0 / total,
        "http_ms": http,
        "http_server_ms": mean(&server),
        "gap_ms": gap,
        "read_tx_db_ms": ms(&|c| c.read_db),
        "read_tx_db_in_gap_ms": ms(&|c| c.read_gap),
        "read_tx_statements": cs.iter().map(|c| c.read_n).sum::<usize>() as f64 / n,
        "write_tx_db_ms": ms(&|c| c.write_db),
        "write_tx_db_in_gap_ms": ms(&|c| c.write_gap),
        "write_tx_statements": cs.iter().map(|c| c.write_n).sum::<usize>() as f64 / n,
        "claim_db_ms": ms(&|c| c.claim_db),
        "claim_db_in_gap_ms": ms(&|c| c.claim_gap),
        "other_db_ms": ms(&|c| c.other_db),
        "claims": cs.iter().map(|c| c.claim_n).sum::<usize>(),
        "entries_per_claim": cs.iter().map(|c| c.claimed).sum::<i64>() as f64
            / cs.iter().map(|c| c.claim_n).sum::<usize>().max(1) as f64,
        "share": {
            "http": http / total,
            "gap": gap / total,
        }
    })
}

// ------------------------------------------------------------------------------------------
// The direct client
// ------------------------------------------------------------------------------------------

/// How the direct client creates each resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direct {
    /// `POST <Type>` with `If-None-Exist`, as the gateway does.
    IfNoneExist,
    /// `POST <Type>` without it.
    Plain,
    /// `PUT <Type>/<id derived from the source-resource identifier>` (update as create: the
    /// peer declares `updateCreate`), idempotent without a search at the target.
    PutDerivedId,
}

impl Direct {
    fn name(self) -> &'static str {
        match self {
            Direct::IfNoneExist => "if_none_exist",
            Direct::Plain => "plain",
            Direct::PutDerivedId => "put_derived_id",
        }
    }
}

/// A FHIR id from the source-resource identifier value (`cb-` + 128 bits of its SHA-256).
fn derived_id(body: &Value) -> Option<String> {
    let value = body["identifier"].as_array()?.iter().find_map(|i| {
        (i["system"].as_str() == Some(SOURCE_ID_SYSTEM)).then(|| i["value"].as_str())?
    })?;
    let hash = carebridge::ids::content_hash(value.as_bytes());
    Some(format!("cb-{}", &hash[..32]))
}

/// One backlog round beside its direct pass: both rates, the peer's own time per request on
/// each side (`--log`) and its CPU per request, the time each side adds outside the peer, and
/// the ratio the gateway would reach had the peer been as fast in its pass as in the direct
/// one: (direct's peer ms + direct's own ms) ÷ (direct's peer ms + gateway's own ms). The
/// peer's time per request moves by ±10 % from one pass to the next whatever drives it; this
/// ratio leaves that out and keeps what the gateway adds.
fn round_figures(backlog: &Value, direct: &Value, n: usize) -> Value {
    let (g_rate, d_rate) = (
        backlog["per_s_first_to_last"].as_f64(),
        direct["per_s_first_to_last"].as_f64(),
    );
    let (g_peer, d_peer) = (
        backlog["server_ms_mean"].as_f64(),
        direct["server_ms_mean"].as_f64(),
    );
    let own = |rate: Option<f64>, peer: Option<f64>| Some(1000.0 / rate? - peer?);
    let (g_own, d_own) = (own(g_rate, g_peer), own(d_rate, d_peer));
    let at_direct = (|| Some((d_peer? + d_own?) / (d_peer? + g_own?)))();
    // Both sides send the same `n` bodies.
    let peer_cpu_ms = |v: &Value| {
        v["peer_cpu_seconds"]
            .as_f64()
            .map(|s| s * 1000.0 / n as f64)
    };
    json!({
        "backlog_per_s": g_rate,
        "direct_if_none_exist_per_s": d_rate,
        "direct_loadavg_before": direct["loadavg_before"],
        "peer_ms_per_request": {"backlog": g_peer, "direct": d_peer},
        "peer_cpu_ms_per_request": {
            "backlog": peer_cpu_ms(&backlog["cpu_after_push"]),
            "direct": peer_cpu_ms(&direct["cpu"]),
        },
        "own_ms_per_request": {"backlog": g_own, "direct": d_own},
        "at_the_direct_peer_time": at_direct,
    })
}

/// A peer for the direct client, with the Patient the bodies will point at.
async fn direct_peer(opts: &Opts, name: &str) -> (Peer, String) {
    let peer = Peer::start(name, &peer_options(opts, true)).await;
    let created = peer.create(&patient("1503570721")).await;
    let new_ref = format!("Patient/{}", created["id"].as_str().unwrap_or_default());
    (peer, new_ref)
}

/// One direct pass against `peer` (whose Patient is `new_ref`).
async fn direct_pass(
    peer: &Peer,
    new_ref: &str,
    bodies: &[Value],
    patient_ref: &str,
    mode: Direct,
    window: usize,
) -> Result<Value> {
    let name = peer.name.clone();
    let pid = pid_listening_on(peer.port);
    let logged_before = match mode {
        Direct::PutDerivedId => peer_put_ms(peer).len(),
        _ => peer_post_ms(peer).len(),
    };
    // Prepared before the clock starts: the body text as the gateway sends it
    // (`Value::to_string`), pointing at this peer's Patient; the URL and the header.
    let base_url = format!("{}/Condition", peer.base);
    let mut prepared: Vec<(String, String, Option<String>)> = Vec::with_capacity(bodies.len());
    for b in bodies {
        let (url, body, header) = match mode {
            Direct::IfNoneExist => (base_url.clone(), b.clone(), if_none_exist(b)),
            Direct::Plain => (base_url.clone(), b.clone(), None),
            Direct::PutDerivedId => {
                let id = derived_id(b).context("a body without the source-resource identifier")?;
                let mut body = b.clone();
                body["id"] = json!(id);
                (format!("{base_url}/{id}"), body, None)
            }
        };
        if mode == Direct::IfNoneExist && header.is_none() {
            bail!("a body without the source-resource identifier");
        }
        let text = body
            .to_string()
            .replace(&format!("\"{patient_ref}\""), &format!("\"{new_ref}\""));
        prepared.push((url, text, header));
    }
    // The gateway's own outbound client (same builder, timeouts, user agent).
    let outbound = carebridge::outbound::Outbound::new(Duration::from_millis(30_000))?;
    let http = outbound.http;
    let load_before = loadavg();
    let probe = CpuProbe::start(None, pid);
    let t0 = Instant::now();
    let mut done_us = Vec::with_capacity(prepared.len());
    let mut latency = Vec::with_capacity(prepared.len());
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (url, body, ine) in &prepared {
        let t = Instant::now();
        let method = if mode == Direct::PutDerivedId {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let mut req = http
            .request(method, url)
            .header(reqwest::header::CONTENT_TYPE, carebridge::fhir::FHIR_JSON)
            .header(reqwest::header::ACCEPT, carebridge::fhir::FHIR_JSON)
            .header("Prefer", "return=representation")
            .body(body.clone());
        if let Some(q) = ine {
            req = req.header("If-None-Exist", q);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        // As the gateway does: the answer parsed for its id.
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if answer["id"].as_str().is_none() {
            bail!("{name}: answered {status} without an id");
        }
        latency.push(t.elapsed().as_secs_f64() * 1000.0);
        done_us.push(now_us());
        *statuses.entry(status).or_default() += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = probe.finish();
    let load_after = loadavg();
    let held = peer.total("Condition").await;
    let mut server_ms = match mode {
        Direct::PutDerivedId => peer_put_ms(peer),
        _ => peer_post_ms(peer),
    };
    server_ms.drain(..logged_before.min(server_ms.len()));
    let n = done_us.len();
    let span = (done_us[n - 1] - done_us[0]) as f64 / 1e6;
    let mut lat_sorted = latency.clone();
    lat_sorted.sort_by(f64::total_cmp);
    eprintln!(
        "  direct, {}: {:.1}/s first→last ({:.1}/s over the whole loop), mean latency {:.1} ms, server {:.1} ms; statuses {statuses:?}",
        mode.name(),
        (n - 1) as f64 / span,
        n as f64 / secs,
        mean(&latency),
        mean(&server_ms)
    );
    Ok(json!({
        "peer": name,
        "mode": mode.name(),
        "requests": n,
        "statuses": statuses,
        "held_after": held,
        "seconds": secs,
        "per_s_first_to_last": (n - 1) as f64 / span,
        "per_s_whole_loop": n as f64 / secs,
        "latency_ms": {
            "mean": mean(&latency),
            "p50": percentile(&lat_sorted, 50.0),
            "p99": percentile(&lat_sorted, 99.0),
            "max": lat_sorted.last().copied().unwrap_or(f64::NAN),
        },
        "server_ms_mean": mean(&server_ms),
        "windows": windows(&done_us, window, &server_ms, Some(&latency)),
        "cpu": cpu,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }))
}

// ------------------------------------------------------------------------------------------

async fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    let want = |p: &str| opts.passes.iter().any(|x| x == p);
    let mut result = json!({
        "what": "deliveries of gp's Conditions to one Medplum peer (hospital) by carebridge serve, next to that server's own POST rate with the same bodies from one sequential client",
        "smoke": opts.smoke,
        "backend": opts.backend,
        "n": opts.n,
        "bundle_size": opts.bundle,
        "window": opts.window,
        "passes": opts.passes,
        "gateway": "the real binary (carebridge serve), a separate process; config: default [exchange] settings written out, rate limit off, default store pool",
        "exchange_settings": EXCHANGE.lines().collect::<Vec<_>>(),
        "cpus": {
            "peers": opts.peer_cpus.clone().unwrap_or_else(|| "any".to_owned()),
            "bench_and_gateway": own_cpus(),
            "postgres": "any",
        },
        "peer": "tests/peers/fhir-server.mjs (Medplum 5.2.13 FhirRouter over MemoryRepository) with --log, Node ".to_owned()
            + &Command::new(peers::node_bin()).arg("--version").output().ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
    });
    let mut _pinned = None;
    if opts.backend == "postgres" {
        result["postgres_settings"] = pg_settings().await.unwrap_or_else(|e| json!(e.to_string()));
        if let Some(cpus) = &opts.postgres_cpus {
            let port = url::Url::parse(&pg_admin_url())
                .ok()
                .and_then(|u| u.port())
                .unwrap_or(5432);
            result["cpus"]["postgres"] = match PinnedPostgres::pin(port, cpus) {
                Ok(p) => {
                    _pinned = Some(p);
                    json!(cpus)
                }
                Err(e) => json!(format!("any (not pinned: {e:#})")),
            };
        }
    }
    let mut bodies: Option<(Vec<Value>, String)> = None;
    if want("reference") {
        let pass = gateway_pass(&opts, Pass::Reference).await?;
        result["reference"] = pass.result;
        bodies = Some((pass.bodies, pass.patient_ref));
    }
    if want("backlog") {
        let mut rounds = Vec::new();
        for round in 0..opts.rounds {
            let pass = gateway_pass(&opts, Pass::Backlog).await?;
            let delivery = pass.result["delivery"].clone();
            if round == 0 {
                result["backlog"] = pass.result;
            }
            if bodies.is_none() {
                bodies = Some((pass.bodies, pass.patient_ref));
            }
            let Some((bodies, patient_ref)) = &bodies else {
                continue;
            };
            let (mut peer, new_ref) = direct_peer(&opts, "direct-round").await;
            let direct = direct_pass(
                &peer,
                &new_ref,
                bodies,
                patient_ref,
                Direct::IfNoneExist,
                opts.window,
            )
            .await;
            peer.stop().await;
            let direct = direct?;
            rounds.push(round_figures(&delivery, &direct, opts.n));
        }
        let sum = |key: &str| rounds.iter().filter_map(|r| r[key].as_f64()).sum::<f64>();
        result["backlog"]["rounds"] = json!(rounds);
        result["backlog"]["of_direct_over_rounds"] =
            json!(sum("backlog_per_s") / sum("direct_if_none_exist_per_s"));
        // Beside the sums: the median of the rounds' own ratios, which one slow pass moves less.
        let mut each: Vec<f64> = rounds
            .iter()
            .filter_map(|r| {
                Some(r["backlog_per_s"].as_f64()? / r["direct_if_none_exist_per_s"].as_f64()?)
            })
            .collect();
        each.sort_by(f64::total_cmp);
        let median = match each.len() {
            0 => None,
            n if n % 2 == 1 => Some(each[n / 2]),
            n => Some((each[n / 2 - 1] + each[n / 2]) / 2.0),
        };
        result["backlog"]["median_round_ratio"] = json!(median);
        let at_peer_speed: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r["at_the_direct_peer_time"].as_f64())
            .collect();
        result["backlog"]["at_the_direct_peer_time_mean"] = json!(mean(&at_peer_speed));
    }
    if want("profile") {
        let pass = gateway_pass(&opts, Pass::Profile).await?;
        result["profile"] = pass.result;
        if bodies.is_none() {
            bodies = Some((pass.bodies, pass.patient_ref));
        }
    }
    if want("direct") {
        let Some((bodies, patient_ref)) = &bodies else {
            return Err(anyhow!(
                "the direct pass needs a gateway pass for its bodies"
            ));
        };
        let mut direct = serde_json::Map::new();
        // Each mode on a fresh peer; the smoke run, which only has to exercise them, uses one
        // peer for all three (fewer start-ups).
        let mut shared: Option<(Peer, String)> = None;
        for (name, mode) in [
            ("direct-ine", Direct::IfNoneExist),
            ("direct-plain", Direct::Plain),
            ("direct-put", Direct::PutDerivedId),
        ] {
            let (peer, new_ref) = match shared.take() {
                Some(p) => p,
                None => direct_peer(&opts, name).await,
            };
            let r = direct_pass(&peer, &new_ref, bodies, patient_ref, mode, opts.window).await;
            if opts.smoke {
                shared = Some((peer, new_ref));
            } else {
                let mut peer = peer;
                peer.stop().await;
            }
            direct.insert(mode.name().into(), r?);
        }
        if let Some((mut peer, _)) = shared {
            peer.stop().await;
        }
        result["direct"] = Value::Object(direct);
    }
    if want("dead-sector") {
        result["dead_sector"] = dead_sector(&opts).await?;
    }
    result["seconds"] = json!(started.elapsed().as_secs_f64());
    std::fs::write(&opts.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| opts.out.display().to_string())?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// A dead sector: what it costs the healthy ones
// ------------------------------------------------------------------------------------------

/// How the third target of a dead-sector sub-pass fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dead {
    /// No third target (the baseline).
    None,
    /// Nothing listens on its port: every attempt is refused at once.
    Refused,
    /// It accepts connections and never answers: every attempt waits for the request timeout.
    Silent,
}

impl Dead {
    fn name(self) -> &'static str {
        match self {
            Dead::None => "baseline",
            Dead::Refused => "refused",
            Dead::Silent => "silent",
        }
    }
}

/// A TCP port that accepts and holds every connection without reading or answering.
fn silent_endpoint() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    Ok(port)
}

/// A port nothing listens on.
fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Baseline (two healthy Medplum sectors), then the same with a third sector that refuses, then
/// one that never answers, then the baseline again: gp pushes `--dead-n` Conditions for a patient
/// every sector knows; the healthy sectors' delivery rates are compared with the baselines'.
async fn dead_sector(opts: &Opts) -> Result<Value> {
    // Baseline, refused, silent per round, then one closing baseline: each round's dead
    // sub-passes are compared with the mean of the baselines before and after them.
    let mut runs = Vec::new();
    for _ in 0..opts.dead_rounds {
        for dead in [Dead::None, Dead::Refused, Dead::Silent] {
            runs.push(dead_sector_run(opts, dead).await?);
        }
    }
    runs.push(dead_sector_run(opts, Dead::None).await?);
    let rate = |r: &Value| {
        r["healthy_per_s_first_to_last"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let mut rounds = Vec::new();
    for k in 0..opts.dead_rounds {
        let (before, refused, silent, after) = (
            &runs[3 * k],
            &runs[3 * k + 1],
            &runs[3 * k + 2],
            &runs[3 * k + 3],
        );
        let baseline = (rate(before) + rate(after)) / 2.0;
        let round = json!({
            "baselines_per_s": [rate(before), rate(after)],
            "refused_per_s": rate(refused),
            "silent_per_s": rate(silent),
            "cost_refused": 1.0 - rate(refused) / baseline,
            "cost_silent": 1.0 - rate(silent) / baseline,
        });
        eprintln!(
            "  dead sector, round {}: baselines {:.1} and {:.1}/s to the healthy sectors; refused {:.1}/s (cost {:.1} %), silent {:.1}/s (cost {:.1} %)",
            k + 1,
            rate(before),
            rate(after),
            rate(refused),
            100.0 * round["cost_refused"].as_f64().unwrap_or(f64::NAN),
            rate(silent),
            100.0 * round["cost_silent"].as_f64().unwrap_or(f64::NAN)
        );
        rounds.push(round);
    }
    let median_of = |key: &str| {
        let mut xs: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let baselines: Vec<f64> = runs.iter().step_by(3).map(rate).collect();
    let (cost_refused, cost_silent) = (median_of("cost_refused"), median_of("cost_silent"));
    eprintln!(
        "  dead sector over {} rounds (median): refused costs {:.1} %, silent {:.1} %",
        opts.dead_rounds,
        100.0 * cost_refused,
        100.0 * cost_silent
    );
    Ok(json!({
        "what": "gp's Conditions to two healthy Medplum sectors (hospital, municipality), without and with a third push sector that is down; each run with fresh peers and a fresh store; rounds of baseline, refused, silent, and a closing baseline",
        "n": opts.dead_n,
        "rounds": rounds,
        "runs": runs,
        "baseline_per_s": baselines.iter().sum::<f64>() / baselines.len() as f64,
        "cost_refused": cost_refused,
        "cost_silent": cost_silent,
        "cost_is": "the median over the rounds of 1 - (the dead sub-pass's rate to the healthy sectors) / (the mean of the baselines before and after its round)",
        "target": "a dead sector costs the others < 10 %",
    }))
}

async fn dead_sector_run(opts: &Opts, dead: Dead) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let (store_url, pg_db) = match opts.backend.as_str() {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("carebridge.db").display()),
            None,
        ),
        _ => {
            let (url, name) = create_pg_database().await?;
            (url, Some(name))
        }
    };
    let peer_opts = peer_options(opts, false);
    let (mut hospital, mut municipality) = tokio::join!(
        Peer::start("hospital", &peer_opts),
        Peer::start("municipality", &peer_opts)
    );
    let dead_base = match dead {
        Dead::None => None,
        Dead::Refused => Some(format!("http://127.0.0.1:{}/fhir", closed_port()?)),
        Dead::Silent => Some(format!("http://127.0.0.1:{}/fhir", silent_endpoint()?)),
    };
    let mut tokens = vec![
        ("gp", "sector:gp", carebridge::auth::new_token()),
        ("hospital", "sector:hospital", carebridge::auth::new_token()),
        (
            "municipality",
            "sector:municipality",
            carebridge::auth::new_token(),
        ),
    ];
    let mut text = format!(
        "# generated by benches/p4_delivery.rs (dead-sector pass)\n\
         [server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n\
         [store]\nurl = \"{store_url}\"\n\n\
         [fhir]\nprofiles_dir = \"{profiles}\"\n\n\
         [exchange]\n{EXCHANGE}\n\
         [[sectors]]\nid = \"gp\"\nname = \"General practice\"\nkind = \"general-practice\"\nprofile = \"dk-gp\"\n\n\
         [[sectors]]\nid = \"hospital\"\nname = \"Hospital\"\nkind = \"hospital\"\nbase_url = \"{}\"\nmode = \"push\"\nprofile = \"dk-hospital\"\njoin_care_on_patient = true\n\n\
         [[sectors]]\nid = \"municipality\"\nname = \"Municipality\"\nkind = \"municipality\"\nbase_url = \"{}\"\nmode = \"push\"\nprofile = \"dk-municipality\"\njoin_care_on_patient = true\n",
        hospital.base,
        municipality.base,
        profiles = repo().join("fhir-profiles").display()
    );
    if let Some(base) = &dead_base {
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"homecare\"\nname = \"Home care\"\nkind = \"municipality\"\nbase_url = \"{base}\"\nmode = \"push\"\njoin_care_on_patient = true\n"
        ));
        tokens.push(("homecare", "sector:homecare", carebridge::auth::new_token()));
    }
    for (id, role, token) in &tokens {
        text.push_str(&conf::client_table(id, role, token));
    }
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, text)?;
    let mut gw = start_gateway(&config, false)?;
    let outcome = dead_sector_drive(opts, &hospital, &municipality, &gw, &tokens, &store_url).await;
    gw.server.stop();
    hospital.stop().await;
    municipality.stop().await;
    if let Some(name) = &pg_db {
        drop_pg_database(name).await;
    }
    let mut r = outcome?;
    r["dead"] = json!(dead.name());
    eprintln!(
        "  dead-sector pass {}: {:.1}/s to the healthy sectors (hospital {:.1}/s, municipality {:.1}/s); the dead sector: {}",
        dead.name(),
        r["healthy_per_s_first_to_last"].as_f64().unwrap_or(0.0),
        r["per_target"]["hospital"]["per_s_first_to_last"]
            .as_f64()
            .unwrap_or(0.0),
        r["per_target"]["municipality"]["per_s_first_to_last"]
            .as_f64()
            .unwrap_or(0.0),
        r["dead_target"]
    );
    Ok(r)
}

async fn dead_sector_drive(
    opts: &Opts,
    hospital: &Peer,
    municipality: &Peer,
    gw: &Gateway,
    tokens: &[(&str, &str, String)],
    store_url: &str,
) -> Result<Value> {
    let http = carebridge::outbound::client_builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let token = |id: &str| {
        tokens
            .iter()
            .find(|t| t.0 == id)
            .map(|t| t.2.clone())
            .unwrap_or_default()
    };
    // The patient in every sector: at the two servers (and registered under their ids), in gp,
    // and in the dead sector when there is one.
    let cpr = "1503570722";
    let mut register = vec![("gp".to_owned(), "gp-p1".to_owned())];
    for (sector, peer) in [("hospital", hospital), ("municipality", municipality)] {
        let created = peer.create(&patient(cpr)).await;
        let id = created["id"].as_str().context("a Patient id")?.to_owned();
        register.push((sector.to_owned(), id));
    }
    if tokens.iter().any(|t| t.0 == "homecare") {
        register.push(("homecare".into(), "hc-p1".into()));
    }
    for (sector, id) in &register {
        let mut p = patient(cpr);
        p["id"] = json!(id);
        let url = format!("{}/{sector}/Patient/{id}", gw.server.base);
        let (status, body) = send(&http, reqwest::Method::PUT, &url, &token(sector), &p).await?;
        if status >= 300 {
            bail!("registering the {sector} Patient answered {status}: {body}");
        }
    }
    let bodies: Vec<String> = (0..opts.dead_n)
        .collect::<Vec<_>>()
        .chunks(opts.bundle)
        .enumerate()
        .map(|(b, ids)| {
            transaction(
                &ids.iter()
                    .map(|i| condition(&format!("d-{b}-{i}"), "gp-p1"))
                    .collect::<Vec<_>>(),
            )
            .to_string()
        })
        .collect();
    let store = SqlStore::connect(store_url, 2).await?;
    let load_before = loadavg();
    let t0 = now_us();
    for body in &bodies {
        let resp = http
            .post(format!("{}/gp", gw.server.base))
            .bearer_auth(token("gp"))
            .header("content-type", "application/fhir+json")
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            bail!(
                "push answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    let push_end = now_us();
    let healthy = ["hospital", "municipality"];
    let deadline = Instant::now() + Duration::from_secs(120 + opts.dead_n as u64 / 5);
    let counts = loop {
        let counts = {
            let mut tx = store.begin_read().await?;
            tx.outbox_counts().await?
        };
        let done = healthy.iter().all(|t| {
            counts.iter().any(|(target, state, n)| {
                target == t && state == "delivered" && *n >= opts.dead_n as i64
            })
        });
        if done {
            break counts;
        }
        if Instant::now() > deadline {
            bail!("not all delivered to the healthy sectors in time: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited_us = now_us() - t0;
    let mut per_target = serde_json::Map::new();
    let mut all_done = Vec::new();
    for t in healthy {
        let entries: Vec<OutboxEntry> = carebridge::gateway::admin::list_deliveries(
            &store,
            &OutboxFilter {
                state: Some(carebridge::store::DeliveryState::Delivered),
                target: Some(t.into()),
                offset: 0,
                count: 1_000_000,
            },
        )
        .await?;
        let mut done: Vec<i64> = entries.iter().map(|e| e.updated_us).collect();
        done.sort_unstable();
        let span = (done[done.len() - 1] - done[0]) as f64 / 1e6;
        per_target.insert(
            t.into(),
            json!({
                "delivered": done.len(),
                "per_s_first_to_last": (done.len() - 1) as f64 / span,
                "last_after_first_push_s": (done[done.len() - 1] - t0) as f64 / 1e6,
                "retried": entries.iter().filter(|e| e.attempts > 1).count(),
            }),
        );
        all_done.extend(done);
    }
    all_done.sort_unstable();
    let span = (all_done[all_done.len() - 1] - all_done[0]) as f64 / 1e6;
    let dead_entries: Vec<OutboxEntry> = carebridge::gateway::admin::list_deliveries(
        &store,
        &OutboxFilter {
            state: None,
            target: Some("homecare".into()),
            offset: 0,
            count: 1_000_000,
        },
    )
    .await?;
    store.close().await;
    Ok(json!({
        "loadavg_before": load_before,
        "push_seconds": (push_end - t0) as f64 / 1e6,
        "healthy_deliveries": all_done.len(),
        "healthy_per_s_first_to_last": (all_done.len() - 1) as f64 / span,
        "healthy_last_after_first_push_s": (all_done[all_done.len() - 1] - t0) as f64 / 1e6,
        "bench_wait_s": waited_us as f64 / 1e6,
        "per_target": per_target,
        "outbox": counts.iter().map(|(t, s, n)| json!([t, s, n])).collect::<Vec<_>>(),
        "dead_target": {
            "entries": dead_entries.len(),
            "attempts": dead_entries.iter().map(|e| e.attempts).sum::<i64>(),
            "delivered": dead_entries.iter().filter(|e| e.state.code() == "delivered").count(),
        },
    }))
}
