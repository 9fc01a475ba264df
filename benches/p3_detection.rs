//! P3: fragmentation-detection latency for one patient, in-process and through the API.
//!
//! Run through `benches/run`; by hand:
//!
//! ```sh
//! cargo bench --bench p3_detection -- --out p3.json [--smoke] [--runs 2000] [--eval-runs 300] \
//!     [--updates 300] [--records 500]
//! ```
//!
//! Two patients, each split across `gp`, `hospital` and `municipality` by the rule of
//! `tests/common/synthea.rs`, which `tests/it/synthea_alerts.rs` uses too (encounter class
//! AMB → gp, EMER/IMP → hospital; home-care, rehabilitation and self-care CarePlans →
//! municipality; Goals with their plan; a reference into another sector becomes display-only,
//! `CarePlan.addresses` and `reasonReference` keep the target's code as `reasonCode`):
//!
//! - `synthea-largest`: the Synthea patient with the most resources (every resource of the file,
//!   491 for Hobert Murazik), of which detection reads its Conditions, MedicationRequests,
//!   CarePlans and Goals (about 30);
//! - `synthetic-500` (`--records`; 100 in the smoke run): one patient with 500 records of the
//!   types detection reads — the Conditions, MedicationRequests, CarePlans and Goals of the
//!   Synthea patients in file order (ids prefixed per source patient, all pointed at the one
//!   patient), plus the three records below. The worst realistic case: hundreds of active
//!   orders, conditions and plans in three sectors.
//!
//! Each gets three records for the measurements: a hospital allopurinol order (`bench-anchor`,
//! active), a gp allopurinol order (`bench-toggle`) and a resolved gp condition
//! (`bench-quiet`, ICPC-2 D93, implicated in nothing).
//!
//! Measured:
//!
//! 1. **pure**: `carebridge::detect::detect` on the patient's snapshot built in memory (no IO):
//!    `--runs` timed calls after 20 warm-up calls; median, p99, max.
//! 2. **evaluate**: `carebridge::gateway::alerts::evaluate` against the gateway's own store (a
//!    SQLite file: WAL, `synchronous=FULL`) holding the pushed split, in a transaction of its own
//!    (begun before and committed after the timed call): the snapshot read (seven
//!    `by_patient` queries and the delivered-copy lookups), detection, and the comparison with
//!    the stored alerts; steady state, so it writes nothing. `snapshot` alone is timed too.
//! 3. **end to end**: one small update through the API, `PUT /fhir/gp/<Type>/<id>` by the gp
//!    client over loopback (reqwest, one client, sequential), time to the answer — which
//!    includes validation, storage, outbox, detection for the patient and audit, in one
//!    transaction:
//!    - `quiet`: `bench-quiet`'s note alternates between two texts (a new version, no alert
//!      changes);
//!    - `alert`: `bench-toggle` alternates between `active` and `stopped`, so that each update
//!      raises or closes the `DUPTHPGEN|M04AA01|systemic` alert (an alert row and its audit row
//!      are written);
//!
//!    both against the gateway with detection on, and against a second gateway holding the same
//!    records with `[alerts] enabled = false`: the difference is what detection adds to a
//!    request.
//!
//! 4. **as the store grows**: evaluate and the updates again at each population stage, and
//!    three searches through the API as the care team (`search_runs`): a patient's
//!    Conditions, a `_lastUpdated` window, a search with `_include`.
//!
//! The gateway runs in this process (`App::build` + `App::serve` on port 0, the bench's tokio
//! runtime with two workers, as `carebridge serve` has on this 2-core machine), with the three
//! sectors without profile (Synthea is US data) and without base URL (nothing is delivered).

// In a benchmark, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/args.rs"]
mod args;
#[path = "../tests/common/conf.rs"]
mod conf;
#[path = "../tests/common/inproc.rs"]
mod inproc;
#[path = "../tests/common/synthea.rs"]
mod synthea;

use anyhow::{Context, Result, bail};
use carebridge::config::AlertSettings;
use carebridge::detect::{self, Item, Snapshot};
use carebridge::gateway::alerts;
use carebridge::ids::gateway_id;
use carebridge::terminology::Mapping;
use carebridge::terminology::MedKnowledge;
use clap::Parser;
use inproc::InProcess;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use synthea::{SECTORS, SplitOptions, rid, rtype};

const CPR: &str = "urn:oid:1.2.208.176.1.2";
const ICPC2: &str = "urn:oid:1.2.208.176.2.31";
const ATC: &str = "http://www.whocc.no/atc";
const SCT: &str = "http://snomed.info/sct";

struct Opts {
    out: PathBuf,
    smoke: bool,
    runs: usize,
    eval_runs: usize,
    updates: usize,
    /// Records of the synthetic patient, the three bench records included.
    records: usize,
    /// Stored gateway patients at which detection is measured again (the two measured ones
    /// included); background patients are added between the stages.
    population: Vec<usize>,
    /// Keep the detection-on gateway's SQLite file here (for P5) instead of a temporary dir.
    store_dir: Option<PathBuf>,
    /// Only build the store of the largest stage (P5's input), measure nothing.
    populate_only: bool,
}

