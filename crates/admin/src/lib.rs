//! The admin HTTP server on `[admin] listen` (default `127.0.0.1:8025`).
//!
//! Container orchestrators, Prometheus and the admin need to ask a running relay how it is
//! without speaking SMTP. This crate serves that over plain HTTP on an address that defaults to
//! loopback, so nothing is exposed to the LAN unless the admin binds it there. It knows nothing
//! of how readiness is decided: the binary hands it a function that runs the checks.
//!
//! Endpoints:
//! - `GET /healthz`: the process is alive and serving; `{"status":"ok","version":"..."}`.
//! - `GET /readyz`: every check (listeners up, spool writable, each account's token obtainable
//!   or why not) as JSON; 200 when all pass, 503 otherwise.
//! - `GET /metrics`: Prometheus text exposition (see `smtp2oauth-metrics`).
//! - `GET /accounts` (and `/`): every account's route and token state, with Sign in buttons;
//!   `GET /oauth/callback` (or the redirect URI's path) completes a browser sign-in
//!   (`accounts.rs`, with sessions and CSRF in `session.rs`).

#![warn(missing_docs)]

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use smtp2oauth_metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod accounts;
mod session;
pub mod time;

pub use accounts::{AccountView, AccountsConfig, AccountsPage};

/// One readiness check and its outcome, in words an admin can act on.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name, e.g. `spool` or `account scanner`.
    pub name: String,
    /// True when the check passed.
    pub ok: bool,
    /// What was found, in words.
    pub detail: String,
}

/// The answer of `/readyz`.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// True when every check passed.
    pub ready: bool,
    /// Every check, passed or not.
    pub checks: Vec<Check>,
}

/// Runs the readiness checks (supplied by the binary, which knows what to check).
pub type ReadinessFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

/// What the admin server's handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The readiness checks, for `/readyz`.
    pub readiness: ReadinessFn,
    /// The accounts page and OAuth callback; None serves only health and metrics.
    pub accounts: Option<Arc<AccountsPage>>,
    /// What the relay has been doing (devices, accounts, recent messages), published by the
    /// sessions and the scheduler.
    pub activity: smtp2oauth_activity::Activity,
    /// Measures the facts besides the accounts that problems are decided from.
    pub environment: smtp2oauth_activity::EnvironmentFn,
}

/// The admin server, bound and not yet serving.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    app: Router,
}

/// Binds the admin listener now, so a bad or busy address stops the relay at start; nothing
/// is served until [`AdminServer::serve`].
pub async fn bind(addr: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let page = state.accounts.clone();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(page) = page {
        app = app.merge(accounts::router(page));
    }
    Ok(AdminServer { listener, app })
}

impl AdminServer {
    /// The address the server listens on (the port chosen by the system for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then finishes the requests in progress. Logs the address at
    /// once, before the returned future first runs.
    pub fn serve(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        if let Ok(local) = self.listener.local_addr() {
            info!(address = %local, "admin server listening");
        }
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future()
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let checks = (state.readiness)().await;
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, checks }))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
