//! The admin HTTP server on `[admin] listen` (default `127.0.0.1:8025`): the operator console.
//!
//! Container orchestrators, Prometheus and the admin need to ask a running relay how it is
//! without speaking SMTP, and an admin needs to see at a glance what is wrong and act on it.
//! This crate serves both over plain HTTP on an address that defaults to loopback. It reads
//! what others publish (the activity store, the spool, token states) and decides nothing about
//! delivery: readiness, the send-test and the measurement of the environment are functions the
//! binary hands it; queue actions are requests in the spool's `control/` directory, carried out
//! by the relay exactly as those of `smtp2oauth queue`.
//!
//! Endpoints (docs/admin.md has each with an example):
//! - `GET /healthz`, `GET /readyz` (the relay itself: listeners and spool; the body also lists
//!   each account's state), `GET /metrics`.
//! - Pages, server-rendered with maud, working without JavaScript: `/` (overview: problems
//!   first), `/devices`, `/accounts` (with Sign in / Sign out and Send test), `/queue` (and
//!   `/queue/{id}` with Retry / Delete / Requeue), `/messages`, `/docs/{page}` (the repo's docs,
//!   embedded, so the problems' links work without Internet), the OAuth callback.
//! - JSON under `/api/v1/` (`api.rs`).
//!
//! # Layout
//! - `console.rs`: the shared state of every handler and who may do what (sessions, password,
//!   CSRF, HTTP Basic for scripts).
//! - `host.rs`: the `Host` / `Origin` guard against DNS rebinding.
//! - `password.rs`: the password check on a bounded pool with a per-address lockout.
//! - `session.rs`: browser sessions and CSRF tokens.
//! - `model.rs`: what the pages and the API show, built once for both (times, queue entries).
//! - `api.rs`: the JSON API. `pages/`: the pages. `accounts.rs`: the accounts page's sign-in
//!   part and the OAuth callback. `docs.rs`: the embedded documentation.
//! - `time.rs`: times as people read them and as the API writes them.

#![warn(missing_docs)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
mod api;
mod console;
pub mod docs;
pub mod host;
mod model;
mod pages;
pub mod password;
mod queue;
mod session;
pub mod time;

pub use accounts::{AccountView, AccountsConfig};
use console::Console;
pub use smtp2oauth_activity::ReplyInfo;

/// One readiness check and its outcome, in words an admin can act on.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name, e.g. `spool` or `listeners`.
    pub name: String,
    /// True when the check passed.
    pub ok: bool,
    /// What was found, in words.
    pub detail: String,
}

/// Runs the readiness checks (supplied by the binary, which knows what to check).
pub type ReadinessFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

/// One step of a send-test (getting a token, delivering), with what to do when it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestStep {
    /// True when the step worked.
    pub ok: bool,
    /// What happened, in words (`token obtained, valid until ...`, `delivered`).
    pub summary: String,
    /// The upstream's (or the token endpoint's, as a reply) answer, when there was one.
    pub reply: Option<ReplyInfo>,
    /// What to do about a failure.
    pub advice: Option<String>,
}

/// What a send-test found: the token first, then the delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SendTestReport {
    /// The account.
    pub account: String,
    /// The recipient.
    pub to: String,
    /// The account's route (`smtp`, `graph`, ...) and where it goes.
    pub route: String,
    /// Where the route delivers (host and port, or the Graph URL).
    pub target: String,
    /// Getting a token; None when the route needs none.
    pub token: Option<TestStep>,
    /// Delivering; None when it was not tried (no token).
    pub delivery: Option<TestStep>,
    /// True when every step that ran worked and the message was delivered.
    pub ok: bool,
}

/// Runs a send-test: `(account, recipient)`; `Err` says why it could not start (no such
/// account, a recipient that is not an address).
pub type SendTestFn = Arc<
    dyn Fn(String, String) -> Pin<Box<dyn Future<Output = Result<SendTestReport, String>> + Send>>
        + Send
        + Sync,
>;

/// Who may use the console, and by which names.
#[derive(Clone, Default)]
pub struct Security {
    /// argon2 PHC string; with it, every page and API call asks for the password.
    pub password_hash: Option<smtp2oauth_tokens::Secret>,
    /// `[admin] allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// `[admin] listen`.
    pub listen: Option<SocketAddr>,
    /// `[admin] metrics_auth`: `/metrics` asks for the password too.
    pub metrics_auth: bool,
}

/// What the admin server's handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The readiness checks, for `/readyz`.
    pub readiness: ReadinessFn,
    /// The accounts, their token sources and the sign-in manager.
    pub accounts: Arc<AccountsConfig>,
    /// What the relay has been doing (devices, accounts, recent messages), published by the
    /// sessions and the scheduler.
    pub activity: smtp2oauth_activity::Activity,
    /// Measures the facts besides the accounts that problems are decided from.
    pub environment: smtp2oauth_activity::EnvironmentFn,
    /// The relay's spool: the queue pages read it and file their actions in its `control/`.
    pub spool: Option<smtp2oauth_spool::Spool>,
    /// The send-test (None: the Send test form is not offered).
    pub send_test: Option<SendTestFn>,
    /// The password and the names the console answers to.
    pub security: Security,
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
    Ok(AdminServer {
        listener,
        app: router(state),
    })
}

/// Every route of the admin server, behind the `Host` / `Origin` guard.
pub fn router(state: AdminState) -> Router {
    let console = Arc::new(Console::new(state));
    let allowed = console.hosts.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(pages::router())
        .merge(accounts::router(&console))
        .nest("/api/v1", api::router())
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(allowed, host::guard))
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
        let app = self
            .app
            .into_make_service_with_connect_info::<host::ConnInfo>();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future()
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The answer of `/readyz`.
#[derive(Serialize)]
struct Readiness {
    ready: bool,
    checks: Vec<Check>,
    accounts: Vec<model::AccountState>,
}

/// 200/503 from the relay's own checks (listeners, spool); each account's state rides along,
/// since an account's trouble is not the relay's (a restart would not fix it).
async fn readyz(State(console): State<Arc<Console>>) -> impl IntoResponse {
    let checks = (console.state.readiness)().await;
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let accounts = model::account_states(&console.state.activity);
    (
        status,
        axum::Json(Readiness {
            ready,
            checks,
            accounts,
        }),
    )
}

async fn metrics(
    State(console): State<Arc<Console>>,
    conn: console::Peer,
    headers: HeaderMap,
) -> Response {
    if console.metrics_auth
        && let Err(refused) = console.api_read(&headers, conn.ip()).await
    {
        return refused;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        console.state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
