//! The command line: `serve`, `demo`, `check-config`, `validate`, `deliveries`, `audit`
//! (verify, export, prune, keygen, witness), `token new`.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::app::{App, shutdown_signal};
use crate::audit::merkle;
use crate::audit::note::{Checkpoint, Signer, Verifier};
use crate::audit::verify::{self, Held, LogEntry, read_leaves};
use crate::auth::{Clients, new_token, token_hash};
use crate::config::{RouteRule, RouteTarget, Settings};
use crate::fhir::json::parse_strict;
use crate::fhir::outcome::{Issue, PathRef, fhirpath, operation_outcome};
use crate::gateway::ledger;
use crate::outbound::audit_log::LogClient;
use crate::store::{DeliveryState, OutboxFilter, Store};
use crate::terminology::mapping::Mapping;
use crate::validate::{FhirSchema, Profiles, Validator};
use crate::workers::witness::Witness;

#[derive(Parser)]
#[command(
    name = "carebridge",
    version,
    about = "FHIR R4 integration gateway between general practice, hospital and municipality"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Run the local demo: a fresh SQLite store, the demo fixtures, fresh tokens (loopback only).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
        #[arg(long, default_value = "fixtures/demo")]
        fixtures: PathBuf,
        /// Keep the store in this file instead of a fresh temporary one.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Load the fixtures, print the summary and exit instead of serving.
        #[arg(long)]
        no_serve: bool,
    },
    /// Check a configuration file, the profiles and mappings it names, and probe each sector's
    /// `/metadata`; exit 1 on a problem.
    CheckConfig {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Check the files only; do not contact the sectors' endpoints.
        #[arg(long)]
        offline: bool,
    },
    /// The outbox: list deliveries, replay dead-lettered ones.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Patient identity: writes held because they would have joined two gateway patients, and
    /// undoing a merge.
    Patients {
        #[command(subcommand)]
        command: PatientsCommand,
    },
    /// Validate FHIR JSON files; prints an OperationOutcome per file, exit 1 if any is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Apply this sector's profile rules too (needs --config).
        #[arg(long, requires = "config")]
        sector: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The information-sharing log: verify the hash chain, export or prune segments.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Bearer tokens for clients.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole chain; prints the first broken link and exits 1, or exits 0. With
    /// --checkpoint and --key, check the log (live, or an export of its rows) against a signed
    /// checkpoint held outside it instead: exits 1 on a rollback, a fork, a rewritten history
    /// or a row that is not in the signed tree, naming the first affected seq.
    Verify {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// A signed checkpoint note held outside the log (from a witness, an earlier verify,
        /// an export).
        #[arg(long, requires = "key")]
        checkpoint: Option<PathBuf>,
        /// The log's verifier key (<origin>+<id>+<key>), or a file holding it.
        #[arg(long, requires = "checkpoint")]
        key: Option<String>,
        /// The live log's base URL (an auditor's token in CAREBRIDGE_AUDIT_TOKEN).
        #[arg(long, requires = "checkpoint", conflicts_with = "export")]
        from_url: Option<String>,
        /// A file written by `audit export --rows`.
        #[arg(long, requires = "checkpoint")]
        export: Option<PathBuf>,
        /// The leaves of the held checkpoint (a witness's `leaves` file, or one written by
        /// --advance): with them the first affected seq is named exactly.
        #[arg(long, requires = "checkpoint")]
        leaves: Option<PathBuf>,
        /// When the log verifies, replace --checkpoint (and --leaves) with the log's latest.
        #[arg(long, requires = "checkpoint")]
        advance: bool,
    },
    /// Make an Ed25519 signing key for the log's checkpoints (or a witness's cosignatures):
    /// the key to FILE (mode 0600), its verifier key to FILE.pub and stdout.
    Keygen {
        /// The log's origin (or the witness's name): no spaces, no '+'.
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a witness of another carebridge's audit log: countersign its checkpoints when they
    /// extend the one held, raise an alarm when they do not.
    Witness {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Where the witness keeps what it holds (checkpoint, leaves, alarms).
        #[arg(long)]
        state: PathBuf,
        /// The witness's own signing key file (`audit keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The log's verifier key, or a file holding it.
        #[arg(long)]
        log_key: String,
        /// The log's base URL, to mirror its leaves (an auditor's token in
        /// CAREBRIDGE_WITNESS_TOKEN): alarms then name the first affected seq.
        #[arg(long)]
        log_url: Option<String>,
    },
    /// Write the AuditEvents recorded in a period as NDJSON (stdout or --out), with progress
    /// on stderr.
    Export {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// First day or instant (FHIR date or dateTime), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Last day or instant, inclusive.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the canonical rows with their leaves and the latest signed checkpoint (what
        /// `audit verify --export` reads) instead of AuditEvents; --from and --to do not apply.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        rows: bool,
    },
    /// Export every row recorded before a date to a file, then delete those rows; a checkpoint
    /// row keeps the remaining chain verifiable.
    Prune {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Rows recorded before this day or instant are pruned.
        #[arg(long)]
        before: String,
        /// Where the pruned segment is written (NDJSON) before anything is deleted.
        #[arg(long)]
        export: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// One line per outbox entry, oldest first.
    List {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// pending, delivered, dead or superseded.
        #[arg(long, value_parser = delivery_state)]
        state: Option<DeliveryState>,
        /// Only entries for this target sector.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 100)]
        count: i64,
    },
    /// Put dead-lettered entries back in their queue (a running gateway delivers them).
    Retry {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Entry ids (from `deliveries list`).
        ids: Vec<i64>,
        /// Every dead entry (of --target, if given).
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
        #[arg(long, requires = "all_dead")]
        target: Option<String>,
    },
    /// Send a target sector again the current version of everything it should hold (after it
    /// was restored empty or from an old backup): its copies are read first, so what it holds
    /// is left alone and what it lost is created again. A running gateway delivers them.
    Resync {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// The target sector's id.
        #[arg(long)]
        target: String,
        /// Only the resources of this gateway patient.
        #[arg(long)]
        patient: Option<String>,
        /// Only resources changed at or after this FHIR date or dateTime.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum PatientsCommand {
    /// Held writes: list them, apply one (joining the patients it names) or reject it.
    Held {
        #[command(subcommand)]
        command: HeldCommand,
    },
    /// Undo the merge of a gateway patient into another: its identifiers and the records its
    /// sector Patients name are its own again; prints what was routed for either patient since
    /// the merge.
    Unmerge {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// The gateway patient that was merged (the audit row of the merge names it).
        patient: String,
    },
}

#[derive(Subcommand)]
enum HeldCommand {
    /// One line per held write, newest first.
    List {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// held, released or rejected.
        #[arg(long)]
        state: Option<String>,
    },
    /// Apply a held write as its sector sent it, joining the gateway patients it names.
    Release {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        id: i64,
    },
    /// Reject a held write: nothing of it is stored.
    Reject {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        id: i64,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token; prints it once, and the hash line to put in the configuration.
    New {
        #[arg(long)]
        client: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => serve(&config).await,
        Command::Demo {
            listen,
            config,
            fixtures,
            db,
            no_serve,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                listen,
                config,
                fixtures,
                db,
                serve: !no_serve,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config, offline } => check_config(&config, offline).await,
        Command::Deliveries { command } => deliveries_command(command).await,
        Command::Patients { command } => patients_command(command).await,
        Command::Validate {
            files,
            sector,
            config,
        } => validate_files(&files, sector.as_deref(), config.as_deref()),
        Command::Audit { command } => audit_command(command).await,
        Command::Token {
            command: TokenCommand::New { client },
        } => Ok(token_new(&client)),
    }
}

/// `serve`: the gateway until a shutdown signal.
async fn serve(config: &Path) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let clients = Clients::from_settings(&settings.clients);
    if clients.is_empty() && settings.auth.issuer.is_none() {
        tracing::warn!("no clients with a token are configured: every API call will answer 401");
    }
    let listen = settings.server.listen.clone();
    let app = App::build(settings, &config.display().to_string(), clients).await?;
    let (listener, addr) = App::bind(&listen).await?;
    tracing::info!(%addr, "carebridge listening");
    app.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `token new`: a fresh token, printed once, and the hash line for the configuration.
fn token_new(client: &str) -> ExitCode {
    let token = new_token();
    println!("token {token}");
    println!("# for [[clients]] id = \"{client}\":");
    println!("token_sha256 = \"{}\"", token_hash(&token));
    ExitCode::SUCCESS
}

/// `check-config`: the files, then (unless `offline`) each sector's endpoint.
async fn check_config(path: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let (settings, mapping) = match load_for_check(path) {
        Ok(loaded) => loaded,
        Err(problem) => {
            println!("FAIL {problem}");
            return Ok(ExitCode::FAILURE);
        }
    };
    print_settings(&settings);
    print_mapping_warnings(&settings, &mapping);
    print_routes(&settings);
    if offline {
        println!("skip sector endpoints not probed (--offline)");
        return Ok(ExitCode::SUCCESS);
    }
    probe_endpoints(&settings).await
}

/// The settings, checked against the profiles they name, and the mapping sets; or the first
/// problem, in words.
fn load_for_check(path: &Path) -> Result<(Settings, Mapping), String> {
    let file = path.display().to_string();
    let settings = Settings::load(path).map_err(|e| e.to_string())?;
    let profiles = Profiles::load(&settings.fhir.profiles_dir).map_err(|e| e.to_string())?;
    settings
        .check_profiles(&file, &|p| profiles.has_set(p))
        .map_err(|e| e.to_string())?;
    let mapping = Mapping::load(&settings.fhir.profiles_dir).map_err(|e| e.to_string())?;
    Ok((settings, mapping))
}

/// The sectors, the clients and the store, one line each.
fn print_settings(settings: &Settings) {
    for s in &settings.sectors {
        println!(
            "ok   sector {} ({}, {}): profile {}, mode {}, endpoint {}",
            s.id,
            s.name,
            s.kind.as_str(),
            s.profile.as_deref().unwrap_or("(structural only)"),
            s.mode.as_str(),
            s.base_url
                .as_deref()
                .unwrap_or("(none: this sector only sends)")
        );
    }
    let with_tokens = settings
        .clients
        .iter()
        .filter(|c| c.token_sha256.is_some())
        .count();
    println!(
        "ok   {} clients ({} with a token hash)",
        settings.clients.len(),
        with_tokens
    );
    println!(
        "ok   store {}",
        if settings.store.url.starts_with("sqlite:") {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    if with_tokens == 0 {
        println!(
            "warn no client has token_sha256: every API call would answer 401 (see `carebridge token new`)"
        );
    }
}

/// Sectors that receive copies under a profile without a mapping set.
fn print_mapping_warnings(settings: &Settings, mapping: &Mapping) {
    for s in &settings.sectors {
        if let Some(p) = &s.profile
            && s.base_url.is_some()
            && !mapping.has_set(p)
        {
            println!(
                "warn sector {}: no mapping set {p} under {}/mapping/: copies delivered there keep the source's profile and codes",
                s.id,
                settings.fhir.profiles_dir.display()
            );
        }
    }
}

/// The routes in effect, one line each.
fn print_routes(settings: &Settings) {
    for r in settings.exchange.effective_routes() {
        println!(
            "ok   route {} from {} to {}",
            r.types.join(", "),
            if r.from.is_empty() {
                "every sector".to_owned()
            } else {
                r.from.join(", ")
            },
            match &r.to {
                RouteTarget::Rule(RouteRule::Care) =>
                    "the other sectors in the patient's care".to_owned(),
                RouteTarget::Rule(RouteRule::Recipients) =>
                    "the sectors of the recipients".to_owned(),
                RouteTarget::Sectors(list) => list.join(", "),
            }
        );
    }
}

/// Probes every sector endpoint, one line each; fails when any probe does.
async fn probe_endpoints(settings: &Settings) -> anyhow::Result<ExitCode> {
    let outbound = crate::outbound::Outbound::new(std::time::Duration::from_millis(
        settings.exchange.request_timeout_ms.min(15_000),
    ))?;
    let mut ok = true;
    for p in crate::outbound::probe::probe_all(settings, &outbound).await {
        ok &= p.ok;
        println!(
            "{} endpoint {}: {}",
            if p.ok { "ok  " } else { "FAIL" },
            p.sector,
            p.message
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--state`: one of the outbox states.
fn delivery_state(s: &str) -> Result<DeliveryState, String> {
    DeliveryState::parse(s).ok_or_else(|| {
        format!(
            "'{s}' is not a state: use one of {}",
            DeliveryState::codes()
        )
    })
}

async fn deliveries_command(command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeliveriesCommand::List {
            config,
            state,
            target,
            count,
        } => deliveries_list(&config, state, target, count).await,
        DeliveriesCommand::Retry {
            config,
            ids,
            all_dead,
            target,
        } => deliveries_retry(&config, ids, all_dead, target).await,
        DeliveriesCommand::Resync {
            config,
            target,
            patient,
            since,
        } => deliveries_resync(&config, &target, patient.as_deref(), since.as_deref()).await,
    }
}

/// `deliveries resync`: queues again what `target` should hold; fails on a sector that is
/// not configured or has no base URL.
async fn deliveries_resync(
    config: &Path,
    target: &str,
    patient: Option<&str>,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    if settings.sector(target).is_none_or(|s| s.base_url.is_none()) {
        anyhow::bail!(
            "{}: --target {target}: no sector with this id and a base_url is configured; name a sector the gateway delivers to",
            config.display()
        );
    }
    let since = match since {
        Some(s) => Some(crate::fhir::time::instant(cli_period("--since", s)?.0)),
        None => None,
    };
    let store = crate::store::SqlStore::connect(&settings.store.url, 2).await?;
    let actor = crate::audit::Actor {
        client_id: Some("cli".into()),
        role: Some("admin".into()),
        request_id: None,
        person: None,
    };
    let done = crate::gateway::admin::resync(
        &store as &dyn Store,
        &actor,
        target,
        patient,
        since.as_deref(),
    )
    .await?;
    store.close().await;
    println!(
        "resync {target}: {} resources, {} queued again",
        done.resources, done.queued
    );
    Ok(ExitCode::SUCCESS)
}

async fn patients_command(command: PatientsCommand) -> anyhow::Result<ExitCode> {
    let config = match &command {
        PatientsCommand::Unmerge { config, .. }
        | PatientsCommand::Held {
            command:
                HeldCommand::List { config, .. }
                | HeldCommand::Release { config, .. }
                | HeldCommand::Reject { config, .. },
        } => config.clone(),
    };
    let settings = Settings::load(&config)?;
    let app = App::build(
        settings,
        &config.display().to_string(),
        Clients::from_settings(&[]),
    )
    .await?;
    let gw = app.gateway.clone();
    let caller = crate::access::Caller::operator();
    match command {
        PatientsCommand::Held {
            command: HeldCommand::List { state, .. },
        } => {
            println!("id\tstate\tsector\tinteraction\theld\tpatients\treason");
            for h in gw.held_writes(&caller, state.as_deref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    h.id,
                    h.state,
                    h.sector,
                    h.interaction,
                    crate::fhir::time::instant(h.held_us),
                    h.patients,
                    h.reason
                );
            }
        }
        PatientsCommand::Held {
            command: HeldCommand::Release { id, .. },
        } => {
            let n = gw.release_held(&caller, id).await?;
            println!("held write {id} released: {n} entries applied");
        }
        PatientsCommand::Held {
            command: HeldCommand::Reject { id, .. },
        } => {
            gw.reject_held(&caller, id).await?;
            println!("held write {id} rejected");
        }
        PatientsCommand::Unmerge { patient, .. } => unmerge(&gw, &caller, &patient).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `patients unmerge`: undoes the merge and prints what was routed meanwhile.
async fn unmerge(
    gw: &crate::gateway::Gateway,
    caller: &crate::access::Caller,
    patient: &str,
) -> anyhow::Result<()> {
    let report = gw.unmerge(caller, patient).await?;
    let u = &report.unmerged;
    println!(
        "gateway patient {patient} unmerged from {}: {} identifiers and {} records are its own again",
        u.into, u.identifiers, u.resources
    );
    println!(
        "routed for either patient since the merge ({}): check that no sector received a record \
         of the other person",
        crate::fhir::time::instant(u.merged_us)
    );
    println!("outbox\ttarget\tsource\tresource\tversion\troute\tstate");
    for e in &report.routed {
        println!(
            "{}\t{}\t{}\t{}/{}\t{}\t{}\t{}",
            e.id, e.target, e.source, e.rtype, e.gid, e.version, e.route, e.state
        );
    }
    Ok(())
}

/// `deliveries list`: one tab-separated line per entry, oldest first.
async fn deliveries_list(
    config: &Path,
    state: Option<DeliveryState>,
    target: Option<String>,
    count: i64,
) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let entries = crate::gateway::admin::list_deliveries(
        &store,
        &OutboxFilter {
            state,
            target,
            offset: 0,
            count: count.clamp(1, 100_000),
        },
    )
    .await?;
    println!("id\tstate\ttarget\tsource\tresource\tversion\tattempts\tlast_status\tlast_error");
    for e in &entries {
        println!(
            "{}\t{}\t{}\t{}\t{}/{}\t{}\t{}\t{}\t{}",
            e.id,
            e.state,
            e.target,
            e.source,
            e.rtype,
            e.gid,
            e.version,
            e.attempts,
            e.last_status.map_or("-".into(), |s| s.to_string()),
            e.last_error.as_deref().unwrap_or("-")
        );
    }
    eprintln!("{} entries", entries.len());
    Ok(ExitCode::SUCCESS)
}

/// `deliveries retry`: the named dead entries (or every dead one of `target`) back in their
/// queue; fails when an id names no dead entry.
async fn deliveries_retry(
    config: &Path,
    ids: Vec<i64>,
    all_dead: bool,
    target: Option<String>,
) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let ids = if all_dead {
        crate::gateway::admin::list_deliveries(
            &store,
            &OutboxFilter {
                state: Some(DeliveryState::Dead),
                target,
                offset: 0,
                count: i64::MAX,
            },
        )
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect()
    } else {
        ids
    };
    if ids.is_empty() {
        eprintln!("nothing to retry: name entry ids or use --all-dead");
        return Ok(ExitCode::FAILURE);
    }
    let actor = crate::audit::Actor {
        client_id: Some("cli".into()),
        role: Some("admin".into()),
        request_id: None,
        person: None,
    };
    let mut missing = 0;
    for id in ids {
        match crate::gateway::admin::retry_delivery(&store as &dyn Store, &actor, id).await? {
            Some(e) => println!("retry {} ({} to {})", e.id, e.rtype, e.target),
            None => {
                missing += 1;
                println!("skip  {id}: no dead-lettered entry with this id");
            }
        }
    }
    store.close().await;
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn validate_files(
    files: &[PathBuf],
    sector: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let schema = FhirSchema::load()?;
    let (profiles, set) = match (sector, config) {
        (Some(sector), Some(config)) => {
            let settings = Settings::load(config)?;
            let s = settings.sector(sector).ok_or_else(|| {
                anyhow::anyhow!("{}: no sector '{sector}' is configured", config.display())
            })?;
            (
                Profiles::load(&settings.fhir.profiles_dir)?,
                s.profile.clone(),
            )
        }
        _ => (Profiles::default(), None),
    };
    let validator = Validator::new(schema, profiles);
    let mut failed = false;
    for file in files {
        let issues = match std::fs::read(file) {
            Err(e) => vec![Issue::error(
                "not-found",
                format!("cannot read the file: {e}"),
            )],
            Ok(bytes) => match parse_strict(&bytes, 120) {
                Err(e) => vec![
                    Issue::error("structure", e.to_string())
                        .at(fhirpath("$this", e.path.iter().map(PathRef::from))),
                ],
                Ok(v) => {
                    let mut issues = validator.structural(&v);
                    if issues.is_empty() && set.is_some() {
                        issues = validator.profile(set.as_deref(), &v);
                    }
                    issues
                }
            },
        };
        failed |= !issues.is_empty();
        let oo = if issues.is_empty() {
            crate::fhir::outcome::information("valid")
        } else {
            operation_outcome(&issues)
        };
        println!("{}: {}", file.display(), oo);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn open_store(config: &Path) -> anyhow::Result<crate::store::SqlStore> {
    let settings = Settings::load(config)?;
    Ok(crate::store::SqlStore::connect(&settings.store.url, 2).await?)
}

/// Parses a FHIR date or dateTime given on the command line into its period.
fn cli_period(flag: &str, value: &str) -> anyhow::Result<(i64, i64)> {
    crate::fhir::time::period(value).ok_or_else(|| {
        anyhow::anyhow!(
            "{flag} {value}: not a FHIR date (2026-01-31) or dateTime (2026-01-31T10:00:00Z)"
        )
    })
}

async fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            config: _,
            checkpoint: Some(checkpoint),
            key: Some(key),
            from_url,
            export,
            leaves,
            advance,
        } => {
            let held = HeldFiles {
                checkpoint,
                leaves,
                advance,
            };
            audit_verify_against(&held, &key, from_url.as_deref(), export.as_deref()).await
        }
        AuditCommand::Verify { config, .. } => audit_verify(&config).await,
        AuditCommand::Keygen { name, out } => audit_keygen(&name, &out),
        AuditCommand::Witness {
            listen,
            state,
            key,
            log_key,
            log_url,
        } => audit_witness(&listen, &state, &key, &log_key, log_url.as_deref()).await,
        AuditCommand::Export {
            config,
            out,
            rows: true,
            ..
        } => audit_export_rows(&config, out.as_deref()).await,
        AuditCommand::Export {
            config,
            from,
            to,
            out,
            ..
        } => audit_export(&config, from.as_deref(), to.as_deref(), out.as_deref()).await,
        AuditCommand::Prune {
            config,
            before,
            export,
        } => audit_prune(&config, &before, &export).await,
    }
}

/// `audit verify`: the whole chain; fails at the first broken link.
async fn audit_verify(config: &Path) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let mut tx = Store::begin_read(&store).await?;
    let report = ledger::verify(tx.as_mut(), 5_000).await?;
    drop(tx);
    store.close().await;
    match &report.broken {
        None => {
            println!(
                "audit log verified: {} rows, seq {}..{}, head {} {}",
                report.rows,
                report.first_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0),
                report.head_seq.unwrap_or(0),
                report.head_hash.as_deref().unwrap_or("-")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!("audit log BROKEN at seq {}: {}", b.seq, b.problem);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `audit export`: the AuditEvents of a period as NDJSON, to `out` or stdout.
async fn audit_export(
    config: &Path,
    from: Option<&str>,
    to: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let from_us = match from {
        Some(f) => cli_period("--from", f)?.0,
        None => i64::MIN,
    };
    let to_us = match to {
        Some(t) => cli_period("--to", t)?.1,
        None => i64::MAX,
    };
    let store = open_store(config).await?;
    let mut progress = |done: i64, total: i64| {
        eprintln!("exported {done}/{total} rows");
    };
    let n = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = ledger::export(&store, from_us, to_us, i64::MAX, &mut w, &mut progress).await?;
            w.flush()?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            ledger::export(&store, from_us, to_us, i64::MAX, &mut w, &mut progress).await?
        }
    };
    store.close().await;
    eprintln!("done: {n} AuditEvents");
    Ok(ExitCode::SUCCESS)
}

/// `audit prune`: the rows recorded before `before` exported to `export`, then deleted.
async fn audit_prune(config: &Path, before: &str, export: &Path) -> anyhow::Result<ExitCode> {
    let before_us = cli_period("--before", before)?.0;
    let store = open_store(config).await?;
    let actor = crate::audit::Actor {
        client_id: Some("carebridge-cli".into()),
        role: Some("admin".into()),
        request_id: None,
        person: None,
    };
    let mut progress = |done: i64, _total: i64| {
        eprintln!("exported {done} rows");
    };
    let pruned = ledger::prune(&store, before_us, export, &actor, &mut progress).await?;
    // Every prune is followed by a signed checkpoint (when the log signs).
    let settings = Settings::load(config)?;
    let file = config.display().to_string();
    if pruned.is_some()
        && let Some(signer) = crate::gateway::transparency::load_signer(&settings.audit, &file)?
        && let Some(c) = crate::gateway::transparency::sign_checkpoint(&store, &signer).await?
    {
        println!("signed a checkpoint of {} rows", c.size);
    }
    store.close().await;
    match pruned {
        None => println!("nothing recorded before {before}"),
        Some(p) => println!(
            "pruned rows up to seq {}: {} exported to {}, {} deleted; a checkpoint continues the chain",
            p.through_seq,
            p.exported,
            export.display(),
            p.deleted
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// What an auditor holds outside the log, for `audit verify --checkpoint`.
struct HeldFiles {
    checkpoint: PathBuf,
    leaves: Option<PathBuf>,
    advance: bool,
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A verifier key given literally or as a file holding it.
fn verifier_key(arg: &str) -> anyhow::Result<Verifier> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        read_text(path)?
    } else {
        arg.to_owned()
    };
    Verifier::parse(&text).map_err(|e| anyhow::anyhow!("the key {arg}: {e}"))
}

/// The held checkpoint (signature checked) and its leaves, if a leaves file exists.
fn held_evidence(h: &HeldFiles, key: &Verifier) -> anyhow::Result<Held> {
    let text = read_text(&h.checkpoint)?;
    let c = Checkpoint::open(&text, key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", h.checkpoint.display()))?;
    let leaves = match &h.leaves {
        Some(p) if p.is_file() => {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let mut l = read_leaves(&bytes)
                .ok_or_else(|| anyhow::anyhow!("{}: not whole 32-byte hashes", p.display()))?;
            l.truncate(c.size as usize);
            if l.len() as u64 != c.size || merkle::root(&l) != c.root {
                anyhow::bail!(
                    "{}: these leaves do not make the held checkpoint's tree",
                    p.display()
                );
            }
            Some(l)
        }
        _ => None,
    };
    Ok(Held {
        checkpoint: Some(c),
        leaves,
    })
}

/// The log's latest signed checkpoint (note and opened) and its entries, live or exported.
async fn log_evidence(
    key: &Verifier,
    from_url: Option<&str>,
    export: Option<&Path>,
) -> anyhow::Result<(String, Result<Checkpoint, String>, Vec<LogEntry>)> {
    let (note, entries) = match (from_url, export) {
        (Some(url), _) => {
            let token = std::env::var("CAREBRIDGE_AUDIT_TOKEN").ok();
            let log = LogClient::new(url, token, std::time::Duration::from_secs(60))?;
            let note = log.checkpoint().await?;
            let size = Checkpoint::parse(&note).map(|c| c.size).unwrap_or(0) as i64;
            let entries = if size > 0 {
                log.entries(1, size).await?
            } else {
                Vec::new()
            };
            (note, entries)
        }
        (None, Some(path)) => read_rows_export(path)?,
        (None, None) => anyhow::bail!("give the log to check: --from-url URL or --export FILE"),
    };
    let opened = Checkpoint::open(&note, key).map_err(|e| e.to_string());
    Ok((note, opened, entries))
}

/// A file of `audit export --rows`: the checkpoint line, then one entry per line.
fn read_rows_export(path: &Path) -> anyhow::Result<(String, Vec<LogEntry>)> {
    let text = read_text(path)?;
    let mut lines = text.lines();
    let head: serde_json::Value = serde_json::from_str(lines.next().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("{}: line 1: {e}", path.display()))?;
    let note = head["checkpoint"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{}: line 1 carries no checkpoint", path.display()))?
        .to_owned();
    let entries = lines
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 2))
        })
        .collect::<anyhow::Result<Vec<LogEntry>>>()?;
    Ok((note, entries))
}

/// `audit verify --checkpoint FILE --key KEY (--from-url URL | --export FILE)`.
async fn audit_verify_against(
    h: &HeldFiles,
    key: &str,
    from_url: Option<&str>,
    export: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let key = verifier_key(key)?;
    let held = held_evidence(h, &key)?;
    let (note, latest, entries) = log_evidence(&key, from_url, export).await?;
    let latest = match latest {
        Ok(c) => c,
        Err(e) => {
            println!(
                "audit log MISBEHAVED: its latest checkpoint does not verify with the key: {e}"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let verdict = verify::check(&held, &latest, &entries);
    let Some(finding) = &verdict.finding else {
        println!(
            "audit log verified: {}; latest checkpoint {} rows, root {}",
            verdict.detail,
            latest.size,
            crate::audit::note::b64(&latest.root)
        );
        if h.advance {
            write_held(h, &note, &verdict.leaves)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "audit log MISBEHAVED ({}): {}",
        serde_json::to_string(finding)?.trim_matches('"'),
        verdict.detail
    );
    match verdict.first_affected_seq {
        Some(seq) => println!("first affected seq: {seq}"),
        None => println!("first affected seq: unknown (keep --leaves to have it named)"),
    }
    Ok(ExitCode::FAILURE)
}

/// Replaces the held checkpoint (and leaves) with the verified latest, each synced.
fn write_held(h: &HeldFiles, note: &str, leaves: &[merkle::Hash]) -> anyhow::Result<()> {
    let write = |path: &Path, bytes: &[u8]| -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    if let Some(p) = &h.leaves {
        write(p, &leaves.concat())?;
    }
    write(&h.checkpoint, note.as_bytes())
}

/// `audit keygen`: a fresh signing key to `out`, its verifier key beside it and on stdout.
fn audit_keygen(name: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let signer = Signer::from_seed(name, seed)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(out)
        .map_err(|e| anyhow::anyhow!("{}: {e} (keygen never overwrites a key)", out.display()))?;
    writeln!(f, "{}", signer.encode())?;
    f.sync_all()?;
    let public = out.with_extension("pub");
    std::fs::write(&public, format!("{}\n", signer.verifier().encode()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", public.display()))?;
    println!(
        "signing key written to {} (keep it out of the database and its backups)",
        out.display()
    );
    println!("verifier key (also in {}):", public.display());
    println!("{}", signer.verifier().encode());
    println!("as a witness, its cosignature key is:");
    println!("{}", signer.cosigner().encode());
    Ok(ExitCode::SUCCESS)
}

/// `audit witness`: serves until a shutdown signal.
async fn audit_witness(
    listen: &str,
    state: &Path,
    key: &Path,
    log_key: &str,
    log_url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let key =
        Signer::parse(&read_text(key)?).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let log_key = verifier_key(log_key)?;
    let log = match log_url {
        Some(u) => Some(LogClient::new(
            u,
            std::env::var("CAREBRIDGE_WITNESS_TOKEN").ok(),
            std::time::Duration::from_secs(60),
        )?),
        None => None,
    };
    let witness = std::sync::Arc::new(Witness::open(state, key, log_key, log)?);
    let (listener, addr) = App::bind(listen).await?;
    tracing::info!(%addr, "carebridge audit witness listening");
    crate::app::serve_witness(witness, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `audit export --rows`: the latest signed checkpoint, then every entry it covers.
async fn audit_export_rows(config: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let mut tx = Store::begin_read(&store).await?;
    let Some(c) = tx.checkpoint_latest().await? else {
        anyhow::bail!(
            "no checkpoint has been signed: configure [audit] signing_key_file and run the gateway"
        );
    };
    let mut w: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    writeln!(w, "{}", serde_json::json!({ "checkpoint": c.note }))?;
    let mut from = 1;
    while from <= c.size {
        let to = (from + crate::gateway::transparency::MAX_ROWS - 1).min(c.size);
        for e in crate::gateway::transparency::entries(tx.as_mut(), from, to).await? {
            writeln!(w, "{}", serde_json::to_string(&e)?)?;
        }
        from = to + 1;
    }
    w.flush()?;
    drop(tx);
    store.close().await;
    eprintln!(
        "done: {} rows under the checkpoint of size {}",
        c.size, c.size
    );
    Ok(ExitCode::SUCCESS)
}
