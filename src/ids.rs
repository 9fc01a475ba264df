//! Identity and content hashes: the gateway id of a sector resource (the same on every
//! replica) and SHA-256 of stored bodies. Pure.

/// The gateway id of a sector resource: stable, the same on every replica, at most 64 chars.
pub fn gateway_id(sector: &str, rtype: &str, rid: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(sector.as_bytes());
    h.update([0]);
    h.update(rtype.as_bytes());
    h.update([0]);
    h.update(rid.as_bytes());
    hex::encode(&h.finalize()[..12])
}

/// SHA-256 (hex) of bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
