//! P1: structural validation throughput of the gateway's validator (parse included, one thread).
//!
//! Run through `benches/run`; by hand:
//!
//! ```sh
//! cargo bench --bench p1_validation -- corpus OUT.ndjson [--limit N]
//! cargo bench --bench p1_validation -- run --corpus OUT.ndjson --out p1-rust.json \
//!     [--passes 3] [--batch-bundles 50] [--batch-copies 2]
//! ```
//!
//! `corpus` writes the shared corpus, one compact resource per line: every official R4 example
//! of `../shared/data/fhir-r4-examples/` (all folders but `_structuredefinitions/`, without
//! `Patient/json-edge-cases.json`), then every `entry[].resource` of the Synthea bundles. The
//! peers (`benches/peers/`) read the same file.
//!
//! `run` reads the corpus into memory, makes one untimed warm-up pass (the peers warm up the
//! same way), then times `--passes` passes of `Validator::structural_bytes` (the borrowed parse
//! with the gateway's default depth limit, and the walk) over every line. It also times the "100-patient batch": the Synthea bundle files as they are on
//! disk, each parsed and validated as one Bundle, `--batch-copies` times over.
//!
//! Instruction counts (benches/README.md, P1): `corpus slice.ndjson --limit 1000`, then
//! `valgrind --tool=callgrind --toggle-collect='carebridge::validate::Validator::structural_bytes'`
//! over `run --corpus slice.ndjson --passes P --batch-bundles 0 --batch-copies 0` for P = 1 and
//! P = 3: half the difference is one pass.

// In a benchmark, a failed assumption is a failure to report: unwrap/expect name it and stop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use carebridge::config::ServerSettings;
use carebridge::fhir::json::{Arena, Node, parse_borrowed, parse_strict};
use carebridge::validate::{FhirSchema, Profiles, Validator, rules};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

/// The allocator of the `carebridge` binary (`src/main.rs`): P1 times the validator as the
/// gateway runs it. Under the system allocator, glibc's malloc and free took about 30 % of a
/// pass's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// P1: structural validation throughput of the gateway's validator.
#[derive(Parser)]
#[command(name = "p1_validation", bin_name = "p1_validation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Appended by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the shared corpus: one compact resource per line.
    Corpus {
        /// The NDJSON file to write.
        out: String,
        /// Keep an evenly spread subset of this many resources (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Times parse + structural validation over the corpus.
    Run {
        /// The corpus `corpus` wrote.
        #[arg(long)]
        corpus: String,
        /// The JSON file for the results.
        #[arg(long)]
        out: String,
        /// Timed passes (at least 1).
        #[arg(long, default_value_t = 3)]
        passes: usize,
        /// Synthea Bundles of the 100-patient batch.
        #[arg(long, default_value_t = 50)]
        batch_bundles: usize,
        /// How many times the batch is validated.
        #[arg(long, default_value_t = 2)]
        batch_copies: usize,
    },
}

fn main() {
    let result = match Cli::parse().command {
        Command::Corpus { out, limit } => corpus(&out, limit),
        Command::Run {
            corpus,
            out,
            passes,
            batch_bundles,
            batch_copies,
        } => run(&corpus, &out, passes.max(1), batch_bundles, batch_copies),
    };
    if let Err(e) = result {
        eprintln!("p1_validation: {e}");
        std::process::exit(2);
    }
}

type Res<T> = Result<T, String>;

