//! TLS 1.0 and 1.1 for old devices, through OpenSSL (`tls_profile = "legacy"`).
//!
//! Many multifunction printers sold before about 2016 speak only TLS 1.0 (some 1.1) with CBC
//! cipher suites, and their firmware will never be updated. rustls does not implement those
//! versions and never will, so a listener that must accept them terminates TLS with OpenSSL.
//! The profile is opt-in per listener, compiled only with the `legacy-tls` cargo feature, and
//! logged as a warning at start; the upstream side always stays on rustls with TLS 1.2+.
//!
//! OpenSSL 3 refuses TLS < 1.2 at its default security level (SHA-1 in the handshake), and
//! distributions raise the floor further in their system configuration; both are overridden
//! here, for this listener only: minimum version TLS 1.0 and security level 0.

use crate::tls::{TlsError, TlsPolicy};
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslOptions, SslVerifyMode, SslVersion};
use openssl::x509::X509Name;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// Ciphers for TLS 1.0-1.2: everything authenticated and encrypted that OpenSSL 3 still has
/// (AES-CBC with SHA-1 is what old printers offer; 3DES for the very oldest), with the server's
/// order preferred so modern clients still get ECDHE with AES-GCM. No RC4, no export or NULL
/// suites, no anonymous key exchange. TLS 1.3 uses OpenSSL's defaults.
const LEGACY_CIPHERS: &str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:ECDHE+AES:DHE+AES:RSA+AESGCM:RSA+AES:RSA+3DES:!aNULL:!eNULL:!EXPORT:!MD5:!RC4:@SECLEVEL=0";

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Legacy(e.to_string())
}

/// Builds the OpenSSL acceptor for a legacy listener.
pub(crate) fn acceptor(policy: &TlsPolicy) -> Result<SslAcceptor, TlsError> {
    let cert = policy.cert.display().to_string();
    let key = policy.key.display().to_string();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(err)?;
    // Mozilla's intermediate profile (DH parameters, curves, TLS 1.3 suites) with its floor
    // of TLS 1.2 taken out.
    b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
    b.set_min_proto_version(Some(SslVersion::TLS1))
        .map_err(err)?;
    b.set_cipher_list(LEGACY_CIPHERS).map_err(err)?;
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
    b.set_certificate_chain_file(&policy.cert)
        .map_err(|e| TlsError::Cert {
            path: cert.clone(),
            detail: e.to_string(),
        })?;
    // Parsed apart from installing it: OpenSSL checks the pair while installing, and the
    // admin needs to know whether the key file is unreadable or simply the wrong key.
    let key_error = |detail: String| TlsError::Key {
        path: key.clone(),
        detail,
    };
    let pem = std::fs::read(&policy.key).map_err(|e| key_error(e.to_string()))?;
    let pkey = PKey::private_key_from_pem(&pem).map_err(|e| key_error(e.to_string()))?;
    let mismatch = |e: openssl::error::ErrorStack| TlsError::Mismatch {
        cert: cert.clone(),
        key: key.clone(),
        detail: e.to_string(),
    };
    b.set_private_key(&pkey).map_err(mismatch)?;
    b.check_private_key().map_err(mismatch)?;
    if let Some(ca) = &policy.client_ca {
        let ca_err = |e: openssl::error::ErrorStack| TlsError::ClientCa {
            path: ca.display().to_string(),
            detail: e.to_string(),
        };
        b.set_ca_file(ca).map_err(ca_err)?;
        b.set_client_ca_list(X509Name::load_client_ca_file(ca).map_err(ca_err)?);
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

/// Server side of a handshake.
pub(crate) async fn accept<S>(
    acceptor: &SslAcceptor,
    io: S,
) -> io::Result<tokio_openssl::SslStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
    let mut stream = tokio_openssl::SslStream::new(ssl, io).map_err(io::Error::other)?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(stream)
}
