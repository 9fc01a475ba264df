//! The console's sign-in state (`console_sessions`, `console_once`): sessions by the hash of
//! their cookie value and one-time values (sign-in links, OpenID Connect `state`s), so that
//! every replica on the database shares them.

use async_trait::async_trait;

use super::Result;
use super::sql::{SqlTx, map_err};

/// One row of `console_sessions`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    /// SHA-256 of the cookie value.
    pub key: String,
    /// The signed-in client, as JSON.
    pub client: String,
    pub csrf: String,
    pub last_used_us: i64,
}

#[async_trait]
pub trait SessionTx: Send {
    async fn session_put(&mut self, row: &SessionRow) -> Result<()>;
    async fn session_get(&mut self, key: &str) -> Result<Option<SessionRow>>;
    async fn session_touch(&mut self, key: &str, now_us: i64) -> Result<()>;
    async fn session_delete(&mut self, key: &str) -> Result<()>;
    /// Deletes the sessions last used before `before_us` and the one-time values expired at
    /// `now_us`.
    async fn sessions_expire(&mut self, before_us: i64, now_us: i64) -> Result<()>;
    /// Keeps a one-time value of `kind` under `key` until `expires_us`.
    async fn once_put(&mut self, kind: &str, key: &str, value: &str, expires_us: i64)
    -> Result<()>;
    /// Takes (reads and deletes) a one-time value: (value, expires_us), or `None` when it is
    /// unknown or already taken.
    async fn once_take(&mut self, kind: &str, key: &str) -> Result<Option<(String, i64)>>;
}

#[async_trait]
impl SessionTx for SqlTx {
    async fn session_put(&mut self, row: &SessionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (key, client, csrf, last_used_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.key)
        .bind(&row.client)
        .bind(&row.csrf)
        .bind(row.last_used_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn session_get(&mut self, key: &str) -> Result<Option<SessionRow>> {
        sqlx::query_as::<_, SessionRow>(
            "SELECT key, client, csrf, last_used_us FROM console_sessions WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn session_touch(&mut self, key: &str, now_us: i64) -> Result<()> {
        sqlx::query("UPDATE console_sessions SET last_used_us = $1 WHERE key = $2")
            .bind(now_us)
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn session_delete(&mut self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE key = $1")
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn sessions_expire(&mut self, before_us: i64, now_us: i64) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE last_used_us < $1")
            .bind(before_us)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM console_once WHERE expires_us <= $1")
            .bind(now_us)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn once_put(
        &mut self,
        kind: &str,
        key: &str,
        value: &str,
        expires_us: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_once (kind, key, value, expires_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(kind)
        .bind(key)
        .bind(value)
        .bind(expires_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn once_take(&mut self, kind: &str, key: &str) -> Result<Option<(String, i64)>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM console_once WHERE kind = $1 AND key = $2 RETURNING value, expires_us",
        )
        .bind(kind)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(row)
    }
}
