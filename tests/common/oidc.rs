//! A real OpenID Connect provider on 127.0.0.1 (npm `oidc-provider`, `tests/peers/oidc-provider.mjs`)
//! and the demo configured to sign its persons in with it (`[ui.oidc]`, `[auth]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::demo::Demo;

/// The provider process and its issuer URL.
pub struct Provider {
    pub issuer: String,
    child: Child,
}

impl Provider {
    /// Starts the provider for a console whose callback is `redirect`; `accounts` maps an
    /// account (its login) to its practitioner identifier value.
    pub fn start(redirect: &str, accounts: &serde_json::Value) -> Provider {
        super::peers::ensure_npm_installed();
        let mut child = Command::new(super::peers::node_bin())
            .current_dir(super::peers::peers_dir())
            .args(["oidc-provider.mjs", "--redirect", redirect, "--accounts"])
            .arg(accounts.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts the OpenID provider");
        let stdout = child.stdout.take().expect("its output");
        let mut lines = BufReader::new(stdout).lines();
        let issuer = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
            .expect("the OpenID provider serves");
        std::thread::spawn(move || lines.for_each(drop));
        Provider { issuer, child }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo with sign-in through `Provider` (the demo's two nurses as its accounts), in `dir`.
pub fn demo_with_provider(dir: &Path) -> (Demo, Provider) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let redirect = format!("http://127.0.0.1:{port}/ui/oidc/callback");
    let accounts = serde_json::json!({
        "nurse-lassen": { "practitioner": "N8SD2" },
        "nurse-dam": { "practitioner": "G2KW9" },
    });
    let provider = Provider::start(&redirect, &accounts);
    let issuer = &provider.issuer;
    let demo_toml =
        std::fs::read_to_string(super::repo().join("config/demo.toml")).expect("demo.toml");
    let config = format!(
        "{demo_toml}\n[auth]\nissuer = \"{issuer}\"\naudience = \"carebridge\"\njwks_url = \"{issuer}/jwks\"\n\
         client_id_claim = \"sub\"\npractitioner_claim = \"practitioner\"\npractitioner_system = \"https://autregweb.sst.dk\"\n\
         [[auth.scopes]]\nscope = \"careteam\"\nrole = \"careteam\"\n\
         [ui.oidc]\nissuer = \"{issuer}\"\nclient_id = \"carebridge-console\"\nredirect_url = \"{redirect}\"\n\
         resource = \"urn:carebridge\"\n"
    );
    let path = dir.join("demo-oidc.toml");
    std::fs::write(&path, config).expect("the configuration is written");
    let listen = format!("127.0.0.1:{port}");
    let demo = Demo::start_with(&[
        "--config",
        path.to_str().expect("a UTF-8 path"),
        "--listen",
        &listen,
    ]);
    (demo, provider)
}
