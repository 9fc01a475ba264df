//! The real binary, `carebridge serve`, as a child process: started on a configuration file,
//! its address read from its "listening" log line, its log drained (counted, and kept whole on
//! request), its CPU time read from `/proc`, stopped with SIGTERM or killed.
//!
//! Used by the tests that need the real process (`process`, `exchange`, `exchange_auth`, `jwt`,
//! `log_privacy`) and by the benches (P2, P4, P5). Self-contained (no `super::` items): the
//! tests include it as `common::server`, the benches with
//! `#[path = "../tests/common/server.rs"] mod server;` (each uses part of it).
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the drained log held: errors and warnings after start-up, with a few of them.
#[derive(Default)]
pub struct LogStats {
    pub errors: usize,
    pub warnings: usize,
    pub sample: Vec<String>,
}

type LineHook = Box<dyn FnMut(&str) + Send>;

/// How to start `carebridge serve --config <config>`.
pub struct Serve {
    config: PathBuf,
    rust_log: Option<String>,
    envs: Vec<(String, String)>,
    keep_output: bool,
    echo_startup: bool,
    on_line: Option<LineHook>,
    program: Option<PathBuf>,
}

impl Serve {
    /// The binary on `config`, with its default log filter, no variable of its own, the log
    /// counted but not kept.
    pub fn new(config: &Path) -> Serve {
        Serve {
            config: config.to_path_buf(),
            rust_log: None,
            envs: Vec::new(),
            keep_output: false,
            echo_startup: false,
            on_line: None,
            program: None,
        }
    }

    /// Another `carebridge` binary than the one cargo built for this target (P6 runs a
    /// baseline build beside the current one).
    pub fn program(mut self, path: &Path) -> Serve {
        self.program = Some(path.to_path_buf());
        self
    }

    /// The binary on `config` with every log level on (`RUST_LOG=trace`) and its whole output
    /// kept: for the tests that look for what must never be logged.
    pub fn traced(config: &Path) -> Serve {
        Serve::new(config).rust_log("trace").keep_output()
    }

    /// `RUST_LOG` for the child.
    pub fn rust_log(mut self, filter: &str) -> Serve {
        self.rust_log = Some(filter.to_owned());
        self
    }

    /// A variable of the child's environment (never of this process).
    pub fn env(mut self, key: &str, value: &str) -> Serve {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Keep the whole output, stdout and stderr from the first line, for `Server::output`.
    pub fn keep_output(mut self) -> Serve {
        self.keep_output = true;
        self
    }

    /// Print the log lines before "listening" on this process's stderr (statement logs left
    /// out: a profiling filter would flood the terminal with the migrations).
    pub fn echo_startup(mut self) -> Serve {
        self.echo_startup = true;
        self
    }

    /// Hands every log line after the "listening" one to `f` (on the thread that drains the
    /// log).
    pub fn on_line(mut self, f: impl FnMut(&str) + Send + 'static) -> Serve {
        self.on_line = Some(Box::new(f));
        self
    }

    /// Starts the process and waits for its "listening" line.
    pub fn start(self) -> Result<Server> {
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
            None => Command::new(
                self.program
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_carebridge"))),
            ),
        };
        // The configuration file is the whole configuration: `CAREBRIDGE_…` variables of this
        // process (a developer's shell, the bench's own) would be read as overrides.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAREBRIDGE_") {
                cmd.env_remove(key);
            }
        }
        if let Some(filter) = &self.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let stdout = if self.keep_output {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&self.config)
            .current_dir(repo())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("start carebridge serve")?;
        let output = self.keep_output.then(Arc::<Mutex<String>>::default);
        let mut readers = Vec::new();
        if let (Some(out), Some(mut stdout)) = (output.clone(), child.stdout.take()) {
            readers.push(std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stdout.read_to_string(&mut s);
                out.lock().expect("output").push_str(&s);
            }));
        }
        let keep = |line: &str| {
            if let Some(out) = &output {
                let mut o = out.lock().expect("output");
                o.push_str(line);
                o.push('\n');
            }
        };
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut before = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "carebridge serve exited before listening; its log:\n{}",
                    before.join("\n")
                );
            };
            keep(&line);
            if line.contains("listening")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            if self.echo_startup && !line.contains("sqlx::query") {
                eprintln!("  server: {line}");
            }
            before.push(line);
        };
        let startup_secs = t.elapsed().as_secs_f64();
        let log = Arc::new(Mutex::new(LogStats::default()));
        let sink = log.clone();
        let mut on_line = self.on_line;
        let out = output.clone();
        // Keep draining the log (the server must never block on a full pipe); count its
        // problems.
        readers.push(std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(out) = &out {
                    let mut o = out.lock().expect("output");
                    o.push_str(&line);
                    o.push('\n');
                }
                let mut s = sink.lock().expect("log stats");
                let error = line.contains(" ERROR ");
                let warn = line.contains(" WARN ");
                s.errors += usize::from(error);
                s.warnings += usize::from(warn);
                if (error || warn) && s.sample.len() < 10 {
                    s.sample.push(line.chars().take(400).collect());
                }
                drop(s);
                if let Some(f) = on_line.as_mut() {
                    f(&line);
                }
            }
        }));
        Ok(Server {
            child,
            base: format!("http://{addr}/fhir"),
            addr,
            startup_secs,
            log,
            output,
            readers,
        })
    }
}

/// `carebridge serve --config <config>` with the default log filter.
pub fn start_server(config: &Path) -> Result<Server> {
    Serve::new(config).echo_startup().start()
}

/// The server process and where it listens.
pub struct Server {
    pub child: Child,
    /// `http://<addr>/fhir`
    pub base: String,
    /// `127.0.0.1:<port>`
    pub addr: String,
    /// Spawn → the "listening" log line.
    pub startup_secs: f64,
    pub log: Arc<Mutex<LogStats>>,
    output: Option<Arc<Mutex<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// A test that fails or a bench that fails half-way leaves no server behind.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    /// SIGTERM for a graceful shutdown; SIGKILL if it does not come within 5 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL, and wait for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the process wrote (started with `keep_output`), once it has ended: kills it
    /// if it still runs, and waits until its output is read to the end.
    pub fn output(&mut self) -> String {
        self.kill();
        for r in self.readers.drain(..) {
            r.join().expect("a log reader thread");
        }
        let out = self
            .output
            .as_ref()
            .expect("the server was started with keep_output");
        out.lock().expect("output").clone()
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