fn shared_data() -> PathBuf {
    std::env::var_os("CAREBRIDGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            json_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// The official examples of the corpus, sorted by path.
fn example_files() -> Res<Vec<PathBuf>> {
    let root = shared_data().join("fhir-r4-examples");
    let mut files = Vec::new();
    let rd = std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in rd {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() && !path.ends_with("_structuredefinitions") {
            json_files(&path, &mut files)?;
        }
    }
    files.retain(|p| !p.ends_with("Patient/json-edge-cases.json"));
    files.sort();
    Ok(files)
}

fn synthea_files() -> Res<Vec<PathBuf>> {
    let root = shared_data().join("synthea");
    let mut files = Vec::new();
    json_files(&root, &mut files)?;
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn corpus(out: &str, limit: usize) -> Res<()> {
    let mut lines: Vec<(bool, String)> = Vec::new();
    for f in example_files()? {
        // serde_json (with `preserve_order` and `arbitrary_precision`) keeps keys and lexemes.
        let v: Value =
            serde_json::from_slice(&read(&f)?).map_err(|e| format!("{}: {e}", f.display()))?;
        lines.push((false, serde_json::to_string(&v).map_err(|e| e.to_string())?));
    }
    for f in synthea_files()? {
        let v: Value =
            serde_json::from_slice(&read(&f)?).map_err(|e| format!("{}: {e}", f.display()))?;
        for e in v["entry"]
            .as_array()
            .ok_or("a Synthea bundle without entries")?
        {
            lines.push((
                true,
                serde_json::to_string(&e["resource"]).map_err(|e| e.to_string())?,
            ));
        }
    }
    if limit > 0 && limit < lines.len() {
        // An evenly spread subset, so examples and Synthea resources are both in it.
        let n = lines.len();
        lines = (0..limit)
            .map(|i| lines[i * n / limit].clone())
            .collect::<Vec<_>>();
    }
    let examples = lines.iter().filter(|(s, _)| !s).count();
    let synthea = lines.len() - examples;
    let bytes: usize = lines.iter().map(|(_, l)| l.len()).sum();
    let mut text = String::with_capacity(bytes + lines.len());
    for (_, l) in &lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
    println!(
        "{}",
        json!({ "corpus": out, "resources": lines.len(), "examples": examples,
                "synthea": synthea, "bytes": bytes })
    );
    Ok(())
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn run(
    corpus: &str,
    out: &str,
    passes: usize,
    batch_bundles: usize,
    batch_copies: usize,
) -> Res<()> {
    let depth = ServerSettings::default().max_json_depth;

    let t = Instant::now();
    let schema = FhirSchema::load().map_err(|e| e.to_string())?;
    let profiles = Profiles::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles"))
        .map_err(|e| format!("{}: {}", e.file, e.reason))?;
    // One thread: P1 compares one thread with one thread (each peer runs on one).
    let validator = Validator::new(schema, profiles).with_threads(1);
    let load_secs = t.elapsed().as_secs_f64();

    let text = std::fs::read(corpus).map_err(|e| format!("{corpus}: {e}"))?;
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();

    // Warm-up pass, which also counts the verdicts.
    let t = Instant::now();
    let mut accepted = 0usize;
    let mut rejects = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match validator.structural_bytes(line, depth) {
            Ok(issues) if issues.is_empty() => accepted += 1,
            Ok(issues) => {
                let first = &issues[0];
                let v = parse_strict(line, depth).unwrap_or(Value::Null);
                rejects.push(json!({
                    "line": i + 1,
                    "resourceType": v.get("resourceType"),
                    "issues": issues.len(),
                    "code": first.code,
                    "expression": first.expression,
                    "diagnostics": first.diagnostics,
                }));
            }
            Err(e) => rejects.push(json!({ "line": i + 1, "parse": e.to_string() })),
        }
    }
    let warmup_secs = t.elapsed().as_secs_f64();

    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        let t = Instant::now();
        let mut ok = 0usize;
        for line in &lines {
            if let Ok(issues) = validator.structural_bytes(line, depth) {
                ok += usize::from(black_box(issues).is_empty());
            }
        }
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(ok, accepted, "verdicts are stable across passes");
    }
    let secs = median(&times);
    let stages = stages(&validator, &lines, depth, passes);
    let batch = batch(&validator, depth, passes, batch_bundles, batch_copies)?;

    let result = json!({
        "side": "carebridge",
        "what": "carebridge Validator::structural_bytes: fhir::json::parse_borrowed (depth limit = server.max_json_depth default) + the one walk (schema and rules), one thread",
        "version": env!("CARGO_PKG_VERSION"),
        "resources": lines.len(),
        "bytes": bytes,
        "accepted": accepted,
        "rejected": rejects.len(),
        "rejects": rejects.iter().take(25).collect::<Vec<_>>(),
        "passes": times,
        "seconds": secs,
        "resources_per_s": lines.len() as f64 / secs,
        "bytes_per_s": bytes as f64 / secs,
        "warmup_seconds": warmup_secs,
        "validator_load_seconds": load_secs,
        "stages": stages,
        "batch": batch,
    });
    std::fs::write(
        out,
        serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "carebridge: {} resources, {} accepted, {:.0} resources/s; batch of {} patients {:.3} s \
         (one thread), {:.3} s (two)",
        lines.len(),
        accepted,
        lines.len() as f64 / secs,
        batch["patients"],
        batch["seconds"].as_f64().unwrap_or(f64::NAN),
        batch["two_threads_over_bundles_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    Ok(())
}

/// Where the time goes (information): the same corpus through each stage alone, best of the
/// passes. The walk and the compiled schema are for each line's top-level resource only.
fn stages(validator: &Validator, lines: &[&[u8]], depth: usize, passes: usize) -> Value {
    let best = |f: &mut dyn FnMut()| {
        let mut best = f64::INFINITY;
        for _ in 0..passes {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    let arena = Arena::new();
    let nodes: Vec<Node<'_>> = lines
        .iter()
        .map(|l| parse_borrowed(l, &arena, depth).unwrap_or(Node::Null))
        .collect();
    let values: Vec<Value> = lines
        .iter()
        .map(|l| parse_strict(l, depth).unwrap_or(Value::Null))
        .collect();
    let rtype = |v: &Node<'_>| {
        v.get("resourceType")
            .and_then(Node::as_str)
            .unwrap_or("Resource")
            .to_owned()
    };
    json!({
        "note": "seconds for the whole corpus, best of the passes; walk and compiled schema: top-level resource only",
        "parse_borrowed (fhir::json::Node, what validation reads)": best(&mut || {
            for l in lines {
                black_box(parse_borrowed(l, &Arena::new(), depth).is_ok());
            }
        }),
        "parse_strict (owned serde_json::Value, what the gateway keeps)": best(&mut || {
            for l in lines {
                black_box(parse_strict(l, depth).is_ok());
            }
        }),
        "serde_json_from_slice (same Value type, no duplicate-key or depth checks)": best(&mut || {
            for l in lines {
                black_box(serde_json::from_slice::<Value>(l).is_ok());
            }
        }),
        "walk (schema and rules in one walk)": best(&mut || {
            for n in &nodes {
                let t = rtype(n);
                let mut issues = Vec::new();
                let strings = rules::Strings::Parsed;
                rules::check(&validator.schema, &t, n, None, rules::Depth::Full, strings, &mut issues);
                black_box(issues);
            }
        }),
        "walk, schema level only": best(&mut || {
            for n in &nodes {
                let t = rtype(n);
                let mut issues = Vec::new();
                let strings = rules::Strings::Parsed;
                rules::check(&validator.schema, &t, n, None, rules::Depth::Schema, strings, &mut issues);
                black_box(issues);
            }
        }),
        "compiled JSON Schema (jsonschema crate, the reference; no longer on the path)": best(&mut || {
            for v in &values {
                let t = v["resourceType"].as_str().unwrap_or("Resource");
                black_box(validator.schema.check(t, v));
            }
        }),
        "structural_node (all of it, parse excluded)": best(&mut || {
            for n in &nodes {
                black_box(validator.structural_node(n));
            }
        }),
        "structural of an owned Value (Node::from_value + the walk: Gateway::check's path)": best(&mut || {
            for v in &values {
                black_box(validator.structural(v));
            }
        }),
    })
}

/// The 100-patient batch: the Synthea bundle files as on disk, each parsed and validated whole
/// (nested resources included), on one thread and on two.
fn batch(
    validator: &Validator,
    depth: usize,
    passes: usize,
    batch_bundles: usize,
    batch_copies: usize,
) -> Res<Value> {
    let files: Vec<PathBuf> = synthea_files()?.into_iter().take(batch_bundles).collect();
    let bundles: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect::<Res<_>>()?;
    let all: Vec<&[u8]> = (0..batch_copies)
        .flat_map(|_| bundles.iter().map(Vec::as_slice))
        .collect();
    let batch_bytes: usize = all.iter().map(|b| b.len()).sum();
    let one = |v: &Validator, b: &[u8]| -> Res<usize> {
        let issues = v.structural_bytes(b, depth).map_err(|e| e.to_string())?;
        Ok(usize::from(!black_box(issues).is_empty()))
    };
    let two = validator_with_threads(2);
    let mut invalid = 0usize;
    let mut single = Vec::new();
    let mut within = Vec::new();
    let mut over = Vec::new();
    let mut owned = Vec::new();
    for pass in 0..=passes {
        // One thread: parse + validate each Bundle.
        let t = Instant::now();
        invalid = all.iter().map(|b| one(validator, b)).sum::<Res<usize>>()?;
        let a = t.elapsed().as_secs_f64();
        // Two threads inside each Bundle (its entries split between them); the parse is serial.
        let t = Instant::now();
        all.iter().map(|b| one(&two, b)).sum::<Res<usize>>()?;
        let b = t.elapsed().as_secs_f64();
        // Two threads over the batch: each takes every other Bundle (parse included).
        let t = Instant::now();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|k| {
                    let all = &all;
                    s.spawn(move || {
                        all.iter()
                            .skip(k)
                            .step_by(2)
                            .map(|b| one(validator, b))
                            .sum::<Res<usize>>()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("no panic"))
                .sum::<Res<usize>>()
        })?;
        let c = t.elapsed().as_secs_f64();
        // What the gateway's ingest path does today: the owned Value (which it keeps), the walk
        // over it, and each entry's profile rules of the sector (here none). One thread.
        let t = Instant::now();
        for b in &all {
            let v = parse_strict(b, depth).map_err(|e| e.to_string())?;
            black_box(validator.structural(&v));
            for e in v["entry"].as_array().into_iter().flatten() {
                black_box(validator.profile(None, &e["resource"]));
            }
        }
        let d = t.elapsed().as_secs_f64();
        if pass > 0 {
            // pass 0 is the warm-up
            single.push(a);
            within.push(b);
            over.push(c);
            owned.push(d);
        }
    }
    let resources: usize = all
        .iter()
        .map(|b| {
            parse_borrowed(b, &Arena::new(), depth)
                .ok()
                .and_then(|n| {
                    n.get("entry")
                        .and_then(Node::as_array)
                        .map(<[Node<'_>]>::len)
                })
                .unwrap_or(0)
        })
        .sum();
    Ok(json!({
        "bundles": all.len(),
        "patients": all.len(),
        "resources": resources,
        "bytes": batch_bytes,
        "invalid_bundles": invalid,
        "passes": single,
        "seconds": median(&single),
        "two_threads_within_bundle_passes": within,
        "two_threads_within_bundle_seconds": median(&within),
        "two_threads_over_bundles_passes": over,
        "two_threads_over_bundles_seconds": median(&over),
        "ingest_path_passes": owned,
        "ingest_path_seconds": median(&owned),
    }))
}

/// A second validator over the same embedded tables with another thread count.
fn validator_with_threads(threads: usize) -> Validator {
    let schema = FhirSchema::load().expect("the embedded schema loads");
    let profiles = Profiles::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles"))
        .expect("the profiles load");
    Validator::new(schema, profiles).with_threads(threads)
}
