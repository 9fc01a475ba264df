//! Who is calling (authentication; what they may do is [`crate::access`]). Two kinds of
//! bearer token:
//!
//! - static tokens (`cb_…`), configured in `[[clients]]` only as SHA-256 hashes;
//! - JWTs from the authorization server configured in `[auth]` (SMART Backend Services): RS256
//!   or ES256, verified against the issuer's JSON Web Key Set, with `iss`, `aud`, `exp` and
//!   `nbf` checked; the client comes from a claim, the role from the `scope` claim through
//!   `[[auth.scopes]]`.
//!
//! A static token never contains a dot and a JWT always does, so the two cannot be mistaken for
//! each other. Nothing of a token, its claims or the keys is logged; a refusal names only its
//! kind ([`Refusal`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::access::{Client, Ident, Person, Role};
use crate::config::{AuthSettings, ClientSettings, Settings};
use crate::outbound::jwks::JwksClient;

/// Why a request is not authenticated. Says nothing about the token's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A static token that no client holds (or a JWT while no issuer is configured).
    UnknownToken,
    /// A JWT that failed a check.
    Jwt(JwtRefusal),
}

/// The check a JWT failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not three base64url parts with a JSON header and claims.
    Malformed,
    /// `alg` is not RS256 or ES256 (`none`, HS256, … are never accepted).
    Algorithm,
    /// No key of the issuer's key set has the token's `kid` (and algorithm), even after a
    /// refetch.
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// `exp`, `iss` or `aud` is missing, or a claim has the wrong type.
    MissingClaim,
    /// Neither the client id claim nor `sub` names a usable client id.
    NoClient,
    /// No scope of the token is mapped to a role.
    NoRole,
    /// The token's scopes map to more than one role.
    AmbiguousRole,
    /// A scope maps to role `sector`, but the sector claim is missing or names no configured
    /// sector.
    UnknownSector,
}

impl Refusal {
    /// Why, in words fit for an OperationOutcome and the audit log.
    pub fn describe(&self) -> &'static str {
        match self {
            Refusal::Missing => "no bearer token",
            Refusal::UnknownToken => "unknown bearer token",
            Refusal::Jwt(j) => match j {
                JwtRefusal::Malformed => "bearer JWT refused: malformed",
                JwtRefusal::Algorithm => {
                    "bearer JWT refused: algorithm not accepted (RS256 or ES256 only)"
                }
                JwtRefusal::UnknownKey => {
                    "bearer JWT refused: no key of the issuer's key set matches its kid"
                }
                JwtRefusal::Signature => "bearer JWT refused: signature does not verify",
                JwtRefusal::Expired => "bearer JWT refused: expired",
                JwtRefusal::NotYetValid => "bearer JWT refused: not valid yet (nbf)",
                JwtRefusal::Issuer => "bearer JWT refused: issuer not accepted",
                JwtRefusal::Audience => "bearer JWT refused: audience does not name carebridge",
                JwtRefusal::MissingClaim => {
                    "bearer JWT refused: a required claim (exp, iss, aud) is missing or malformed"
                }
                JwtRefusal::NoClient => "bearer JWT refused: no usable client id claim",
                JwtRefusal::NoRole => "bearer JWT refused: no scope grants a carebridge role",
                JwtRefusal::AmbiguousRole => {
                    "bearer JWT refused: its scopes grant more than one role"
                }
                JwtRefusal::UnknownSector => {
                    "bearer JWT refused: its sector claim names no configured sector"
                }
            },
        }
    }
}

/// The person a `[[clients]]` entry is bound to, if any.
fn configured_person(c: &ClientSettings) -> Option<Person> {
    let person = Person {
        practitioner: c.practitioner.as_deref().and_then(Ident::parse),
        organization: c.organization.as_deref().and_then(Ident::parse),
        sector: c.sector.clone(),
    };
    (person != Person::default()).then_some(person)
}

/// The clients: static ones looked up by the hash of the presented token, and the JWT verifier
/// when an issuer is configured.
#[derive(Debug, Default, Clone)]
pub struct Clients {
    by_hash: HashMap<String, Client>,
    jwt: Option<Arc<JwtVerifier>>,
}

