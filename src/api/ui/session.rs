//! Server-side sessions of the console and the one-time sign-in links of the demo, kept in the
//! store so that every replica behind one address shares them.
//!
//! A session is a random 256-bit value in an `HttpOnly`, `SameSite=Strict` cookie (and `Secure`
//! unless `[ui] secure_cookie = false`); the store keeps only its SHA-256 (`console_sessions`),
//! with the signed-in client (a person), the session's CSRF token and when it was last used. A
//! session unused for `[ui] session_idle_minutes` ends (its last use is written at most once a
//! minute, so a page costs no write). A sign-in link and an OpenID Connect `state` are random
//! values too, kept as hashes (`console_once`) until they are used once or their
//! `[ui] sign_in_link_minutes` pass: a link redeemed on one replica is refused on every other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::access::Client;
use crate::auth::{new_token, token_hash};
use crate::config::UiSettings;
use crate::fhir::time::now_us;
use crate::outbound::oidc::{Endpoints, OidcClient};
use crate::store::{SessionRow, Store, StoreError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cb_session";
/// The language cookie's name.
pub const LANG_COOKIE: &str = "cb_lang";

/// How stale a session's recorded last use may get before a request records it again.
const TOUCH_EVERY_US: i64 = 60_000_000;

/// A signed-in person's session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub client: Client,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// The console's sign-in state, in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
    /// The OpenID Connect issuer's client and endpoints, once discovered.
    pub(super) issuer: OnceCell<(OidcClient, Endpoints)>,
    idle: Duration,
    link_ttl: Duration,
    secure: bool,
}

