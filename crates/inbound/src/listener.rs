//! Listening sockets and the accept loop.
//!
//! Printers open a new connection for every message and often arrive in bursts (a batch scan
//! from several floors), so the listen backlog is large: a burst waits in the kernel's queue
//! instead of being refused. Session limits and lockouts are checked at accept time; a client
//! over a limit gets a 421 reply (with a short write deadline) and is closed.

use crate::conn::{Inbound, ListenerRuntime, refused_at_accept, serve};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Connections the kernel queues before we accept them.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket with a large backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until shutdown; each session runs on `tracker`.
pub async fn accept_loop(
    ctx: Arc<Inbound>,
    rt: Arc<ListenerRuntime>,
    listener: TcpListener,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let rt = rt.clone();
                // An address locked out for failed logins is refused before anything else.
                // A device recognised by its address counts as logged in from the start.
                let known = ctx.directory.device_for_address(peer.ip()).is_some();
                let admission = match ctx.guard.locked(peer.ip()) {
                    Some(_) => Err(smtp2oauth_proto::SessionError::LockedOut),
                    None => ctx.limiter.try_acquire(peer.ip(), known),
                };
                match admission {
                    Ok(permit) => {
                        tracker.spawn(serve(ctx, rt, stream, peer, permit));
                    }
                    Err(refusal) => {
                        debug!(listener = %rt.settings.label, peer = %peer.ip(), reply = %refusal, "connection refused");
                        let reply = refused_at_accept(&ctx, &rt.settings.label, peer, &refusal);
                        tracker.spawn(async move {
                            let mut stream = stream;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                stream.write_all(&reply.to_wire()),
                            )
                            .await;
                            let _ = stream.shutdown().await;
                        });
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = %rt.settings.label, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
