//! carebridge: a FHIR R4 integration gateway between general practice, hospital and
//! municipality.
//!
//! Modules in reading order (each layer uses only the layers above it in this list):
//! - [`config`]: typed settings from a TOML file and `CAREBRIDGE_…` variables.
//! - [`fhir`]: the wire layer (strict JSON, OperationOutcome, references, time).
//! - [`ids`]: gateway ids and content hashes.
//! - [`terminology`]: ConceptMaps, mapping sets, medication knowledge.
//! - [`validate`]: structural validation (official R4 schema, tightened) and sector profiles.
//! - [`detect`]: the fragmentation detectors, pure functions over a patient's snapshot.
//! - [`audit`]: audit rows, their hash chain and their AuditEvent form.
//! - [`access`]: callers and roles, and `authorize`, the one access decision.
//! - [`metrics`]: the Prometheus metrics.
//! - [`store`]: the database (SQLite or PostgreSQL), the only module that touches it.
//! - [`exchange`]: routing, reference resolution and mapping inside the core.
//! - [`gateway`]: the core — write pipeline, read service, alerts, the audit ledger.
//! - [`outbound`]: the HTTP client to sector endpoints and issuers, and endpoint probes.
//! - [`auth`]: authentication — static tokens and bearer JWTs.
//! - [`workers`]: the delivery workers and pull-mode pollers, above the core.
//! - [`api`]: the HTTP adapter.
//! - [`app`]: assembling and serving the application.
//! - [`cli`] and [`demo`]: the command line and the local demo.

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod detect;
pub mod exchange;
pub mod fhir;
pub mod gateway;
pub mod ids;
pub mod metrics;
pub mod outbound;
pub mod store;
pub mod terminology;
pub mod validate;
pub mod workers;
