//! Strict, lossless JSON parsing for untrusted FHIR input.
//!
//! `serde_json::Value` (with `preserve_order` and `arbitrary_precision`) keeps key order and
//! decimal lexemes exactly, but its own `Deserialize` silently keeps the last of two duplicate
//! keys and only limits nesting at 128. FHIR forbids duplicate keys, and a gateway must bound the
//! depth it accepts, so this module builds the same `Value` through its own visitor that rejects
//! both, and reports where it happened as a FHIRPath-like location.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt;

/// The key `serde_json` uses to hand an arbitrary-precision number to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Why a body is not acceptable JSON, with the location of the problem when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong, without any of the document's values.
    pub reason: String,
    /// The JSON location, as segments (keys and array indexes) from the root.
    pub path: Vec<PathSeg>,
    pub line: usize,
    pub column: usize,
}

/// One step of a location inside a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (line {}, column {})",
            self.reason, self.line, self.column
        )
    }
}

#[derive(Default)]
struct Ctx {
    /// Filled while an error unwinds: innermost segment first.
    error_path: Vec<PathSeg>,
    reason: Option<String>,
}

struct ValueSeed<'c> {
    depth: usize,
    max_depth: usize,
    ctx: &'c RefCell<Ctx>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.allowed(v)?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.allowed(&v)?;
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter::<A::Error>()?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            let seed = ValueSeed {
                depth,
                max_depth: self.max_depth,
                ctx: self.ctx,
            };
            match seq.next_element_seed(seed) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => {
                    self.ctx
                        .borrow_mut()
                        .error_path
                        .push(PathSeg::Index(out.len()));
                    return Err(e);
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if first && key == NUMBER_TOKEN {
                // An arbitrary-precision number: the value is its exact lexeme.
                let lexeme: String = map.next_value()?;
                return serde_json::from_str::<Number>(&lexeme)
                    .map(Value::Number)
                    .map_err(de::Error::custom);
            }
            if first {
                // Only objects (not numbers) count towards nesting depth.
                self.enter::<A::Error>()?;
            }
            first = false;
            if let Some(b) = super::forbidden_character(key.as_bytes()) {
                let reason = format!("an object key holds {}", super::describe_forbidden(b));
                self.ctx.borrow_mut().reason = Some(reason.clone());
                return Err(de::Error::custom(reason));
            }
            if obj.contains_key(&key) {
                let mut ctx = self.ctx.borrow_mut();
                ctx.reason = Some(format!("duplicate key '{key}'"));
                ctx.error_path.push(PathSeg::Key(key.clone()));
                return Err(de::Error::custom(format!("duplicate key '{key}'")));
            }
            let seed = ValueSeed {
                depth: self.depth + 1,
                max_depth: self.max_depth,
                ctx: self.ctx,
            };
            match map.next_value_seed(seed) {
                Ok(v) => {
                    obj.insert(key, v);
                }
                Err(e) => {
                    self.ctx.borrow_mut().error_path.push(PathSeg::Key(key));
                    return Err(e);
                }
            }
        }
        if first {
            self.enter::<A::Error>()?;
        }
        Ok(Value::Object(obj))
    }
}

impl ValueSeed<'_> {
    /// Refuses a string holding a character FHIR forbids in every string (U+0000 and the other
    /// control characters but tab, CR and LF): no element, known or not, may carry one, and
    /// PostgreSQL cannot store U+0000 in text at all.
    fn allowed<E: de::Error>(&self, v: &str) -> Result<(), E> {
        match super::forbidden_character(v.as_bytes()) {
            None => Ok(()),
            Some(b) => {
                let reason = format!("a string holds {}", super::describe_forbidden(b));
                self.ctx.borrow_mut().reason = Some(reason.clone());
                Err(E::custom(reason))
            }
        }
    }

    /// Checks the depth of the container being entered and returns the depth of its children.
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= self.max_depth {
            let reason = format!(
                "JSON nesting is deeper than the limit of {}",
                self.max_depth
            );
            self.ctx.borrow_mut().reason = Some(reason.clone());
            return Err(E::custom(reason));
        }
        Ok(self.depth + 1)
    }
}

