//! The local demo: a fresh SQLite store, `config/demo.toml`, fresh tokens for its clients, the
//! project's own fixtures loaded through the same pipeline as a sector's push, a summary, and
//! the gateway serving on loopback until Ctrl-C.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::access::{Caller, Client, Request, Role, authorize};
use crate::app::{App, shutdown_signal};
use crate::auth::{Clients, new_token, token_hash};
use crate::config::Settings;
use crate::fhir::json::parse_strict;

pub struct DemoOptions {
    pub listen: String,
    pub config: PathBuf,
    pub fixtures: PathBuf,
    pub db: Option<PathBuf>,
    pub serve: bool,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let addr: SocketAddr = opts
        .listen
        .parse()
        .with_context(|| format!("--listen {}: not IP:PORT", opts.listen))?;
    if !addr.ip().is_loopback() {
        bail!(
            "--listen {addr}: the demo prints live tokens, so it only listens on loopback (127.0.0.1 or ::1)"
        );
    }
    let mut settings = Settings::load(&opts.config)?;
    let db = match opts.db {
        Some(p) => p,
        None => {
            let dir =
                std::env::temp_dir().join(format!("carebridge-demo-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join("carebridge.db")
        }
    };
    settings.store.url = format!("sqlite://{}", db.display());
    println!("carebridge demo: store {}", db.display());

    // Fresh tokens for every demo client; only their hashes reach the gateway.
    let mut tokens = Vec::new();
    for c in &mut settings.clients {
        let token = new_token();
        c.token_sha256 = Some(token_hash(&token));
        tokens.push((c.id.clone(), c.role.clone(), token));
    }
    let clients = Clients::from_settings(&settings.clients);
    let lookup = clients.clone();
    let sector_clients: BTreeMap<String, Client> = settings
        .clients
        .iter()
        .filter_map(|c| match Role::parse(&c.role)? {
            Role::Sector(s) => Some((s.clone(), Client::system(c.id.clone(), Role::Sector(s)))),
            _ => None,
        })
        .collect();

    let app = App::build(settings, &opts.config.display().to_string(), clients).await?;
    let (listener, local) = App::bind(&opts.listen).await?;
    load_fixtures(&app, &opts.fixtures, &sector_clients).await?;
    summary(&app).await?;
    print_tokens(&app, &lookup, &opts.fixtures, &tokens).await?;
    print_sign_in_links(&app, &lookup, &tokens, local).await?;
    if !opts.serve {
        return Ok(());
    }
    // A closed stdout (the demo piped into `head`) must not stop the server: ignore write errors.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "serving on http://{local}/fhir  (Ctrl-C stops)\n  try: curl -H 'Authorization: Bearer <careteam token>' http://{local}/fhir/metadata"
    );
    let _ = out.flush();
    app.serve(listener, shutdown_signal()).await
}

fn fixture_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the fixtures folder {}", dir.display()))?;
    for sector_dir in entries {
        let sector_dir = sector_dir?.path();
        if !sector_dir.is_dir() {
            continue;
        }
        let sector = sector_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        for f in std::fs::read_dir(&sector_dir)? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "json") {
                files.push((sector.clone(), f));
            }
        }
    }
    files.sort();
    Ok(files)
}

async fn load_fixtures(
    app: &App,
    dir: &Path,
    clients: &BTreeMap<String, Client>,
) -> anyhow::Result<()> {
    let files = fixture_files(dir)?;
    if files.is_empty() {
        bail!(
            "{}: no fixtures found (expected <sector>/<name>.json files)",
            dir.display()
        );
    }
    let total = files.len();
    for (i, (sector, file)) in files.iter().enumerate() {
        let client = clients.get(sector).with_context(|| {
            format!(
                "{}: no demo client has role sector:{sector}",
                file.display()
            )
        })?;
        let caller = Caller {
            client: client.clone(),
            request_id: Some(format!("demo-load-{i}")),
        };
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let bundle =
            parse_strict(&bytes, 64).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let response = app
            .gateway
            .bundle(&caller, sector, bundle)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let entries = response
            .get("entry")
            .and_then(|e| e.as_array())
            .map_or(0, Vec::len);
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        println!(
            "[{:>2}/{total}] {sector}/{name}: {entries} resources accepted",
            i + 1
        );
    }
    Ok(())
}

