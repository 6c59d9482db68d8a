//! PKCE (RFC 7636, method S256) and the random values of a sign-in.
//!
//! An authorization code travels through the admin's browser (its history, a proxy log, the
//! Referer of the next page). PKCE makes such a code useless to anyone but the relay that asked
//! for it: the token endpoint hands out tokens only to whoever shows the verifier whose SHA-256
//! was sent with the authorization request. `state` values come from the same generator.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

/// The only challenge method we send; `plain` would defeat the point of PKCE.
pub const CHALLENGE_METHOD: &str = "S256";

/// `n` random bytes as unpadded base64url (the unreserved characters RFC 7636 allows).
///
/// Panics only if the operating system has no entropy source, in which case no sign-in could
/// ever be safe; continuing with guessable values would be worse.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator is unavailable");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `BASE64URL(SHA256(verifier))`, the S256 code challenge.
pub fn challenge_for(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A code verifier and its challenge. The verifier is a secret until the code is redeemed.
#[derive(Clone, Debug)]
pub struct Pkce {
    verifier: Secret,
    challenge: String,
}

impl Pkce {
    /// A fresh verifier of 32 random bytes (43 characters, the minimum length RFC 7636 allows
    /// and the entropy it recommends).
    pub fn new() -> Self {
        Self::from_verifier(random_token(32))
    }

    /// The pair for a given verifier (RFC 7636 gives one as a test vector).
    pub fn from_verifier(verifier: String) -> Self {
        let challenge = challenge_for(&verifier);
        Self {
            verifier: Secret::from(verifier),
            challenge,
        }
    }

    /// The verifier, sent with the code when it is redeemed.
    pub fn verifier(&self) -> &Secret {
        &self.verifier
    }

    /// The S256 challenge, sent with the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_long_enough_unreserved_and_unique() {
        let a = Pkce::new();
        let b = Pkce::new();
        let v = a.verifier().expose();
        assert_eq!(v.len(), 43);
        assert!(
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
            "{v}"
        );
        assert_ne!(v, b.verifier().expose());
        assert_eq!(a.challenge(), challenge_for(v));
        assert!(!format!("{a:?}").contains(v));
    }
}
