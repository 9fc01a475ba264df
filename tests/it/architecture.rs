//! The shape of the code, read from the sources: the module import graph has no cycle, the
//! layering rule holds (which crate may be used where, which module may import which), every
//! access decision goes through `access::authorize`, functions stay short, and no stored body
//! is read into `Value::Null`. ARCHITECTURE.md ("Layers") states the rules these check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its module path (`gateway::write`, `api`, `lib`).
fn sources() -> Vec<(String, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).expect("under src");
                let mut parts: Vec<String> = rel
                    .with_extension("")
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                let module = parts.join("::");
                let text = std::fs::read_to_string(&path).expect("a readable source file");
                out.push((module, path, text));
            }
        }
    }
    out.sort();
    out
}

/// The source without its `#[cfg(test)]` module (by convention the last item of a file) and
/// without comments.
fn code(text: &str) -> String {
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string (URLs) is kept; comments start a trimmed line here.
            Some(i) if l.trim_start().starts_with("//") => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules a file names (`crate::a::b`, `super::x`, `use crate::{a, b}`), resolved
/// to the longest module path that exists.
fn imports(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| p.trim().to_owned())
            .take_while(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect()
    };
    let resolve = |segments: Vec<String>| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| known.contains(m))
    };
    // The module `super` names: the parent of this file's module (a folder's mod.rs is the
    // folder's module, so its `super` is the folder's parent).
    let own: Vec<&str> = if module == "lib" {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let parent: Vec<String> = {
        let mut p: Vec<String> = own.iter().map(|s| s.to_string()).collect();
        p.pop();
        p
    };
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (start, prefix) in [("crate::", Vec::new()), ("super::", parent.clone())] {
        let mut at = 0;
        while let Some(i) = text[at..].find(start) {
            let pos = at + i;
            at = pos + start.len();
            if pos > 0 && (bytes[pos - 1].is_ascii_alphanumeric() || bytes[pos - 1] == b'_') {
                continue;
            }
            let rest = &text[at..];
            if let Some(list) = rest.strip_prefix('{') {
                let end = list.find('}').unwrap_or(list.len());
                for item in list[..end].split(',') {
                    let mut segs = prefix.clone();
                    segs.extend(ident(item));
                    out.extend(resolve(segs));
                }
            } else {
                let mut segs = prefix.clone();
                segs.extend(ident(rest));
                out.extend(resolve(segs));
            }
        }
    }
    out.remove(module);
    out
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let files = sources();
    let known: BTreeSet<String> = files.iter().map(|(m, _, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (module, path, text) in &files {
        let folder = path.file_name().is_some_and(|f| f == "mod.rs");
        let mut deps = imports(module, &code(text), &known);
        // A folder's mod.rs is the folder's face: it declares and re-exports its children.
        if folder {
            deps.retain(|d| !d.starts_with(&format!("{module}::")));
        }
        deps.remove("lib");
        edges.insert(module.clone(), deps);
    }
    edges.remove("lib");
    edges.remove("main");
    Graph { edges }
}

/// A cycle of the graph, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        path.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == m).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn top(module: &str) -> String {
    module.split("::").next().unwrap_or(module).to_owned()
}

#[test]
fn the_module_import_graph_has_no_cycle() {
    let g = graph();
    assert!(g.edges.len() > 40, "the source walk found too few modules");
    if let Some(c) = find_cycle(&g.edges) {
        panic!("import cycle between modules: {}", c.join(" → "));
    }
    // Between top-level modules too (gateway ↔ store would be a cycle even through two
    // different files).
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in &g.edges {
        let entry = tops.entry(top(m)).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != top(m)));
    }
    if let Some(c) = find_cycle(&tops) {
        panic!("import cycle between top-level modules: {}", c.join(" → "));
    }
}

/// The layers, lowest first: a module may import only modules of its own or lower layers.
const LAYERS: &[&[&str]] = &[
    &["fhir", "ids", "config", "metrics"],
    &["terminology", "validate", "audit"],
    &["detect", "access"],
    &["store"],
    &["exchange"],
    &["gateway"],
    &["outbound"],
    &["auth", "workers"],
    &["api"],
    &["app"],
    &["demo", "cli"],
];

fn layer(module: &str) -> usize {
    let t = top(module);
    LAYERS
        .iter()
        .position(|l| l.contains(&t.as_str()))
        .unwrap_or_else(|| panic!("module {t} is in no layer of tests/it/architecture.rs"))
}

