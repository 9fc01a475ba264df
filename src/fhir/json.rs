//! Strict, lossless JSON parsing for untrusted FHIR input.
//!
//! `serde_json::Value` (with `preserve_order` and `arbitrary_precision`) keeps key order and
//! decimal lexemes exactly, but its own `Deserialize` silently keeps the last of two duplicate
//! keys and only limits nesting at 128. FHIR forbids duplicate keys, and a gateway must bound the
//! depth it accepts, so this module parses through its own visitor that rejects both, and
//! reports where it happened as a FHIRPath-like location.
//!
//! The one visitor builds either of two trees (`Build`): the owned `Value` (`parse_strict`: a
//! single resource's request), or a `Node` that borrows every string without an escape from the
//! request's bytes (`parse_borrowed`) — what validation reads, and what the write pipeline reads
//! a Bundle's entries from, with a slice per object instead of a hash map, every container in
//! one arena per document (`Arena`: nothing allocated or freed per object) and no copy of the
//! text. Both keep key order and every number's lexeme.

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
    fn number(scratch: &RefCell<Self::Scratch>, lexeme: String) -> Result<Self, String>;
    fn string(scratch: &RefCell<Self::Scratch>, s: Cow<'de, str>) -> Self;
    fn array(scratch: &RefCell<Self::Scratch>, items: Vec<Self>) -> Self;
    /// Shared by every value of one parse (the borrowed tree collects members there and
    /// moves each object's into its arena when it ends).
    type Scratch;
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
    fn number(_: &RefCell<()>, lexeme: String) -> Result<Self, String> {
        serde_json::from_str::<Number>(&lexeme)
            .map(Value::Number)
            .map_err(|e| e.to_string())
    }
    fn string(_: &RefCell<()>, s: Cow<'de, str>) -> Self {
        Value::String(s.into_owned())
    }
    fn array(_: &RefCell<()>, items: Vec<Self>) -> Self {
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

/// Where a borrowed tree keeps its arrays, its objects' members and the strings it could not
/// borrow from the text (those with an escape): one region per document, freed at once when it
/// is dropped — no allocation and no free per container.
pub type Arena = bumpalo::Bump;

/// A JSON value that borrows its strings from the parsed bytes where it can (a string with an
/// escape is decoded into the arena), its containers from the arena. Numbers are kept as
/// written. A copy is a few words: every part is a reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    /// The number's lexeme, exactly as written (`1.50`, `1e+2`, `-0`).
    Number(&'a str),
    String(&'a str),
    Array(&'a [Node<'a>]),
    Object(Object<'a>),
}

/// A JSON object: its members in document order (keys are unique: the parser refuses
/// duplicates). Lookups scan; FHIR objects have a handful of members.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Object<'a> {
    entries: &'a [(&'a str, Node<'a>)],
}

impl<'a> Node<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Node<'a>> {
        match self {
            Node::Object(o) => o.get(key),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&'a [Node<'a>]> {
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

    /// A view of an owned `Value` (strings and number lexemes borrowed from it, containers in
    /// `arena`).
    pub fn from_value(value: &'a Value, arena: &'a Arena) -> Self {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.as_str()),
            Value::String(s) => Node::String(s),
            Value::Array(items) => Node::Array(
                arena.alloc_slice_fill_iter(items.iter().map(|v| Node::from_value(v, arena))),
            ),
            Value::Object(map) => Node::Object(Object {
                entries: arena.alloc_slice_fill_iter(
                    map.iter()
                        .map(|(k, v)| (k.as_str(), Node::from_value(v, arena))),
                ),
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
            // Sized up front: collecting through `Result` knows no length, so the vector and
            // the map's table would grow step by step (a tenth of building the tree).
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in *items {
                    out.push(item.to_value()?);
                }
                Value::Array(out)
            }
            Node::Object(o) => {
                let mut out = Map::with_capacity(o.len());
                for (k, v) in o.iter() {
                    out.insert(k.to_owned(), v.to_value()?);
                }
                Value::Object(out)
            }
        })
    }
}

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Node<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| *k == key)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Node<'a>)> + use<'a> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.entries.iter().map(|(k, _)| *k)
    }
    pub fn values(&self) -> impl Iterator<Item = &'a Node<'a>> + use<'a> {
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

/// The borrowed tree's scratch: its arena, and the members of the objects being read,
/// innermost last.
struct NodeScratch<'de> {
    arena: &'de Arena,
    members: Vec<(&'de str, Node<'de>)>,
}

