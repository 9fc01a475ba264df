//! Assembles the gateway from its settings: schema, profiles, mappings, store, clients, router,
//! and the exchange's workers.
//! `serve`, `demo` and the tests all start the application through [`App::build`].

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::auth::Clients;
use crate::config::Settings;
use crate::detect::Rules;
use crate::gateway::Gateway;
use crate::gateway::alerts::Detection;
use crate::store::{SqlStore, Store};
use crate::terminology::{Mapping, MedKnowledge};
use crate::validate::{FhirSchema, Profiles, Validator};
use crate::workers::Workers;

/// A built application, not yet listening.
pub struct App {
    pub gateway: Arc<Gateway>,
    pub router: axum::Router,
    /// The console's sessions (the demo mints its sign-in links here).
    pub sessions: Arc<crate::api::ui::Sessions>,
    /// Delivery workers and pollers; started by [`App::serve`] when `exchange.enabled`.
    pub workers: Workers,
}

impl App {
    /// Loads the schema and profiles, connects the store (running migrations) and builds the
    /// router. `config_file` names the file in configuration errors.
    pub async fn build(
        settings: Settings,
        config_file: &str,
        clients: Clients,
    ) -> anyhow::Result<App> {
        let schema = FhirSchema::load()?;
        let profiles = Profiles::load(&settings.fhir.profiles_dir)?;
        let mapping = Mapping::load(&settings.fhir.profiles_dir)?;
        settings.check_profiles(config_file, &|p| profiles.has_set(p))?;
        let store = SqlStore::connect(&settings.store.url, settings.store.max_connections).await?;
        let store: Arc<dyn Store> = Arc::new(store);
        let knowledge = MedKnowledge::load(&settings.fhir.profiles_dir)?;
        let detection = Detection {
            knowledge,
            mapping: mapping.clone(),
            rules: Rules::from(&settings.alerts),
        };
        let validator = Validator::new(schema, profiles);
        let signer = crate::gateway::transparency::load_signer(&settings.audit, config_file)?;
        let mut gateway = Gateway::new(
            settings,
            validator,
            store,
            Arc::new(mapping),
            Some(detection),
        );
        gateway.set_signer(signer);
        gateway.set_config_file(config_file);
        let gateway = Arc::new(gateway);
        // Bearer JWTs of the `[auth]` issuer, besides the static tokens.
        let clients = match crate::auth::JwtVerifier::from_settings(gateway.settings())? {
            Some(verifier) => {
                verifier.spawn_prefetch();
                clients.with_jwt(verifier)
            }
            None => clients,
        };
        let sessions = Arc::new(crate::api::ui::Sessions::new(
            &gateway.settings().ui,
            gateway.store().clone(),
        ));
        let router = crate::api::router_with(gateway.clone(), clients, sessions.clone());
        let workers = Workers::new(gateway.clone())?;
        Ok(App {
            gateway,
            router,
            sessions,
            workers,
        })
    }

    /// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
    pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    }

    /// Serves until `shutdown` resolves; in-flight requests finish first, then the delivery
    /// workers and pollers stop (each after the request it has in flight).
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            self.gateway.listening_on(addr);
        }
        if self.gateway.settings().exchange.enabled {
            self.workers.reclaim().await;
            self.workers.start();
        }
        if self.gateway.signer().is_some() {
            self.workers.start_audit();
        }
        // Refused authentications are audited per address and minute once the minute is over.
        let tally = self.gateway.clone();
        let flusher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                tally.flush_refusals(false).await;
            }
        });
        if self.gateway.settings().alerts.enabled {
            self.workers.start_schedule();
        }
        let closing = self.gateway.clone();
        // The client's address reaches the handlers (the per-address rate limit, the
        // aggregated audit of refused tokens).
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Long-lived responses (the alert stream) end, so that shutdown completes.
                closing.begin_shutdown();
            })
            .await;
        self.workers.stop().await;
        flusher.abort();
        self.gateway.flush_refusals(true).await;
        served?;
        Ok(())
    }
}

/// Serves a witness of another carebridge's audit log (`carebridge audit witness`) until
/// `shutdown`: `POST /add-checkpoint` (C2SP tlog-witness; the log's signature authenticates
/// the request), `GET /status` (what it holds and the alarms it raised: sizes, hashes and
/// sequence numbers only) and `GET /healthz`.
pub async fn serve_witness(
    witness: Arc<crate::workers::witness::Witness>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::extract::State;
    use axum::http::StatusCode;
    type W = State<Arc<crate::workers::witness::Witness>>;
    async fn add(State(w): W, body: String) -> (StatusCode, String) {
        let a = w.add_checkpoint(&body).await;
        (
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            a.body,
        )
    }
    async fn status(State(w): W) -> axum::Json<serde_json::Value> {
        axum::Json(w.status().await)
    }
    let router = axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add))
        .route("/status", axum::routing::get(status))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(witness);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