/// Parses `bytes` as one JSON document into a lossless `Value`, rejecting duplicate keys and
/// nesting deeper than `max_depth` containers.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let ctx = RefCell::new(Ctx::default());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Our own depth limit is the one that counts; serde_json's is lifted only when ours is
    // tighter than its built-in 128, so the stack stays bounded either way.
    let seed = ValueSeed {
        depth: 0,
        max_depth: max_depth.min(120),
        ctx: &ctx,
    };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    result.map_err(|e| {
        let ctx = ctx.into_inner();
        let mut path = ctx.error_path;
        path.reverse();
        let reason = ctx.reason.unwrap_or_else(|| describe_syntax_error(&e));
        JsonError {
            reason,
            path,
            line: e.line(),
            column: e.column(),
        }
    })
}

/// A reason for a syntax error that never repeats the document's content.
fn describe_syntax_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "the JSON document ends before it is complete".into(),
        Category::Syntax => {
            // serde_json's syntax messages name the expected token, never the input's values.
            let msg = e.to_string();
            let head = msg
                .split(" at line ")
                .next()
                .unwrap_or("invalid JSON syntax");
            format!("invalid JSON: {head}")
        }
        Category::Data => "the JSON document holds a value that cannot be represented".into(),
        Category::Io => "the body could not be read".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_decimal_lexemes() {
        let text = r#"{"b":1.50,"a":[1,-0.000100,12345678901234567890.0,{"z":null,"y":true}],"_given":[null,{"id":"x"}]}"#;
        let v = parse_strict(text.as_bytes(), 64).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        // Exponents keep their value and digits; serde_json writes the sign explicitly, exactly as
        // its own `Value` does.
        let plain: Value = serde_json::from_str("2.0e3").unwrap();
        assert_eq!(parse_strict(b"2.0e3", 8).unwrap(), plain);
    }

    #[test]
    fn rejects_duplicate_keys_with_their_path() {
        let text = r#"{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}"#;
        let err = parse_strict(text.as_bytes(), 64).unwrap_err();
        assert_eq!(err.reason, "duplicate key 'family'");
        assert_eq!(
            err.path,
            vec![
                PathSeg::Key("name".into()),
                PathSeg::Index(0),
                PathSeg::Key("family".into())
            ]
        );
    }

    #[test]
    fn refuses_control_characters_in_strings_and_keys_with_their_path() {
        let e = parse_strict(br#"{"a": [{"b": "x\u0000y"}]}"#, 32).unwrap_err();
        assert!(e.reason.contains("U+0000"), "{}", e.reason);
        assert_eq!(
            e.path,
            vec![
                PathSeg::Key("a".into()),
                PathSeg::Index(0),
                PathSeg::Key("b".into())
            ]
        );
        let e = parse_strict(br#"{"a\u0007": 1}"#, 32).unwrap_err();
        assert!(e.reason.contains("U+0007"), "{}", e.reason);
        assert!(parse_strict(br#"{"a": "tab\tcr\rlf\n"}"#, 32).is_ok());
    }

    #[test]
    fn bounds_depth() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_strict(deep.as_bytes(), 64).is_ok());
        let err = parse_strict(deep.as_bytes(), 10).unwrap_err();
        assert!(
            err.reason.contains("deeper than the limit of 10"),
            "{}",
            err.reason
        );
        let very = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_strict(very.as_bytes(), 64).is_err());
    }

    #[test]
    fn syntax_errors_do_not_echo_values() {
        let err = parse_strict(br#"{"name": "Secret Person" oops}"#, 64).unwrap_err();
        assert!(!err.reason.contains("Secret"), "{}", err.reason);
        assert!(parse_strict(b"{} trailing", 64).is_err());
        assert!(parse_strict(b"", 64).is_err());
    }
}
