//! What a Reference in a sector's resource points at, across sectors: used by routing (to
//! find a Communication's recipients) and by mapping (to rewrite references for a target).

use serde_json::Value;
use std::collections::BTreeSet;

use crate::config::Settings;
use crate::fhir::{parse_conditional, parse_relative};
use crate::ids::gateway_id;
use crate::store::{Result, StoreTx};

/// A resource that a reference resolves to, in the sector that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    pub gid: String,
}

/// What a reference resolves to.
#[derive(Debug, Clone, Default)]
pub struct RefTarget {
    /// Every sector holding the referenced resource (its origin, or a sector holding the same
    /// business identifier).
    pub owners: BTreeSet<String>,
    pub found: Vec<Found>,
}

impl RefTarget {
    fn add(&mut self, f: Found) {
        self.owners.insert(f.sector.clone());
        if !self.found.contains(&f) {
            self.found.push(f);
        }
    }

    /// The referenced resource as `sector` holds it, if it does.
    pub fn in_sector(&self, sector: &str) -> Option<&Found> {
        self.found.iter().find(|f| f.sector == sector)
    }
}

/// An absolute `http(s)` URL reduced to what decides where it points: the host in lowercase
/// (every loopback name as `127.0.0.1`), the port (`None` for the scheme's default, so that
/// `:80`/`:443` and no port are one; the scheme itself does not count), the path
/// percent-decoded without empty segments, and the query percent-decoded. User info and the
/// fragment are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalUrl {
    pub host: String,
    pub port: Option<u16>,
    /// Segments joined by `/`, no leading or trailing slash.
    pub path: String,
    pub query: Option<String>,
}

/// [`NormalUrl`] of `url`, if it is an absolute `http` or `https` URL.
pub fn normalise_url(url: &str) -> Option<NormalUrl> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_host_port(host_port)?;
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (
            p,
            Some(
                percent_encoding::percent_decode_str(q)
                    .decode_utf8_lossy()
                    .into_owned(),
            ),
        ),
        None => (tail, None),
    };
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let path: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    Some(NormalUrl {
        host: canonical_host(host),
        port: port.filter(|p| *p != default_port),
        path: path.join("/"),
        query,
    })
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let port = |p: &str| -> Option<Option<u16>> {
        if p.is_empty() {
            Some(None)
        } else {
            p.parse().ok().map(Some)
        }
    };
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return Some((host, port(after.strip_prefix(':').unwrap_or(""))?));
    }
    match s.rsplit_once(':') {
        Some((host, p)) => Some((host, port(p)?)),
        None => Some((s, None)),
    }
}

/// Lowercase, without a trailing dot; `localhost`, `*.localhost`, `127.0.0.0/8` and `::1`
/// are all `127.0.0.1`.
fn canonical_host(host: &str) -> String {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let loopback = h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    if loopback { "127.0.0.1".into() } else { h }
}

/// Where an absolute reference lies: under a configured sector's base, with what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The sector ([`crate::config::GATEWAY_SECTOR`] for the gateway's own cross-sector base).
    pub sector: String,
    /// What follows the base, percent-decoded: `Type/id`, `Type/id/_history/v`, `Type?query`.
    pub rest: String,
}

impl Located {
    /// `(Type, id)` when the rest is a literal reference.
    pub fn relative(&self) -> Option<(&str, &str)> {
        parse_relative(&self.rest)
    }

    /// The resource type named, for a literal or a conditional reference.
    pub fn rtype(&self) -> Option<&str> {
        if let Some((t, _)) = self.relative() {
            return Some(t);
        }
        let (t, _) = self.rest.split_once('?')?;
        (!t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric())).then_some(t)
    }
}

/// Every base a reference may name a sector by: its `base_url`, its `base_url_aliases`, and
/// the gateway's own base for it (`<own FHIR base>/<sector>`); and the gateway's own
/// cross-sector base.
fn bases(settings: &Settings) -> Vec<(&str, String)> {
    let own = settings.server.own_fhir_base();
    let mut out = vec![(crate::config::GATEWAY_SECTOR, own.clone())];
    for s in &settings.sectors {
        out.extend(s.base_url.iter().map(|b| (s.id.as_str(), b.clone())));
        out.extend(
            s.base_url_aliases
                .iter()
                .map(|b| (s.id.as_str(), b.clone())),
        );
        out.push((
            s.id.as_str(),
            format!("{}/{}", own.trim_end_matches('/'), s.id),
        ));
    }
    out
}

