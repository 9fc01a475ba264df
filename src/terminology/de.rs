//! Typed reading of terminology files: [`typed`] deserialises a strictly parsed document into a
//! `#[derive(Deserialize)]` struct through `serde_path_to_error`, and turns a failure into a
//! message that names the JSON path, the reason and, from the caller's table, the fix.
//!
//! The building blocks keep the files' rules as strict as FHIR JSON is: [`objects`] (an array of
//! objects: serde would also read a struct from an array), [`some`] (an optional element that may
//! not be `null`), [`present`] (an element whose mere presence matters), [`entries`] (an object
//! read in document order), [`Text`] (a non-empty string) and [`Uri`] (an absolute URI).

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Unexpected, Visitor};
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use super::files::{MappingError, error, is_uri};

/// Where a document's fixes come from: the pattern of a path (`group[].element[].code`: indexes
/// left out; `*` for an unknown key of an object) to the fix, if the table has one.
pub(super) type Fixes<'a> = &'a dyn Fn(&str) -> Option<&'static str>;

/// Deserialises `doc` as a `T`. `root` prefixes the paths of messages (`ConceptMap`, or empty).
pub(super) fn typed<'a, T: Deserialize<'a>>(
    file: &Path,
    root: &str,
    doc: &'a Value,
    fixes: Fixes<'_>,
) -> Result<T, MappingError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let segments: Vec<&serde_path_to_error::Segment> = e.path().iter().collect();
        error(
            file,
            describe(root, &segments, &e.inner().to_string(), fixes),
        )
    })
}

/// What serde said, in the files' words: `<path> <reason>; <fix>`.
fn describe(
    root: &str,
    segments: &[&serde_path_to_error::Segment],
    serde_message: &str,
    fixes: Fixes<'_>,
) -> String {
    let (mut path, mut pattern) = (root.to_owned(), String::new());
    for segment in segments {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                path.push_str(&format!("[{index}]"));
                pattern.push_str("[]");
            }
            serde_path_to_error::Segment::Map { key } => {
                push_key(&mut path, key);
                push_key(&mut pattern, key);
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {
                push_key(&mut path, "?");
                push_key(&mut pattern, "?");
            }
        }
    }
    let reason = match Reason::of(serde_message) {
        Reason::Missing(key) => {
            push_key(&mut path, key);
            push_key(&mut pattern, key);
            " is missing".to_owned()
        }
        Reason::UnknownKey => {
            // The path ends at the unknown key; the fix is the table's for any unknown key here.
            pattern = match pattern.rsplit_once('.') {
                Some((parent, _)) => format!("{parent}.*"),
                None => "*".to_owned(),
            };
            ": unknown key".to_owned()
        }
        Reason::Expected(what) => format!(" must be {what}"),
        Reason::Other(text) => format!(": {text}"),
    };
    let mut message = format!("{path}{reason}");
    if let Some(fix) = fixes(&pattern) {
        message.push_str("; ");
        message.push_str(fix);
    }
    message
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// The shapes of serde's messages (`serde::de::Error`'s provided methods, as serde_json
/// formats them).
#[derive(Debug, PartialEq, Eq)]
enum Reason<'m> {
    /// "missing field `k`": the path is the object's.
    Missing(&'m str),
    /// "unknown field `k`, expected …": the path ends at the key.
    UnknownKey,
    /// "invalid type: …, expected E", "invalid value: …", "invalid length …": what it must be.
    Expected(String),
    Other(&'m str),
}

impl<'m> Reason<'m> {
    fn of(message: &'m str) -> Reason<'m> {
        let quoted = |rest: &'m str| rest.split('`').next().unwrap_or_default();
        if let Some(rest) = message.strip_prefix("missing field `") {
            return Reason::Missing(quoted(rest));
        }
        if message.starts_with("unknown field `") {
            return Reason::UnknownKey;
        }
        let invalid = ["invalid type: ", "invalid value: ", "invalid length "]
            .iter()
            .any(|p| message.starts_with(p));
        match message.rsplit_once(", expected ") {
            Some((_, expected)) if invalid => Reason::Expected(plain(expected)),
            _ => Reason::Other(message),
        }
    }
}

/// serde's names of JSON shapes, in JSON's words.
fn plain(expected: &str) -> String {
    match expected {
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        "a boolean" => "true or false".to_owned(),
        e if e.starts_with("struct ") => "an object".to_owned(),
        e => e.to_owned(),
    }
}

/// An array of objects (for `#[serde(deserialize_with = "objects")]`): serde's derived structs
/// also accept an array of their fields' values, which FHIR JSON never means.
pub(super) fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Vec::<Object<T>>::deserialize(deserializer)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// A `T` that must be written as a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Only(PhantomData)).map(Object)
    }
}

