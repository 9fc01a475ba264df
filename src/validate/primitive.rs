//! The R4 primitive types and the format rules of their values that the JSON Schema leaves out:
//! integers as written (no exponent, no fraction, 32-bit range), control characters in any
//! string, strict base64, and calendar-valid dates and times. A value of the wrong JSON type is
//! left to the schema (which reports it), so each problem is reported once.

use crate::fhir::json::Node;

/// The R4 primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    String,
    Markdown,
    Code,
    Id,
    Uri,
    Url,
    Canonical,
    Oid,
    Uuid,
    Base64Binary,
    Instant,
    DateTime,
    Date,
    Time,
    Xhtml,
}

impl Primitive {
    pub fn from_name(name: &str) -> Option<Self> {
        use Primitive as P;
        Some(match name {
            "boolean" => P::Boolean,
            "integer" => P::Integer,
            "positiveInt" => P::PositiveInt,
            "unsignedInt" => P::UnsignedInt,
            "decimal" => P::Decimal,
            "string" => P::String,
            "markdown" => P::Markdown,
            "code" => P::Code,
            "id" => P::Id,
            "uri" => P::Uri,
            "url" => P::Url,
            "canonical" => P::Canonical,
            "oid" => P::Oid,
            "uuid" => P::Uuid,
            "base64Binary" => P::Base64Binary,
            "instant" => P::Instant,
            "dateTime" => P::DateTime,
            "date" => P::Date,
            "time" => P::Time,
            "xhtml" => P::Xhtml,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Primitive as P;
        match self {
            P::Boolean => "boolean",
            P::Integer => "integer",
            P::PositiveInt => "positiveInt",
            P::UnsignedInt => "unsignedInt",
            P::Decimal => "decimal",
            P::String => "string",
            P::Markdown => "markdown",
            P::Code => "code",
            P::Id => "id",
            P::Uri => "uri",
            P::Url => "url",
            P::Canonical => "canonical",
            P::Oid => "oid",
            P::Uuid => "uuid",
            P::Base64Binary => "base64Binary",
            P::Instant => "instant",
            P::DateTime => "dateTime",
            P::Date => "date",
            P::Time => "time",
            P::Xhtml => "xhtml",
        }
    }
}

/// Why a primitive value breaks its type's format rules, or `None` when it keeps them (or has
/// a JSON type the schema reports). Never quotes the value.
pub fn check(kind: Primitive, value: &Node<'_>) -> Option<String> {
    check_as(kind, value, false)
}

/// As [`check`], for a value of a tree from the strict parser (`fhir::json`), which refuses
/// every string with a control character FHIR forbids: those are not looked for again.
pub fn check_parsed(kind: Primitive, value: &Node<'_>) -> Option<String> {
    check_as(kind, value, true)
}

fn check_as(kind: Primitive, value: &Node<'_>, parsed: bool) -> Option<String> {
    use Primitive as P;
    match (kind, value) {
        (P::Integer | P::PositiveInt | P::UnsignedInt, Node::Number(n)) => integer(kind, n),
        (P::Boolean | P::Decimal, _) | (_, Node::Number(_) | Node::Bool(_)) => None,
        (P::Xhtml, _) => None,
        (_, Node::String(s)) if parsed => format(kind, s),
        (_, Node::String(s)) => control(kind, s).or_else(|| format(kind, s)),
        _ => None,
    }
}

/// The lexeme of a JSON number in an integer field (the parser keeps it as written).
fn integer(kind: Primitive, lexeme: &str) -> Option<String> {
    let digits = lexeme.strip_prefix('-').unwrap_or(lexeme);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Some(format!(
            "not a valid FHIR {}: digits only, without exponent, fraction or leading zeros",
            kind.name()
        ));
    }
    let value = match lexeme.parse::<i64>() {
        Ok(v) if i32::try_from(v).is_ok() => v,
        _ => {
            return Some(format!(
                "not a valid FHIR {}: outside the 32-bit range",
                kind.name()
            ));
        }
    };
    let negative = lexeme.starts_with('-');
    match kind {
        Primitive::PositiveInt if value < 1 || negative => {
            Some("not a valid FHIR positiveInt: must be 1 or more".into())
        }
        Primitive::UnsignedInt if negative => {
            Some("not a valid FHIR unsignedInt: must be 0 or more, without a sign".into())
        }
        _ => None,
    }
}

/// A control character FHIR forbids in a string-based primitive.
fn control(kind: Primitive, s: &str) -> Option<String> {
    let b = crate::fhir::forbidden_character(s.as_bytes())?;
    let what = if b == 0 {
        "U+0000".to_owned()
    } else {
        format!("a control character (U+{b:04X})")
    };
    Some(format!(
        "not a valid FHIR {}: contains {what}; only tab, CR and LF are allowed below U+0020",
        kind.name()
    ))
}

/// Rules of the string-based primitives beyond the schema's patterns.
fn format(kind: Primitive, s: &str) -> Option<String> {
    match kind {
        Primitive::Base64Binary if !base64_valid(s) => {
            Some("not a valid FHIR base64Binary: not base64 (RFC 4648)".into())
        }
        Primitive::Instant | Primitive::DateTime | Primitive::Date if !calendar_valid(s) => {
            Some(format!("not a valid calendar {}", kind.name()))
        }
        Primitive::Time if !time_valid(s) => Some("not a valid time of day".into()),
        _ => None,
    }
}

/// Base64 (RFC 4648, standard alphabet, padded) with whitespace allowed between groups, as the
/// R4 regex `(\s*([0-9a-zA-Z\+\=]){4}\s*)+` has it (`/` included: the regex's omission is an
/// erratum, every base64 encoder emits it).
pub fn base64_valid(s: &str) -> bool {
    let mut n = 0usize;
    let mut padding = 0usize;
    for b in s.bytes() {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b'=' => padding += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => {}
            _ => return false,
        }
        n += 1;
    }
    n > 0 && n.is_multiple_of(4) && padding <= 2
}