/// The one reference normaliser: the configured sector (or the gateway itself) whose base an
/// absolute URL lies under, however it is spelt — scheme and host case, default ports, user
/// info, loopback names, configured aliases, the gateway's own sector bases — with the rest.
/// The longest matching base wins. `None` for anything else (relative references, `urn:`,
/// URLs outside every configured base).
pub fn locate(settings: &Settings, url: &str) -> Option<Located> {
    let target = normalise_url(url)?;
    let mut best: Option<(usize, Located)> = None;
    for (sector, base) in bases(settings) {
        let Some(b) = normalise_url(&base) else {
            continue;
        };
        if b.host != target.host || b.port != target.port {
            continue;
        }
        let rest = if b.path.is_empty() {
            target.path.as_str()
        } else if target.path == b.path {
            ""
        } else {
            match target
                .path
                .strip_prefix(b.path.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                Some(r) => r,
                None => continue,
            }
        };
        if best.as_ref().is_some_and(|(len, _)| *len >= b.path.len()) {
            continue;
        }
        let rest = match &target.query {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let located = Located {
            sector: sector.to_owned(),
            rest,
        };
        best = Some((b.path.len(), located));
    }
    best.map(|(_, l)| l)
}

/// Types a logical reference without `type` may name (recipients, authors, members).
const PARTY_TYPES: [&str; 5] = [
    "PractitionerRole",
    "CareTeam",
    "Practitioner",
    "Organization",
    "RelatedPerson",
];

/// Resolves one Reference element (an object with `reference`, `identifier`, `type`) of a
/// resource held by `sector`.
pub async fn reference_target(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    sector: &str,
    reference: &Value,
) -> Result<RefTarget> {
    let mut out = RefTarget::default();
    let literal = reference.get("reference").and_then(Value::as_str);
    match literal {
        Some(r) if r.starts_with('#') || r.starts_with("urn:") => {}
        Some(r) if normalise_url(r).is_some() => {
            if let Some(at) = locate(settings, r) {
                if let Some((rtype, system, value)) = parse_conditional(&at.rest) {
                    by_identifier(tx, &mut out, rtype, system, value).await?;
                } else if let Some((rtype, rid)) = at.relative() {
                    out.add(Found {
                        sector: at.sector.clone(),
                        rtype: rtype.to_owned(),
                        rid: rid.to_owned(),
                        gid: gateway_id(&at.sector, rtype, rid),
                    });
                }
            }
        }
        Some(r) => {
            if let Some((rtype, system, value)) = parse_conditional(r) {
                by_identifier(tx, &mut out, rtype, system, value).await?;
            } else if let Some((rtype, rid)) = parse_relative(r) {
                local(tx, &mut out, sector, rtype, rid).await?;
            }
        }
        None => {}
    }
    if out.found.is_empty()
        && let Some(ident) = reference.get("identifier")
        && let (Some(system), Some(value)) = (
            ident.get("system").and_then(Value::as_str),
            ident.get("value").and_then(Value::as_str),
        )
    {
        let named = reference.get("type").and_then(Value::as_str);
        let types: Vec<&str> = match named {
            Some(t) => vec![t],
            None => PARTY_TYPES.to_vec(),
        };
        for t in types {
            by_identifier(tx, &mut out, t, system, value).await?;
        }
    }
    Ok(out)
}

async fn by_identifier(
    tx: &mut dyn StoreTx,
    out: &mut RefTarget,
    rtype: &str,
    system: &str,
    value: &str,
) -> Result<()> {
    for (owner, gid, rid) in tx.identifier_owners(rtype, system, value).await? {
        out.add(Found {
            sector: owner,
            rtype: rtype.to_owned(),
            rid,
            gid,
        });
    }
    Ok(())
}

/// A relative reference in `sector`'s resource: a copy the gateway delivered there (it belongs
/// to the copy's origin), or the sector's own resource (with whoever else holds its business
/// identifiers).
async fn local(
    tx: &mut dyn StoreTx,
    out: &mut RefTarget,
    sector: &str,
    rtype: &str,
    rid: &str,
) -> Result<()> {
    if let Some(copy) = tx.delivered_by_target_id(sector, rtype, rid).await?
        && let Some(origin) = tx.get(&copy.gid).await?
    {
        out.add(Found {
            sector: origin.sector,
            rtype: origin.rtype,
            rid: origin.rid,
            gid: origin.gid,
        });
        return Ok(());
    }
    let gid = gateway_id(sector, rtype, rid);
    out.add(Found {
        sector: sector.to_owned(),
        rtype: rtype.to_owned(),
        rid: rid.to_owned(),
        gid: gid.clone(),
    });
    if let Some(own) = tx.get(&gid).await? {
        let body: Value = own.json()?;
        for (system, value) in crate::fhir::identifiers(&body) {
            if system == super::SOURCE_ID_SYSTEM {
                continue;
            }
            by_identifier(tx, out, rtype, system, value).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let text = r#"
            [server]
            public_base_url = "https://gateway.example.dk"
            [[sectors]]
            id = "gp"
            name = "GP"
            kind = "general-practice"
            base_url = "http://127.0.0.1:8081/fhir"
            [[sectors]]
            id = "municipality"
            name = "Municipality"
            kind = "municipality"
            base_url = "https://fhir.kommune.dk/r4/"
            base_url_aliases = ["http://kommune-fhir.internal:8080/r4"]
        "#;
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn every_spelling_of_a_sector_base_is_located() {
        let s = settings();
        let at = |u: &str| locate(&s, u).map(|l| (l.sector, l.rest));
        let gp = |r: &str| Some(("gp".to_owned(), r.to_owned()));
        for url in [
            "http://127.0.0.1:8081/fhir/Patient/1",
            "HTTP://127.0.0.1:8081/fhir/Patient/1",
            "http://localhost:8081/fhir/Patient/1",
            "http://LOCALHOST.:8081/fhir//Patient/1/",
            "http://user:pw@127.0.0.1:8081/fhir/Patient/1",
            "http://[::1]:8081/fhir/Patient/1",
            "http://127.0.0.1:8081/fhir/%50atient/1",
            "https://gateway.example.dk/fhir/gp/Patient/1",
            "https://GATEWAY.example.dk:443/fhir/gp/Patient/1#x",
        ] {
            assert_eq!(at(url), gp("Patient/1"), "{url}");
        }
        assert_eq!(
            at("http://127.0.0.1:8081/fhir/Patient?identifier=a%7Cb"),
            gp("Patient?identifier=a|b")
        );
        let muni = Some(("municipality".to_owned(), "Organization/o1".to_owned()));
        for url in [
            "https://fhir.kommune.dk/r4/Organization/o1",
            "https://fhir.kommune.dk:443/r4/Organization/o1",
            "http://fhir.kommune.dk/r4/Organization/o1",
            "http://kommune-fhir.internal:8080/r4/Organization/o1",
        ] {
            assert_eq!(at(url), muni, "{url}");
        }
        assert_eq!(
            at("https://gateway.example.dk/fhir/Patient/abc"),
            Some(("carebridge".to_owned(), "Patient/abc".to_owned()))
        );
        for outside in [
            "http://127.0.0.1:8082/fhir/Patient/1",
            "https://fhir.kommune.dk/other/Organization/o1",
            "Patient/1",
            "urn:uuid:1",
            "ftp://127.0.0.1:8081/fhir/Patient/1",
        ] {
            assert_eq!(at(outside), None, "{outside}");
        }
    }

    #[test]
    fn parses_reference_forms() {
        assert_eq!(parse_relative("Condition/abc"), Some(("Condition", "abc")));
        assert_eq!(
            parse_relative("Condition/abc/_history/2"),
            Some(("Condition", "abc"))
        );
        assert_eq!(parse_relative("Condition/abc/extra"), None);
        assert_eq!(parse_relative("condition/abc"), None);
        assert_eq!(parse_relative("#c1"), None);
        assert_eq!(
            parse_conditional("Patient?identifier=urn:oid:1.2.208.176.1.2|0101011234"),
            Some(("Patient", "urn:oid:1.2.208.176.1.2", "0101011234"))
        );
        assert_eq!(parse_conditional("Patient?name=x"), None);
    }
}
