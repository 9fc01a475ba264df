//! A real browser for the console's tests: Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) with fantoccini; axe-core (from `tests/peers/node_modules`,
//! pinned in `tests/peers/package.json`) injected into a page to check it against WCAG 2.1 A
//! and AA. `.ci/run` installs both packages; a missing one fails with one line naming it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// The driver and one browser session.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

/// Starts chromedriver on a port it picks itself (`--port=0`; a port picked here and let go
/// could be taken by another test before the driver binds it) and returns the port it printed.
fn start_driver(driver_bin: &str) -> (Child, u16) {
    let mut driver = Command::new(driver_bin)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let stdout = driver.stdout.take().expect("chromedriver's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads every line, so that the driver never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split("started successfully on port ")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(port) => (driver, port),
        Err(_) => {
            let _ = driver.kill();
            panic!("chromedriver did not say which port it listens on");
        }
    }
}

fn require(binary: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{binary} is not installed (apt-get install chromium chromium-driver; .ci/run does)");
}

impl Browser {
    /// Starts chromedriver ([`start_driver`]) and a headless chromium that asks for `lang` pages.
    pub async fn start(lang: &str) -> Browser {
        let driver_bin = require("chromedriver");
        let chromium = require("chromium");
        let (driver, port) = start_driver(&driver_bin);
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars", format!("--lang={lang}")],
                "prefs": { "intl.accept_languages": lang }
            }
        });
        let caps: fantoccini::wd::Capabilities = caps
            .as_object()
            .expect("an object")
            .clone()
            .into_iter()
            .collect();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Browser { client, driver },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver on {url} gave no session: {last:?}");
    }

    /// The page's text (the body's).
    pub async fn text(&self) -> String {
        self.client
            .execute("return document.body.innerText;", vec![])
            .await
            .expect("the page's text")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// axe-core's violations of WCAG 2.1 A and AA on the current page (id, impact, targets).
    pub async fn axe_violations(&self) -> Vec<Value> {
        let axe = std::fs::read_to_string(
            super::peers::peers_dir().join("node_modules/axe-core/axe.min.js"),
        )
        .expect("axe-core is installed in tests/peers (npm ci --prefix tests/peers)");
        self.client
            .execute(&axe, vec![])
            .await
            .expect("axe-core loads");
        let run = r#"
            const done = arguments[arguments.length - 1];
            axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
              .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact,
                    targets: v.nodes.map(n => n.target.join(' ')).slice(0, 5) }))))
              .catch(e => done([{ id: 'axe-error', impact: String(e) }]));"#;
        let out = self
            .client
            .execute_async(run, vec![])
            .await
            .expect("axe runs");
        out.as_array().cloned().unwrap_or_default()
    }

    /// Writes a PNG of the page when `CAREBRIDGE_SCREENSHOTS` names a folder (README, "What it
    /// looks like", says how the screenshots are made).
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("CAREBRIDGE_SCREENSHOTS") else {
            return;
        };
        let dir = super::repo().join(dir);
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        // The whole page, not only the window: the window is made as tall as the page.
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight;", vec![])
            .await
            .ok()
            .and_then(|h| h.as_u64())
            .unwrap_or(900)
            .clamp(600, 4000);
        let _ = self.client.set_window_size(1280, height as u32 + 140).await;
        let png = self.client.screenshot().await.expect("a screenshot");
        let _ = self.client.set_window_size(1280, 900).await;
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
    }

    pub async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
