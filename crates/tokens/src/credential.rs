//! How the app proves who it is to the token endpoint: a client secret, or a certificate whose
//! private key signs a short-lived JWT client assertion (RFC 7523, as Microsoft documents it).
//!
//! Loading is strict and explains itself, because the people who configure this are mail admins
//! copying files out of the Entra ID portal: a swapped certificate/key pair, an encrypted key or a
//! key from another certificate must be reported when the relay starts, naming the file, not as an
//! `AADSTS700027` at 3 a.m.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

use crate::secret::Secret;

/// Lifetime of a client assertion. Microsoft accepts up to 10 minutes; the assertion is used
/// once, right after it is made, so the full window only absorbs clock skew.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// The `client_assertion_type` form value that goes with a JWT client assertion.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Signature algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JwtAlg {
    /// RSA-PSS with SHA-256: what Microsoft's documentation shows today.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: older documentation and tooling; still accepted.
    Rs256,
}

impl JwtAlg {
    /// The JWT `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlg::Ps256 => "PS256",
            JwtAlg::Rs256 => "RS256",
        }
    }

    fn encoding(self) -> &'static dyn signature::RsaEncoding {
        match self {
            JwtAlg::Ps256 => &signature::RSA_PSS_SHA256,
            JwtAlg::Rs256 => &signature::RSA_PKCS1_SHA256,
        }
    }
}

impl std::str::FromStr for JwtAlg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PS256" => Ok(JwtAlg::Ps256),
            "RS256" => Ok(JwtAlg::Rs256),
            _ => Err(format!(
                "unknown JWT algorithm {text:?} (expected PS256 or RS256)"
            )),
        }
    }
}

/// The app's credential at the token endpoint. `Debug` never shows secret material.
#[derive(Clone, Debug)]
pub enum ClientCredential {
    /// A client secret's *Value* (not its Secret ID) from Entra ID.
    Secret(Secret),
    /// Certificate credential: a JWT client assertion signed with the private key.
    Certificate(CertificateCredential),
}

impl ClientCredential {
    /// What kind of credential this is, for logs: never the secret, but the certificate's
    /// thumbprint, which is what an admin compares with the portal.
    pub fn describe(&self) -> String {
        match self {
            ClientCredential::Secret(_) => "client secret".to_owned(),
            ClientCredential::Certificate(certificate) => format!(
                "certificate {} ({})",
                certificate.thumbprint(),
                certificate.alg().as_str()
            ),
        }
    }
}

