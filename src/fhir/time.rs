//! Time as the gateway keeps it: microseconds since the epoch, rendered as FHIR `instant`s,
//! and the period a FHIR date or dateTime denotes. The only place that reads the clock.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

/// FHIR `instant` with milliseconds, UTC.
pub fn instant(us: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// An RFC 3339 timestamp (a FHIR `instant`, or a `dateTime` with a time).
pub fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The period a FHIR date or dateTime denotes: [first µs, last µs].
pub fn period(value: &str) -> Option<(i64, i64)> {
    let us = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000) as i64;
    if value.contains('T') {
        let t = OffsetDateTime::parse(value, &Rfc3339).ok()?;
        return Some((us(t), us(t)));
    }
    let parts: Vec<&str> = value.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    let (start, end) = match parts.len() {
        1 => (
            Date::from_calendar_date(year, Month::January, 1).ok()?,
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        ),
        2 => {
            let m = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let s = Date::from_calendar_date(year, m, 1).ok()?;
            let e = if m == Month::December {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(year, m.next(), 1).ok()?
            };
            (s, e)
        }
        3 => {
            let m = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let s = Date::from_calendar_date(year, m, parts[2].parse().ok()?).ok()?;
            (s, s.next_day()?)
        }
        _ => return None,
    };
    let at = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    Some((us(at(start)), us(at(end)) - 1))
}
