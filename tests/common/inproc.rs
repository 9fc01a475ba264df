//! The application in this process: `App::build` on a configuration file, served on 127.0.0.1
//! port 0 until stopped. The tests' `TestApp` and the P3 bench start their gateways with it.
//!
//! Self-contained (no `super::` items): the tests include it as `common::inproc`, the benches
//! with `#[path = "../tests/common/inproc.rs"] mod inproc;`.
#![allow(dead_code)]

use carebridge::app::App;
use carebridge::auth::Clients;
use carebridge::config::Settings;
use std::path::Path;
use std::sync::Arc;

/// The request pipeline of a running application.
pub type Gateway = carebridge::gateway::Gateway;

/// A running application.
pub struct InProcess {
    /// `http://127.0.0.1:<port>/fhir`
    pub base: String,
    pub gateway: Arc<Gateway>,
    /// The console's sessions (benchmarks mint sign-in links here).
    pub sessions: Arc<carebridge::api::ui::Sessions>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Loads `config` (clients included) and serves it on a task of the current runtime.
    pub async fn start(config: &Path) -> anyhow::Result<InProcess> {
        let settings = Settings::load(config)?;
        let clients = Clients::from_settings(&settings.clients);
        let app = App::build(settings, &config.display().to_string(), clients).await?;
        let gateway = app.gateway.clone();
        let sessions = app.sessions.clone();
        let (listener, addr) = App::bind("127.0.0.1:0").await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = app
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(InProcess {
            base: format!("http://{addr}/fhir"),
            gateway,
            sessions,
            shutdown: Some(tx),
            handle: Some(handle),
        })
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}
