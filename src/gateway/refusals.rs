//! Requests refused for want of a valid bearer token (or throttled before authentication),
//! audited without letting a flood grow the log: counted in memory per client address and
//! minute, and written as one audit row per address and minute, with the count of each kind
//! of refusal, once the minute is over (`flush_refusals`, called by a refusal of a later
//! minute, every few seconds by the server, and at shutdown). The row names no token, no
//! path and no request id. A crash loses at most the counts of the last minute.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::Gateway;
use crate::audit::{self, Action, Actor, Interaction, Outcome};
use crate::fhir::time::{instant, now_us};

/// Addresses counted in one minute at most; refusals from further addresses are counted
/// together under "other addresses".
const MAX_ADDRESSES: usize = 10_000;
/// Kinds of refusal named per row at most (they are a closed set of short texts).
const MAX_KINDS: usize = 32;

/// The counts not yet audited: (minute, address) → kind → count.
#[derive(Default)]
pub struct Refusals {
    tally: Mutex<BTreeMap<(i64, String), BTreeMap<String, u64>>>,
}

const MINUTE_US: i64 = 60_000_000;

impl Refusals {
    /// Counts one refusal; true when minutes before this one wait to be audited.
    fn count(&self, address: Option<IpAddr>, kind: &str, now: i64) -> bool {
        let minute = now.div_euclid(MINUTE_US);
        let Ok(mut tally) = self.tally.lock() else {
            return false;
        };
        let mut address = address.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        if tally.len() >= MAX_ADDRESSES && !tally.contains_key(&(minute, address.clone())) {
            address = "other addresses".into();
        }
        let kinds = tally.entry((minute, address)).or_default();
        if kinds.len() < MAX_KINDS || kinds.contains_key(kind) {
            *kinds.entry(kind.to_owned()).or_default() += 1;
        } else {
            *kinds.entry("other".to_owned()).or_default() += 1;
        }
        tally.keys().next().is_some_and(|(m, _)| *m < minute)
    }

    /// Takes the counts of the minutes before `minute` (all of them when `None`).
    fn take(&self, before_minute: Option<i64>) -> Vec<((i64, String), BTreeMap<String, u64>)> {
        let Ok(mut tally) = self.tally.lock() else {
            return Vec::new();
        };
        match before_minute {
            None => std::mem::take(&mut *tally).into_iter().collect(),
            Some(m) => {
                let keep = tally.split_off(&(m, String::new()));
                std::mem::replace(&mut *tally, keep).into_iter().collect()
            }
        }
    }
}

/// The audit detail of one address and minute.
fn detail(minute: i64, address: &str, kinds: &BTreeMap<String, u64>) -> (u64, String) {
    let total: u64 = kinds.values().sum();
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    (
        total,
        format!(
            "{total} requests from {address} refused for want of a valid bearer token in the minute from {}: {}",
            instant(minute * MINUTE_US),
            parts.join("; ")
        ),
    )
}

impl Gateway {
    /// Counts a request refused for want of a valid bearer token (`kind` says why, never with
    /// the token) from `address`; audits the minutes that are over.
    pub async fn refused_authentication(&self, address: Option<IpAddr>, kind: &str) {
        if self.refusals.count(address, kind, now_us()) {
            self.flush_refusals(false).await;
        }
    }

    /// Writes one audit row per client address and minute counted: of the minutes that are
    /// over, or of all of them (`all`, at shutdown and in tests).
    pub async fn flush_refusals(&self, all: bool) {
        let minute = now_us().div_euclid(MINUTE_US);
        let taken = self.refusals.take((!all).then_some(minute));
        for ((minute, address), kinds) in taken {
            let actor = Actor {
                client_id: None,
                role: None,
                request_id: None,
                person: None,
            };
            let mut row = audit::row(
                &actor,
                None,
                Action::Execute,
                Interaction::Authenticate,
                Outcome::MinorFailure,
            );
            let (_, text) = detail(minute, &address, &kinds);
            row.detail = Some(text);
            self.write_audit(row).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_address_and_minute() {
        let r = Refusals::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = 1_000 * MINUTE_US;
        assert!(!r.count(Some(a), "no bearer token", t0));
        assert!(!r.count(Some(a), "no bearer token", t0 + 1));
        assert!(!r.count(Some(a), "unknown bearer token", t0 + 2));
        assert!(!r.count(Some(b), "no bearer token", t0 + 3));
        // The next minute: the first one waits to be written.
        assert!(r.count(None, "no bearer token", t0 + MINUTE_US));
        let done = r.take(Some(1_001));
        assert_eq!(done.len(), 2);
        let (total, text) = detail(done[0].0.0, &done[0].0.1, &done[0].1);
        assert_eq!(total, 3);
        assert!(
            text.starts_with("3 requests from 10.0.0.1 refused"),
            "{text}"
        );
        assert!(
            text.contains("2 × no bearer token; 1 × unknown bearer token"),
            "{text}"
        );
        let rest = r.take(None);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, (1_001, "unknown".to_owned()));
        assert!(r.take(None).is_empty());
    }
}
