//! Client TLS for upstream connections: the same trust rules as the token client (web PKI roots,
//! plus `ca_file` as extra roots and as exact pins for self-signed upstreams), TLS 1.2+, and an
//! optional client certificate (certificate-based connectors on a smart host).

use std::path::Path;
use std::sync::Arc;

/// Client TLS configuration: the web PKI roots, plus the CA certificates in `ca_file` when given.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    smtp2oauth_tokens::tls::client_config(ca_file)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Like [`client_config`], presenting the certificate chain in `cert_file` with the key in
/// `key_file` (PEM, unencrypted) to servers that ask for one.
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut cfg = smtp2oauth_tokens::tls::client_config(ca_file).map_err(|e| e.to_string())?;
    let pem = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} has no PEM CERTIFICATE block",
            cert_file.display()
        ));
    }
    let key_pem =
        std::fs::read(key_file).map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{} holds no usable private key: {e}", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    cfg.client_auth_cert_resolver = Arc::new(ClientCert(certified));
    Ok(Arc::new(cfg))
}

/// Always offers the one configured certificate.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
