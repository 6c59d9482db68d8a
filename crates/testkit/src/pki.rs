//! A throw-away PKI generated at test time.
//!
//! Why: the relay must verify the upstream's certificate (it talks to smtp.office365.com over
//! STARTTLS) and serve its own certificate to devices. Tests need a CA the relay can be told to
//! trust, a server certificate for the fakes, client certificates for mutual-TLS tests, and RSA
//! certificate credentials for OAuth JWT client assertions. Generating them per test keeps keys
//! out of the repository (except the RSA fixtures, see `fixtures/README.md`) and means no test
//! ever depends on the machine's trust store.
//!
//! All TLS configs are built with an explicit ring provider: relying on a process-wide default
//! provider would make test outcomes depend on which other crate happened to install one first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;

/// RSA-2048 PKCS#8 keys generated once with openssl (ring cannot generate RSA keys).
const RSA_FIXTURES: [&str; 3] = [
    include_str!("../fixtures/rsa-credential-1.key.pem"),
    include_str!("../fixtures/rsa-credential-2.key.pem"),
    include_str!("../fixtures/rsa-credential-3.key.pem"),
];

/// The ring crypto provider, passed explicitly to every config we build.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA plus a server certificate for `localhost`, `127.0.0.1`, `::1` and
/// `fake.outlook.test`, written as PEM files into a temporary directory that lives as long as
/// this value (so a relay process started by the test can read them by path).
pub struct TestPki {
    _dir: TempDir,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    ca_der: CertificateDer<'static>,
    ca_issuer: Issuer<'static, KeyPair>,
    next_rsa: AtomicUsize,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_path", &self.ca_path)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Validity from 1 January last year to 1 January in five years: always valid while tests run,
/// but an ordinary-looking window (rcgen's default runs to year 4096).
fn validity(params: &mut CertificateParams) {
    let (year, _, _) = crate::civil_from_days((crate::unix_now() / 86_400) as i64);
    let year = year as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 5, 1, 1);
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial = crate::random_bytes(16);
    serial[0] &= 0x7f; // keep it a positive INTEGER
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

impl TestPki {
    /// Generates a CA (ECDSA P-256) and a CA-signed server certificate and writes `ca.pem`,
    /// `cert.pem` and `key.pem` (PKCS#8) into a fresh temporary directory.
    pub fn new() -> TestPki {
        // Setup failures here are environment problems (no temp dir, no entropy), not input:
        // panicking with a clear message is the useful outcome in a test.
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "smtp2oauth test CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "smtp2oauth testkit");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca_params);
        random_serial(&mut ca_params);
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let ca_pem = ca_cert.pem();
        let ca_der = ca_cert.der().clone();
        let ca_issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("generate server key");
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "fake.outlook.test".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .expect("server certificate parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        random_serial(&mut params);
        let server_cert = params
            .signed_by(&server_key, &ca_issuer)
            .expect("sign server certificate");
        let cert_pem = server_cert.pem();
        let key_pem = server_key.serialize_pem();

        let dir = tempfile::Builder::new()
            .prefix("smtp2oauth-testpki-")
            .tempdir()
            .expect("create temp dir for test PKI");
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&ca_path, &ca_pem).expect("write ca.pem");
        std::fs::write(&cert_path, &cert_pem).expect("write cert.pem");
        std::fs::write(&key_path, &key_pem).expect("write key.pem");

        TestPki {
            _dir: dir,
            ca_path,
            cert_path,
            key_path,
            ca_pem,
            cert_pem,
            key_pem,
            ca_der,
            ca_issuer,
            next_rsa: AtomicUsize::new(0),
        }
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }
    /// Path of the server certificate (PEM, leaf only).
    pub fn cert_pem_path(&self) -> &Path {
        &self.cert_path
    }
    /// Path of the server key (PKCS#8 PEM).
    pub fn key_pem_path(&self) -> &Path {
        &self.key_path
    }
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }
    /// The temporary directory holding the PEM files (deleted when this value drops).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn server_chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .expect("parse our own server certificate");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .expect("parse our own server key");
        (vec![cert], key)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("add test CA to root store");
        Arc::new(roots)
    }

    /// Server TLS config (TLS 1.2 and 1.3, ring) presenting the server certificate, without
    /// client authentication. For the fakes.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_chain_and_key();
        let cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        Arc::new(cfg)
    }

    /// A server config presenting a fresh CA-signed certificate for `names` (e.g. MX host
    /// names a test's DNS points at 127.0.0.1); `client_auth` requires a client certificate
    /// from the test CA, as a certificate-based connector does.
    pub fn server_config_for(
        &self,
        names: &[&str],
        client_auth: bool,
    ) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("generate server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server certificate parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        random_serial(&mut params);
        let cert = params
            .signed_by(&key, &self.ca_issuer)
            .expect("sign server certificate");
        let chain = vec![cert.der().clone()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .expect("parse our own server key");
        let builder = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let cfg = if client_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                self.roots(),
                ring_provider(),
            )
            .build()
            .expect("client verifier over the test CA");
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
        } else {
            builder.with_no_client_auth().with_single_cert(chain, key)
        }
        .expect("server certificate and key match");
        Arc::new(cfg)
    }

    /// Like [`server_config`](Self::server_config) but requiring a client certificate issued by
    /// the test CA (see [`issue_client_cert`](Self::issue_client_cert)).
    pub fn server_config_with_client_auth(&self) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_chain_and_key();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots(),
            ring_provider(),
        )
        .build()
        .expect("client verifier over the test CA");
        let cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        Arc::new(cfg)
    }

    /// Client TLS config that trusts only the test CA (not the system store), without a client
    /// certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        Arc::new(cfg)
    }

    /// Client TLS config that trusts only the test CA and presents the given client certificate
    /// (PEM strings as returned by [`issue_client_cert`](Self::issue_client_cert)).
    pub fn client_config_with_cert(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Arc<rustls::ClientConfig> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("client cert PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("client key PEM");
        let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![cert], key)
            .expect("client certificate and key match");
        Arc::new(cfg)
    }

    /// A CA-signed client certificate (ECDSA P-256, EKU clientAuth) with the given common name.
    /// Returns (certificate PEM, PKCS#8 key PEM).
    pub fn issue_client_cert(&self, common_name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        random_serial(&mut params);
        let cert = params
            .signed_by(&key, &self.ca_issuer)
            .expect("sign client certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A self-signed RSA-2048 certificate and its PKCS#8 key, as registered on an Entra app for
    /// certificate credentials (JWT client assertions). Returns (certificate PEM, key PEM).
    ///
    /// The keys come from `fixtures/` (ring cannot generate RSA keys); successive calls on one
    /// `TestPki` rotate through three different keys, so a test can hold a "registered" and an
    /// "unregistered" credential. The certificate is freshly generated on every call.
    pub fn issue_rsa_credential(&self) -> (String, String) {
        let i = self.next_rsa.fetch_add(1, Ordering::Relaxed) % RSA_FIXTURES.len();
        let key_pem = RSA_FIXTURES[i];
        let key = KeyPair::from_pem(key_pem).expect("fixture RSA key parses");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("smtp2oauth test credential {}", i + 1),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        random_serial(&mut params);
        let cert = params.self_signed(&key).expect("self-sign RSA credential");
        (cert.pem(), key_pem.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_exist_and_match_strings() {
        let pki = TestPki::new();
        assert_eq!(
            std::fs::read_to_string(pki.ca_pem_path()).unwrap(),
            pki.ca_pem()
        );
        assert_eq!(
            std::fs::read_to_string(pki.cert_pem_path()).unwrap(),
            pki.cert_pem()
        );
        assert_eq!(
            std::fs::read_to_string(pki.key_pem_path()).unwrap(),
            pki.key_pem()
        );
        assert!(pki.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let _ = pki.server_config();
        let _ = pki.client_config();
        let _ = pki.server_config_with_client_auth();
    }

    #[test]
    fn rsa_credentials_rotate_and_are_rsa_2048() {
        let pki = TestPki::new();
        let (c1, k1) = pki.issue_rsa_credential();
        let (c2, k2) = pki.issue_rsa_credential();
        assert_ne!(k1, k2);
        assert_ne!(c1, c2);
        for k in [&k1, &k2] {
            let der = PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap();
            let kp = ring::signature::RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
            assert_eq!(kp.public().modulus_len(), 256);
        }
    }

    #[test]
    fn client_certs_are_pem() {
        let pki = TestPki::new();
        let (c, k) = pki.issue_client_cert("scanner-3");
        assert!(c.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(k.starts_with("-----BEGIN PRIVATE KEY-----"));
        let _ = pki.client_config_with_cert(&c, &k);
    }
}
