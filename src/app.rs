//! Assembles the gateway from its settings: schema, profiles, store, clients, router.
//! `serve`, `demo` and the tests all start the application through [`App::build`].

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::auth::Clients;
use crate::config::Settings;
use crate::ingest::Gateway;
use crate::store::{SqlStore, Store};
use crate::validate::{CORE_TYPES, FhirSchema, Profiles, Validator};

/// A built application, not yet listening.
pub struct App {
    pub gateway: Arc<Gateway>,
    pub router: axum::Router,
}

impl App {
    /// Loads the schema and profiles, connects the store (running migrations) and builds the
    /// router. `config_file` names the file in configuration errors.
    pub async fn build(
        settings: Settings,
        config_file: &str,
        clients: Clients,
    ) -> anyhow::Result<App> {
        let schema = FhirSchema::load().map_err(anyhow::Error::msg)?;
        let profiles = Profiles::load(&settings.fhir.profiles_dir)?;
        settings.check_profiles(config_file, &|p| profiles.has_set(p))?;
        schema.warm(CORE_TYPES);
        let store = SqlStore::connect(&settings.store.url, settings.store.max_connections).await?;
        let store: Arc<dyn Store> = Arc::new(store);
        let gateway = Arc::new(Gateway::new(
            settings,
            Validator::new(schema, profiles),
            store,
        ));
        let router = crate::api::router(gateway.clone(), clients);
        Ok(App { gateway, router })
    }

    /// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
    pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    }

    /// Serves until `shutdown` resolves; in-flight requests finish first.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
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