/// Why a certificate, key or CA file could not be used. Messages name the file and the problem,
/// never key material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {error}", path.display())]
    Read {
        /// What the file is, e.g. `certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The contents are not what they should be.
    #[error("{origin}: {problem}")]
    Invalid {
        /// The file (or says the PEM came from memory).
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The private key is not the certificate's.
    #[error(
        "{key} does not belong to {cert}: its public key differs from the certificate's \
         (use the key that was generated together with this certificate)"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// Signing the JWT client assertion failed.
    #[error("could not sign the client assertion: {0}")]
    Signing(&'static str),
    /// The HTTP client with the extra CA certificates could not be built.
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

fn invalid(origin: &str, problem: impl Into<String>) -> CredentialError {
    CredentialError::Invalid {
        origin: origin.to_owned(),
        problem: problem.into(),
    }
}

pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|error| CredentialError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

/// A certificate and its RSA private key, ready to sign client assertions.
#[derive(Clone)]
pub struct CertificateCredential {
    key: Arc<RsaKeyPair>,
    alg: JwtAlg,
    /// base64url SHA-256 of the DER certificate (`x5t#S256`).
    x5t_s256: String,
    /// base64url SHA-1 of the DER certificate (`x5t`), sent only with RS256.
    x5t_sha1: String,
    /// Upper-case hex SHA-1, the "Thumbprint" column in the Entra ID portal.
    thumbprint: String,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl CertificateCredential {
    /// Load PEM certificate (first CERTIFICATE block) and PEM private key (PKCS#8 "PRIVATE KEY"
    /// or PKCS#1 "RSA PRIVATE KEY"; RSA only) from files.
    pub fn from_pem_files(cert: &Path, key: &Path, alg: JwtAlg) -> Result<Self, CredentialError> {
        let cert_pem = read_file("certificate file", cert)?;
        let key_pem = read_file("private key file", key)?;
        Self::parse(
            &cert_pem,
            &format!("certificate file {}", cert.display()),
            &key_pem,
            &format!("private key file {}", key.display()),
            alg,
        )
    }

    /// A credential from PEM text (certificate first, RSA private key).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], alg: JwtAlg) -> Result<Self, CredentialError> {
        Self::parse(cert_pem, "certificate PEM", key_pem, "private key PEM", alg)
    }

    fn parse(
        cert_pem: &[u8],
        cert_origin: &str,
        key_pem: &[u8],
        key_origin: &str,
        alg: JwtAlg,
    ) -> Result<Self, CredentialError> {
        let cert_der = first_certificate(cert_pem, cert_origin)?;
        let cert_public_key = certificate_rsa_public_key(&cert_der, cert_origin)?;
        let key = load_rsa_key(key_pem, key_origin)?;
        if key.public().as_ref() != cert_public_key.as_slice() {
            return Err(CredentialError::KeyMismatch {
                cert: cert_origin.to_owned(),
                key: key_origin.to_owned(),
            });
        }
        let sha256 = ring::digest::digest(&ring::digest::SHA256, cert_der.as_ref());
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der.as_ref());
        Ok(Self {
            key: Arc::new(key),
            alg,
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            x5t_sha1: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            thumbprint: sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect(),
        })
    }

    /// The signature algorithm of the assertions.
    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    /// The certificate's SHA-1 thumbprint in upper-case hex, as the Entra ID portal lists it
    /// under Certificates & secrets, so an admin can check the right certificate was uploaded.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A signed JWT client assertion for `client_id` at the token endpoint `audience`.
    pub fn client_assertion(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<Secret, CredentialError> {
        self.client_assertion_at(client_id, audience, SystemTime::now())
    }

    pub(crate) fn client_assertion_at(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Secret, CredentialError> {
        let rng = SystemRandom::new();
        let mut header = serde_json::json!({
            "alg": self.alg.as_str(),
            "typ": "JWT",
            "x5t#S256": self.x5t_s256,
        });
        if self.alg == JwtAlg::Rs256 {
            // Older Entra ID guidance (and some of its validators) look for the SHA-1 `x5t`.
            header["x5t"] = serde_json::Value::from(self.x5t_sha1.clone());
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CredentialError::Signing("the system clock is before 1970"))?
            .as_secs();
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid(&rng)?,
            "iat": now_secs,
            "nbf": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME.as_secs(),
        });
        let mut jwt = String::with_capacity(1024);
        jwt.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(self.alg.encoding(), &rng, jwt.as_bytes(), &mut signature)
            .map_err(|_| CredentialError::Signing("RSA signing failed"))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(&signature));
        Ok(Secret::new(jwt))
    }
}

/// A random version-4 UUID: Microsoft's examples use a GUID for `jti`, and any unique string
/// will do, so the familiar shape costs nothing.
fn random_uuid(rng: &SystemRandom) -> Result<String, CredentialError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| CredentialError::Signing("the system random number generator failed"))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// PEM sections of any kind we know. The pem module's own error texts can quote what they
/// choked on, so the problem is described in fixed words: no fragment of a key can end up in a
/// message.
fn pem_sections(data: &[u8], origin: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, CredentialError> {
    let mut sections = Vec::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data) {
        match section {
            Ok(section) => sections.push(section),
            Err(error) => {
                let problem = match error {
                    pem::Error::MissingSectionEnd { .. } => {
                        "is not valid PEM: a section has no END line"
                    }
                    pem::Error::Base64Decode(_) => {
                        "is not valid PEM: a section is not valid base64"
                    }
                    _ => "is not valid PEM",
                };
                return Err(invalid(origin, problem));
            }
        }
    }
    Ok(sections)
}

