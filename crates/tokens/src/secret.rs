//! A string that must never reach a log line, an error message or a status page.
//!
//! Client secrets, client assertions and access tokens all travel as [`Secret`] so that a stray
//! `{:?}` or `{}` prints a placeholder instead of the value; reading the value takes an explicit
//! [`Secret::expose`], which is easy to find in review.

use std::fmt;

/// A secret string: `Debug` and `Display` print `[redacted]`; [`Secret::expose`] gives the value.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret value, for the one place that has to send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Compares in constant time (for values like `state` that an attacker may probe).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort only: earlier reallocations and copies made by libraries are out of reach,
        // but this keeps the final buffer from lingering in freed memory. `black_box` stops the
        // compiler from treating the writes as dead stores.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2-very-secret".to_owned());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(
            format!("{:#?}", Some(secret.clone())),
            "Some(\n    [redacted],\n)"
        );
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }
}