/// A string kept for a borrowed tree: borrowed from the text, or copied into the arena.
fn kept<'a>(arena: &'a Arena, s: Cow<'a, str>) -> &'a str {
    match s {
        Cow::Borrowed(s) => s,
        Cow::Owned(s) => arena.alloc_str(&s),
    }
}

impl<'de> Build<'de> for Node<'de> {
    type Obj = ObjBuilder;
    fn null() -> Self {
        Node::Null
    }
    fn bool(v: bool) -> Self {
        Node::Bool(v)
    }
    fn number(scratch: &RefCell<Self::Scratch>, lexeme: String) -> Result<Self, String> {
        Ok(Node::Number(scratch.borrow().arena.alloc_str(&lexeme)))
    }
    fn string(scratch: &RefCell<Self::Scratch>, s: Cow<'de, str>) -> Self {
        Node::String(kept(scratch.borrow().arena, s))
    }
    fn array(scratch: &RefCell<Self::Scratch>, items: Vec<Self>) -> Self {
        Node::Array(scratch.borrow().arena.alloc_slice_copy(&items))
    }
    type Scratch = NodeScratch<'de>;
    fn new_obj(scratch: &RefCell<Self::Scratch>) -> Self::Obj {
        ObjBuilder {
            start: scratch.borrow().members.len(),
            keys: None,
        }
    }
    fn has_key(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: &str) -> bool {
        let scratch = scratch.borrow();
        let entries = scratch.members.get(obj.start..).unwrap_or(&[]);
        if entries.len() < SCAN_LIMIT {
            return entries.iter().any(|(k, _)| *k == key);
        }
        // A large object: a set of its keys keeps duplicate detection linear.
        let keys = obj
            .keys
            .get_or_insert_with(|| entries.iter().map(|(k, _)| (*k).into()).collect());
        keys.contains(key)
    }
    fn insert(scratch: &RefCell<Self::Scratch>, obj: &mut Self::Obj, key: Cow<'de, str>, v: Self) {
        if let Some(keys) = &mut obj.keys {
            keys.insert(key.as_ref().into());
        }
        let mut scratch = scratch.borrow_mut();
        let key = kept(scratch.arena, key);
        scratch.members.push((key, v));
    }
    fn object(scratch: &RefCell<Self::Scratch>, obj: Self::Obj) -> Self {
        // The members of every object inside this one were moved out when it ended: what is
        // above `start` is this object's, in order.
        let mut scratch = scratch.borrow_mut();
        let entries = scratch
            .arena
            .alloc_slice_copy(&scratch.members[obj.start..]);
        scratch.members.truncate(obj.start);
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
        T::number(self.scratch, v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::number(self.scratch, v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if !v.is_finite() {
            return Err(E::custom("number is not finite"));
        }
        T::number(self.scratch, v.to_string()).map_err(E::custom)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        self.allowed(v)?;
        Ok(T::string(self.scratch, Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.allowed(v)?;
        Ok(T::string(self.scratch, Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        self.allowed(&v)?;
        Ok(T::string(self.scratch, Cow::Owned(v)))
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
        Ok(T::array(self.scratch, out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut obj = T::new_obj(self.scratch);
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if first && key == NUMBER_TOKEN {
                // An arbitrary-precision number: the value is its exact lexeme.
                let lexeme: String = map.next_value()?;
                return T::number(self.scratch, lexeme).map_err(de::Error::custom);
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
fn parse<'de, T: Build<'de>>(
    bytes: &'de [u8],
    max_depth: usize,
    scratch: T::Scratch,
) -> Result<T, JsonError> {
    let ctx = RefCell::new(Ctx::default());
    let scratch = RefCell::new(scratch);
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
    parse(bytes, max_depth, ())
}

/// As `parse_strict`, into a `Node` that borrows from `bytes` (what validation reads): the same
/// rules, the same errors.
///
/// A document is first read by a byte-level parser that only ever accepts (`Scan`); on anything
/// it does not accept — a syntax error, a duplicate key, a forbidden character, excessive depth,
/// but also the rare forms it leaves alone — the document is parsed again by the serde_json
/// visitor above, which decides and words the error. So an error is always that visitor's, and
/// an accepted document gives the tree the visitor would build (the tests `scan_*` below compare
/// the two over every official example, every Synthea bundle and a corpus of mutations).
pub fn parse_borrowed<'a>(
    bytes: &'a [u8],
    arena: &'a Arena,
    max_depth: usize,
) -> Result<Node<'a>, JsonError> {
    match Scan::document(bytes, arena, max_depth.min(120)) {
        Some(node) => Ok(node),
        None => {
            let scratch = NodeScratch {
                arena,
                members: Vec::new(),
            };
            parse(bytes, max_depth, scratch)
        }
    }
}

/// The fast path of [`parse_borrowed`]: a strict JSON reader over a UTF-8 checked text that
/// gives up (`None`) on anything but a document the serde_json visitor accepts, so it never has
/// to word an error. Strings without an escape and numbers are borrowed from the text.
struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    arena: &'a Arena,
    pos: usize,
    max_depth: usize,
    /// Members of the objects being read, innermost last (as the visitor's scratch).
    members: Vec<(&'a str, Node<'a>)>,
    /// Items of the arrays being read, innermost last.
    items: Vec<Node<'a>>,
}

/// Two keys are the same: lengths and first bytes compared before the rest (most keys of an
/// object differ in one of them).
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// A key's bit among 64, from its length and its first and last bytes (equal keys share it).
fn signature(key: &str) -> u64 {
    let b = key.as_bytes();
    let (first, last) = (b.first().copied(), b.last().copied());
    let mix = b.len() * 7 + usize::from(first.unwrap_or(0)) * 3 + usize::from(last.unwrap_or(0));
    1 << (mix % 64)
}

/// Bytes that end a run of plain string content: the quote, the backslash, control characters.
fn ends_plain(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// How many bytes at the start of `bytes` are plain string content (none [`ends_plain`]),
/// read eight at a time: what a reader skips and a writer copies without an escape.
pub(crate) fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut pos = 0;
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(chunk);
        let quote = w ^ (ONES * u64::from(b'"'));
        let slash = w ^ (ONES * u64::from(b'\\'));
        // A byte is zero in `quote` or `slash`, or below 0x20 in `w`: its high bit is set in
        // one of these (bytes at or above 0x80 are excluded by `!w`).
        let hit =
            (quote.wrapping_sub(ONES) | slash.wrapping_sub(ONES) | w.wrapping_sub(ONES * 0x20))
                & !w
                & HIGH;
        if hit != 0 {
            // The lowest flagged byte is a real find (a borrow only flags bytes above one).
            return pos + (hit.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while bytes.get(pos).is_some_and(|&b| !ends_plain(b)) {
        pos += 1;
    }
    pos
}

impl<'a> Scan<'a> {
    fn document(bytes: &'a [u8], arena: &'a Arena, max_depth: usize) -> Option<Node<'a>> {
        // Outside strings only ASCII is valid JSON, so a valid UTF-8 text has valid strings,
        // and every slice between ASCII delimiters is on a character boundary.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut scan = Scan {
            text,
            bytes,
            arena,
            pos: 0,
            max_depth,
            members: Vec::new(),
            items: Vec::new(),
        };
        scan.space();
        let node = scan.value(0)?;
        scan.space();
        (scan.pos == bytes.len()).then_some(node)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `b` (after white space) or gives up.
    fn expect(&mut self, b: u8) -> Option<()> {
        self.space();
        (self.peek()? == b).then(|| self.pos += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                let s = self.string()?;
                // An escape may spell a character FHIR forbids (a raw one is a syntax error).
                if matches!(s, Cow::Owned(_)) && super::forbidden_character(s.as_bytes()).is_some()
                {
                    return None;
                }
                Some(Node::String(kept(self.arena, s)))
            }
            b't' => self.literal(b"true", Node::Bool(true)),
            b'f' => self.literal(b"false", Node::Bool(false)),
            b'n' => self.literal(b"null", Node::Null),
            b'-' | b'0'..=b'9' => self.number().map(|n| Node::Number(kept(self.arena, n))),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], node: Node<'a>) -> Option<Node<'a>> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| {
            self.pos = end;
            node
        })
    }

    fn object(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth >= self.max_depth {
            return None;
        }
        self.pos += 1;
        let start = self.members.len();
        self.space();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Node::Object(Object::default()));
        }
        // One bit per key signature: a key whose bit is not yet set differs from every key
        // before it, so only the others are compared.
        let mut signatures = 0u64;
        loop {
            self.space();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            let bit = signature(&key);
            let taken = self.members.get(start..).unwrap_or(&[]);
            if let Cow::Owned(k) = &key
                && super::forbidden_character(k.as_bytes()).is_some()
            {
                return None;
            }
            // The visitor reads an object whose first key is serde_json's number token as a
            // number; such a document is left to it.
            if (taken.is_empty() && key == NUMBER_TOKEN)
                || (signatures & bit != 0
                    && taken.len() < SCAN_LIMIT
                    && taken.iter().any(|(k, _)| same_key(k, &key)))
            {
                return None;
            }
            signatures |= bit;
            self.expect(b':')?;
            self.space();
            let v = self.value(depth + 1)?;
            let key = kept(self.arena, key);
            self.members.push((key, v));
            self.space();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => break,
                _ => return None,
            }
        }
        self.pos += 1;
        let members = self.members.get(start..)?;
        // Keys past the first SCAN_LIMIT were not compared as they came: sort and compare.
        if members.len() > SCAN_LIMIT {
            let mut keys: Vec<&str> = members.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return None;
            }
        }
        let entries = self.arena.alloc_slice_copy(members);
        self.members.truncate(start);
        Some(Node::Object(Object { entries }))
    }

    fn array(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth >= self.max_depth {
            return None;
        }
        self.pos += 1;
        let start = self.items.len();
        self.space();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(Node::Array(&[]));
        }
        loop {
            self.space();
            let v = self.value(depth + 1)?;
            self.items.push(v);
            self.space();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => break,
                _ => return None,
            }
        }
        self.pos += 1;
        let items = self.arena.alloc_slice_copy(self.items.get(start..)?);
        self.items.truncate(start);
        Some(Node::Array(items))
    }

    /// A string at the opening quote: borrowed when it has no escape.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.pos += 1;
        let start = self.pos;
        self.skip_plain();
        match self.peek()? {
            b'"' => {
                let s = self.text.get(start..self.pos)?;
                self.pos += 1;
                Some(Cow::Borrowed(s))
            }
            b'\\' => self.escaped(start).map(Cow::Owned),
            _ => None, // a raw control character
        }
    }

    /// Moves `pos` to the next quote, backslash or control character (or the end).
    fn skip_plain(&mut self) {
        self.pos += plain_run(self.bytes.get(self.pos..).unwrap_or_default());
    }

    /// The rest of a string with an escape, decoded (`start`: its first content byte).
    fn escaped(&mut self, start: usize) -> Option<String> {
        let mut out = String::from(self.text.get(start..self.pos)?);
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    let c = self.escape()?;
                    out.push(c);
                }
                _ => return None,
            }
            let run = self.pos;
            self.skip_plain();
            out.push_str(self.text.get(run..self.pos)?);
        }
    }

    /// One escape at the backslash, as serde_json reads it with validation (surrogates paired).
    fn escape(&mut self) -> Option<char> {
        let c = *self.bytes.get(self.pos + 1)?;
        self.pos += 2;
        Some(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = self.hex4()?;
                if (0xD800..0xDC00).contains(&n) {
                    if self.bytes.get(self.pos..self.pos + 2)? != b"\\u" {
                        return None;
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x1_0000 + ((n - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(n)? // a lone trailing surrogate is no char: given up
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A number: the JSON grammar, kept as serde_json's `arbitrary_precision` hands it over
    /// (the lexeme, with an exponent written `e+`/`e-`).
    fn number(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => {
                self.pos += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let mantissa = self.text.get(start..self.pos)?;
        if !matches!(self.peek(), Some(b'e' | b'E')) {
            return Some(Cow::Borrowed(mantissa));
        }
        let e = self.pos;
        self.pos += 1;
        let sign = match self.peek()? {
            s @ (b'+' | b'-') => {
                self.pos += 1;
                s
            }
            _ => b'+',
        };
        let exp_start = self.pos;
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        let lexeme = self.text.get(start..self.pos)?;
        if self.bytes.get(e..exp_start) == Some([b'e', sign].as_slice()) {
            return Some(Cow::Borrowed(lexeme));
        }
        let exponent = self.text.get(exp_start..self.pos)?;
        Some(Cow::Owned(format!(
            "{mantissa}e{}{exponent}",
            char::from(sign)
        )))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }
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
pub(super) mod tests {
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
        let arena = Arena::new();
        let node = parse_borrowed(text.as_bytes(), &arena, 64).unwrap();
        assert_eq!(
            node.to_value().unwrap(),
            parse_strict(text.as_bytes(), 64).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&node.to_value().unwrap()).unwrap(),
            text
        );
        // Strings without an escape are borrowed from the input; numbers keep their lexeme.
        assert!(matches!(node.get("b"), Some(Node::Number(n)) if *n == "1.50"));
        let a = node.get("a").and_then(Node::as_array).unwrap();
        assert!(matches!(&a[2], Node::Number(n) if *n == "1e+2"));
        assert!(matches!(node.get("s"), Some(Node::String(s)) if *s == "esc\"aped"));
        let keys: Vec<&str> = node.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["b", "s", "a", "_given"]);
        let v = parse_strict(text.as_bytes(), 64).unwrap();
        assert_eq!(Node::from_value(&v, &arena), node);
    }

    #[test]
    fn the_borrowed_tree_refuses_what_the_strict_parser_refuses() {
        let dup = r#"{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}"#;
        assert_eq!(
            parse_borrowed(dup.as_bytes(), &Arena::new(), 64).unwrap_err(),
            parse_strict(dup.as_bytes(), 64).unwrap_err()
        );
        // A duplicate far into a large object (found through the key set, not a scan).
        let mut big: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        big.push("\"k3\":0".into());
        let big = format!("{{{}}}", big.join(","));
        let err = parse_borrowed(big.as_bytes(), &Arena::new(), 64).unwrap_err();
        assert_eq!(err.reason, "duplicate key 'k3'");
        assert_eq!(err, parse_strict(big.as_bytes(), 64).unwrap_err());
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_borrowed(deep.as_bytes(), &Arena::new(), 10).is_err());
        assert!(parse_borrowed(b"{} trailing", &Arena::new(), 64).is_err());
        assert!(parse_borrowed(b"[1,]", &Arena::new(), 64).is_err());
    }

    /// The fast reader and the visitor on one input: the same tree when the reader accepts, and
    /// the reader accepts exactly what the visitor accepts.
    fn agree(bytes: &[u8], max_depth: usize) -> bool {
        let arena = Arena::new();
        let fast = Scan::document(bytes, &arena, max_depth.min(120));
        let scratch = NodeScratch {
            arena: &arena,
            members: Vec::new(),
        };
        let slow = parse::<Node<'_>>(bytes, max_depth, scratch);
        match (&fast, &slow) {
            (Some(f), Ok(s)) => assert_eq!(f, s, "{:?}", String::from_utf8_lossy(bytes)),
            (None, Err(_)) => {}
            _ => panic!(
                "the reader {} what the visitor {}: {:?}",
                if fast.is_some() { "accepts" } else { "refuses" },
                if slow.is_ok() { "accepts" } else { "refuses" },
                String::from_utf8_lossy(bytes)
            ),
        }
        assert_eq!(parse_borrowed(bytes, &arena, max_depth), slow);
        slow.is_ok()
    }

    pub(in crate::fhir) fn data_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                data_files(&path, out);
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
    }

    #[test]
    fn scan_builds_the_visitors_tree_for_every_example_and_synthea_bundle() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        for (folder, at_least) in [("fhir-r4-examples", 400), ("synthea", 50)] {
            let mut files = Vec::new();
            data_files(&root.join(folder), &mut files);
            let mut accepted = 0;
            for f in &files {
                let bytes = std::fs::read(f).unwrap();
                // Every one of them is JSON the visitor accepts, so the reader must build it.
                assert!(agree(&bytes, 64), "{}", f.display());
                accepted += 1;
            }
            assert!(accepted >= at_least, "{folder}: {accepted} files");
        }
    }

    const MUTANT_BASE: &str = r#"{"resourceType":"Patient","id":"p-1","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">A\u00e9\ud83d\ude00\/\t</div>"},"name":[{"family":"Æble","given":["Ann",null]}],"multipleBirthInteger":2,"x":[-0.5,1e+2,1E5,0,-12.30e-4,18446744073709551616],"ok":[true,false,null,{}]}"#;

    #[test]
    fn scan_agrees_on_every_truncation_and_byte_mutation() {
        let base = MUTANT_BASE.as_bytes();
        assert!(agree(base, 64));
        let mut refused = 0;
        for n in 0..base.len() {
            refused += usize::from(!agree(&base[..n], 64));
        }
        assert_eq!(refused, base.len(), "every truncation is refused");
        let bytes: &[u8] = b"\"\\,:{}[]0-+e.E u \x00\x1f\x7f\x80\xff";
        for i in 0..base.len() {
            let mut cut = base.to_vec();
            cut.remove(i);
            agree(&cut, 64);
            for &b in bytes {
                let mut m = base.to_vec();
                m[i] = b;
                agree(&m, 64);
                m.insert(i, b);
                agree(&m, 64);
            }
        }
        // A small depth limit over every mutation of the nesting.
        for d in 0..5 {
            agree(base, d);
        }
    }

    /// Inputs the reader and the visitor must judge alike (with every depth limit up to 3).
    const HARD_CASES: &[&str] = &[
        // duplicate keys, also spelled with an escape
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"a":{"b":1,"b":1}}"#,
        // control characters, raw and escaped, in strings and keys
        "{\"a\":\"x\u{1}y\"}",
        r#"{"a":"x\u0001y"}"#,
        r#"{"a\u0000":1}"#,
        "{\"a\u{7}\":1}",
        r#"{"a":"\u0009\u000a\u000D"}"#,
        "{\"a\":\"tab\tok\"}",
        r#"{"a":"\u007f"}"#,
        // escapes
        r#"["\x"]"#,
        r#"["\u12"]"#,
        r#"["\uZZZZ"]"#,
        r#"["\u00e9\u00E9"]"#,
        r#"["\"]"#,
        r#"["\\"]"#,
        r#"["a\/b"]"#,
        r#"["\b\f\n\r\t"]"#,
        "[\"\\",
        // surrogates: paired, lone leading, lone trailing, leading then another escape
        r#"["\ud83d\ude00"]"#,
        r#"["\ud83d"]"#,
        r#"["\ude00"]"#,
        r#"["\ud83dx"]"#,
        r#"["\ud83d\u0041"]"#,
        r#"["\ud83d\ud83d\ude00"]"#,
        r#"["\ud83d\n"]"#,
        // numbers
        "01",
        "1.",
        "-",
        "1e",
        "1e+",
        ".5",
        "+1",
        "-0",
        "-0.0",
        "1E5",
        "1e5",
        "1.5E-3",
        "1e-0",
        "0e0",
        "-01",
        "00",
        "1.5.3",
        "2.",
        "[1,]",
        "[-]",
        "123456789012345678901234567890",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1e400",
        "[1 2]",
        "[01]",
        "{\"a\":-}",
        "0x10",
        "Infinity",
        "NaN",
        "[1e]",
        "[1.e1]",
        // literals, structure, white space, BOM, trailing garbage
        "true",
        "tru",
        "truex",
        "nul",
        "null ",
        " \t\r\n{}\n",
        "\u{feff}{}",
        "{} x",
        "{}}",
        "[]]",
        "{,}",
        "[,]",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{1:2}",
        "",
        " ",
        "\"a\"",
        "[\"a\",\"b\"]",
        "{\"\":\"\"}",
        "[[[[]]]]",
        "\u{b}{}",
        "\u{c}{}",
    ];

    #[test]
    fn scan_agrees_on_the_hard_cases() {
        let token = format!("{{\"{NUMBER_TOKEN}\":\"12\"}}");
        // The one form the reader leaves to the visitor although the visitor accepts it.
        let arena = Arena::new();
        assert!(Scan::document(token.as_bytes(), &arena, 64).is_none());
        assert!(parse_borrowed(token.as_bytes(), &Arena::new(), 64).is_ok());
        let mut many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let distinct = format!("{{{}}}", many.join(","));
        many.push("\"k39\":0".into());
        let late_duplicate = format!("{{{}}}", many.join(","));
        let cases: Vec<Vec<u8>> = HARD_CASES
            .iter()
            .copied()
            .chain([distinct.as_str(), late_duplicate.as_str()])
            .map(|c| c.as_bytes().to_vec())
            .chain([
                b"[\"\xff\"]".to_vec(),
                b"[\"\xc3\"]".to_vec(),
                b"{\"\xed\xa0\x80\":1}".to_vec(),
                b"[\"ok\xc3\xa9\"]".to_vec(),
            ])
            .collect();
        for c in &cases {
            for d in [0, 1, 2, 3, 64] {
                agree(c, d);
            }
        }
    }

    #[test]
    fn scan_agrees_at_the_depth_limit() {
        // Nesting at the limit and one past it, of arrays and of objects.
        for limit in [1, 5, 64, 119, 120, 121, 200] {
            for n in [limit - 1, limit, limit + 1] {
                let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
                let objects = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
                let mixed = format!(
                    "{}{}",
                    "[{\"a\":".repeat(n / 2 + 1),
                    "1}]".repeat(n / 2 + 1)
                );
                for text in [arrays, objects, mixed] {
                    agree(text.as_bytes(), limit);
                }
            }
        }
    }
}
