//! A test run again in a process of its own, for the few tests whose subject reads this
//! process's environment: a sector's `token_env` or `client_secret_env`, which the in-process
//! gateway reads with `std::env::var` when it delivers.
//!
//! All tests share one process (`tests/it/main.rs`), so a test must not set a variable of its
//! own process: `std::env::set_var` while other tests run on their threads races with code that
//! reads the environment without Rust's lock (SQLite looking up its temp folder, libc's time
//! zone and resolver, …). Instead the test binary runs itself with `--exact <test>` and the
//! variables on the child's command, so the child's environment is complete before its first
//! thread starts. The child runs that one test and nothing else.
//!
//! ```ignore
//! if !common::child::in_own_process(module_path!(), "my_test", &[("VAR", "value")], &[]).await {
//!     return; // the parent: the child ran the test and passed
//! }
//! // the child: the body, reading VAR with std::env::var
//! ```
#![allow(dead_code)]

use std::process::Stdio;

/// Names the test a child process was started for (unset in the parent).
const CHILD_OF: &str = "IT_CHILD_TEST";

/// In the parent: runs the test `name` of `module` (`module_path!()`) in a child process of
/// this test binary with `vars` set and `unset` removed, waits for it, and panics with its
/// output unless it passed; returns false (the caller returns). In that child: returns true
/// (the caller runs the test's body).
pub async fn in_own_process(
    module: &str,
    name: &str,
    vars: &[(&str, &str)],
    unset: &[&str],
) -> bool {
    // `it::exchange_auth` → `exchange_auth::<name>`, the test's name in libtest.
    let module = module.split_once("::").map_or("", |(_, rest)| rest);
    let test = if module.is_empty() {
        name.to_owned()
    } else {
        format!("{module}::{name}")
    };
    if std::env::var(CHILD_OF).is_ok_and(|t| t == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_OF, &test)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().await.expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" 1 passed;"),
        "{test} in its own process: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    // Shown with the parent's output (on failure, or with --nocapture).
    eprintln!("{test} ran in a process of its own and passed\n{stderr}");
    false
}