/// A stored client that does not read back (never its contents: only where and why).
fn corrupt(what: &str, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        error: e.to_string(),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Sessions {
    pub fn new(settings: &UiSettings, store: Arc<dyn Store>) -> Sessions {
        Sessions {
            store,
            issuer: OnceCell::const_new(),
            idle: Duration::from_secs(u64::from(settings.session_idle_minutes) * 60),
            link_ttl: Duration::from_secs(u64::from(settings.sign_in_link_minutes) * 60),
            secure: settings.secure_cookie,
        }
    }

    /// Keeps a one-time value for the lifetime of a sign-in link; expired ones are dropped.
    async fn keep_once(&self, kind: &str, token: &str, value: &str) -> Result<(), StoreError> {
        let now = now_us();
        let mut tx = self.store.begin().await?;
        tx.sessions_expire(now - micros(self.idle), now).await?;
        tx.once_put(kind, &token_hash(token), value, now + micros(self.link_ttl))
            .await?;
        tx.commit().await
    }

    /// Takes a one-time value once, if it has not expired.
    async fn take_once(&self, kind: &str, token: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.store.begin().await?;
        let found = tx.once_take(kind, &token_hash(token)).await?;
        tx.commit().await?;
        Ok(found.and_then(|(value, until)| (until > now_us()).then_some(value)))
    }

    /// A one-time sign-in link's token for `client` (the demo prints it in a URL).
    pub async fn mint_link(&self, client: Client) -> Result<String, StoreError> {
        let token = new_token();
        let value = serde_json::to_string(&client).map_err(|e| corrupt("sign-in link", &e))?;
        self.keep_once("link", &token, &value).await?;
        Ok(token)
    }

    /// Uses a sign-in link: the new session's cookie value, or `None` when the link is unknown,
    /// used or expired. A link works once, whatever happens next, on any replica.
    pub async fn redeem(&self, token: &str) -> Result<Option<String>, StoreError> {
        let Some(value) = self.take_once("link", token).await? else {
            return Ok(None);
        };
        let client: Client =
            serde_json::from_str(&value).map_err(|e| corrupt("sign-in link", &e))?;
        self.start(client).await.map(Some)
    }

    /// Begins an OpenID Connect sign-in: its `state` and PKCE code verifier (valid once, for
    /// the lifetime of a sign-in link).
    pub async fn begin_sign_in(&self) -> Result<(String, String), StoreError> {
        let (state, verifier) = (new_token(), new_token());
        self.keep_once("state", &state, &verifier).await?;
        Ok((state, verifier))
    }

    /// The verifier of a sign-in under way, once; `None` for an unknown, used or late `state`.
    pub async fn finish_sign_in(&self, state: &str) -> Result<Option<String>, StoreError> {
        self.take_once("state", state).await
    }

    /// Starts a session for `client`; its cookie value.
    pub async fn start(&self, client: Client) -> Result<String, StoreError> {
        let cookie = new_token();
        let now = now_us();
        let row = SessionRow {
            key: token_hash(&cookie),
            client: serde_json::to_string(&client).map_err(|e| corrupt("console session", &e))?,
            csrf: new_token(),
            last_used_us: now,
        };
        let mut tx = self.store.begin().await?;
        tx.sessions_expire(now - micros(self.idle), now).await?;
        tx.session_put(&row).await?;
        tx.commit().await?;
        Ok(cookie)
    }

    /// The live session of a cookie value (its idle time starts again), or `None`.
    pub async fn get(&self, cookie: &str) -> Result<Option<Session>, StoreError> {
        let key = token_hash(cookie);
        let now = now_us();
        let row = {
            let mut tx = self.store.begin_read().await?;
            tx.session_get(&key).await?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        if now - row.last_used_us >= micros(self.idle) {
            self.end(cookie).await?;
            return Ok(None);
        }
        if now - row.last_used_us >= TOUCH_EVERY_US {
            let mut tx = self.store.begin().await?;
            tx.session_touch(&key, now).await?;
            tx.commit().await?;
        }
        let client: Client =
            serde_json::from_str(&row.client).map_err(|e| corrupt("console session", &e))?;
        Ok(Some(Session {
            client,
            csrf: row.csrf,
        }))
    }

    /// Ends the session of a cookie value (on every replica).
    pub async fn end(&self, cookie: &str) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        tx.session_delete(&token_hash(cookie)).await?;
        tx.commit().await
    }

    /// The `Set-Cookie` value that carries a session.
    pub fn cookie(&self, value: &str) -> String {
        format!(
            "{SESSION_COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.idle.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    async fn sessions(idle_minutes: u32) -> (tempfile::TempDir, Sessions) {
        let (dir, store) = crate::store::tests::sqlite_store().await;
        let settings = UiSettings {
            session_idle_minutes: idle_minutes,
            ..UiSettings::default()
        };
        (dir, Sessions::new(&settings, Arc::new(store)))
    }

    #[tokio::test]
    async fn a_link_signs_in_once() {
        let (_dir, s) = sessions(30).await;
        let token = s
            .mint_link(Client::system("nurse", Role::CareTeam))
            .await
            .unwrap();
        let cookie = s
            .redeem(&token)
            .await
            .unwrap()
            .expect("the first use signs in");
        let session = s.get(&cookie).await.unwrap().expect("a session");
        assert_eq!(session.client.id, "nurse");
        assert!(
            s.redeem(&token).await.unwrap().is_none(),
            "the second use is refused"
        );
        assert!(s.redeem("cb_unknown").await.unwrap().is_none());
        let (state, verifier) = s.begin_sign_in().await.unwrap();
        assert_eq!(s.finish_sign_in(&state).await.unwrap(), Some(verifier));
        assert_eq!(s.finish_sign_in(&state).await.unwrap(), None);
        s.end(&cookie).await.unwrap();
        assert!(s.get(&cookie).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_idle_session_ends() {
        let (_dir, s) = sessions(0).await;
        let cookie = s
            .start(Client::system("nurse", Role::CareTeam))
            .await
            .unwrap();
        assert!(s.get(&cookie).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn cookies_and_tokens() {
        assert_eq!(
            cookie_value("a=1; cb_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("cb_sessionx=1", SESSION_COOKIE), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        let (_dir, s) = sessions(30).await;
        let c = s.cookie("v");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
