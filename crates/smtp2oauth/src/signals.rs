//! How a relay running in a terminal (or under systemd or Docker) is told to stop or to reload
//! its certificates: signals on Unix, console control events on Windows.
//!
//! The relay itself only knows a [`Controls`]: a token that stops it and a channel of reload
//! requests. This module feeds them from the operating system; `service.rs` feeds the same two
//! from the Windows service manager. Handlers are installed before the configuration is even
//! loaded, so a stop that arrives early still goes through the clean shutdown.

use anyhow::Result;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What tells a running relay to stop, and to reload its listeners' certificates (each request
/// says why, for the log line).
pub struct Controls {
    pub stop: CancellationToken,
    pub reload: mpsc::UnboundedReceiver<&'static str>,
}

impl Controls {
    /// Controls and the sender that requests reloads.
    pub fn new() -> (Controls, mpsc::UnboundedSender<&'static str>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let controls = Controls {
            stop: CancellationToken::new(),
            reload: rx,
        };
        (controls, tx)
    }
}

/// Controls fed by this process's signals (Unix) or console events (Windows). Must be called
/// inside the runtime.
pub fn install() -> Result<Controls> {
    let (controls, reload) = Controls::new();
    os::install(controls.stop.clone(), reload)?;
    Ok(controls)
}

/// SIGTERM and SIGINT stop; SIGHUP reloads.
#[cfg(unix)]
mod os {
    use anyhow::Result;
    use tokio::signal::unix::{SignalKind, signal};
    use tokio::sync::mpsc::UnboundedSender;
    use tokio_util::sync::CancellationToken;
    use tracing::info;

    pub fn install(stop: CancellationToken, reload: UnboundedSender<&'static str>) -> Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
            stop.cancel();
        });
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if reload.send("SIGHUP").is_err() {
                    return;
                }
            }
        });
        Ok(())
    }
}

/// Ctrl-C, Ctrl-Break, closing the console window, logging off and shutting down all stop.
/// A console has no reload event: certificates are reloaded when their files change
/// (`[tls] reload_interval`), and the service also reloads on its parameter-change control.
#[cfg(windows)]
mod os {
    use anyhow::Result;
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_logoff, ctrl_shutdown};
    use tokio::sync::mpsc::UnboundedSender;
    use tokio_util::sync::CancellationToken;
    use tracing::info;

    pub fn install(stop: CancellationToken, reload: UnboundedSender<&'static str>) -> Result<()> {
        let mut c = ctrl_c()?;
        let mut brk = ctrl_break()?;
        let mut close = ctrl_close()?;
        let mut logoff = ctrl_logoff()?;
        let mut shutdown = ctrl_shutdown()?;
        tokio::spawn(async move {
            // Nobody sends reloads in a console; keeping the sender open keeps the channel idle
            // instead of closed.
            let _reload = reload;
            tokio::select! {
                _ = c.recv() => info!("Ctrl-C: shutting down"),
                _ = brk.recv() => info!("Ctrl-Break: shutting down"),
                _ = close.recv() => info!("console closed: shutting down"),
                _ = logoff.recv() => info!("user logging off: shutting down"),
                _ = shutdown.recv() => info!("system shutting down: shutting down"),
            }
            stop.cancel();
        });
        Ok(())
    }
}
