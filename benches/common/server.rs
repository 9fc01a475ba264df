//! The `carebridge serve` process of a benchmark (P2, P5): started on a generated configuration,
//! its log drained and counted, its CPU time read from `/proc`, stopped with SIGTERM.
//!
//! Included by the bench targets with `#[path = "common/server.rs"] mod server;` (each uses
//! part of it).
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The server process and where it listens.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Spawn → the "listening" log line.
    pub startup_secs: f64,
    pub log: Arc<Mutex<LogStats>>,
}

#[derive(Default)]
pub struct LogStats {
    pub errors: usize,
    pub warnings: usize,
    pub sample: Vec<String>,
}

/// `carebridge serve --config <config>` with the default log filter.
pub fn start_server(config: &Path) -> Result<Server> {
    start_server_with(config, None, |_| {})
}

/// The same with `RUST_LOG` set to `rust_log` (when given), every log line after the
/// "listening" one also handed to `on_line` (from the thread that drains the log).
pub fn start_server_with(
    config: &Path,
    rust_log: Option<&str>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Result<Server> {
    let t = Instant::now();
    // For diagnosis only: CAREBRIDGE_BENCH_SERVER_WRAP="valgrind --tool=callgrind" runs the
    // server under that command.
    let wrap = std::env::var("CAREBRIDGE_BENCH_SERVER_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_carebridge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_carebridge")),
    };
    // The generated file is the whole configuration: `CAREBRIDGE_…` variables of this shell (the
    // harness's own included) would be read as overrides, and unknown ones stop the start.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAREBRIDGE_") {
            cmd.env_remove(key);
        }
    }
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start carebridge serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            bail!("carebridge serve exited before listening");
        };
        let line = line?;
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        // Statement logs (a profiling filter) would flood the terminal with the migrations.
        if !line.contains("sqlx::query") {
            eprintln!("  server: {line}");
        }
    };
    let startup_secs = t.elapsed().as_secs_f64();
    let log = Arc::new(Mutex::new(LogStats::default()));
    let sink = log.clone();
    // Keep draining the log (the server must never block on a full pipe); count its problems.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut s = sink.lock().expect("log stats");
            let error = line.contains(" ERROR ");
            let warn = line.contains(" WARN ");
            s.errors += usize::from(error);
            s.warnings += usize::from(warn);
            if (error || warn) && s.sample.len() < 10 {
                s.sample.push(line.chars().take(400).collect());
            }
            drop(s);
            on_line(&line);
        }
    });
    Ok(Server {
        child,
        base: format!("http://{addr}/fhir"),
        startup_secs,
        log,
    })
}

/// A bench that fails half-way leaves no server behind.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    pub fn stop(&mut self) {
        // SIGTERM for a graceful shutdown; SIGKILL if it does not come.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// User and system CPU seconds the server has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn cpu_secs(stat: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses): state is field 3; utime 14, stime 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|x| x.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}
