//! The deployment files, checked statically by rules this project keeps (a small hadolint of
//! its own): `Dockerfile` (multi-stage, pinned bases, a slim runtime stage, an unprivileged
//! user, a HEALTHCHECK on `/readyz`, exec-form entry point, nothing fetched when the container
//! runs, a build context that holds what the build reads) and `compose.yaml` (PostgreSQL with a
//! health check, two gateway replicas on one configuration, no password in the file, ports on
//! loopback). Where a docker binary with the compose plugin exists, `docker compose config`
//! must accept the file too; where a docker daemon runs, the image is built and `/readyz`
//! answers (README, "Deploy"; on machines without them those parts say so and pass).

use std::process::Command;

use crate::common::repo;

fn read(name: &str) -> String {
    std::fs::read_to_string(repo().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The Dockerfile's instructions (continuation lines joined, comments dropped), by stage.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(t);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut out: Vec<Vec<(String, String)>> = Vec::new();
    for ins in joined.into_iter().filter(|i| !i.trim().is_empty()) {
        let (op, args) = ins.split_once(' ').unwrap_or((&ins, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            out.push(Vec::new());
        }
        if let Some(stage) = out.last_mut() {
            stage.push((op, args.trim().to_owned()));
        }
    }
    out
}

fn args_of<'a>(stage: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// Every rule the Dockerfile breaks.
fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let st = stages(text);
    if st.len() < 2 {
        p.push("not multi-stage".to_owned());
        return p;
    }
    for s in &st {
        let image = s[0].1.split_whitespace().next().unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        if image.contains('@') {
            continue;
        }
        if tag.is_none_or(|t| t == "latest" || t.contains('/')) {
            p.push(format!("FROM {image}: pin a tag other than latest"));
        }
    }
    let last = st.last().unwrap();
    let base = last[0].1.split_whitespace().next().unwrap_or("");
    if !(base.contains("slim") || base.contains("distroless") || base.contains("alpine")) {
        p.push(format!(
            "the runtime stage's base {base} is not a small image"
        ));
    }
    if st[0][0].1.split_whitespace().next() == Some(base) {
        p.push("the runtime stage is the build image".into());
    }
    p.extend(runtime_problems(last));
    for s in &st {
        for run in args_of(s, "RUN") {
            if run.contains("apt-get install")
                && !(run.contains("--no-install-recommends")
                    && run.contains("rm -rf /var/lib/apt/lists"))
            {
                p.push(format!(
                    "RUN {run}: --no-install-recommends and clean the lists"
                ));
            }
            if run.contains("| sh") || run.contains("| bash") {
                p.push(format!("RUN {run}: no piped installers"));
            }
            if run.contains("cargo build")
                && !(run.contains("--locked") && run.contains("--release"))
            {
                p.push("cargo build needs --locked --release".into());
            }
        }
        for add in args_of(s, "ADD") {
            p.push(format!("ADD {add}: use COPY (and never a URL)"));
        }
    }
    p
}

/// The runtime stage's rules.
fn runtime_problems(last: &[(String, String)]) -> Vec<String> {
    let mut p = Vec::new();
    match args_of(last, "USER").last() {
        Some(u) if !matches!(u.split(':').next(), Some("0" | "root")) => {}
        _ => p.push("the runtime stage runs as root: add USER with a non-root uid".into()),
    }
    let health = args_of(last, "HEALTHCHECK");
    if !health.iter().any(|h| h.contains("/readyz")) {
        p.push("no HEALTHCHECK on /readyz in the runtime stage".into());
    }
    for op in ["ENTRYPOINT", "CMD"] {
        if !args_of(last, op).iter().all(|a| a.starts_with('[')) || args_of(last, op).is_empty() {
            p.push(format!("{op} missing or not in exec (JSON) form"));
        }
    }
    if !args_of(last, "COPY")
        .iter()
        .any(|c| c.starts_with("--from="))
    {
        p.push("the runtime stage copies nothing from the build stage".into());
    }
    let started = [args_of(last, "ENTRYPOINT"), args_of(last, "CMD")]
        .concat()
        .join(" ");
    for tool in ["npm", "cargo", "curl", "wget", "git"] {
        if started.contains(tool) {
            p.push(format!(
                "the container's command runs {tool}: nothing is fetched at run time"
            ));
        }
    }
    if !args_of(last, "EXPOSE").contains(&"8080") {
        p.push("EXPOSE 8080 (the listen address it sets)".into());
    }
    p
}

/// What the build copies from the context exists, and holds what the build reads.
fn context_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let mut copied = Vec::new();
    for s in stages(text) {
        for c in args_of(&s, "COPY")
            .iter()
            .filter(|c| !c.starts_with("--from="))
        {
            let parts: Vec<&str> = c.split_whitespace().collect();
            for src in &parts[..parts.len().saturating_sub(1)] {
                if !repo().join(src).exists() {
                    p.push(format!("COPY {src}: not in the repository"));
                }
                copied.push(src.trim_end_matches('/').to_owned());
            }
        }
    }
    // The sources' include_str! of docs/ and the manifest's bench and test targets.
    for needed in [
        "src",
        "migrations",
        "build.rs",
        "build_rules.rs",
        "Cargo.lock",
        "docs",
        "benches",
        "tests",
        "fhir-profiles",
    ] {
        if !copied.iter().any(|c| c == needed) {
            p.push(format!("the build stage does not copy {needed}"));
        }
    }
    p
}

