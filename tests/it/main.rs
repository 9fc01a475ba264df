//! The integration tests: one test binary (`cargo test --test it`), one module per area, so that
//! the crate is linked into one test executable instead of one per file.
//!
//! Run one area with a filter: `cargo test --test it access::`, or one test by its path:
//! `cargo test --test it -- --exact exchange::two_replicas_on_postgresql_deliver_each_entry_exactly_once`.
//!
//! Every test shares this process with the others, running on libtest's threads. So a test:
//!
//! - never changes the process environment (`std::env::set_var`) or the current directory;
//!   settings go into the test's own configuration file, and a child process (the real binary,
//!   `node`, a test run in its own process through `common::child`) gets its variables on its
//!   command;
//! - never installs a global tracing subscriber;
//! - listens on port 0 (or on a port it just got from port 0), and writes only into its own
//!   temporary directory or database (`tempfile::tempdir`, `common::fresh_pg_database`);
//! - reaches PostgreSQL and Node only through `common` (`fresh_pg_database`, `common::peers`),
//!   which fail with one line naming what is missing.
//!
//! Shared helpers live in `tests/common/` (also included by the benches with `#[path]`).

// In a test, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod access;
mod alerts;
mod architecture;
mod audit_and_reads;
mod audit_chain;
mod audit_events_valid;
mod bad_input;
mod browser;
mod cli;
mod console;
mod console_alerts;
mod console_ops;
mod console_sessions;
mod corrupt;
mod deploy;
mod exchange;
mod exchange_auth;
mod fhir_api;
mod fhir_clients;
mod jwt;
mod log_privacy;
mod mapping_codes;
mod med_knowledge;
mod ops_store;
mod peer_harness;
mod pipeline;
mod process;
mod public_data;
mod recovery;
mod routes;
mod sector_alerts;
mod store_suite;
mod synthea_alerts;
mod transparency;
mod treatment;
mod trust;
mod validation_depth;
mod validation_schema;