/// P3: fragmentation-detection latency for one patient, in-process and through the API, and
/// as the store grows (see the module documentation).
#[derive(Parser)]
#[command(name = "p3_detection", bin_name = "p3_detection")]
struct Args {
    /// The JSON file for the results.
    #[arg(long)]
    out: PathBuf,
    /// Timed pure detector calls [default: 2000; with --smoke: 20].
    #[arg(long)]
    runs: Option<usize>,
    /// Timed `alerts::evaluate` calls [default: 300; with --smoke: 5].
    #[arg(long)]
    eval_runs: Option<usize>,
    /// PUTs of each kind through the API [default: 300; with --smoke: 6].
    #[arg(long)]
    updates: Option<usize>,
    /// Records of the synthetic patient, the three bench records included [default: 500;
    /// with --smoke: 100].
    #[arg(long)]
    records: Option<usize>,
    /// Stored gateway patients at which detection is measured again, comma-separated
    /// [default: 1000,10000,100000; with --smoke: 50,200].
    #[arg(long, value_delimiter = ',')]
    population: Option<Vec<usize>>,
    /// Keep the detection-on gateway's SQLite file in this folder (emptied first; P5 reads it).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Only build the store of the largest stage (P5's input); measure nothing.
    #[arg(long)]
    populate_only: bool,
    #[command(flatten)]
    common: args::Common,
}

fn parse_opts() -> Opts {
    let a = Args::parse();
    let smoke = a.common.smoke;
    Opts {
        out: a.out,
        smoke,
        runs: a.common.pick(a.runs, 2000, 20),
        eval_runs: a.common.pick(a.eval_runs, 300, 5),
        updates: a.common.pick(a.updates, 300, 6),
        records: a.common.pick(a.records, 500, 100),
        population: a.population.unwrap_or_else(|| {
            if smoke {
                vec![50, 200]
            } else {
                vec![1000, 10000, 100000]
            }
        }),
        store_dir: a.store_dir,
        populate_only: a.populate_only,
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let shared = std::env::var_os("CAREBRIDGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    // The gateway reads `CAREBRIDGE_…` variables as configuration overrides and refuses unknown
    // ones (benches/README.md, problem 5): the bench's own must not reach it.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAREBRIDGE_") {
            // SAFETY: no other thread exists yet (the runtime is built below).
            #[allow(unsafe_code)]
            unsafe {
                std::env::remove_var(&key)
            };
        }
    }
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run(opts, shared)) {
        eprintln!("p3_detection: {e:#}");
        std::process::exit(1);
    }
}

// ---- the patients ---------------------------------------------------------------------------