impl Clients {
    /// Clients without a token hash are skipped (only the demo mints their tokens).
    pub fn from_settings(clients: &[ClientSettings]) -> Self {
        let by_hash = clients
            .iter()
            .filter_map(|c| {
                let role = Role::parse(&c.role)?;
                let hash = c.token_sha256.as_ref()?.to_ascii_lowercase();
                let mut client = Client::system(c.id.clone(), role);
                client.person = configured_person(c);
                client.asserts_relationship = c.asserts_relationship;
                Some((hash, client))
            })
            .collect();
        Clients { by_hash, jwt: None }
    }

    /// Accepts JWTs through `verifier` as well.
    pub fn with_jwt(mut self, verifier: Arc<JwtVerifier>) -> Self {
        self.jwt = Some(verifier);
        self
    }

    pub fn jwt(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// The static client holding this bearer token, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Client> {
        self.by_hash.get(&token_hash(token))
    }

    /// The client a bearer token stands for: a static token, or a JWT of the configured issuer.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Client, Refusal> {
        if token.contains('.') {
            return match &self.jwt {
                Some(v) => v.verify(token).await.map_err(Refusal::Jwt),
                None => Err(Refusal::UnknownToken),
            };
        }
        self.authenticate(token)
            .cloned()
            .ok_or(Refusal::UnknownToken)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.jwt.is_none()
    }
}

/// SHA-256 (hex) of a token. Tokens are 256-bit random values, so a plain hash is enough to
/// make a leaked configuration useless to an attacker.
pub fn token_hash(token: &str) -> String {
    crate::ids::content_hash(token.as_bytes())
}

/// A new random bearer token (256 bits, URL-safe).
pub fn new_token() -> String {
    use rand::RngExt;
    let bytes: [u8; 32] = rand::rng().random();
    format!("cb_{}", hex::encode(bytes))
}

/// A scope's role: fixed, or a sector named by a claim.
#[derive(Debug, Clone)]
enum RoleRule {
    Fixed(Role),
    SectorFromClaim,
}

/// One verification key of the issuer's set.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The cached key set and when it was fetched.
#[derive(Default)]
struct KeyCache {
    keys: Arc<Vec<VerifyKey>>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last attempt, and whether it succeeded.
    attempted: Option<(Instant, bool)>,
}

/// How long after a failed fetch the next may be tried, at most (shorter than the refresh
/// period, so that an issuer that was down at start-up is retried soon).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The largest key set accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The longest token looked at.
const MAX_JWT_BYTES: usize = 16 * 1024;
/// The longest client id taken from a claim.
const MAX_CLIENT_ID: usize = 128;

