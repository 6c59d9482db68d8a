//! `smtp2oauth serve`: load and check the configuration, build the relay, run it until
//! SIGTERM/SIGINT.
//!
//! Start-up order matters for the admin's first experience: everything that can be wrong in the
//! configuration is found before any socket is opened, and every listener is bound before any is
//! served, so a relay either starts whole or exits with the reason. [`wiring::build`] keeps that
//! order; [`Relay::run`](crate::relay::Relay::run) starts serving. Signals and certificate
//! reloads are tasks of their own.

use crate::{checks, reload, wiring};
use anyhow::{Result, anyhow};
use smtp2oauth_config::{ConfigError, Loaded};
use std::path::{Path, PathBuf};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Runs the relay configured by `config_path` until SIGTERM or SIGINT.
pub async fn run(config_path: Option<PathBuf>) -> Result<()> {
    let loaded = load(config_path.as_deref()).await?;
    let relay = wiring::build(&loaded).await?;
    // Handlers first: whoever reads "started" may send SIGTERM at once, and a signal that
    // arrives before its handler exists kills the process without a clean shutdown.
    let stop = CancellationToken::new();
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    let hup = signal(SignalKind::hangup())?;
    tokio::spawn(stop_on_signal(term, int, stop.clone()));
    tokio::spawn(reload::watch(
        relay.tls.clone(),
        loaded.config.tls.reload_interval,
        hup,
        stop.clone(),
    ));
    relay.run(stop).await
}

/// Loads and checks the configuration as `check-config` does (validation, then what loading
/// finds); logs its warnings and the secret files others can read.
async fn load(path: Option<&Path>) -> Result<Loaded> {
    let loaded = smtp2oauth_config::load(path).map_err(|e| anyhow!("{e}"))?;
    let found = checks::loading(&loaded, &[]).await;
    if !found.problems.is_empty() {
        let problems = found.problems;
        return Err(anyhow!("{}", ConfigError { problems }));
    }
    for w in loaded.warnings.iter().chain(&found.warnings) {
        warn!("configuration: {w}");
    }
    if let Some(p) = path {
        wiring::warn_if_readable_by_others(p, "the configuration file (it may hold secrets)");
    }
    for a in &loaded.config.accounts {
        for f in [&a.client_secret_file, &a.private_key_file]
            .into_iter()
            .flatten()
        {
            wiring::warn_if_readable_by_others(f, "a secret file");
        }
    }
    Ok(loaded)
}

/// Cancels `stop` on the first SIGTERM or SIGINT.
async fn stop_on_signal(mut term: Signal, mut int: Signal, stop: CancellationToken) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    stop.cancel();
}
