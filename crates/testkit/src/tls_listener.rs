//! An axum listener yielding TLS streams, shared by the HTTPS fakes (token endpoint, Graph).
//! Handshakes run on their own tasks so one slow or broken client cannot stall the others;
//! finished ones arrive through a channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub(crate) struct TlsListener {
    addr: SocketAddr,
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
}

impl TlsListener {
    /// Accepts on `listener` until `stop` turns true.
    pub(crate) fn spawn(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        mut stop: watch::Receiver<bool>,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let hs =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    match hs {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("fake HTTPS server: TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!("fake HTTPS server: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { addr, rx }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
