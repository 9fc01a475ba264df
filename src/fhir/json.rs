//! Strict, lossless JSON parsing for untrusted FHIR input.
//!
//! `serde_json::Value` (with `preserve_order` and `arbitrary_precision`) keeps key order and
//! decimal lexemes exactly, but its own `Deserialize` silently keeps the last of two duplicate
//! keys and only limits nesting at 128. FHIR forbids duplicate keys, and a gateway must bound the
//! depth it accepts, so this module parses through its own visitor that rejects both, and
//! reports where it happened as a FHIRPath-like location.
//!
//! The one visitor builds either of two trees (`Build`): the owned `Value` the gateway keeps and
//! edits (`parse_strict`), or a `Node` that borrows every string without an escape from the
//! request's bytes (`parse_borrowed`) — what validation reads, with a `Vec` per object instead of
//! a hash map and no copy of the text. Both keep key order and every number's lexeme.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

/// The key `serde_json` uses to hand an arbitrary-precision number to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Objects with more keys than this find duplicates through a hash set instead of a scan.
const SCAN_LIMIT: usize = 16;

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

/// A tree the strict parser can build: the owned `Value`, or the borrowed `Node`.
trait Build<'de>: Sized {
    /// An object being filled.
    type Obj;
    fn null() -> Self;
    fn bool(v: bool) -> Self;
    /// A number as written (`arbitrary_precision` hands every number over as its lexeme).
    fn number(lexeme: String) -> Result<Self, String>;
    fn string(s: Cow<'de, str>) -> Self;
    fn array(items: Vec<Self>) -> Self;
    /// Shared by every object of one parse (the borrowed tree collects members there and
    /// moves each object's into a `Vec` of its exact size when it ends).
    type Scratch: Default;
    fn new_obj(scratch: &RefCell<Self::Scratch>) -> Self::Obj;
    fn has_key(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: &str) -> bool;
    fn insert(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: Cow<'de, str>, v: Self);
    fn object(scratch: &RefCell<Self::Scratch>, obj: Self::Obj) -> Self;
}

impl<'de> Build<'de> for Value {
    type Obj = Map<String, Value>;
    fn null() -> Self {
        Value::Null
    }
    fn bool(v: bool) -> Self {
        Value::Bool(v)
    }
    fn number(lexeme: String) -> Result<Self, String> {
        serde_json::from_str::<Number>(&lexeme)
            .map(Value::Number)
            .map_err(|e| e.to_string())
    }
    fn string(s: Cow<'de, str>) -> Self {
        Value::String(s.into_owned())
    }
    fn array(items: Vec<Self>) -> Self {
        Value::Array(items)
    }
    type Scratch = ();
    fn new_obj(_: &RefCell<()>) -> Self::Obj {
        Map::new()
    }
    fn has_key(_: &RefCell<()>, obj: &mut Self::Obj, key: &str) -> bool {
        obj.contains_key(key)
    }
    fn insert(_: &RefCell<()>, obj: &mut Self::Obj, key: Cow<'de, str>, value: Self) {
        obj.insert(key.into_owned(), value);
    }
    fn object(_: &RefCell<()>, obj: Self::Obj) -> Self {
        Value::Object(obj)
    }
}

/// A JSON value that borrows its strings from the parsed bytes where it can (a string with an
/// escape is decoded into an owned copy). Numbers are kept as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    /// The number's lexeme, exactly as written (`1.50`, `1e+2`, `-0`).
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Object<'a>),
}

/// A JSON object: its members in document order (keys are unique: the parser refuses
/// duplicates). Lookups scan; FHIR objects have a handful of members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Node<'a>)>,
}

