//! The one place that builds the HTTP client for talking to the identity platform.
//!
//! reqwest is compiled with `rustls-no-provider`, so a client built the ordinary way panics
//! unless some code has installed a process-wide crypto provider first. Building the rustls
//! configuration here, with the ring provider passed in explicitly, keeps the client working no
//! matter what the binary (or a test) did or did not install.

use std::path::PathBuf;
use std::time::Duration;

use crate::credential::CredentialError;

/// How the HTTP client is built.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra trust anchors (PEM, one or more CERTIFICATE blocks) on top of the public web PKI,
    /// for sites whose outbound HTTPS goes through an inspecting proxy.
    pub ca_file: Option<PathBuf>,
    /// Whole-request timeout. Default 30 s.
    pub timeout: Duration,
    /// The User-Agent header of every request.
    pub user_agent: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            timeout: Duration::from_secs(30),
            user_agent: concat!("smtp2oauth/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Builds the reqwest client: rustls with the ring provider built explicitly, trust roots =
/// webpki-roots plus the optional extra PEM CA file (whose certificates are also pinned, see
/// [`crate::tls`]). Plain `http://` URLs work too.
pub fn http_client(opts: &HttpOptions) -> Result<reqwest::Client, CredentialError> {
    let mut tls = crate::tls::client_config(opts.ca_file.as_deref())?;
    // reqwest leaves ALPN alone for a preconfigured rustls config; without it HTTP/2 is never
    // negotiated.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(opts.user_agent.as_str())
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        // A 307/308 would re-send the form, client secret included, to wherever it points. The
        // token endpoint never redirects, so treat a redirect as an error instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| CredentialError::HttpClient(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn builds_without_a_global_crypto_provider() {
        // No test in this crate installs a default provider; building must not need one.
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        http_client(&HttpOptions::default()).unwrap();
    }

    #[test]
    fn accepts_an_extra_ca_file() {
        let opts = HttpOptions {
            ca_file: Some(fixture("cert.pem")),
            ..HttpOptions::default()
        };
        http_client(&opts).unwrap();
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        for (name, expected) in [
            ("missing.pem", "cannot read CA file"),
            ("key.pem", "has no PEM CERTIFICATE block"),
            ("README.md", "has no PEM CERTIFICATE block"),
        ] {
            let opts = HttpOptions {
                ca_file: Some(fixture(name)),
                ..HttpOptions::default()
            };
            let message = http_client(&opts).unwrap_err().to_string();
            assert!(message.contains(name), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }
}
