//! Server-side TLS for device listeners.
//!
//! Two implementations sit behind one [`TlsHandle`]: rustls (the default, TLS 1.2 and 1.3) and,
//! in builds with the `legacy-tls` feature, OpenSSL for listeners with `tls_profile = "legacy"`
//! (TLS 1.0 and later, for printers that will never learn TLS 1.2; see `legacy.rs`). The rest
//! of the relay sees only [`TlsStream`].
//!
//! The certificate can be replaced while the relay runs (a renewed certificate, SIGHUP, or the
//! files changing on disk), so listeners hold a [`TlsHandle`] and take the current acceptor for
//! each new handshake; sessions already running keep the one they started with. A reload that
//! fails (a half-written file, a key that does not match) keeps the current certificate.

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smtp2oauth_config::TlsProfile;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or holds no certificate.
    #[error("cannot read certificate file {path}: {detail}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The key file cannot be read or holds no key.
    #[error("cannot read private key file {path}: {detail}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The key is not the certificate's.
    #[error("certificate {cert} and key {key} do not belong together: {detail}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What the TLS library said.
        detail: String,
    },
    /// The CA file for client certificates cannot be used.
    #[error("cannot use client CA file {path}: {detail}")]
    ClientCa {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A legacy listener in a build without OpenSSL.
    #[error(
        "tls_profile = \"legacy\" needs a build with the `legacy-tls` feature (cargo build --release --features legacy-tls); this build has rustls only"
    )]
    LegacyUnavailable,
    /// OpenSSL refused the configuration.
    #[error("OpenSSL (tls_profile = \"legacy\"): {0}")]
    Legacy(String),
}

/// What one listener's TLS is made of: the files to (re)load and the profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The certificate chain file (PEM).
    pub cert: PathBuf,
    /// The private key file (PEM).
    pub key: PathBuf,
    /// Client certificates are required and verified against these CAs.
    pub client_ca: Option<PathBuf>,
    /// Which protocol versions and ciphers.
    pub profile: TlsProfile,
}

impl TlsPolicy {
    /// The files a reload reads.
    pub fn files(&self) -> Vec<&Path> {
        let mut f = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            f.push(ca);
        }
        f
    }

    /// Modification time and length of every file, to notice a renewal without a SIGHUP.
    pub fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files()
            .into_iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

fn cert_error(path: &Path, detail: impl ToString) -> TlsError {
    TlsError::Cert {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(path, e))?;
    if certs.is_empty() {
        return Err(cert_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Loads a PEM certificate chain and private key into a rustls server configuration, without
/// client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    rustls_config(cert, key, None)
}

fn rustls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(cert, e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_error = |detail: String| TlsError::ClientCa {
                path: ca.display().to_string(),
                detail,
            };
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca).map_err(|e| match e {
                TlsError::Cert { detail, .. } => ca_error(detail),
                other => other,
            })? {
                roots.add(c).map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

#[derive(Clone)]
enum Acceptor {
    Rustls(TlsAcceptor),
    #[cfg(feature = "legacy-tls")]
    OpenSsl(Arc<openssl::ssl::SslAcceptor>),
}

impl Acceptor {
    fn load(policy: &TlsPolicy) -> Result<Self, TlsError> {
        match policy.profile {
            TlsProfile::Modern => Ok(Acceptor::Rustls(TlsAcceptor::from(rustls_config(
                &policy.cert,
                &policy.key,
                policy.client_ca.as_deref(),
            )?))),
            #[cfg(feature = "legacy-tls")]
            TlsProfile::Legacy => Ok(Acceptor::OpenSsl(Arc::new(crate::legacy::acceptor(
                policy,
            )?))),
            #[cfg(not(feature = "legacy-tls"))]
            TlsProfile::Legacy => Err(TlsError::LegacyUnavailable),
        }
    }
}

/// The current TLS acceptor of a listener, replaceable at run time.
#[derive(Clone)]
pub struct TlsHandle {
    policy: Arc<TlsPolicy>,
    current: Arc<RwLock<Acceptor>>,
}

impl TlsHandle {
    /// Loads the policy's files; every problem (unreadable file, bad key, cert/key mismatch,
    /// bad CA file, legacy profile in a rustls-only build) is an error here, at start.
    pub fn load(policy: TlsPolicy) -> Result<Self, TlsError> {
        let acceptor = Acceptor::load(&policy)?;
        Ok(TlsHandle {
            policy: Arc::new(policy),
            current: Arc::new(RwLock::new(acceptor)),
        })
    }

    /// The files and profile in use.
    pub fn policy(&self) -> &TlsPolicy {
        &self.policy
    }

    /// Reads the files again. On error the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = Acceptor::load(&self.policy)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    fn acceptor(&self) -> Acceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the server side of a handshake on `io` with the current certificate.
    pub async fn accept<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.acceptor() {
            Acceptor::Rustls(a) => Ok(TlsStream::Rustls(Box::new(a.accept(io).await?))),
            #[cfg(feature = "legacy-tls")]
            Acceptor::OpenSsl(a) => Ok(TlsStream::OpenSsl(Box::new(
                crate::legacy::accept(&a, io).await?,
            ))),
        }
    }
}

/// A server-side TLS stream from either implementation.
pub enum TlsStream<S> {
    /// Through rustls.
    Rustls(Box<tokio_rustls::server::TlsStream<S>>),
    /// Through OpenSSL (a legacy listener).
    #[cfg(feature = "legacy-tls")]
    OpenSsl(Box<tokio_openssl::SslStream<S>>),
}

impl<S> TlsStream<S> {
    /// The negotiated protocol version and cipher suite, for the log.
    pub fn describe(&self) -> (String, String) {
        match self {
            TlsStream::Rustls(s) => {
                let c = s.get_ref().1;
                (
                    c.protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    c.negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                        .unwrap_or_default(),
                )
            }
            #[cfg(feature = "legacy-tls")]
            TlsStream::OpenSsl(s) => {
                let ssl = s.ssl();
                (
                    ssl.version_str().to_string(),
                    ssl.current_cipher()
                        .map(|c| c.name().to_string())
                        .unwrap_or_default(),
                )
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "legacy-tls")]
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "legacy-tls")]
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "legacy-tls")]
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "legacy-tls")]
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a failed handshake tells about the client, in words an admin can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// What the client offered, when the error says (`TLS 1.1 or older`, `no cipher suite we
    /// accept`, `plain text, not TLS`).
    pub offered: Option<&'static str>,
    /// What to do about it.
    pub hint: Option<&'static str>,
}