/// An optional element that, when present, must be a `T` (`null` is not "absent" in FHIR JSON);
/// for `#[serde(default, deserialize_with = "some")]`.
pub(super) fn some<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Whether an element is there, whatever its value; for `#[serde(default, deserialize_with =
/// "present")]` on a `bool`.
pub(super) fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// An object's entries in document order (for `#[serde(deserialize_with = "entries")]`).
pub(super) fn entries<'de, D, V>(deserializer: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct InOrder<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for InOrder<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, V>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(InOrder(PhantomData))
}

/// A string that is not empty or blank (kept as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Text(pub(super) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_string(deserializer, "a non-empty string", |s| !s.trim().is_empty()).map(Text)
    }
}

/// An absolute URI ([`is_uri`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Uri(pub(super) String);

impl<'de> Deserialize<'de> for Uri {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_string(deserializer, "an absolute URI", is_uri).map(Uri)
    }
}

/// A string for which `ok` holds; `expected` names what it must be.
pub(super) fn checked_string<'de, D: Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
    ok: fn(&str) -> bool,
) -> Result<String, D::Error> {
    struct Checked {
        expected: &'static str,
        ok: fn(&str) -> bool,
    }
    impl Visitor<'_> for Checked {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expected)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
            if (self.ok)(s) {
                Ok(s.to_owned())
            } else {
                Err(E::invalid_value(Unexpected::Str(s), &self))
            }
        }
    }
    deserializer.deserialize_str(Checked { expected, ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: Text,
        #[serde(default, deserialize_with = "some")]
        link: Option<Uri>,
        #[serde(default, deserialize_with = "present")]
        flag: bool,
        #[serde(default, deserialize_with = "objects")]
        items: Vec<Item>,
        #[serde(default, deserialize_with = "entries")]
        lists: Vec<(String, Vec<Text>)>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Item {
        id: Text,
        #[serde(default)]
        on: bool,
    }

    fn fixes(pattern: &str) -> Option<&'static str> {
        match pattern {
            "items[].id" => Some("give each item an id"),
            "*" => Some("a doc holds name, link, flag, items and lists"),
            _ => None,
        }
    }

    fn message(doc: Value) -> String {
        typed::<Doc>(Path::new("f.json"), "Doc", &doc, &fixes)
            .expect_err("must fail")
            .message
    }

    #[test]
    fn messages_name_the_path_the_reason_and_the_fix() {
        let cases = [
            (json!({}), "Doc.name is missing"),
            (json!({"name": " "}), "Doc.name must be a non-empty string"),
            (json!({"name": 5}), "Doc.name must be a non-empty string"),
            (
                json!({"name": "n", "link": null}),
                "Doc.link must be an absolute URI",
            ),
            (
                json!({"name": "n", "link": "x y"}),
                "Doc.link must be an absolute URI",
            ),
            (
                json!({"name": "n", "items": {}}),
                "Doc.items must be an array",
            ),
            (
                json!({"name": "n", "items": [["a"]]}),
                "Doc.items[0] must be an object",
            ),
            (
                json!({"name": "n", "items": [{}]}),
                "Doc.items[0].id is missing; give each item an id",
            ),
            (
                json!({"name": "n", "items": [{"id": "a", "on": 1}]}),
                "Doc.items[0].on must be true or false",
            ),
            (
                json!({"name": "n", "lists": []}),
                "Doc.lists must be an object",
            ),
            (
                json!({"name": "n", "lists": {"a": [""]}}),
                "Doc.lists.a[0] must be a non-empty string",
            ),
            (
                json!({"name": "n", "other": 1}),
                "Doc.other: unknown key; a doc holds name, link",
            ),
        ];
        for (doc, expected) in cases {
            let got = message(doc.clone());
            assert!(got.starts_with(expected), "{doc}: {got}");
        }
    }

    #[test]
    fn optional_elements_and_order() {
        let doc = json!({"name": "n", "flag": null, "lists": {"b": ["x"], "a": ["y"]}});
        let d: Doc = typed(Path::new("f.json"), "", &doc, &fixes).expect("reads");
        assert!(d.flag && d.link.is_none() && d.items.is_empty());
        assert_eq!(d.name, Text("n".to_owned()));
        let keys: Vec<&str> = d.lists.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        let doc = json!({"name": "n", "items": [{"id": "a"}, {"id": "b", "on": true}]});
        let d: Doc = typed(Path::new("f.json"), "", &doc, &fixes).expect("reads");
        let items: Vec<(&str, bool)> = d.items.iter().map(|i| (i.id.0.as_str(), i.on)).collect();
        assert_eq!(items, [("a", false), ("b", true)]);
        assert!(!d.flag);
    }

    #[test]
    fn serde_message_shapes() {
        assert_eq!(Reason::of("missing field `code`"), Reason::Missing("code"));
        assert_eq!(
            Reason::of("unknown field `x`, expected `a` or `b`"),
            Reason::UnknownKey
        );
        assert_eq!(
            Reason::of("invalid value: string \"a, expected b\", expected an absolute URI"),
            Reason::Expected("an absolute URI".to_owned())
        );
        assert_eq!(
            Reason::of("something else"),
            Reason::Other("something else")
        );
    }
}
