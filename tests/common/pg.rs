//! PostgreSQL databases of one test or one bench run: created fresh under a random name on an
//! administrative connection, dropped afterwards.
//!
//! Self-contained (no `super::` items): the tests include it as `common::pg` (through
//! `common::fresh_pg_database`, which fails with one line when the server is not reachable), the
//! benches with `#[path = "../tests/common/pg.rs"] mod pg;`.
#![allow(dead_code)]

use sqlx::Connection;
use std::time::Duration;

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// An administrative connection to `admin` (a URL naming an existing database).
pub async fn connect(admin: &str) -> Result<sqlx::PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(admin)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// The URL of database `name` on the server of `admin`.
pub fn database_url(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{name}")
}

/// Creates an empty database `<prefix><random>`; returns its URL and name. The error says
/// whether the server could not be reached (`Unreachable`) or refused the statement.
pub async fn create_database(admin: &str, prefix: &str) -> Result<(String, String), PgError> {
    let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
    let mut conn = connect(admin).await.map_err(PgError::Unreachable)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| PgError::Statement(format!("CREATE DATABASE {name}: {e}")))?;
    let _ = conn.close().await;
    Ok((database_url(admin, &name), name))
}

/// Drops database `name` (connections to it are ended); silent when the server is gone.
pub async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

#[derive(Debug)]
pub enum PgError {
    /// The server did not accept a connection (the reason).
    Unreachable(String),
    /// It did, and refused a statement.
    Statement(String),
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgError::Unreachable(e) => write!(f, "PostgreSQL is not reachable: {e}"),
            PgError::Statement(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PgError {}