impl<'a> Node<'a> {
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.as_object()?.get(key)
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Node<'a>]> {
        match self {
            Node::Array(items) => Some(items),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    /// A view of an owned `Value` (strings and number lexemes borrowed from it).
    pub fn from_value(value: &'a Value) -> Self {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(Cow::Borrowed(n.as_str())),
            Value::String(s) => Node::String(Cow::Borrowed(s)),
            Value::Array(items) => Node::Array(items.iter().map(Node::from_value).collect()),
            Value::Object(map) => Node::Object(Object {
                entries: map
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Node::from_value(v)))
                    .collect(),
            }),
        }
    }

    /// The owned `Value` of this tree (what the gateway keeps), lexemes and key order kept. Fails
    /// only on a number that is not a JSON number (never one the parser produced).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        Ok(match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(serde_json::from_str::<Number>(n)?),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(items) => {
                Value::Array(items.iter().map(Node::to_value).collect::<Result<_, _>>()?)
            }
            Node::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| Ok((k.to_owned(), v.to_value()?)))
                    .collect::<Result<_, serde_json::Error>>()?,
            ),
        })
    }
}

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.as_ref() == key)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }
    pub fn values(&self) -> impl Iterator<Item = &Node<'a>> {
        self.entries.iter().map(|(_, v)| v)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An object of `Node`s being parsed: where its members start on the scratch stack, and a set
/// of its keys once it is large.
struct ObjBuilder {
    start: usize,
    keys: Option<rustc_hash::FxHashSet<Box<str>>>,
}

impl<'de> Build<'de> for Node<'de> {
    type Obj = ObjBuilder;
    fn null() -> Self {
        Node::Null
    }
    fn bool(v: bool) -> Self {
        Node::Bool(v)
    }
    fn number(lexeme: String) -> Result<Self, String> {
        Ok(Node::Number(Cow::Owned(lexeme)))
    }
    fn string(s: Cow<'de, str>) -> Self {
        Node::String(s)
    }
    fn array(items: Vec<Self>) -> Self {
        Node::Array(items)
    }
    type Scratch = Vec<(Cow<'de, str>, Node<'de>)>;
    fn new_obj(scratch: &RefCell<Self::Scratch>) -> Self::Obj {
        ObjBuilder {
            start: scratch.borrow().len(),
            keys: None,
        }
    }
    fn has_key(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: &str) -> bool {
        let scratch = scratch.borrow();
        let entries = scratch.get(obj.start..).unwrap_or(&[]);
        if entries.len() < SCAN_LIMIT {
            return entries.iter().any(|(k, _)| k.as_ref() == key);
        }
        // A large object: a set of its keys keeps duplicate detection linear.
        let keys = obj
            .keys
            .get_or_insert_with(|| entries.iter().map(|(k, _)| k.as_ref().into()).collect());
        keys.contains(key)
    }
    fn insert(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: Cow<'de, str>, v: Self) {
        if let Some(keys) = &mut obj.keys {
            keys.insert(key.as_ref().into());
        }
        scratch.borrow_mut().push((key, v));
    }
    fn object(scratch: &RefCell<Self::Scratch>, obj: Self::Obj) -> Self {
        // The members of every object inside this one were moved out when it ended: what is
        // above `start` is this object's, in order.
        let entries = scratch.borrow_mut().drain(obj.start..).collect();
        Node::Object(Object { entries })
    }
}

/// A key, borrowed from the input when it has no escape.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

struct Seed<'c, 'de, T: Build<'de>> {
    depth: usize,
    max_depth: usize,
    ctx: &'c RefCell<Ctx>,
    scratch: &'c RefCell<T::Scratch>,
    tree: PhantomData<fn() -> T>,
}