fn first_certificate(pem: &[u8], origin: &str) -> Result<CertificateDer<'static>, CredentialError> {
    let sections = pem_sections(pem, origin)?;
    if let Some((_, der)) = sections
        .iter()
        .find(|(kind, _)| *kind == SectionKind::Certificate)
    {
        return Ok(CertificateDer::from(der.clone()));
    }
    let holds_key = sections.iter().any(|(kind, _)| {
        matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    });
    Err(invalid(
        origin,
        if holds_key {
            "holds a private key but no CERTIFICATE block (are the certificate and key swapped?)"
        } else {
            "has no PEM CERTIFICATE block (expected \"-----BEGIN CERTIFICATE-----\")"
        },
    ))
}

/// The DER `RSAPublicKey` of the certificate, the same encoding ring gives for a key pair.
fn certificate_rsa_public_key(
    cert: &CertificateDer<'_>,
    origin: &str,
) -> Result<Vec<u8>, CredentialError> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|error| {
        invalid(
            origin,
            format!("is not a valid X.509 certificate ({error})"),
        )
    })?;
    let spki: SubjectPublicKeyInfoDer<'static> = parsed.subject_public_key_info();
    rsa_public_key_from_spki(spki.as_ref())
        .map(<[u8]>::to_vec)
        .map_err(|problem| invalid(origin, problem))
}

/// DER of the rsaEncryption OID 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// The `RSAPublicKey` inside a `SubjectPublicKeyInfo`; a plain-words error for anything else.
pub(crate) fn rsa_public_key_from_spki(spki: &[u8]) -> Result<&[u8], &'static str> {
    const MALFORMED: &str = "has a malformed public key";
    let (tag, body, _) = der_tlv(spki).ok_or(MALFORMED)?;
    if tag != 0x30 {
        return Err(MALFORMED);
    }
    let (tag, algorithm, rest) = der_tlv(body).ok_or(MALFORMED)?;
    if tag != 0x30 {
        return Err(MALFORMED);
    }
    if !algorithm.starts_with(RSA_ENCRYPTION_OID) {
        return Err("has a public key that is not RSA (only RSA certificates are supported)");
    }
    let (tag, bits, _) = der_tlv(rest).ok_or(MALFORMED)?;
    match bits.split_first() {
        // The first byte of a BIT STRING counts unused trailing bits; a key has none.
        Some((0, key)) if tag == 0x03 => Ok(key),
        _ => Err(MALFORMED),
    }
}

/// One DER tag-length-value at the start of `input`: (tag, contents, what follows).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