/// Every rule compose.yaml breaks (read as text: the project has no YAML parser).
fn compose_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let code: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let has = |needle: &str| code.iter().any(|l| l.contains(needle));
    if code.iter().filter(|l| l.trim() == "<<: *gateway").count() != 2 {
        p.push("two gateway replicas from the one x-gateway definition".into());
    }
    if !has("x-gateway: &gateway") {
        p.push("the replicas' shared definition (x-gateway: &gateway) is missing".into());
    }
    if !has(":/etc/carebridge/carebridge.toml:ro") {
        p.push("the configuration is mounted read-only once, for both replicas".into());
    }
    if !has("condition: service_healthy") || !has("pg_isready") {
        p.push("the gateways wait for a healthy PostgreSQL".into());
    }
    if !has("CAREBRIDGE_STORE__URL: \"postgres://") || !has("@postgres:5432/") {
        p.push("the gateways' store is the compose PostgreSQL".into());
    }
    for l in &code {
        let t = l.trim();
        if let Some(image) = t.strip_prefix("image:").map(str::trim)
            && (image.ends_with(":latest") || !image.contains(':'))
        {
            p.push(format!("{t}: pin a tag"));
        }
        if t.contains("PASSWORD") && t.contains(':') && !t.contains("${") {
            p.push(format!("{t}: no password in the file"));
        }
        if t.starts_with("- \"") && t.contains(":8080\"") && !t.starts_with("- \"127.0.0.1:") {
            p.push(format!("{t}: publish on loopback (a TLS proxy in front)"));
        }
    }
    if !has("image: postgres:") {
        p.push("a PostgreSQL service".into());
    }
    p
}

#[test]
fn the_dockerfile_keeps_the_rules() {
    let text = read("Dockerfile");
    let mut problems = dockerfile_problems(&text);
    problems.extend(context_problems(&text));
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let bad = "FROM rust AS build\nRUN apt-get install -y nodejs\nRUN curl x | sh\nADD https://x/y /y\n\
               FROM rust\nCOPY . .\nCMD carebridge serve\n";
    let found = dockerfile_problems(bad).join("\n");
    for rule in [
        "pin a tag",
        "not a small image",
        "runs as root",
        "HEALTHCHECK",
        "exec (JSON)",
        "no piped",
        "ADD",
        "no-install-recommends",
        "copies nothing",
    ] {
        assert!(found.contains(rule), "{rule} not caught:\n{found}");
    }
    let compose = "services:\n  postgres:\n    image: postgres\n    environment:\n      POSTGRES_PASSWORD: secret\n  \
                   gateway:\n    ports:\n      - \"8080:8080\"\n";
    let found = compose_problems(compose).join("\n");
    for rule in [
        "two gateway replicas",
        "pin a tag",
        "no password",
        "loopback",
        "healthy PostgreSQL",
    ] {
        assert!(found.contains(rule), "{rule} not caught:\n{found}");
    }
}

#[test]
fn the_compose_file_keeps_the_rules() {
    let text = read("compose.yaml");
    let problems = compose_problems(&text);
    assert!(
        problems.is_empty(),
        "compose.yaml:\n{}",
        problems.join("\n")
    );
    let compose = Command::new("docker").args(["compose", "version"]).output();
    if !compose.is_ok_and(|o| o.status.success()) {
        eprintln!("docker compose is not installed here: compose.yaml checked by the rules only");
        return;
    }
    let out = Command::new("docker")
        .args([
            "compose",
            "-f",
            "compose.yaml",
            "config",
            "--format",
            "json",
        ])
        .current_dir(repo())
        .env("CAREBRIDGE_PG_PASSWORD", "checked-only")
        .output()
        .expect("docker compose config runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (one, two) = (
        &config["services"]["gateway-1"],
        &config["services"]["gateway-2"],
    );
    assert_eq!(
        one["volumes"], two["volumes"],
        "one configuration for both replicas"
    );
    assert_eq!(one["environment"], two["environment"]);
}

/// Where a docker daemon runs: the image builds and its `/readyz` answers 200.
#[test]
fn the_image_builds_and_answers_readyz_where_docker_runs() {
    let daemon = Command::new("docker").arg("info").output();
    if !daemon.is_ok_and(|o| o.status.success()) {
        eprintln!("no docker daemon here: the image is not built (the static rules still ran)");
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new("docker")
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&["build", "-t", "carebridge:test", "."]);
    let id = run(&["run", "-d", "-p", "127.0.0.1::8080", "carebridge:test"]);
    let port = run(&["port", &id, "8080"]);
    let addr = port.lines().next().unwrap_or("").to_owned();
    let mut ready = false;
    for _ in 0..60 {
        let out = Command::new("curl")
            .args(["-fsS", &format!("http://{addr}/readyz")])
            .output();
        if out.is_ok_and(|o| o.status.success()) {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    run(&["rm", "-f", &id]);
    assert!(ready, "/readyz of the container never answered");
}
