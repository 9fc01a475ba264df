//! Server-side sessions of the console and the one-time sign-in links of the demo.
//!
//! A session is a random 256-bit value in an `HttpOnly`, `SameSite=Strict` cookie (and `Secure`
//! unless `[ui] secure_cookie = false`); the server keeps only its SHA-256, with the signed-in
//! client (a person), the session's CSRF token and when it was last used. A session unused for
//! `[ui] session_idle_minutes` ends. A sign-in link is a random value too, kept as a hash until
//! it is used once or its `[ui] sign_in_link_minutes` pass. Sessions live in the memory of the
//! replica that created them (a restart signs everybody out; behind a load balancer, route a
//! session to its replica).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::access::Client;
use crate::auth::{new_token, token_hash};
use crate::config::UiSettings;
use crate::outbound::oidc::{Endpoints, OidcClient};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cb_session";
/// The language cookie's name.
pub const LANG_COOKIE: &str = "cb_lang";

/// A signed-in person's session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub client: Client,
    /// The token every form of this session carries.
    pub csrf: String,
}

struct Live {
    session: Session,
    last_seen: Instant,
}

struct Link {
    client: Client,
    expires: Instant,
}

/// The console's sign-in state: live sessions and unused sign-in links.
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    links: Mutex<HashMap<String, Link>>,
    /// OpenID Connect sign-ins under way: hash of `state` → PKCE verifier, until when.
    pending: Mutex<HashMap<String, (String, Instant)>>,
    /// The OpenID Connect issuer's client and endpoints, once discovered.
    pub(super) issuer: OnceCell<(OidcClient, Endpoints)>,
    idle: Duration,
    link_ttl: Duration,
    secure: bool,
}

/// A poisoned lock still holds a consistent map (every critical section is one map operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    pub fn new(settings: &UiSettings) -> Sessions {
        Sessions {
            live: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            issuer: OnceCell::const_new(),
            idle: Duration::from_secs(u64::from(settings.session_idle_minutes) * 60),
            link_ttl: Duration::from_secs(u64::from(settings.sign_in_link_minutes) * 60),
            secure: settings.secure_cookie,
        }
    }

    /// A one-time sign-in link's token for `client` (the demo prints it in a URL).
    pub fn mint_link(&self, client: Client) -> String {
        let token = new_token();
        let now = Instant::now();
        let mut links = lock(&self.links);
        links.retain(|_, l| l.expires > now);
        links.insert(
            token_hash(&token),
            Link {
                client,
                expires: now + self.link_ttl,
            },
        );
        token
    }

    /// Uses a sign-in link: the new session's cookie value, or `None` when the link is unknown,
    /// used or expired. A link works once, whatever happens next.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let link = lock(&self.links).remove(&token_hash(token))?;
        if link.expires <= Instant::now() {
            return None;
        }
        Some(self.start(link.client))
    }

    /// Begins an OpenID Connect sign-in: its `state` and PKCE code verifier (valid once, for
    /// the lifetime of a sign-in link).
    pub fn begin_sign_in(&self) -> (String, String) {
        let (state, verifier) = (new_token(), new_token());
        let now = Instant::now();
        let mut pending = lock(&self.pending);
        pending.retain(|_, (_, until)| *until > now);
        pending.insert(token_hash(&state), (verifier.clone(), now + self.link_ttl));
        (state, verifier)
    }

    /// The verifier of a sign-in under way, once; `None` for an unknown, used or late `state`.
    pub fn finish_sign_in(&self, state: &str) -> Option<String> {
        let (verifier, until) = lock(&self.pending).remove(&token_hash(state))?;
        (until > Instant::now()).then_some(verifier)
    }

    /// Starts a session for `client`; its cookie value.
    pub fn start(&self, client: Client) -> String {
        let cookie = new_token();
        let now = Instant::now();
        let mut live = lock(&self.live);
        let idle = self.idle;
        live.retain(|_, s| now.duration_since(s.last_seen) < idle);
        live.insert(
            token_hash(&cookie),
            Live {
                session: Session {
                    client,
                    csrf: new_token(),
                },
                last_seen: now,
            },
        );
        cookie
    }

    /// The live session of a cookie value (its idle time starts again), or `None`.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = token_hash(cookie);
        let now = Instant::now();
        let mut live = lock(&self.live);
        let entry = live.get_mut(&key)?;
        if now.duration_since(entry.last_seen) >= self.idle {
            live.remove(&key);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    /// Ends the session of a cookie value.
    pub fn end(&self, cookie: &str) {
        lock(&self.live).remove(&token_hash(cookie));
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

    fn sessions(idle_minutes: u32) -> Sessions {
        Sessions::new(&UiSettings {
            session_idle_minutes: idle_minutes,
            ..UiSettings::default()
        })
    }

    #[test]
    fn a_link_signs_in_once() {
        let s = sessions(30);
        let token = s.mint_link(Client::system("nurse", Role::CareTeam));
        let cookie = s.redeem(&token).expect("the first use signs in");
        assert_eq!(s.get(&cookie).expect("a session").client.id, "nurse");
        assert!(s.redeem(&token).is_none(), "the second use is refused");
        assert!(s.redeem("cb_unknown").is_none());
        s.end(&cookie);
        assert!(s.get(&cookie).is_none());
    }

    #[test]
    fn cookies_and_tokens() {
        assert_eq!(
            cookie_value("a=1; cb_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("cb_sessionx=1", SESSION_COOKIE), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        let c = sessions(30).cookie("v");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
