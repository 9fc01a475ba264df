//! Who is calling: bearer tokens stored only as SHA-256 hashes, and the roles they carry.

use std::collections::HashMap;

use crate::config::ClientSettings;

/// What a client may do. `Sector` writes only under its own sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Sector(String),
    CareTeam,
    Auditor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.split_once(':') {
            Some(("sector", id)) if !id.is_empty() => Some(Role::Sector(id.to_owned())),
            None => match s {
                "careteam" => Some(Role::CareTeam),
                "auditor" => Some(Role::Auditor),
                "admin" => Some(Role::Admin),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Role::Sector(id) => format!("sector:{id}"),
            Role::CareTeam => "careteam".into(),
            Role::Auditor => "auditor".into(),
            Role::Admin => "admin".into(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub role: Role,
}

/// The configured clients, looked up by the hash of the presented token.
#[derive(Debug, Default, Clone)]
pub struct Clients {
    by_hash: HashMap<String, Client>,
}

impl Clients {
    /// Clients without a token hash are skipped (only the demo mints their tokens).
    pub fn from_settings(clients: &[ClientSettings]) -> Self {
        let by_hash = clients
            .iter()
            .filter_map(|c| {
                let role = Role::parse(&c.role)?;
                let hash = c.token_sha256.as_ref()?.to_ascii_lowercase();
                Some((
                    hash,
                    Client {
                        id: c.id.clone(),
                        role,
                    },
                ))
            })
            .collect();
        Clients { by_hash }
    }

    /// The client holding this bearer token, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Client> {
        self.by_hash.get(&token_hash(token))
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// SHA-256 (hex) of a token. Tokens are 256-bit random values, so a plain hash is enough to
/// make a leaked configuration useless to an attacker.
pub fn token_hash(token: &str) -> String {
    crate::store::content_hash(token.as_bytes())
}

/// A new random bearer token (256 bits, URL-safe).
pub fn new_token() -> String {
    use rand::RngExt;
    let bytes: [u8; 32] = rand::rng().random();
    format!("cb_{}", hex::encode(bytes))
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
}
