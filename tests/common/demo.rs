//! `carebridge demo` as a child process: the real binary on loopback port 0 with its fixtures,
//! and what it printed — every client's token and each person's one-time sign-in link.
//! Self-contained, so that the benches may include it with `#[path]`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running demo.
pub struct Demo {
    /// `http://127.0.0.1:<port>` (no path).
    pub origin: String,
    /// Client id → bearer token.
    pub tokens: HashMap<String, String>,
    /// Person (client id) → sign-in link.
    pub links: HashMap<String, String>,
    child: Child,
}

impl Demo {
    /// Starts the demo and reads its output until it serves.
    pub fn start() -> Demo {
        Demo::start_with(&["--listen", "127.0.0.1:0"])
    }

    /// Starts the demo with more arguments (`--config`, `--listen`).
    pub fn start_with(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carebridge"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts");
        let stdout = child.stdout.take().expect("its output");
        let mut lines = BufReader::new(stdout).lines();
        let (mut tokens, mut links, mut printed) = (HashMap::new(), HashMap::new(), String::new());
        let mut origin = None;
        for line in lines.by_ref() {
            let line = line.expect("a line");
            printed.push_str(&line);
            printed.push('\n');
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["token", id, _role, token, ..] => {
                    tokens.insert((*id).to_owned(), (*token).to_owned());
                }
                ["login", id, _role, link, ..] => {
                    links.insert((*id).to_owned(), (*link).to_owned());
                }
                ["serving", "on", base, ..] => {
                    origin = Some(base.trim_end_matches("/fhir").to_owned());
                    break;
                }
                _ => {}
            }
        }
        let origin = origin.unwrap_or_else(|| panic!("the demo did not serve:\n{printed}"));
        // Keep draining what it prints, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Demo {
            origin,
            tokens,
            links,
            child,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