#[test]
fn each_module_imports_only_its_own_or_lower_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (m, deps) in &g.edges {
        for d in deps {
            if top(d) != top(m) && layer(d) > layer(m) {
                wrong.push(format!("{m} → {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

/// Files under `src/` (relative paths with `/`) whose code names `needle`.
fn files_naming(needle: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    sources()
        .into_iter()
        .filter(|(_, _, text)| code(text).contains(needle))
        .map(|(_, path, _)| {
            path.strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

fn only_under(needle: &str, allowed: &[&str]) {
    let stray: Vec<String> = files_naming(needle)
        .into_iter()
        .filter(|f| !allowed.iter().any(|a| f == a || f.starts_with(a)))
        .collect();
    assert!(
        stray.is_empty(),
        "`{needle}` is used outside {allowed:?}: {stray:?}"
    );
}

#[test]
fn io_crates_stay_at_the_edges() {
    // Only the store talks to the database.
    only_under("sqlx::", &["store/"]);
    only_under("sqlx ", &["store/"]);
    // Only the API (and the application that serves it) knows HTTP in.
    only_under("axum::", &["api/", "app.rs"]);
    // Only the outbound client and the workers above the core make HTTP requests.
    only_under("reqwest::", &["outbound/", "workers/"]);
    // The pure middle imports no IO module and no IO crate.
    for pure in [
        "detect/",
        "validate/",
        "terminology/",
        "audit/",
        "access.rs",
        "fhir/",
        "ids.rs",
    ] {
        for io in [
            "crate::store",
            "crate::gateway",
            "crate::exchange",
            "crate::workers",
            "crate::outbound",
            "crate::api",
            "crate::app",
            "crate::cli",
            "crate::auth",
            "tokio::",
            "sqlx::",
            "reqwest::",
            "axum::",
        ] {
            let hits: Vec<String> = files_naming(io)
                .into_iter()
                .filter(|f| f.starts_with(pure))
                .collect();
            assert!(hits.is_empty(), "{pure} must not use {io}: {hits:?}");
        }
    }
}

#[test]
fn the_audit_row_depends_on_nothing_in_the_crate() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/audit/row.rs"))
            .expect("src/audit/row.rs");
    let code = code(&text);
    assert!(
        !code.contains("crate::") && !code.contains("super::"),
        "audit/row.rs imports crate modules"
    );
}

#[test]
fn roles_are_decided_only_by_authorize() {
    // Looking at a caller's role anywhere but access.rs is a second decision. (Role names in
    // configuration — `[[clients]] role`, `[[auth.scopes]] role` — are parsed, not decided on.)
    let patterns = [
        "client.role",
        "Role::CareTeam",
        "Role::Auditor",
        "Role::Admin",
        "matches!(caller",
    ];
    let mut stray = Vec::new();
    for (module, _, text) in sources() {
        if module == "access" {
            continue;
        }
        let code = code(&text);
        for p in patterns {
            if code.contains(p) {
                stray.push(format!("{module}: `{p}`"));
            }
        }
    }
    assert!(
        stray.is_empty(),
        "role checks outside access::authorize: {stray:?}"
    );
}

/// `(name, body)` of every function in a source text (rustfmt layout: the body ends at the
/// line holding only `}` at the signature's indentation).
fn functions(text: &str) -> Vec<(String, usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let sig = [
            "pub fn ",
            "fn ",
            "pub async fn ",
            "async fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .find_map(|p| t.strip_prefix(p));
        let Some(rest) = sig else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The line that opens the body, or a declaration without one.
        let Some(open) = (i..lines.len()).find(|&k| {
            let r = lines[k].trim_end();
            r.ends_with('{') || r.ends_with(';') || r.ends_with('}')
        }) else {
            continue;
        };
        let r = lines[open].trim_end();
        if !r.ends_with('{') {
            continue;
        }
        let close = (open..lines.len())
            .find(|&k| lines[k] == format!("{indent}}}"))
            .unwrap_or(lines.len() - 1);
        out.push((name, close - i + 1, lines[i..=close].join("\n")));
    }
    out
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let mut long = Vec::new();
    for (module, _, text) in sources() {
        for (name, len, _) in functions(&text) {
            if len > 80 {
                long.push(format!("{module}::{name}: {len} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over 80 lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn every_core_operation_for_a_caller_calls_authorize() {
    // A public method of the core that takes a caller reaches data for that caller: it must
    // decide access through the one function, itself or through a helper of the core that
    // does (`put_one` → `writable_sector` → `authorize`).
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    let mut operations = Vec::new();
    for (module, _, text) in sources() {
        if !module.starts_with("gateway") {
            continue;
        }
        for (name, _, body) in functions(&code(&text)) {
            let sig = &body[..body.find('{').unwrap_or(body.len())];
            // Methods and free functions may share a name: keep both bodies.
            let mut key = format!("{module}::{name}");
            if bodies.contains_key(&key) {
                key = format!("{key}#{}", bodies.len());
            }
            if sig.trim_start().starts_with("pub ") && sig.contains("caller: &Caller") {
                operations.push(key.clone());
            }
            bodies.insert(key, body);
        }
    }
    let calls = |body: &str, name: &str| {
        let short = name.rsplit("::").next().unwrap_or(name);
        let short = short.split('#').next().unwrap_or(short);
        body.contains(&format!("self.{short}(")) || body.contains(&format!(" {short}("))
    };
    let mut deciding: BTreeSet<String> = bodies
        .iter()
        .filter(|(_, b)| b.contains("authorize(caller"))
        .map(|(n, _)| n.clone())
        .collect();
    loop {
        let more: Vec<String> = bodies
            .iter()
            .filter(|(n, _)| !deciding.contains(*n))
            .filter(|(_, b)| deciding.iter().any(|d| calls(b, d)))
            .map(|(n, _)| n.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        deciding.extend(more);
    }
    assert!(
        operations.len() >= 15,
        "found only {} core operations taking a caller",
        operations.len()
    );
    let missing: Vec<&String> = operations
        .iter()
        .filter(|o| !deciding.contains(*o))
        .collect();
    assert!(
        missing.is_empty(),
        "core operations that never call authorize: {missing:?}"
    );
}

#[test]
fn no_stored_body_is_read_into_null() {
    let stray = files_naming("unwrap_or(Value::Null)");
    let stray: Vec<String> = stray
        .into_iter()
        .filter(|f| {
            // A received HTTP response body or a missing optional element may be absent; a
            // stored body may not. These files read only the former (see their comments).
            !["workers/deliver.rs", "detect/medication.rs"].contains(&f.as_str())
        })
        .collect();
    assert!(stray.is_empty(), "`unwrap_or(Value::Null)` in {stray:?}");
}
