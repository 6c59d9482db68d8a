//! `smtp2oauth serve`: load and check the configuration, build the relay, run it until told to
//! stop (SIGTERM/SIGINT, Ctrl-C on Windows, or the Windows service's stop control).
//!
//! Start-up order matters for the admin's first experience: everything that can be wrong in the
//! configuration is found before any socket is opened, and every listener is bound before any is
//! served, so a relay either starts whole or exits with the reason. [`wiring::build`] keeps that
//! order; [`Relay::run`](crate::relay::Relay::run) starts serving. What stops it and asks for
//! certificate reloads comes in as [`Controls`] (`signals.rs` in a console, `service.rs` under
//! the Windows service manager), so both run exactly this.

use crate::signals::{self, Controls};
use crate::{checks, reload, wiring};
use anyhow::{Result, anyhow};
use smtp2oauth_config::{ConfigError, Loaded};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Runs the relay configured by `config_path` until a signal (Unix) or console event
/// (Windows) stops it.
pub async fn run(config_path: Option<PathBuf>) -> Result<()> {
    // Handlers first: whoever reads "started" may send SIGTERM at once, and a signal that
    // arrives before its handler exists kills the process without a clean shutdown.
    let controls = signals::install()?;
    run_with(config_path, controls, || {}).await
}

/// Loads, builds and runs the relay until `controls.stop`; `built` is called once every socket
/// is bound, just before the relay starts serving.
pub async fn run_with(
    config_path: Option<PathBuf>,
    controls: Controls,
    built: impl FnOnce(),
) -> Result<()> {
    let loaded = load(config_path.as_deref()).await?;
    let relay = wiring::build(&loaded).await?;
    tokio::spawn(reload::watch(
        relay.tls.clone(),
        loaded.config.tls.reload_interval,
        controls.reload,
        controls.stop.clone(),
    ));
    built();
    relay.run(controls.stop).await
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