/// One line per client: its id, role and token; for a care-team member, which of the demo
/// patients they may read (a treatment relationship decided as for any request).
async fn print_tokens(
    app: &App,
    clients: &Clients,
    fixtures: &Path,
    tokens: &[(String, String, String)],
) -> anyhow::Result<()> {
    let patients = demo_patients(fixtures)?;
    let ids: Vec<(String, String)> = patients.iter().map(|(_, i)| i.clone()).collect();
    println!();
    for (id, role, token) in tokens {
        // Persons (care-team members) get their caseload beside the token; systems do not.
        let Some(client) = clients
            .authenticate(token)
            .filter(|c| c.person.is_some())
            .cloned()
        else {
            println!("token {id} {role} {token}");
            continue;
        };
        let caller = Caller {
            client,
            request_id: None,
        };
        let readable = app.gateway.caseload(&caller, &ids).await?;
        let names: Vec<&str> = patients
            .iter()
            .zip(&readable)
            .filter(|(_, r)| **r)
            .map(|((name, _), _)| name.as_str())
            .collect();
        println!(
            "token {id} {role} {token}  # may read {} of {} demo patients: {}",
            names.len(),
            patients.len(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(())
}

/// One sign-in link of the console per person (`login <person> <role> <url>`): valid once,
/// for `[ui] sign_in_link_minutes`.
async fn print_sign_in_links(
    app: &App,
    clients: &Clients,
    tokens: &[(String, String, String)],
    local: SocketAddr,
) -> anyhow::Result<()> {
    if !app.gateway.settings().ui.enabled {
        return Ok(());
    }
    let minutes = app.gateway.settings().ui.sign_in_link_minutes;
    println!();
    println!(
        "the console (care team, auditor, IT staff): each link signs its person in once, within {minutes} minutes"
    );
    for (id, role, token) in tokens {
        let Some(client) = clients.authenticate(token).filter(|c| {
            let caller = Caller {
                client: (*c).clone(),
                request_id: None,
            };
            authorize(&caller, Request::Console).is_ok()
        }) else {
            continue;
        };
        let link = app.sessions.mint_link(client.clone()).await?;
        println!("login {id} {role} http://{local}/ui/sign-in/{link}");
    }
    Ok(())
}

/// The demo patients by fixture name, with their CPR identifier (from the gp bundles).
fn demo_patients(dir: &Path) -> anyhow::Result<Vec<(String, (String, String))>> {
    let mut out = Vec::new();
    for (sector, file) in fixture_files(dir)? {
        if sector != "gp" {
            continue;
        }
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let bundle: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not JSON", file.display()))?;
        let cpr = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["resourceType"] == "Patient")
            .flat_map(|e| {
                e["resource"]["identifier"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|i| i["system"] == crate::config::CPR_SYSTEM)
            .and_then(|i| i["value"].as_str().map(str::to_owned));
        let name = file
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(cpr) = cpr {
            out.push((name.to_owned(), (crate::config::CPR_SYSTEM.to_owned(), cpr)));
        }
    }
    Ok(out)
}

async fn summary(app: &App) -> anyhow::Result<()> {
    let stats = app.gateway.stats().await?;
    println!();
    println!(
        "{:<14} {:<22} {:>9}",
        "sector", "resource type", "resources"
    );
    for (sector, rtype, n) in &stats.by_sector_type {
        println!("{sector:<14} {rtype:<22} {n:>9}");
    }
    let total: i64 = stats.by_sector_type.iter().map(|r| r.2).sum();
    println!("{:<14} {:<22} {total:>9}", "all", "");
    println!();
    println!(
        "patients: {} gateway patients, {} linked across two or more sectors",
        stats.patients, stats.linked_patients
    );
    Ok(())
}
