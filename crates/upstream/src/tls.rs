//! Client TLS for upstream connections: the same trust rules as the token client (web PKI roots,
//! plus `ca_file` as extra roots and as exact pins for self-signed upstreams), TLS 1.2+.

use std::path::Path;
use std::sync::Arc;

pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    smtp2oauth_tokens::tls::client_config(ca_file)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