fn load_rsa_key(pem: &[u8], origin: &str) -> Result<RsaKeyPair, CredentialError> {
    if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(invalid(
            origin,
            "is encrypted with a passphrase, which is not supported; store it unencrypted with \
             tight file permissions (e.g. `openssl pkcs8 -topk8 -nocrypt -in old.pem -out key.pem`)",
        ));
    }
    let sections = pem_sections(pem, origin)?;
    let key = sections.iter().find(|(kind, _)| {
        matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    });
    let parsed = match key {
        Some((SectionKind::PrivateKey, der)) => RsaKeyPair::from_pkcs8(der),
        Some((SectionKind::RsaPrivateKey, der)) => RsaKeyPair::from_der(der),
        Some(_) => {
            return Err(invalid(
                origin,
                "holds an EC key; only RSA keys are supported",
            ));
        }
        None => {
            let holds_certificate = sections
                .iter()
                .any(|(kind, _)| *kind == SectionKind::Certificate);
            return Err(invalid(
                origin,
                if holds_certificate {
                    "holds a certificate but no private key (are the certificate and key swapped?)"
                } else {
                    "has no PEM \"PRIVATE KEY\" or \"RSA PRIVATE KEY\" block"
                },
            ));
        }
    };
    parsed.map_err(|rejected| {
        let problem = match rejected.to_string().as_str() {
            "WrongAlgorithm" => "is not an RSA key; only RSA keys are supported".to_owned(),
            "TooSmall" => "holds an RSA key that is too small (at least 2048 bits)".to_owned(),
            "TooLarge" => "holds an RSA key that is too large (at most 8192 bits)".to_owned(),
            other => format!("is not a usable RSA private key ({other})"),
        };
        invalid(origin, problem)
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    /// The certificate's public key, found independently of the private key.
    fn cert_public_key() -> Vec<u8> {
        let der = first_certificate(&fixture_bytes("cert.pem"), "test").unwrap();
        certificate_rsa_public_key(&der, "test").unwrap()
    }

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    // Computed with: openssl x509 -in cert.pem -outform DER | openssl dgst -sha256 -binary | base64url
    const CERT_X5T_S256: &str = "akqCt6T2vX5FSAZ7W1JENdwfJIMI2Zp3VA9oejL6rNo";
    const CERT_X5T_SHA1: &str = "xg7sZGzjIG3WtbWrbf3fuHcNDcQ";
    const CERT_THUMBPRINT: &str = "C60EEC646CE3206DD6B5B5AB6DFDDFB8770D0DC4";

    fn check_assertion(alg: JwtAlg, key_file: &str) {
        let credential =
            CertificateCredential::from_pem_files(&fixture("cert.pem"), &fixture(key_file), alg)
                .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let audience = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";
        let jwt = credential
            .client_assertion_at("client-123", audience, now)
            .unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);

        let header = decode_json(parts[0]);
        assert_eq!(header["alg"], alg.as_str());
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], CERT_X5T_S256);
        match alg {
            JwtAlg::Ps256 => assert!(header.get("x5t").is_none()),
            JwtAlg::Rs256 => assert_eq!(header["x5t"], CERT_X5T_SHA1),
        }

        let claims = decode_json(parts[1]);
        assert_eq!(claims["aud"], audience);
        assert_eq!(claims["iss"], "client-123");
        assert_eq!(claims["sub"], "client-123");
        assert_eq!(claims["iat"], 1_750_000_000u64);
        assert_eq!(claims["nbf"], 1_750_000_000u64);
        assert_eq!(claims["exp"], 1_750_000_600u64);
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 36);

        let verify_alg: &dyn signature::VerificationAlgorithm = match alg {
            JwtAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            JwtAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature_bytes = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public_key = cert_public_key();
        signature::UnparsedPublicKey::new(verify_alg, &public_key)
            .verify(signed.as_bytes(), &signature_bytes)
            .expect("signature verifies with the certificate's public key");

        // A second assertion must carry a fresh jti.
        let again = credential
            .client_assertion_at("client-123", audience, now)
            .unwrap();
        let again_claims = decode_json(again.expose().split('.').nth(1).unwrap());
        assert_ne!(again_claims["jti"], claims["jti"]);
    }

    #[test]
    fn ps256_assertion_verifies_with_certificate_key() {
        check_assertion(JwtAlg::Ps256, "key.pem");
    }

    #[test]
    fn rs256_assertion_verifies_and_carries_sha1_thumbprint() {
        check_assertion(JwtAlg::Rs256, "key-pkcs1.pem");
    }

    #[test]
    fn pkcs1_and_pkcs8_keys_both_load() {
        for key in ["key.pem", "key-pkcs1.pem"] {
            let credential = CertificateCredential::from_pem_files(
                &fixture("cert.pem"),
                &fixture(key),
                JwtAlg::default(),
            )
            .unwrap();
            assert_eq!(credential.alg(), JwtAlg::Ps256);
            assert_eq!(credential.thumbprint(), CERT_THUMBPRINT);
        }
    }

    #[test]
    fn debug_shows_thumbprint_not_key() {
        let credential = ClientCredential::Certificate(
            CertificateCredential::from_pem(
                &fixture_bytes("cert.pem"),
                &fixture_bytes("key.pem"),
                JwtAlg::Ps256,
            )
            .unwrap(),
        );
        let debug = format!("{credential:?}");
        assert!(debug.contains(CERT_THUMBPRINT), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");

        let secret = ClientCredential::Secret(Secret::from("s3cr3t-value~abc"));
        assert!(!format!("{secret:?}").contains("s3cr3t-value~abc"));
    }

    fn load_error(cert: &str, key: &str) -> String {
        CertificateCredential::from_pem_files(&fixture(cert), &fixture(key), JwtAlg::Ps256)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn mismatched_key_is_reported_with_both_files() {
        let message = load_error("cert.pem", "other-key.pem");
        assert!(message.contains("other-key.pem"), "{message}");
        assert!(message.contains("cert.pem"), "{message}");
        assert!(message.contains("does not belong to"), "{message}");
    }

    #[test]
    fn loading_errors_name_the_file_and_the_problem() {
        let cases = [
            (
                "key.pem",
                "key.pem",
                "certificate file",
                "no CERTIFICATE block (are the certificate and key swapped?)",
            ),
            (
                "cert.pem",
                "cert.pem",
                "private key file",
                "no private key (are the certificate and key swapped?)",
            ),
            (
                "cert.pem",
                "ec-key.pem",
                "ec-key.pem",
                "only RSA keys are supported",
            ),
            (
                "README.md",
                "key.pem",
                "README.md",
                "no PEM CERTIFICATE block",
            ),
            (
                "cert.pem",
                "README.md",
                "README.md",
                "no PEM \"PRIVATE KEY\"",
            ),
            (
                "missing.pem",
                "key.pem",
                "cannot read certificate file",
                "missing.pem",
            ),
            (
                "cert.pem",
                "missing.pem",
                "cannot read private key file",
                "missing.pem",
            ),
        ];
        for (cert, key, expect_a, expect_b) in cases {
            let message = load_error(cert, key);
            assert!(message.contains(expect_a), "{cert}/{key}: {message}");
            assert!(message.contains(expect_b), "{cert}/{key}: {message}");
        }
    }

    #[test]
    fn bad_key_pem_is_described_without_echoing_it() {
        let cert = fixture_bytes("cert.pem");
        let cases: [(&[u8], &str); 4] = [
            (
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted with a passphrase",
            ),
            (
                b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL!!\n-----END PRIVATE KEY-----\n",
                "not valid",
            ),
            (
                b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n",
                "not valid PEM",
            ),
            (
                b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
                "not",
            ),
        ];
        for (key, expected) in cases {
            let message = CertificateCredential::from_pem(&cert, key, JwtAlg::Ps256)
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("private key PEM: "), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("TOPSECRET"), "{message}");
        }
    }

    #[test]
    fn spki_parser_rejects_garbage() {
        assert!(rsa_public_key_from_spki(&[]).is_err());
        assert!(rsa_public_key_from_spki(&[0x30, 0x82, 0xff]).is_err());
        assert!(rsa_public_key_from_spki(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
    }

    #[test]
    fn jwt_alg_parses_from_config_text() {
        assert_eq!("ps256".parse::<JwtAlg>(), Ok(JwtAlg::Ps256));
        assert_eq!(" RS256 ".parse::<JwtAlg>(), Ok(JwtAlg::Rs256));
        assert!("HS256".parse::<JwtAlg>().is_err());
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let uuid = random_uuid(&SystemRandom::new()).unwrap();
        assert_eq!(&uuid[14..15], "4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"));
    }
}