/// Verifies bearer JWTs of one issuer against its JWKS, fetched over HTTP(S) (through
/// [`crate::outbound::jwks`]) and cached.
///
/// Fetches: at start-up ([`Self::spawn_prefetch`]); when a token names a `kid` that is not
/// cached (key rotation, or a start-up fetch that failed), at most once per `jwks_refresh_secs`
/// (once per 10 s while the last fetch failed), so made-up `kid`s cannot flood the issuer; and
/// in the background when the cached set is older than `jwks_refresh_secs`, so a key the issuer
/// removed stops working within that period. A failed fetch keeps the cached keys.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    jwks_url: String,
    refresh: Duration,
    leeway: u64,
    client_id_claim: String,
    sector_claim: Option<String>,
    person: PersonClaims,
    scopes: HashMap<String, RoleRule>,
    sectors: HashSet<String>,
    jwks: JwksClient,
    cache: RwLock<KeyCache>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// The verifier of `[auth]`, or `None` when no issuer is configured. The settings are
    /// expected to have passed [`Settings::check`].
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Arc<JwtVerifier>>> {
        let a: &AuthSettings = &settings.auth;
        let Some(issuer) = &a.issuer else {
            return Ok(None);
        };
        let scopes = a
            .scopes
            .iter()
            .map(|m| {
                let rule = if m.role == "sector" {
                    RoleRule::SectorFromClaim
                } else {
                    RoleRule::Fixed(Role::parse(&m.role).ok_or_else(|| {
                        anyhow::anyhow!("auth.scopes: '{}' is not a role", m.role)
                    })?)
                };
                Ok((m.scope.clone(), rule))
            })
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        let jwks = JwksClient::new(Duration::from_millis(a.jwks_timeout_ms))?;
        Ok(Some(Arc::new(JwtVerifier {
            issuer: issuer.clone(),
            audience: a.audience.clone().unwrap_or_default(),
            jwks_url: a.jwks_url.clone().unwrap_or_default(),
            refresh: Duration::from_secs(a.jwks_refresh_secs),
            leeway: a.leeway_secs,
            client_id_claim: a.client_id_claim.clone(),
            sector_claim: a.sector_claim.clone(),
            person: PersonClaims::from(a),
            scopes,
            sectors: settings.sectors.iter().map(|s| s.id.clone()).collect(),
            jwks,
            cache: RwLock::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })))
    }

    /// Fetches the key set now (at start-up, so that a wrong `jwks_url` shows in the log early).
    /// Returns whether the fetch succeeded; a failure keeps whatever was cached.
    pub async fn prefetch(&self) -> bool {
        let _guard = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// [`Self::prefetch`] on a task of its own (the application starts without waiting).
    pub fn spawn_prefetch(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.prefetch().await;
        });
    }

    /// The client a JWT stands for, or the check it failed.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Client, JwtRefusal> {
        if token.len() > MAX_JWT_BYTES {
            return Err(JwtRefusal::Malformed);
        }
        let (alg, kid) = peek_header(token)?;
        let (keys, candidates) = self.candidates(alg, kid.as_deref()).await?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        let mut refusal = JwtRefusal::Signature;
        for i in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &keys[i].key, &validation) {
                Ok(data) => return self.client(&data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    refusal = match e.kind() {
                        K::InvalidSignature => {
                            // A token without `kid` is tried against every key of its algorithm.
                            continue;
                        }
                        K::ExpiredSignature => JwtRefusal::Expired,
                        K::ImmatureSignature => JwtRefusal::NotYetValid,
                        K::InvalidIssuer => JwtRefusal::Issuer,
                        K::InvalidAudience => JwtRefusal::Audience,
                        K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => {
                            JwtRefusal::MissingClaim
                        }
                        K::InvalidAlgorithm | K::InvalidAlgorithmName => JwtRefusal::Algorithm,
                        _ => JwtRefusal::Malformed,
                    };
                    break;
                }
            }
        }
        Err(refusal)
    }

    /// The cached keys that may have signed a token of `alg` and `kid`, fetching the set when
    /// the `kid` is unknown (and a fetch is allowed) or the set is stale (in the background).
    async fn candidates(
        self: &Arc<Self>,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(Arc<Vec<VerifyKey>>, Vec<usize>), JwtRefusal> {
        let matching = |keys: &[VerifyKey]| -> Vec<usize> {
            keys.iter()
                .enumerate()
                .filter(|(_, k)| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
                .map(|(i, _)| i)
                .collect()
        };
        let (keys, stale, may_fetch) = self.snapshot();
        let found = matching(&keys);
        if !found.is_empty() {
            if stale && may_fetch {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Ok(_guard) = this.fetching.try_lock()
                        && this.snapshot().2
                    {
                        this.fetch_and_store().await;
                    }
                });
            }
            return Ok((keys, found));
        }
        if may_fetch {
            let _guard = self.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if self.snapshot().2 {
                self.fetch_and_store().await;
            }
        }
        let (keys, _, _) = self.snapshot();
        let found = matching(&keys);
        if found.is_empty() {
            return Err(JwtRefusal::UnknownKey);
        }
        Ok((keys, found))
    }

    /// The cached keys, whether they are stale, and whether a fetch is allowed now.
    fn snapshot(&self) -> (Arc<Vec<VerifyKey>>, bool, bool) {
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let stale = c.fetched.is_none_or(|t| t.elapsed() >= self.refresh);
        let may_fetch = match c.attempted {
            None => true,
            Some((t, true)) => t.elapsed() >= self.refresh,
            Some((t, false)) => t.elapsed() >= self.refresh.min(RETRY_AFTER_FAILURE),
        };
        (c.keys.clone(), stale, may_fetch)
    }

    /// One fetch; the caller holds `fetching`. A failure keeps the cached keys.
    async fn fetch_and_store(&self) -> bool {
        let result = self.fetch().await;
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the issuer's JWKS");
                c.keys = Arc::new(keys);
                c.fetched = Some(now);
                c.attempted = Some((now, true));
                true
            }
            Err(problem) => {
                tracing::warn!(
                    jwks_url = %self.jwks_url,
                    problem = %problem,
                    cached_keys = c.keys.len(),
                    "could not fetch the issuer's JWKS; keeping the cached keys"
                );
                c.attempted = Some((now, false));
                false
            }
        }
    }

    /// One fetch of the key set, and the keys of it this gateway can verify with.
    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let set = self
            .jwks
            .fetch_json(&self.jwks_url, MAX_JWKS_BYTES, "the key set")
            .await?;
        usable_keys(&set)
    }

    /// Maps verified claims to a client.
    fn client(&self, claims: &Map<String, Value>) -> Result<Client, JwtRefusal> {
        let id = [self.client_id_claim.as_str(), "sub"]
            .iter()
            .find_map(|c| {
                claims
                    .get(*c)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .ok_or(JwtRefusal::NoClient)?;
        if id.len() > MAX_CLIENT_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JwtRefusal::NoClient);
        }
        let scopes: Vec<&str> = match claims.get("scope") {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut roles: Vec<Role> = Vec::new();
        for s in scopes {
            let role = match self.scopes.get(s) {
                None => continue,
                Some(RoleRule::Fixed(r)) => r.clone(),
                Some(RoleRule::SectorFromClaim) => {
                    let sector = self
                        .sector_claim
                        .as_deref()
                        .and_then(|c| claims.get(c))
                        .and_then(Value::as_str)
                        .filter(|s| self.sectors.contains(*s))
                        .ok_or(JwtRefusal::UnknownSector)?;
                    Role::Sector(sector.to_owned())
                }
            };
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        match roles.len() {
            0 => Err(JwtRefusal::NoRole),
            1 => {
                // The person and the launch context matter to care-team access; an auditor's
                // person names the reviewer of a break-the-glass grant.
                let mut client = Client::system(id, roles.remove(0));
                client.person = self.person.person(claims, &self.sectors);
                client.launch_patient = self.person.launch(claims);
                Ok(client)
            }
            _ => Err(JwtRefusal::AmbiguousRole),
        }
    }
}

/// Where a care-team token names its person and its launch context (`[auth]`).
#[derive(Debug, Clone)]
struct PersonClaims {
    practitioner: Option<(String, String)>,
    organization: Option<(String, String)>,
    sector: Option<String>,
    patient: String,
}

impl From<&AuthSettings> for PersonClaims {
    fn from(a: &AuthSettings) -> Self {
        PersonClaims {
            practitioner: a
                .practitioner_claim
                .clone()
                .map(|c| (c, a.practitioner_system.clone())),
            organization: a
                .organization_claim
                .clone()
                .map(|c| (c, a.organization_system.clone())),
            sector: a.person_sector_claim.clone(),
            patient: a.patient_claim.clone(),
        }
    }
}

impl PersonClaims {
    fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
        claims
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_CLIENT_ID)
    }

    fn ident(claims: &Map<String, Value>, rule: &Option<(String, String)>) -> Option<Ident> {
        let (claim, system) = rule.as_ref()?;
        Self::claim(claims, claim).map(|v| Ident {
            system: system.clone(),
            value: v.to_owned(),
        })
    }

    /// The person the claims name (a sector claim naming no configured sector is ignored).
    fn person(&self, claims: &Map<String, Value>, sectors: &HashSet<String>) -> Option<Person> {
        let person = Person {
            practitioner: Self::ident(claims, &self.practitioner),
            organization: Self::ident(claims, &self.organization),
            sector: self
                .sector
                .as_deref()
                .and_then(|c| Self::claim(claims, c))
                .filter(|s| sectors.contains(*s))
                .map(str::to_owned),
        };
        (person != Person::default()).then_some(person)
    }

    /// The launch context's patient.
    fn launch(&self, claims: &Map<String, Value>) -> Option<String> {
        Self::claim(claims, &self.patient).map(str::to_owned)
    }
}