/// The resources of a Synthea bundle by sector (the rule of `tests/common/synthea.rs`), pointed
/// at `Patient/<patient>` and with ids prefixed by `prefix`: the Practitioners and Organizations
/// each sector references first, then the records in Bundle order. `only` limits the resource
/// types (and then no Practitioner or Organization is copied).
fn split(
    bundle: &Value,
    prefix: &str,
    patient: &str,
    only: Option<&[&str]>,
) -> Vec<(&'static str, Value)> {
    let parts = synthea::split(
        bundle,
        &SplitOptions {
            id_prefix: prefix,
            patient: Some(patient),
            only,
            display_code: false,
        },
    );
    let mut out: Vec<(&'static str, Value)> = parts
        .shared
        .iter()
        .map(|(s, u)| (*s, parts.shared_resource(u)))
        .collect();
    out.extend(parts.records);
    out
}

/// One patient of the bench: its records by sector (the Patient first in each).
struct Patient {
    name: String,
    source: String,
    cpr: String,
    sectors: BTreeMap<&'static str, Vec<Value>>,
}

impl Patient {
    fn new(
        name: &str,
        source: String,
        cpr: &str,
        patient: Value,
        records: Vec<(&'static str, Value)>,
    ) -> Patient {
        let mut sectors: BTreeMap<&'static str, Vec<Value>> = SECTORS
            .iter()
            .map(|s| (*s, vec![patient.clone()]))
            .collect();
        for (s, r) in records {
            sectors.get_mut(s).expect("a sector").push(r);
        }
        Patient {
            name: name.to_owned(),
            source,
            cpr: cpr.to_owned(),
            sectors,
        }
    }

    /// What the gateway's snapshot holds: the records of the detected types, and the
    /// Encounters that active orders name (for stale orders).
    fn items(&self) -> Vec<Item> {
        let all = || {
            self.sectors
                .iter()
                .flat_map(|(s, list)| list.iter().map(move |r| (*s, r)))
        };
        let item = |s: &str, r: &Value| Item {
            gid: gateway_id(s, rtype(r), rid(r)),
            sector: s.to_owned(),
            rtype: rtype(r).to_owned(),
            rid: rid(r).to_owned(),
            version: 1,
            body: r.clone(),
        };
        let mut items: Vec<Item> = all()
            .filter(|(_, r)| alerts::DETECT_TYPES.contains(&rtype(r)))
            .map(|(s, r)| item(s, r))
            .collect();
        let named: std::collections::BTreeSet<(String, String)> = items
            .iter()
            .filter(|i| detect::active_medication(i))
            .filter_map(|i| {
                Some((
                    i.sector.clone(),
                    i.body.pointer("/encounter/reference")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        items.extend(
            all()
                .filter(|(s, r)| {
                    rtype(r) == "Encounter"
                        && named.contains(&((*s).to_owned(), format!("Encounter/{}", rid(r))))
                })
                .map(|(s, r)| item(s, r)),
        );
        items
    }

    fn stored(&self) -> usize {
        self.sectors.values().map(Vec::len).sum()
    }
}

fn allopurinol(id: &str, patient: &str, status: &str, requester: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest", "id": id, "status": status, "intent": "order",
        "medicationCodeableConcept": { "coding": [{ "system": ATC, "code": "M04AA01", "display": "allopurinol" }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "requester": { "display": requester },
        "dosageInstruction": [{ "text": "100 mg daily", "route": { "coding": [{ "system": SCT, "code": "26643006", "display": "Oral route" }] } }],
    })
}

fn quiet_condition(patient: &str, note: &str) -> Value {
    json!({
        "resourceType": "Condition", "id": "bench-quiet",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved" }] },
        "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
        "code": { "coding": [{ "system": ICPC2, "code": "D93", "display": "Irritable bowel syndrome" }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "abatementDateTime": "2020-05-01",
        "note": [{ "text": note }],
    })
}

fn bench_records(patient: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "hospital",
            allopurinol("bench-anchor", patient, "active", "Hospital physician"),
        ),
        (
            "gp",
            allopurinol("bench-toggle", patient, "stopped", "General practitioner"),
        ),
        ("gp", quiet_condition(patient, "note a")),
    ]
}

fn read(path: &std::path::Path) -> Result<Value> {
    serde_json::from_slice(&std::fs::read(path).with_context(|| path.display().to_string())?)
        .with_context(|| path.display().to_string())
}

fn patients(shared: &std::path::Path, size: usize) -> Result<Vec<Patient>> {
    let dir = shared.join("synthea");
    let files = synthea::files(shared).with_context(|| dir.display().to_string())?;
    if files.is_empty() {
        bail!("no Synthea bundles in {}", dir.display());
    }
    let bundles: Vec<(String, Value)> = files
        .iter()
        .map(|f| {
            Ok((
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                read(f)?,
            ))
        })
        .collect::<Result<_>>()?;
    let entries = |b: &Value| b["entry"].as_array().map_or(0, Vec::len);

    // The largest Synthea patient, every resource.
    let (name, bundle) = bundles
        .iter()
        .max_by_key(|(_, b)| entries(b))
        .expect("a bundle");
    let mut patient = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|r| rtype(r) == "Patient")
        .cloned()
        .context("a Patient")?;
    let pid = rid(&patient).to_owned();
    let cpr_a = "0101507900";
    patient["identifier"] = json!([{ "system": CPR, "value": cpr_a }]);
    let mut records = split(bundle, "", &pid, None);
    records.extend(bench_records(&pid));
    let largest = Patient::new(
        "synthea-largest",
        format!("{name}: {} entries", entries(bundle)),
        cpr_a,
        patient,
        records,
    );

    // Synthetic: the detection records of the Synthea patients in file order, up to 500.
    let cpr_b = "0101507901";
    let pid = "bench-500";
    let patient = json!({ "resourceType": "Patient", "id": pid,
                          "identifier": [{ "system": CPR, "value": cpr_b }] });
    let types = ["Condition", "MedicationRequest", "CarePlan", "Goal"];
    let mut records: Vec<(&'static str, Value)> = Vec::new();
    let mut used = 0;
    for (n, (_, b)) in bundles.iter().enumerate() {
        if records.len() >= size - 3 {
            break;
        }
        records.extend(split(b, &format!("s{n}-"), pid, Some(&types)));
        used = n + 1;
    }
    records.truncate(size - 3);
    records.extend(bench_records(pid));
    let synthetic = Patient::new(
        &format!("synthetic-{size}"),
        format!("detection records of the first {used} Synthea patients (file order)"),
        cpr_b,
        patient,
        records,
    );
    Ok(vec![largest, synthetic])
}

// ---- measuring ------------------------------------------------------------------------------

/// The 1-minute load average.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // nearest rank
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, p99, max, mean and count of samples (in the unit given).
fn stats(mut samples: Vec<f64>, unit: &str) -> Value {
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    json!({
        "unit": unit,
        "runs": samples.len(),
        "median": percentile(&samples, 50.0),
        "p99": percentile(&samples, 99.0),
        "max": samples.last().copied().unwrap_or(f64::NAN),
        "min": samples.first().copied().unwrap_or(f64::NAN),
        "mean": mean,
    })
}

fn config_text(store_url: &str, detection: bool) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n\
         [store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\nenabled = false\n\n\
         [alerts]\nenabled = {detection}\n",
        repo().join("fhir-profiles").display()
    );
    text.push_str(&conf::bench_sectors());
    text
}

/// A gateway in this process (`tests/common/inproc.rs`), its base URL and the sector tokens.
struct Gateway {
    base: String,
    tokens: HashMap<String, String>,
    gateway: Arc<inproc::Gateway>,
    app: InProcess,
    /// The SQLite file.
    db: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// A gateway on a fresh SQLite file: in a temporary directory, or in `keep` (emptied first) when
/// the store must outlive the bench (P5 reads it).
async fn start(detection: bool, keep: Option<&std::path::Path>) -> Result<Gateway> {
    let (dir, temp) = match keep {
        Some(d) => {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| d.display().to_string())?;
            }
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            (d.to_path_buf(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let db = dir.join("carebridge.db");
    let url = format!("sqlite://{}", db.display());
    let (clients, tokens) = conf::mint(&[
        ("gp", "sector:gp"),
        ("hospital", "sector:hospital"),
        ("municipality", "sector:municipality"),
        ("careteam", "careteam"),
    ]);
    let config = dir.join("carebridge.toml");
    std::fs::write(&config, config_text(&url, detection) + &clients)?;
    let app = InProcess::start(&config).await?;
    Ok(Gateway {
        base: app.base.clone(),
        tokens,
        gateway: app.gateway.clone(),
        app,
        db,
        _dir: temp,
    })
}

impl Gateway {
    async fn send(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        sector: &str,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let resp = http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[sector])
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn push(&self, http: &reqwest::Client, p: &Patient) -> Result<()> {
        for (sector, list) in &p.sectors {
            let entries: Vec<Value> = list
                .iter()
                .map(|r| json!({ "resource": r, "request": { "method": "PUT", "url": format!("{}/{}", rtype(r), rid(r)) } }))
                .collect();
            let bundle =
                json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
            let (status, body) = self
                .send(
                    http,
                    reqwest::Method::POST,
                    sector,
                    &format!("/{sector}"),
                    &bundle,
                )
                .await?;
            if status != 200 {
                bail!("{} {sector}: {status} {body}", p.name);
            }
        }
        Ok(())
    }

    async fn patient_id(&self, cpr: &str) -> Result<String> {
        let mut tx = self.gateway.store().begin_read().await?;
        let id = tx
            .patient_by_identifier(CPR, cpr)
            .await?
            .context("the gateway patient")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn stop(mut self) {
        self.app.stop().await;
    }
}

/// `updates` PUTs alternating between two bodies; milliseconds to each answer.
async fn updates(
    g: &Gateway,
    http: &reqwest::Client,
    path: &str,
    bodies: [&Value; 2],
    n: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let (status, body) = g
            .send(http, reqwest::Method::PUT, "gp", path, bodies[i % 2])
            .await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            bail!("PUT {path}: {status} {body}");
        }
    }
    Ok(out)
}

async fn run(opts: Opts, shared: PathBuf) -> Result<()> {
    let started = Instant::now();
    let t = Instant::now();
    let knowledge = MedKnowledge::load(&repo().join("fhir-profiles"))?;
    let mapping = Mapping::load(&repo().join("fhir-profiles"))?;
    let rules = detect::Rules::from(&AlertSettings::default());
    let knowledge_load_ms = t.elapsed().as_secs_f64() * 1e3;
    let cx = detect::Context {
        knowledge: &knowledge,
        mapping: &mapping,
        rules: &rules,
    };
    if opts.records < 10 {
        bail!("--records takes at least 10");
    }
    let patients = patients(&shared, opts.records)?;
    let http = carebridge::outbound::client().expect("an HTTP client");
    let on = start(true, opts.store_dir.as_deref()).await?;
    if opts.populate_only {
        return populate_only(&opts, &on, &http, &patients, &shared, started).await;
    }
    let off = start(false, None).await?;
    let mut out = BTreeMap::new();
    for p in &patients {
        let items = p.items();
        let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
        for i in &items {
            *by_type.entry(i.rtype.clone()).or_default() += 1;
        }
        let active = |f: fn(&Item) -> bool| items.iter().filter(|i| f(i)).count();
        let shape = json!({
            "medications_active": active(detect::active_medication),
            "conditions_active": active(detect::active_condition),
            "care_plans_active": active(detect::active_plan),
        });
        eprintln!(
            "{}: {} ({} resources stored across {:?}; detection reads {} records: {by_type:?}, {shape})",
            p.name,
            p.source,
            p.stored(),
            p.sectors
                .iter()
                .map(|(s, l)| (*s, l.len()))
                .collect::<BTreeMap<_, _>>(),
            items.len()
        );

        // 1. Pure detection.
        let snapshot = Snapshot {
            patient_id: "p".into(),
            now_us: carebridge::fhir::time::now_us(),
            items: items.clone(),
            copies: HashMap::new(),
        };
        let findings = detect::detect(&snapshot, &cx);
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &findings {
            *codes.entry(f.code.1).or_default() += 1;
        }
        for _ in 0..20 {
            std::hint::black_box(detect::detect(std::hint::black_box(&snapshot), &cx));
        }
        let load_pure = loadavg();
        let mut pure = Vec::with_capacity(opts.runs);
        for _ in 0..opts.runs {
            let t = Instant::now();
            let f = detect::detect(std::hint::black_box(&snapshot), &cx);
            pure.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(f);
        }
        let pure = stats(pure, "µs");
        eprintln!("  pure detect: {pure} findings {codes:?}");
        // Where the pure time goes: each detector alone.
        let each = (opts.runs / 4).max(1);
        let mut by_detector = serde_json::Map::new();
        {
            use detect::{communication, conditions, medication, needs, plans, team};
            let detectors: [(&str, &dyn Fn() -> usize); 10] = [
                ("medication::duplicate_ingredient", &|| {
                    medication::duplicate_ingredient(&snapshot, &cx).len()
                }),
                ("medication::duplicate_class", &|| {
                    medication::duplicate_class(&snapshot, &cx).len()
                }),
                ("medication::polypharmacy", &|| {
                    medication::polypharmacy(&snapshot, &cx).len()
                }),
                ("plans::conflicting_plans", &|| {
                    plans::conflicting_plans(&snapshot, &cx).len()
                }),
                ("conditions::status_conflict", &|| {
                    conditions::status_conflict(&snapshot, &cx).len()
                }),
                ("conditions::unaddressed", &|| {
                    conditions::unaddressed(&snapshot, &cx).len()
                }),
                ("team::no_coordinator", &|| {
                    team::no_coordinator(&snapshot, &cx).len()
                }),
                ("communication::unanswered", &|| {
                    communication::unanswered(&snapshot, &cx).len()
                }),
                ("medication::stale_orders", &|| {
                    medication::stale_orders(&snapshot, &cx).len()
                }),
                ("needs::overdue", &|| needs::overdue(&snapshot, &cx).len()),
            ];
            for (name, f) in detectors {
                let mut us = Vec::with_capacity(each);
                for _ in 0..each {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    us.push(t.elapsed().as_secs_f64() * 1e6);
                }
                by_detector.insert(name.to_owned(), stats(us, "µs"));
            }
        }
        eprintln!(
            "  by detector (median µs): {}",
            by_detector
                .iter()
                .map(|(k, v)| format!("{k} {:.0}", v["median"].as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        );

        // 2. Through the store: evaluate and snapshot, steady state.
        let t = Instant::now();
        on.push(&http, p).await?;
        let push_on_s = t.elapsed().as_secs_f64();
        off.push(&http, p).await?;
        let pid = on.patient_id(&p.cpr).await?;
        let store = on.gateway.store().clone();
        let (eval, snap, events) = evaluate_runs(&on, &pid, opts.eval_runs).await?;
        // The rows alone, the way the snapshot was read before it became one statement: seven
        // by_patient reads and parsing their bodies.
        let mut rows = Vec::new();
        for i in 0..opts.eval_runs + 3 {
            let mut tx = store.begin_read().await?;
            let t = Instant::now();
            let mut parsed = 0;
            for ty in alerts::DETECT_TYPES {
                for r in tx.by_patient(&pid, Some(ty), 0, 100_000).await? {
                    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                    parsed += usize::from(!v.is_null());
                }
            }
            let us = t.elapsed().as_secs_f64() * 1e6;
            tx.commit().await?;
            if i >= 3 {
                rows.push(us);
            }
            std::hint::black_box(parsed);
        }
        let mut tx = store.begin_read().await?;
        let s = alerts::snapshot(&mut *tx, &pid, carebridge::fhir::time::now_us()).await?;
        tx.commit().await?;
        if s.items.len() != items.len() {
            bail!(
                "{}: the store's snapshot has {} records, expected {}",
                p.name,
                s.items.len(),
                items.len()
            );
        }
        let mut tx = store.begin_read().await?;
        let stored_alerts: Vec<String> = tx
            .alerts_of_patient(&pid)
            .await?
            .into_iter()
            .filter(|a| a.open)
            .map(|a| a.fingerprint)
            .collect();
        tx.commit().await?;
        if stored_alerts.len() != findings.len() {
            bail!(
                "{}: {} open alerts through the API, the pure detector finds {}",
                p.name,
                stored_alerts.len(),
                findings.len()
            );
        }
        let rows = stats(rows, "µs");
        // References the snapshot looks up one by one as possible delivered copies.
        let copy_lookups: usize = items
            .iter()
            .map(|i| {
                ["inResponseTo", "addresses", "goal"]
                    .iter()
                    .filter_map(|k| i.body.get(*k).and_then(Value::as_array))
                    .flatten()
                    .filter(|r| r.get("reference").and_then(Value::as_str).is_some())
                    .count()
            })
            .sum();
        eprintln!("  evaluate: {eval} (alert changes during the runs: {events})");
        eprintln!("  snapshot read alone: {snap}");
        eprintln!(
            "  of which the seven by_patient reads + parsing: {rows}; delivered-copy lookups: {copy_lookups}"
        );

        // 3. End to end.
        let mut e2e = serde_json::Map::new();
        let load_e2e = loadavg();
        for (g, label) in [(&on, "detection_on"), (&off, "detection_off")] {
            e2e.insert(label.to_owned(), put_runs(g, &http, p, opts.updates).await?);
        }
        // The toggle raised and closed the alert each time.
        let mut tx = store.begin_read().await?;
        let toggled = tx
            .alerts_of_patient(&pid)
            .await?
            .into_iter()
            .find(|a| a.fingerprint == "DUPTHPGEN|M04AA01|systemic")
            .map(|a| a.version)
            .unwrap_or(0);
        tx.commit().await?;
        if toggled < (opts.updates + 4) as i64 {
            bail!(
                "{}: the toggled alert has {toggled} versions after {} updates",
                p.name,
                opts.updates + 4
            );
        }
        eprintln!("  end to end: {}", Value::Object(e2e.clone()));
        out.insert(
            p.name.clone(),
            json!({
                "source": p.source,
                "resources_stored": p.stored(),
                "by_sector": p.sectors.iter().map(|(s, l)| (s.to_string(), l.len())).collect::<BTreeMap<_, _>>(),
                "detection_records": items.len(),
                "detection_records_by_type": by_type,
                "shape": shape,
                "findings": codes,
                "push_seconds_detection_on": push_on_s,
                "pure_detect": pure,
                "pure_by_detector": Value::Object(by_detector),
                "evaluate": eval,
                "evaluate_alert_changes": events,
                "snapshot_read": snap,
                "snapshot_rows_read_and_parsed": rows,
                "snapshot_copy_lookups": copy_lookups,
                "end_to_end": Value::Object(e2e),
                "toggled_alert_versions": toggled,
                "loadavg_before_pure": load_pure,
                "loadavg_before_end_to_end": load_e2e,
            }),
        );
    }
    off.stop().await;

    // 4. The same measurements as the store grows to each population stage.
    let bundles = synthea_bundles(&shared)?;
    let pids: Vec<(String, String)> = {
        let mut v = Vec::new();
        for p in &patients {
            v.push((p.name.clone(), on.patient_id(&p.cpr).await?));
        }
        v
    };
    let mut stages = Vec::new();
    let mut background = 0usize;
    for &stage in &opts.population {
        let want = stage.saturating_sub(patients.len());
        let load = populate(&on, &bundles, background, want).await?;
        background = background.max(want);
        let stored = stored_counts(&on).await?;
        eprintln!("population {stage}: {load} {stored}");
        let mut per = serde_json::Map::new();
        let since = carebridge::fhir::time::instant(carebridge::fhir::time::now_us());
        for (p, (name, pid)) in patients.iter().zip(&pids) {
            let (eval, snap, _) = evaluate_runs(&on, pid, opts.eval_runs).await?;
            let e2e = put_runs(&on, &http, p, (opts.updates / 3).max(4)).await?;
            eprintln!(
                "  {name}: evaluate median {:.0} µs p99 {:.0} µs; snapshot {:.0} µs; PUT quiet {:.1} ms, alert {:.1} ms",
                eval["median"].as_f64().unwrap_or(0.0),
                eval["p99"].as_f64().unwrap_or(0.0),
                snap["median"].as_f64().unwrap_or(0.0),
                e2e["quiet"]["median"].as_f64().unwrap_or(0.0),
                e2e["alert"]["median"].as_f64().unwrap_or(0.0),
            );
            per.insert(
                name.clone(),
                json!({ "evaluate": eval, "snapshot_read": snap, "end_to_end_detection_on": e2e }),
            );
        }
        let search = search_runs(&on, &http, &pids[0].1, &since, opts.eval_runs).await?;
        eprintln!("  search: {search}");
        stages.push(json!({
            "stored_patients": stage,
            "load": load,
            "store": stored,
            "loadavg": loadavg(),
            "patients": per,
            "search": search,
        }));
    }
    on.stop().await;
    let result = json!({
        "smoke": opts.smoke,
        "knowledge_load_ms": knowledge_load_ms,
        "runtime": "in-process gateway, tokio multi-thread runtime with 2 workers; SQLite file (WAL, synchronous=FULL)",
        "patients": out,
        "population": {
            "background": "re-identified copies of the 50 Synthea patients (patient n is a copy of file n mod 50: new ids, CPR 02xxxxxxxx, name 'Background n'), split across the three sectors by the same rule, carrying the Patient in each sector and the records detection reads (Conditions, MedicationRequests, CarePlans, Goals); the first 50 written with the store's own put (resources, versions, identifiers, patient link), the rest as copies of those rows with every id, the CPR and the gateway patient id replaced and gateway id and hash computed again; no audit rows, outbox entries or alerts for them",
            "stages": stages,
        },
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&result)?)?;
    Ok(())
}

// ---- the population stages ------------------------------------------------------------------

/// The Synthea bundles in file order.
fn synthea_bundles(shared: &std::path::Path) -> Result<Vec<Value>> {
    let files =
        synthea::files(shared).with_context(|| shared.join("synthea").display().to_string())?;
    files.iter().map(|f| read(f)).collect()
}

/// The id of background patient `n` (fixed width: one id is never a prefix of another).
fn bg(n: usize) -> String {
    format!("bg{n:07}")
}

/// The CPR number of background patient `n`.
fn bg_cpr(n: usize) -> String {
    format!("02{n:08}")
}

/// The types a background patient carries besides its Patient.
const BACKGROUND_TYPES: [&str; 4] = ["Condition", "MedicationRequest", "CarePlan", "Goal"];

/// Background patient `n`: a re-identified copy of Synthea patient `n mod 50`, split across
/// the sectors (the Patient in each, first).
fn background(bundles: &[Value], n: usize) -> Vec<(&'static str, Value)> {
    let b = &bundles[n % bundles.len()];
    let template = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|r| rtype(r) == "Patient");
    let pid = bg(n);
    let mut patient = json!({
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{ "system": CPR, "value": bg_cpr(n) }],
        "name": [{ "family": "Background", "given": [format!("{n}")] }],
    });
    for key in ["gender", "birthDate", "deceasedDateTime", "maritalStatus"] {
        if let Some(v) = template.and_then(|t| t.get(key)) {
            patient[key] = v.clone();
        }
    }
    let mut out: Vec<(&'static str, Value)> =
        SECTORS.iter().map(|s| (*s, patient.clone())).collect();
    out.extend(split(b, &format!("{pid}-"), &pid, Some(&BACKGROUND_TYPES)));
    out
}

/// Adds background patients `from..to`: the first 50 (one per Synthea patient) through the
/// store's own `put`, the rest as re-identified copies of those rows ([`replicate`]).
async fn populate(g: &Gateway, bundles: &[Value], from: usize, to: usize) -> Result<Value> {
    let templates = bundles.len();
    let t = Instant::now();
    let put = put_patients(g, bundles, from.min(templates), to.min(templates)).await?;
    let copied = if to > templates {
        replicate(&g.db, templates, from.max(templates), to).await?
    } else {
        0
    };
    let secs = t.elapsed().as_secs_f64();
    let written = put + copied;
    Ok(json!({
        "patients_added": to.saturating_sub(from),
        "resources_written_by_put": put,
        "resources_copied": copied,
        "seconds": secs,
        "resources_per_s": written as f64 / secs.max(1e-9),
    }))
}

/// Background patients `from..to` through the store's own `put`, 200 per transaction; the
/// resources written.
async fn put_patients(g: &Gateway, bundles: &[Value], from: usize, to: usize) -> Result<usize> {
    let sectors: HashMap<&str, &carebridge::config::SectorSettings> = g
        .gateway
        .settings()
        .sectors
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mut written = 0usize;
    let mut n = from;
    while n < to {
        let end = (n + 200).min(to);
        let mut tx = g.gateway.store().begin().await?;
        for k in n..end {
            for (sector, r) in background(bundles, k) {
                let prepared =
                    carebridge::gateway::prepare(sectors[sector], rtype(&r), rid(&r), &r);
                tx.put(&prepared).await?;
                written += 1;
            }
        }
        tx.commit().await?;
        n = end;
    }
    Ok(written)
}

/// One resource row of a template patient: gid, sector, rtype, rid, version, patient_ref,
/// last_updated, body, received_us.
type ResourceRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    String,
    String,
    i64,
);

/// One template patient's rows.
struct TemplateRows {
    n: usize,
    resources: Vec<ResourceRow>,
    /// sector, rtype, system, value, gid
    identifiers: Vec<(String, String, String, String, String)>,
    /// system, value
    links: Vec<(String, String)>,
}

/// Background patients `from..to` as copies of the rows `put` wrote for templates
/// `0..templates` (patient `n` copies template `n mod templates`): every id, the CPR number and
/// the gateway patient id replaced, the gateway id and content hash computed again, as `put`
/// computes them. Written on a connection of its own, 500 patients per transaction (the gateway
/// is idle meanwhile). Returns the resources written.
async fn replicate(
    db: &std::path::Path,
    templates: usize,
    from: usize,
    to: usize,
) -> Result<usize> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
    sqlx::query("PRAGMA busy_timeout = 30000")
        .execute(&mut c)
        .await?;
    let mut rows = Vec::with_capacity(templates);
    for n in 0..templates {
        let pid: String = sqlx::query_scalar(
            "SELECT patient_id FROM patient_identifiers WHERE system = ? AND value = ?",
        )
        .bind(CPR)
        .bind(bg_cpr(n))
        .fetch_one(&mut c)
        .await
        .with_context(|| format!("template patient {n}"))?;
        let resources = sqlx::query(
            "SELECT r.gid, r.sector, r.rtype, r.rid, r.version, r.patient_ref, r.last_updated, v.body, v.received_us \
             FROM resources r JOIN resource_versions v ON v.gid = r.gid AND v.version = r.version \
             WHERE r.patient_id = ?",
        )
        .bind(&pid)
        .fetch_all(&mut c)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
                r.try_get(8)?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut identifiers = Vec::new();
        for r in &resources {
            for i in sqlx::query(
                "SELECT sector, rtype, system, value, gid FROM resource_identifiers WHERE gid = ?",
            )
            .bind(&r.0)
            .fetch_all(&mut c)
            .await?
            {
                identifiers.push((
                    i.try_get(0)?,
                    i.try_get(1)?,
                    i.try_get(2)?,
                    i.try_get(3)?,
                    i.try_get(4)?,
                ));
            }
        }
        let links =
            sqlx::query("SELECT system, value FROM patient_identifiers WHERE patient_id = ?")
                .bind(&pid)
                .fetch_all(&mut c)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        rows.push(TemplateRows {
            n,
            resources,
            identifiers,
            links,
        });
    }
    let mut written = 0;
    let mut n = from;
    while n < to {
        let end = (n + 500).min(to);
        let mut tx = c.begin().await?;
        for k in n..end {
            let t = &rows[k % templates];
            let (old, new) = (bg(t.n), bg(k));
            let (old_cpr, new_cpr) = (bg_cpr(t.n), bg_cpr(k));
            let re = |s: &str| s.replace(&old, &new).replace(&old_cpr, &new_cpr);
            let pid = uuid::Uuid::new_v4().to_string();
            let now = carebridge::fhir::time::now_us();
            sqlx::query("INSERT INTO patients (id, created_us) VALUES (?, ?)")
                .bind(&pid)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            for (system, value) in &t.links {
                sqlx::query(
                    "INSERT INTO patient_identifiers (system, value, patient_id) VALUES (?, ?, ?)",
                )
                .bind(system)
                .bind(re(value))
                .bind(&pid)
                .execute(&mut *tx)
                .await?;
            }
            let mut gids = HashMap::new();
            for (gid, sector, rtype, rid, version, patient_ref, last_updated, body, received) in
                &t.resources
            {
                let new_rid = re(rid);
                let new_gid = gateway_id(sector, rtype, &new_rid);
                let body = re(body);
                let hash = carebridge::ids::content_hash(body.as_bytes());
                sqlx::query(
                    "INSERT INTO resource_versions (gid, version, hash, body, received_us, last_updated) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&new_gid)
                .bind(version)
                .bind(&hash)
                .bind(&body)
                .bind(received)
                .bind(last_updated)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, last_updated) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&new_gid)
                .bind(sector)
                .bind(rtype)
                .bind(&new_rid)
                .bind(version)
                .bind(&hash)
                .bind(patient_ref.as_deref().map(&re))
                .bind(&pid)
                .bind(last_updated)
                .execute(&mut *tx)
                .await?;
                gids.insert(gid.clone(), new_gid);
                written += 1;
            }
            for (sector, rtype, system, value, gid) in &t.identifiers {
                // Both identifier tables, as `put` writes them.
                for table in ["resource_identifiers", "identifier_index"] {
                    let sql = format!(
                        "INSERT INTO {table} (sector, rtype, system, value, gid) VALUES (?, ?, ?, ?, ?)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(sector)
                        .bind(rtype)
                        .bind(system)
                        .bind(re(value))
                        .bind(&gids[gid])
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        n = end;
    }
    c.close().await?;
    Ok(written)
}

/// Gateway patients, resources and the SQLite file's size.
async fn stored_counts(g: &Gateway) -> Result<Value> {
    let stats = g.gateway.store().stats().await?;
    let resources: i64 = stats.by_sector_type.iter().map(|(_, _, n)| n).sum();
    let bytes = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = PathBuf::from(format!("{}-wal", g.db.display()));
    Ok(json!({
        "gateway_patients": stats.patients,
        "linked_patients": stats.linked_patients,
        "resources": resources,
        "db_bytes": bytes(g.db.clone()),
        "wal_bytes": bytes(wal),
    }))
}

/// `alerts::evaluate` and `alerts::snapshot` for one stored patient, `runs` times each
/// after 3 warm-up runs (µs), and the alert changes the timed evaluations made.
async fn evaluate_runs(g: &Gateway, pid: &str, runs: usize) -> Result<(Value, Value, usize)> {
    // What the gateway detects with (as `App::build` loads it).
    let settings = g.gateway.settings();
    if !settings.alerts.enabled {
        bail!("detection is off");
    }
    let d = alerts::Detection {
        knowledge: MedKnowledge::load(&settings.fhir.profiles_dir)?,
        mapping: Mapping::load(&settings.fhir.profiles_dir)?,
        rules: detect::Rules::from(&settings.alerts),
    };
    let store = g.gateway.store().clone();
    let mut eval = Vec::new();
    let mut snap = Vec::new();
    let mut events = 0;
    for i in 0..runs + 3 {
        let mut tx = store.begin().await?;
        let t = Instant::now();
        let ev = alerts::evaluate(&mut *tx, &d, pid, carebridge::fhir::time::now_us()).await?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        tx.commit().await?;
        let mut tx = store.begin_read().await?;
        let t = Instant::now();
        std::hint::black_box(
            alerts::snapshot(&mut *tx, pid, carebridge::fhir::time::now_us()).await?,
        );
        let us_snap = t.elapsed().as_secs_f64() * 1e6;
        tx.commit().await?;
        if i >= 3 {
            eval.push(us);
            snap.push(us_snap);
            events += ev.len();
        }
    }
    Ok((stats(eval, "µs"), stats(snap, "µs"), events))
}

/// The quiet and the alert-toggling PUT through the API, `n` of each after 4 warm-ups (ms).
async fn put_runs(g: &Gateway, http: &reqwest::Client, p: &Patient, n: usize) -> Result<Value> {
    let local = p.sectors["gp"][0]["id"].as_str().unwrap_or_default();
    let kinds = [
        (
            "quiet",
            "/gp/Condition/bench-quiet",
            [
                quiet_condition(local, "note b"),
                quiet_condition(local, "note a"),
            ],
        ),
        (
            "alert",
            "/gp/MedicationRequest/bench-toggle",
            [
                allopurinol("bench-toggle", local, "active", "General practitioner"),
                allopurinol("bench-toggle", local, "stopped", "General practitioner"),
            ],
        ),
    ];
    let mut out = serde_json::Map::new();
    for (kind, path, bodies) in &kinds {
        updates(g, http, path, [&bodies[0], &bodies[1]], 4).await?;
        let ms = updates(g, http, path, [&bodies[0], &bodies[1]], n).await?;
        out.insert((*kind).to_owned(), stats(ms, "ms"));
    }
    Ok(Value::Object(out))
}

/// Search latency through the API as the careteam client (HTTP over loopback, one client,
/// sequential; each search also writes its audit row): `runs` timed searches of each kind after
/// three untimed ones, in milliseconds.
///
/// - `patient_conditions`: `Condition?patient=<the Synthea patient>` (all its Conditions);
/// - `last_updated_window`: `Condition?_lastUpdated=ge<since>`: the Conditions changed since the
///   stage began (the two patients' `bench-quiet` updates), among every stored Condition;
/// - `include`: `CarePlan?patient=<…>&_include=CarePlan:addresses` (its plans and the
///   Conditions they address).
async fn search_runs(
    g: &Gateway,
    http: &reqwest::Client,
    pid: &str,
    since: &str,
    runs: usize,
) -> Result<Value> {
    let kinds = [
        ("patient_conditions", format!("/Condition?patient={pid}")),
        (
            "last_updated_window",
            format!("/Condition?_lastUpdated=ge{since}"),
        ),
        (
            "include",
            format!("/CarePlan?patient={pid}&_include=CarePlan:addresses"),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (kind, path) in &kinds {
        let mut ms = Vec::with_capacity(runs);
        let mut entries = 0;
        for i in 0..runs + 3 {
            let t = Instant::now();
            let resp = http
                .get(format!("{}{path}", g.base))
                .bearer_auth(&g.tokens["careteam"])
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await?;
            let took = t.elapsed().as_secs_f64() * 1e3;
            if status != 200 {
                bail!("{path}: {status} {body}");
            }
            entries = body["entry"].as_array().map_or(0, Vec::len);
            if i >= 3 {
                ms.push(took);
            }
        }
        let mut st = stats(ms, "ms");
        st["entries"] = json!(entries);
        out.insert((*kind).to_owned(), st);
    }
    Ok(Value::Object(out))
}

/// `--populate-only`: the measured patients and the background up to the largest stage in
/// `--store-dir`, for P5; nothing is measured but the load.
async fn populate_only(
    opts: &Opts,
    on: &Gateway,
    http: &reqwest::Client,
    patients: &[Patient],
    shared: &std::path::Path,
    started: Instant,
) -> Result<()> {
    if opts.store_dir.is_none() {
        bail!("--populate-only needs --store-dir DIR");
    }
    for p in patients {
        on.push(http, p).await?;
    }
    let bundles = synthea_bundles(shared)?;
    let top = opts.population.iter().copied().max().unwrap_or(0);
    let load = populate(on, &bundles, 0, top.saturating_sub(patients.len())).await?;
    let stored = stored_counts(on).await?;
    eprintln!("population {top}: {load} {stored}");
    let result = json!({
        "populate_only": true,
        "stored_patients": top,
        "load": load,
        "store": stored,
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&result)?)?;
    Ok(())
}
