//! Decoding of AUTH PLAIN (RFC 4616) and AUTH LOGIN responses.
//!
//! These bytes come straight from devices, so the decoders are strict about structure and lenient
//! about what real devices get wrong: missing base64 padding, trailing whitespace, and passwords
//! that are not UTF-8 (old firmware sends Latin-1). Credentials stay bytes until they are checked.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Username and password a device presented. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username as sent.
    pub username: Vec<u8>,
    /// The password as sent.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Why an AUTH response was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not base64.
    BadBase64,
    /// Decoded, but not the mechanism's shape (e.g. PLAIN without two NULs).
    Malformed,
}

/// One line of a SASL exchange: `*` cancels, otherwise base64 (an empty line or `=` is empty).
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = trim(line);
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line.is_empty() || line == b"=" {
        return Ok(Vec::new());
    }
    LENIENT.decode(line).map_err(|_| SaslError::BadBase64)
}

/// Parses a decoded PLAIN message: `[authzid] NUL authcid NUL passwd`. An authorization
/// identity different from the authentication identity (acting for someone else) is refused.
pub fn parse_plain(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = decoded.splitn(3, |&b| b == 0);
    let authzid = parts.next().ok_or(SaslError::Malformed)?;
    let authcid = parts.next().ok_or(SaslError::Malformed)?;
    let passwd = parts.next().ok_or(SaslError::Malformed)?;
    if authcid.is_empty() || passwd.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        username: authcid.to_vec(),
        password: passwd.to_vec(),
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn plain_table() {
        let cases: &[(&[u8], Result<(&[u8], &[u8]), SaslError>)] = &[
            (b"\0mfp-3f\0secret", Ok((b"mfp-3f", b"secret"))),
            (b"mfp-3f\0mfp-3f\0secret", Ok((b"mfp-3f", b"secret"))),
            (
                b"\0user@example.com\0p\xe4ss",
                Ok((b"user@example.com", b"p\xe4ss")),
            ),
            (b"\0u\0", Ok((b"u", b""))),
            (b"other\0mfp\0secret", Err(SaslError::Malformed)),
            (b"\0\0secret", Err(SaslError::Malformed)),
            (b"mfp\0secret", Err(SaslError::Malformed)),
            (b"nonuls", Err(SaslError::Malformed)),
            (b"", Err(SaslError::Malformed)),
            (b"\0u\0p\0extra", Err(SaslError::Malformed)),
        ];
        for (input, want) in cases {
            let got = parse_plain(input).map(|c| (c.username, c.password));
            let want = want.map(|(u, p)| (u.to_vec(), p.to_vec()));
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn response_table() {
        assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b" * \r\n"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b""), Ok(vec![]));
        assert_eq!(decode_response(b"="), Ok(vec![]));
        assert_eq!(decode_response(&b64(b"mfp-3f")), Ok(b"mfp-3f".to_vec()));
        // missing padding, as some firmware sends it
        assert_eq!(decode_response(b"bWZwLTNm"), Ok(b"mfp-3f".to_vec()));
        assert_eq!(decode_response(b"YQ"), Ok(b"a".to_vec()));
        assert_eq!(decode_response(b"YQ==\r\n"), Ok(b"a".to_vec()));
        assert_eq!(decode_response(b"not base64!"), Err(SaslError::BadBase64));
        assert_eq!(decode_response(b"\xff\xfe"), Err(SaslError::BadBase64));
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: b"mfp".to_vec(),
            password: b"hunter2".to_vec(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