/// True when the date part names a real day and the time part a real time of day. The format
/// itself is checked by the schema pattern; this adds what a regex cannot.
pub fn calendar_valid(s: &str) -> bool {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let year: i64 = match parts.next().and_then(|y| y.parse().ok()) {
        Some(y) => y,
        None => return true, // not a date at all: the pattern check reports it
    };
    if let (Some(m), Some(d)) = (parts.next(), parts.next()) {
        let (Ok(month), Ok(day)) = (m.parse::<u32>(), d.parse::<u32>()) else {
            return true;
        };
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let max = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if day == 0 || day > max {
            return false;
        }
    }
    match time {
        Some(t) => time_valid(t.get(..8).unwrap_or(t)),
        None => true,
    }
}

/// `hh:mm:ss` within a day (the pattern has already checked the shape).
fn time_valid(t: &str) -> bool {
    let mut parts = t.get(..8).unwrap_or(t).split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), Some(sec), None) => {
            h.parse::<u32>().is_ok_and(|h| h < 24)
                && m.parse::<u32>().is_ok_and(|m| m < 60)
                && sec.parse::<u32>().is_ok_and(|s| s < 60)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Node<'_> {
        Node::Number(s)
    }

    fn string_node(s: &str) -> Node<'_> {
        Node::String(s)
    }

    #[test]
    fn integers_as_written() {
        for ok in ["0", "-5", "2147483647", "-2147483648"] {
            assert_eq!(check(Primitive::Integer, &num(ok)), None, "{ok}");
        }
        for bad in [
            "1e+2",
            "1.0",
            "2147483648",
            "123456789012345678901234567890123456789",
        ] {
            assert!(check(Primitive::Integer, &num(bad)).is_some(), "{bad}");
        }
        assert!(check(Primitive::PositiveInt, &num("0")).is_some());
        assert!(check(Primitive::UnsignedInt, &num("-0")).is_some());
        assert_eq!(check(Primitive::UnsignedInt, &num("0")), None);
    }

    #[test]
    fn strings_and_binaries() {
        assert!(check(Primitive::String, &string_node("a\u{0}b")).is_some());
        assert!(check(Primitive::Id, &string_node("a\u{1b}")).is_some());
        assert_eq!(
            check(Primitive::String, &string_node("line\r\n\ttab")),
            None
        );
        assert!(check(Primitive::Base64Binary, &string_node("%%%2@()()")).is_some());
        assert!(check(Primitive::Base64Binary, &string_node("YWJj=")).is_some());
        assert_eq!(
            check(Primitive::Base64Binary, &string_node("YWJj ZA==")),
            None
        );
    }

    #[test]
    fn calendar_dates() {
        for ok in [
            "2024",
            "2024-02",
            "2024-02-29",
            "2023-12-31T23:59:59Z",
            "2000-02-29",
        ] {
            assert!(calendar_valid(ok), "{ok}");
        }
        for bad in [
            "2023-02-29",
            "2024-04-31",
            "1900-02-29",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:61:00Z",
        ] {
            assert!(!calendar_valid(bad), "{bad}");
        }
    }
}
