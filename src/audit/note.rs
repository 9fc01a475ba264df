//! Signed checkpoints of the audit log in the C2SP formats: a checkpoint (`tlog-checkpoint`:
//! origin, tree size, base64 root hash) carried in a signed note (`signed-note`: the text, an
//! empty line, one `— <name> <base64(key id ‖ signature)>` line per signature), signed with
//! Ed25519; and a witness's countersignature (`tlog-cosignature`, `cosignature/v1`: a timestamp
//! and an Ed25519 signature over it and the checkpoint).
//!
//! Keys are written as the note ecosystem writes them: a signer key
//! `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 ‖ seed)>`, a verifier key
//! `<name>+<key id hex>+<base64(0x01 ‖ public key)>` (0x04 for a cosigner's key), the key id
//! being the first four bytes of `SHA-256(name ‖ "\n" ‖ type ‖ public key)`. Pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature algorithm bytes of the C2SP key ids.
const ED25519: u8 = 0x01;
const COSIGNATURE_V1: u8 = 0x04;
const DASH: &str = "\u{2014} ";

/// A note, key or checkpoint that cannot be read or does not verify; the message says what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, NoteError> {
    Err(NoteError(what.into()))
}

fn key_id(name: &str, kind: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A key name: non-empty, no whitespace, no `+` (C2SP signed-note).
fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return err(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        ));
    }
    Ok(())
}

/// An Ed25519 signing key with its name (the log's origin, or a witness's name).
pub struct Signer {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, ***)", self.name)
    }
}

impl Signer {
    /// The key of `seed` (32 random bytes) under `name`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Signer, NoteError> {
        check_name(name)?;
        Ok(Signer {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<Signer, NoteError> {
        let Some(rest) = text.trim().strip_prefix("PRIVATE+KEY+") else {
            return err("a signing key starts with PRIVATE+KEY+");
        };
        // The base64 key may itself hold '+'.
        let parts: Vec<&str> = rest.splitn(3, '+').collect();
        let [name, id, key] = parts.as_slice() else {
            return err("a signing key reads PRIVATE+KEY+<name>+<id>+<key>");
        };
        let bytes = B64.decode(key).or(err("the signing key is not base64"))?;
        let Some((&ED25519, seed)) = bytes.split_first() else {
            return err("the signing key is not an Ed25519 key (type 0x01)");
        };
        let seed: [u8; 32] = seed
            .try_into()
            .or(err("an Ed25519 signing key has 32 bytes"))?;
        let signer = Signer::from_seed(name, seed)?;
        if hex::encode(signer.verifier().id) != *id {
            return err("the signing key's id does not match its name and key");
        }
        Ok(signer)
    }

    /// The text [`Signer::parse`] reads.
    pub fn encode(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.verifier().id),
            B64.encode(bytes)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier of this key's note signatures.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(&self.name, ED25519, self.key.verifying_key())
    }

    /// The verifier of this key's cosignatures (as a witness).
    pub fn cosigner(&self) -> Verifier {
        Verifier::new(&self.name, COSIGNATURE_V1, self.key.verifying_key())
    }

    /// `text` (ending in a newline) as a signed note with this key's signature.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut bytes = self.verifier().id.to_vec();
        bytes.extend_from_slice(&sig.to_bytes());
        format!("{text}\n{DASH}{} {}\n", self.name, B64.encode(bytes))
    }

    /// The `cosignature/v1` line countersigning the checkpoint `body` at `time` (seconds since
    /// the Unix epoch).
    pub fn cosign(&self, body: &str, time: u64) -> String {
        let sig = self.key.sign(cosigned_message(body, time).as_bytes());
        let mut bytes = self.cosigner().id.to_vec();
        bytes.extend_from_slice(&time.to_be_bytes());
        bytes.extend_from_slice(&sig.to_bytes());
        format!("{DASH}{} {}\n", self.name, B64.encode(bytes))
    }
}

fn cosigned_message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// A public key that checks a note signature (type 0x01) or a cosignature (type 0x04).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    kind: u8,
    id: [u8; 4],
    key: VerifyingKey,
}

impl Verifier {
    fn new(name: &str, kind: u8, key: VerifyingKey) -> Verifier {
        Verifier {
            name: name.to_owned(),
            kind,
            id: key_id(name, kind, key.as_bytes()),
            key,
        }
    }

    /// Reads `<name>+<id>+<base64(type ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        let parts: Vec<&str> = text.trim().splitn(3, '+').collect();
        let [name, id, key] = parts.as_slice() else {
            return err("a verifier key reads <name>+<id>+<key>");
        };
        check_name(name)?;
        let bytes = B64.decode(key).or(err("the verifier key is not base64"))?;
        let Some((&kind, public)) = bytes.split_first() else {
            return err("the verifier key is empty");
        };
        if kind != ED25519 && kind != COSIGNATURE_V1 {
            return err("the verifier key is not Ed25519 (type 0x01) or cosignature/v1 (0x04)");
        }
        let public: [u8; 32] = public
            .try_into()
            .or(err("an Ed25519 public key has 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public).or(err("not an Ed25519 public key"))?;
        let v = Verifier::new(name, kind, key);
        if hex::encode(v.id) != *id {
            return err("the verifier key's id does not match its name and key");
        }
        Ok(v)
    }

    /// The text [`Verifier::parse`] reads.
    pub fn encode(&self) -> String {
        let mut bytes = vec![self.kind];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(bytes)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries this key's signature over its text; returns the text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, sigs) = split_note(note)?;
        for (name, bytes) in sigs {
            if name != self.name || bytes.len() < 4 || bytes[..4] != self.id {
                continue;
            }
            let Ok(sig) = Signature::from_slice(&bytes[4..]) else {
                return err("the signature of the key is not 64 bytes");
            };
            return match self.key.verify(text.as_bytes(), &sig) {
                Ok(()) => Ok(text),
                Err(_) => err(format!("the signature of {} does not verify", self.name)),
            };
        }
        err(format!("the note carries no signature of {}", self.name))
    }

    /// The time of this witness's valid cosignature of the checkpoint `body` among `lines`.
    pub fn cosigned(&self, body: &str, lines: &str) -> Result<u64, NoteError> {
        for line in lines.lines() {
            let Some((name, bytes)) = signature_line(line) else {
                continue;
            };
            if name != self.name || bytes.len() != 4 + 8 + 64 || bytes[..4] != self.id {
                continue;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&bytes[4..12]);
            let time = u64::from_be_bytes(t);
            let sig = Signature::from_slice(&bytes[12..]).or(err("bad signature length"))?;
            return match self
                .key
                .verify(cosigned_message(body, time).as_bytes(), &sig)
            {
                Ok(()) => Ok(time),
                Err(_) => err(format!("the cosignature of {} does not verify", self.name)),
            };
        }
        err(format!("no cosignature of {}", self.name))
    }
}

/// A note's text (ending in a newline) and its signature lines as (name, decoded bytes).
/// A signature line: the key name and the decoded signature bytes.
type SignatureLine<'a> = (&'a str, Vec<u8>);

fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let Some(at) = note.rfind("\n\n") else {
        return err("a signed note is its text, an empty line and signature lines");
    };
    let text = &note[..=at];
    let mut sigs = Vec::new();
    for line in note[at + 2..].lines() {
        match signature_line(line) {
            Some(s) => sigs.push(s),
            None => return err("a signed note's last lines must all be signatures"),
        }
    }
    if sigs.is_empty() {
        return err("the note carries no signature");
    }
    Ok((text, sigs))
}

fn signature_line(line: &str) -> Option<(&str, Vec<u8>)> {
    let rest = line.strip_prefix(DASH)?;
    let (name, sig) = rest.split_once(' ')?;
    Some((name, B64.decode(sig).ok()?))
}

/// A checkpoint: the log's origin, its size and the root of the tree of that size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text (the note body).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Reads a checkpoint's text (extension lines after the root are allowed and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.lines();
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return err("a checkpoint has an origin, a tree size and a root hash line");
        };
        let size: u64 = size
            .parse()
            .or(err(format!("the tree size {size:?} is not a number")))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(NoteError("the root hash is not 32 bytes of base64".into()))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Opens a signed checkpoint note with the log's key: the signature must verify and the
    /// origin must be the key's name.
    pub fn open(note: &str, log_key: &Verifier) -> Result<Checkpoint, NoteError> {
        let c = Checkpoint::parse(log_key.open(note)?)?;
        if c.origin != log_key.name() {
            return err(format!(
                "the checkpoint's origin {} is not the key's name {}",
                c.origin,
                log_key.name()
            ));
        }
        Ok(c)
    }
}

/// Base64 of a hash, as proofs and checkpoints carry them.
pub fn b64(h: &Hash) -> String {
    B64.encode(h)
}

/// A hash from base64.
pub fn unb64(s: &str) -> Option<Hash> {
    B64.decode(s.trim()).ok()?.try_into().ok()
}

/// The body of a C2SP tlog-witness `add-checkpoint` request: `old <size>`, the consistency
/// proof (a base64 hash per line), an empty line, the signed checkpoint note.
pub fn add_checkpoint_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for p in proof {
        body.push_str(&b64(p));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Reads an `add-checkpoint` request body into the old size, the proof and the note.
pub fn parse_add_checkpoint(body: &str) -> Result<(u64, Vec<Hash>, &str), NoteError> {
    let Some((head, note)) = body.split_once("\n\n") else {
        return err("an add-checkpoint body is `old N`, proof lines, an empty line and the note");
    };
    let mut lines = head.lines();
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(NoteError("the first line must be `old <size>`".into()))?;
    let proof = lines
        .map(|l| unb64(l).ok_or(NoteError(format!("proof line {l:?} is not a base64 hash"))))
        .collect::<Result<Vec<Hash>, NoteError>>()?;
    Ok((old, proof, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_notes_verify() {
        let s = Signer::from_seed("audit.example", [7; 32]).unwrap();
        let again = Signer::parse(&s.encode()).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let v = Verifier::parse(&s.verifier().encode()).unwrap();
        let c = Checkpoint {
            origin: "audit.example".into(),
            size: 12,
            root: [3; 32],
        };
        let note = s.sign(&c.body());
        assert_eq!(Checkpoint::open(&note, &v).unwrap(), c);
        let forged = note.replacen("\n12\n", "\n13\n", 1);
        assert!(Checkpoint::open(&forged, &v).is_err());
        let other = Signer::from_seed("audit.example", [8; 32]).unwrap();
        assert!(Checkpoint::open(&other.sign(&c.body()), &v).is_err());
        let w = Signer::from_seed("witness.example", [9; 32]).unwrap();
        let line = w.cosign(&c.body(), 1_700_000_000);
        let wv = Verifier::parse(&w.cosigner().encode()).unwrap();
        assert_eq!(wv.cosigned(&c.body(), &line).unwrap(), 1_700_000_000);
        assert!(wv.cosigned(&c.body().replace("12", "11"), &line).is_err());
    }

    /// The example of the Go note package's documentation (golang.org/x/mod/sumdb/note):
    /// these keys and this signed note are published there.
    #[test]
    fn reads_the_published_example() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v = Verifier::parse(vkey).unwrap();
        assert!(v.open(note).is_ok());
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let s = Signer::parse(skey).unwrap();
        assert_eq!(s.verifier().encode(), vkey);
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        assert_eq!(s.sign(text), note);
    }
}