impl<'c, 'de, T: Build<'de>> Seed<'c, 'de, T> {
    fn child(&self, depth: usize) -> Self {
        Seed {
            depth,
            max_depth: self.max_depth,
            ctx: self.ctx,
            scratch: self.scratch,
            tree: PhantomData,
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
}

impl<'de, T: Build<'de>> DeserializeSeed<'de> for Seed<'_, 'de, T> {
    type Value = T;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Build<'de>> Visitor<'de> for Seed<'_, 'de, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<T, E> {
        Ok(T::bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::number(v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::number(v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if !v.is_finite() {
            return Err(E::custom("number is not finite"));
        }
        T::number(v.to_string()).map_err(E::custom)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        self.allowed(v)?;
        Ok(T::string(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.allowed(v)?;
        Ok(T::string(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        self.allowed(&v)?;
        Ok(T::string(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::null())
    }
    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::null())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let depth = self.enter::<A::Error>()?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self.child(depth)) {
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
        Ok(T::array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut obj = T::new_obj(self.scratch);
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if first && key == NUMBER_TOKEN {
                // An arbitrary-precision number: the value is its exact lexeme.
                let lexeme: String = map.next_value()?;
                return T::number(lexeme).map_err(de::Error::custom);
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
            if T::has_key(self.scratch, &mut obj, &key) {
                let mut ctx = self.ctx.borrow_mut();
                ctx.reason = Some(format!("duplicate key '{key}'"));
                ctx.error_path.push(PathSeg::Key(key.clone().into_owned()));
                return Err(de::Error::custom(format!("duplicate key '{key}'")));
            }
            match map.next_value_seed(self.child(self.depth + 1)) {
                Ok(v) => T::insert(self.scratch, &mut obj, key, v),
                Err(e) => {
                    self.ctx
                        .borrow_mut()
                        .error_path
                        .push(PathSeg::Key(key.into_owned()));
                    return Err(e);
                }
            }
        }
        if first {
            self.enter::<A::Error>()?;
        }
        Ok(T::object(self.scratch, obj))
    }
}

/// The one strict parser, building the tree `T`.
fn parse<'de, T: Build<'de>>(bytes: &'de [u8], max_depth: usize) -> Result<T, JsonError> {
    let ctx = RefCell::new(Ctx::default());
    let scratch = RefCell::new(T::Scratch::default());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Our own depth limit is the one that counts; serde_json's is lifted only when ours is
    // tighter than its built-in 128, so the stack stays bounded either way.
    let seed = Seed::<T> {
        depth: 0,
        max_depth: max_depth.min(120),
        ctx: &ctx,
        scratch: &scratch,
        tree: PhantomData,
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

/// Parses `bytes` as one JSON document into a lossless `Value`, rejecting duplicate keys and
/// nesting deeper than `max_depth` containers.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    parse(bytes, max_depth)
}

/// As `parse_strict`, into a `Node` that borrows from `bytes` (what validation reads): the same
/// rules, the same errors.
pub fn parse_borrowed(bytes: &[u8], max_depth: usize) -> Result<Node<'_>, JsonError> {
    parse(bytes, max_depth)
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
    #[test]
    fn the_borrowed_tree_is_the_same_document() {
        let text = r#"{"b":1.50,"s":"esc\"aped","a":[1,-0.000100,1e+2,{"z":null,"y":true}],"_given":[null,{"id":"x"}]}"#;
        let node = parse_borrowed(text.as_bytes(), 64).unwrap();
        assert_eq!(
            node.to_value().unwrap(),
            parse_strict(text.as_bytes(), 64).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&node.to_value().unwrap()).unwrap(),
            text
        );
        // Strings without an escape are borrowed from the input; numbers keep their lexeme.
        assert!(matches!(node.get("b"), Some(Node::Number(n)) if n == "1.50"));
        let a = node.get("a").and_then(Node::as_array).unwrap();
        assert!(matches!(&a[2], Node::Number(n) if n == "1e+2"));
        assert!(matches!(node.get("s"), Some(Node::String(Cow::Owned(s))) if s == "esc\"aped"));
        let keys: Vec<&str> = node.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["b", "s", "a", "_given"]);
        let v = parse_strict(text.as_bytes(), 64).unwrap();
        assert_eq!(Node::from_value(&v), node);
    }

    #[test]
    fn the_borrowed_tree_refuses_what_the_strict_parser_refuses() {
        let dup = r#"{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}"#;
        assert_eq!(
            parse_borrowed(dup.as_bytes(), 64).unwrap_err(),
            parse_strict(dup.as_bytes(), 64).unwrap_err()
        );
        // A duplicate far into a large object (found through the key set, not a scan).
        let mut big: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        big.push("\"k3\":0".into());
        let big = format!("{{{}}}", big.join(","));
        let err = parse_borrowed(big.as_bytes(), 64).unwrap_err();
        assert_eq!(err.reason, "duplicate key 'k3'");
        assert_eq!(err, parse_strict(big.as_bytes(), 64).unwrap_err());
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_borrowed(deep.as_bytes(), 10).is_err());
        assert!(parse_borrowed(b"{} trailing", 64).is_err());
        assert!(parse_borrowed(b"[1,]", 64).is_err());
    }
}