/// The advice for a device stuck on TLS 1.0/1.1 at a listener that needs TLS 1.2 or later.
pub const OLD_TLS_HINT: &str = "the device is too old for this listener (TLS 1.2 or later): \
update its firmware, or give it a listener with tls_profile = \"legacy\" \
(docs/devices.md, \"Devices that only speak TLS 1.0 or 1.1\")";

/// Reads a handshake error from rustls (OpenSSL's, on a legacy listener, says what it says).
pub fn handshake_failure(e: &io::Error) -> HandshakeFailure {
    use rustls::{Error, PeerIncompatible as P};
    let none = HandshakeFailure {
        offered: None,
        hint: None,
    };
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return none;
    };
    let (offered, hint) = match err {
        // TLS 1.0 and 1.1 ClientHellos carry no signature_algorithms extension (TLS 1.2 added it).
        Error::PeerIncompatible(
            P::SignatureAlgorithmsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::ServerDoesNotSupportTls12Or13,
        ) => ("TLS 1.1 or older", OLD_TLS_HINT),
        Error::PeerIncompatible(P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon) => (
            "no cipher suite or key exchange we accept",
            "the device offers only old ciphers: update its firmware, or give it a listener \
             with tls_profile = \"legacy\" (docs/devices.md)",
        ),
        Error::PeerIncompatible(P::NoSignatureSchemesInCommon) => (
            "no signature scheme our certificate can use",
            "the device does not accept this certificate's key type: try an RSA certificate",
        ),
        Error::InvalidMessage(_) => (
            "something other than TLS",
            "the device may be sending plain SMTP to an implicit-TLS port: point it at the \
             STARTTLS or plain port, or switch it to SSL/TLS",
        ),
        _ => return none,
    };
    HandshakeFailure {
        offered: Some(offered),
        hint: Some(hint),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tls_1_0_client_is_named_and_pointed_at_the_legacy_profile() {
        use rustls::{Error, PeerIncompatible};
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            Error::PeerIncompatible(PeerIncompatible::SignatureAlgorithmsExtensionRequired),
        );
        let f = super::handshake_failure(&e);
        assert_eq!(f.offered, Some("TLS 1.1 or older"));
        assert!(f.hint.unwrap().contains("tls_profile = \"legacy\""));
        let other = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(super::handshake_failure(&other).hint, None);
    }

    use super::*;
    use smtp2oauth_testkit::TestPki;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn policy(cert: PathBuf, key: PathBuf) -> TlsPolicy {
        TlsPolicy {
            cert,
            key,
            client_ca: None,
            profile: TlsProfile::Modern,
        }
    }

    /// Handshakes with `handle` over an in-memory pipe as a client that trusts only `trust`'s
    /// CA (optionally presenting a client certificate); true when the handshake and one byte
    /// each way succeed.
    async fn handshake(
        handle: &TlsHandle,
        trust: &TestPki,
        client_cert: Option<(String, String)>,
    ) -> bool {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let config = match &client_cert {
            Some((cert, key)) => trust.client_config_with_cert(cert, key),
            None => trust.client_config(),
        };
        let server = async {
            let mut t = handle.accept(s).await.ok()?;
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await.ok()?;
            t.write_all(&b).await.ok()?;
            t.flush().await.ok()?;
            Some(())
        };
        let client = async {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut t = tokio_rustls::TlsConnector::from(config)
                .connect(name, c)
                .await
                .ok()?;
            t.write_all(b"x").await.ok()?;
            t.flush().await.ok()?;
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await.ok()?;
            Some(())
        };
        let (a, b) = tokio::join!(server, client);
        a.is_some() && b.is_some()
    }

    /// Each way a certificate setup can be wrong gets its own error naming the file, so the
    /// admin knows which one to fix.
    #[test]
    fn startup_errors_name_the_problem_and_the_file() {
        let a = TestPki::new();
        let b = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let cert = a.cert_pem_path().to_path_buf();
        let key = a.key_pem_path().to_path_buf();
        let other_key = write(dir.path(), "other-key.pem", &b.key_pem());
        let garbage = write(dir.path(), "garbage.pem", "not a pem file\n");
        let missing = dir.path().join("missing.pem");
        let k = a.key_pem();
        let truncated = write(dir.path(), "truncated.pem", &k[..k.len() / 2]);

        assert!(TlsHandle::load(policy(cert.clone(), key.clone())).is_ok());
        let cases: Vec<(TlsPolicy, &str, &str)> = vec![
            (
                policy(cert.clone(), other_key.clone()),
                "do not belong together",
                "other-key.pem",
            ),
            (
                policy(garbage.clone(), key.clone()),
                "no CERTIFICATE",
                "garbage.pem",
            ),
            (
                policy(cert.clone(), garbage.clone()),
                "private key",
                "garbage.pem",
            ),
            (
                policy(missing.clone(), key.clone()),
                "certificate file",
                "missing.pem",
            ),
            (
                policy(cert.clone(), missing.clone()),
                "private key",
                "missing.pem",
            ),
            (
                policy(cert.clone(), truncated.clone()),
                "private key",
                "truncated.pem",
            ),
            (
                TlsPolicy {
                    client_ca: Some(garbage.clone()),
                    ..policy(cert.clone(), key.clone())
                },
                "client CA",
                "garbage.pem",
            ),
        ];
        for (p, what, file) in cases {
            let e = TlsHandle::load(p.clone())
                .err()
                .unwrap_or_else(|| panic!("{p:?} loaded"));
            let msg = e.to_string();
            assert!(msg.contains(what), "{p:?}: {msg}");
            assert!(msg.contains(file), "{p:?}: {msg}");
            // A key file's content never appears in the error.
            assert!(!msg.contains("PRIVATE KEY"), "{msg}");
        }
    }

    /// The legacy profile loads in a build with the `legacy-tls` feature, and is a clear
    /// start-up error (naming the feature) in a rustls-only build.
    #[test]
    fn legacy_profile_loads_only_with_the_feature() {
        let a = TestPki::new();
        let p = TlsPolicy {
            profile: TlsProfile::Legacy,
            ..policy(a.cert_pem_path().into(), a.key_pem_path().into())
        };
        let loaded = TlsHandle::load(p.clone());
        if cfg!(feature = "legacy-tls") {
            assert!(loaded.is_ok(), "{:?}", loaded.err());
            // The same start-up checks as rustls: a key that does not match is refused.
            let b = TestPki::new();
            let e = TlsHandle::load(TlsPolicy {
                key: b.key_pem_path().into(),
                ..p
            })
            .err()
            .unwrap()
            .to_string();
            assert!(e.contains("do not belong together"), "{e}");
        } else {
            let e = loaded.err().unwrap().to_string();
            assert!(e.contains("legacy-tls"), "{e}");
        }
    }

    /// A renewed certificate is served from the next handshake on; a reload that fails (a
    /// half-written key) keeps serving the last good one.
    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_a_failed_reload_keeps_the_old() {
        let a = TestPki::new();
        let b = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "cert.pem", &a.cert_pem());
        let key = write(dir.path(), "key.pem", &a.key_pem());
        let h = TlsHandle::load(policy(cert.clone(), key.clone())).unwrap();
        assert!(handshake(&h, &a, None).await);
        assert!(!handshake(&h, &b, None).await);

        let before = h.policy().stamp();
        std::fs::write(&cert, b.cert_pem()).unwrap();
        // Only the certificate is renewed so far: it does not match the key.
        assert_ne!(h.policy().stamp(), before);
        let e = h.reload().unwrap_err().to_string();
        assert!(e.contains("do not belong together"), "{e}");
        assert!(
            handshake(&h, &a, None).await,
            "old certificate still served"
        );

        std::fs::write(&key, b.key_pem()).unwrap();
        h.reload().unwrap();
        assert!(handshake(&h, &b, None).await, "new certificate served");
        assert!(!handshake(&h, &a, None).await);
    }

    /// With a client CA, only devices presenting a certificate from that CA get through.
    #[tokio::test]
    async fn client_certificates_are_required_when_a_client_ca_is_set() {
        let pki = TestPki::new();
        let stranger = TestPki::new();
        let h = TlsHandle::load(TlsPolicy {
            client_ca: Some(pki.ca_pem_path().into()),
            ..policy(pki.cert_pem_path().into(), pki.key_pem_path().into())
        })
        .unwrap();
        assert!(handshake(&h, &pki, Some(pki.issue_client_cert("mfp-3rd-floor"))).await);
        assert!(!handshake(&h, &pki, None).await, "no client certificate");
        assert!(
            !handshake(&h, &pki, Some(stranger.issue_client_cert("intruder"))).await,
            "certificate from another CA"
        );
    }
}