/// `alg` and `kid` of a JWT's header, read before any key is looked up: only RS256 and ES256
/// pass (so `none` and HMAC with a public key as the secret never reach verification).
fn peek_header(token: &str) -> Result<(Algorithm, Option<String>), JwtRefusal> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtRefusal::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| JwtRefusal::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| JwtRefusal::Malformed)?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some(_) => return Err(JwtRefusal::Algorithm),
        None => return Err(JwtRefusal::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtRefusal::Malformed),
    };
    Ok((alg, kid))
}

/// The keys of a key set this gateway can verify with. Keys it cannot use (encryption keys,
/// other algorithms and curves, RSA below 2048 bits) are skipped; a set without any usable key
/// is refused.
fn usable_keys(set: &Value) -> Result<Vec<VerifyKey>, String> {
    let Some(entries) = set.get("keys").and_then(Value::as_array) else {
        return Err("the key set has no `keys` array".into());
    };
    let keys: Vec<VerifyKey> = entries
        .iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
        .filter_map(|jwk| usable_key(&jwk))
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "none of the {} keys is an RS256 or ES256 signing key",
            entries.len()
        ));
    }
    Ok(keys)
}

/// A JWK this gateway verifies with: an RSA key of at least 2048 bits for RS256 or a P-256 key
/// for ES256, meant for signatures (when `use`, `key_ops` or `alg` say so).
fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    use base64::Engine;
    use jsonwebtoken::jwk::KeyAlgorithm;
    let c = &jwk.common;
    if c.public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if c.key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .ok()?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < 2048 {
                return None;
            }
            if c.key_algorithm.is_some_and(|a| a != KeyAlgorithm::RS256) {
                return None;
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            if c.key_algorithm.is_some_and(|a| a != KeyAlgorithm::ES256) {
                return None;
            }
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: c.key_id.clone(),
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_by_hash_only() {
        let token = new_token();
        let clients = Clients::from_settings(&[ClientSettings {
            id: "gp-system".into(),
            role: "sector:gp".into(),
            token_sha256: Some(token_hash(&token)),
            ..ClientSettings::default()
        }]);
        let c = clients.authenticate(&token).unwrap();
        assert_eq!(c.role, Role::Sector("gp".into()));
        assert!(clients.authenticate("cb_wrong").is_none());
        assert_ne!(new_token(), token);
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("careteam"), Some(Role::CareTeam));
        assert_eq!(Role::parse("sector:"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn headers_other_than_rs256_and_es256_are_refused_before_any_key_lookup() {
        use base64::Engine;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = |h: &str| format!("{}.{}.", enc(h), enc("{}"));
        assert_eq!(
            peek_header(&token(r#"{"alg":"none"}"#)),
            Err(JwtRefusal::Algorithm)
        );
        assert_eq!(
            peek_header(&token(r#"{"alg":"HS256","kid":"k"}"#)),
            Err(JwtRefusal::Algorithm)
        );
        assert_eq!(
            peek_header(&token(r#"{"alg":"ES256","kid":"k"}"#)),
            Ok((Algorithm::ES256, Some("k".into())))
        );
        assert_eq!(peek_header("a.b"), Err(JwtRefusal::Malformed));
        assert_eq!(peek_header("!!.b.c"), Err(JwtRefusal::Malformed));
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        use serde_json::json;
        assert_eq!(
            usable_keys(&json!({ "x": 1 })).err(),
            Some("the key set has no `keys` array".into())
        );
        let set = json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0" },
            { "kty": "RSA", "n": "AQAB", "e": "AQAB" },
            { "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA" },
            "not a key"
        ] });
        assert_eq!(
            usable_keys(&set).err(),
            Some("none of the 4 keys is an RS256 or ES256 signing key".into())
        );
    }

    #[tokio::test]
    async fn a_jwt_without_an_issuer_configured_is_an_unknown_token() {
        let clients = Clients::from_settings(&[]);
        assert_eq!(
            clients.authenticate_bearer("a.b.c").await,
            Err(Refusal::UnknownToken)
        );
    }
}
