//! carebridge: a FHIR R4 integration gateway between general practice, hospital and
//! municipality.
//!
//! Modules in reading order:
//! - [`config`]: typed settings from a TOML file and `CAREBRIDGE_…` variables.
//! - [`fhir`]: the wire layer (strict JSON, OperationOutcome, references).
//! - [`validate`]: structural validation (official R4 schema, tightened) and sector profiles.
//! - [`ingest`]: the pipeline of one request: authorise, validate, link, store, audit.
//! - [`store`]: the database (SQLite or PostgreSQL), the only module that touches it.
//! - [`audit`]: audit rows and their AuditEvent form.
//! - [`auth`]: clients, tokens and roles.
//! - [`exchange`]: routes, mapping, the delivery workers and the pull-mode pollers.
//! - [`metrics`]: the Prometheus metrics.
//! - [`api`]: the HTTP routes.
//! - [`app`]: assembling and serving the application.
//! - [`cli`] and [`demo`]: the command line and the local demo.

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
pub mod ingest;
pub mod metrics;
pub mod store;
pub mod validate;
