//! Server-side TLS for device listeners: rustls with the ring provider, TLS 1.2 and 1.3.
//!
//! The certificate can be replaced while the relay runs (a renewed certificate, or SIGHUP), so
//! listeners hold a [`TlsHandle`] and take the current acceptor for each new handshake; sessions
//! already running keep the one they started with.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("cannot read private key file {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("certificate {cert} and key {key} do not belong together: {detail}")]
    Mismatch {
        cert: String,
        key: String,
        detail: String,
    },
}

/// Loads a PEM certificate chain and private key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// The current TLS acceptor, replaceable at run time.
#[derive(Clone)]
pub struct TlsHandle(Arc<RwLock<TlsAcceptor>>);

impl TlsHandle {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsHandle(Arc::new(RwLock::new(TlsAcceptor::from(config))))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(config);
    }
}
