//! The admin HTTP server on `[admin] listen` (default `127.0.0.1:8025`).
//!
//! Container orchestrators and monitoring need to ask a running relay whether it is alive
//! without speaking SMTP. This crate serves that over plain HTTP on an address that defaults to
//! loopback, so nothing is exposed to the LAN unless the admin binds it there.
//!
//! Endpoints:
//! - `GET /healthz`: the process is alive and serving; `{"status":"ok","version":"..."}`.

use axum::Router;
use axum::routing::get;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Binds the admin listener now (so a bad address stops the relay at start) and returns a
/// future that serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/healthz", get(healthz));
    info!(address = %local, "admin server listening");
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    };
    Ok((local, serve))
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}
