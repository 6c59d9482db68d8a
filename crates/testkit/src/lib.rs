//! Test-only fakes of the Microsoft services smtp2oauth talks to (token endpoint, Exchange SMTP
//! submission, a smart host / MX, Graph `sendMail`), a DNS server for MX lookups, plus a
//! throw-away PKI.
//!
//! End-to-end tests start the real relay binary against these fakes, so the fakes must be
//! *honest*: they implement the protocols strictly (an HTTP token endpoint that checks every
//! field Microsoft checks, an ESMTP server that enforces STARTTLS, XOAUTH2, sequencing, SIZE,
//! dot-stuffing and pipelining rules) and refuse what the real services refuse. A lenient fake
//! would hide exactly the relay bugs these tests exist to catch. Every server binds 127.0.0.1
//! on an OS-assigned port and can be scripted per test (failures, delays, dropped connections).
//!
//! This crate is a dev-dependency only; it is never compiled into the release binary.
//!
//! Typical wiring (not compiled as a doctest, to keep test builds fast; the same code runs in
//! `tests/fakes/smtp.rs`):
//!
//! ```ignore
//! let pki = TestPki::new();
//! let idp = FakeIdp::start(IdpConfig::default()).await;
//! let smtp = FakeSmtp::start(SmtpConfig::microsoft(
//!     pki.server_config(),
//!     "relay@contoso.example",
//!     idp.validator(), // accepts only unexpired tokens this IdP issued
//! ))
//! .await;
//! // relay config: authority = idp.authority(), tenant/client id/secret from IdpConfig::default(),
//! // upstream = 127.0.0.1:smtp.port() (or "localhost"), trusted CA = pki.ca_pem_path().
//! smtp.script(Stage::Mail, "554 5.2.252 SendAsDenied; ...", 1);
//! let got = smtp.wait_for_messages(1, Duration::from_secs(10)).await;
//! ```

// Test and measurement code: a failed unwrap names the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

pub mod dns;
pub mod graph;
pub mod idp;
pub mod pki;
pub mod smtp;
mod tls_listener;
pub mod tmpfs;

pub use dns::FakeDns;
pub use graph::{
    FakeGraph, GraphAttachment, GraphDraft, GraphFailure, GraphMessage, GraphRequest, GraphStep,
};
pub use idp::{AuthorizeMode, DeviceStatus, FakeIdp, IdpConfig, IdpFailure, IssuedToken};
pub use pki::TestPki;
pub use smtp::{
    AuthFailureStyle, FakeSmtp, ReceivedMessage, SmtpConfig, Stage, TokenValidator, UpstreamTls,
};
pub use tmpfs::Tmpfs;

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Locks a mutex, ignoring poisoning: a test that panicked while holding a fake's state must not
/// turn every later call on the handle into a second, misleading panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cryptographically random bytes. Tokens and ids must be unguessable so a relay that, say,
/// reuses or fabricates a token cannot pass by luck.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut v = vec![0u8; n];
    // SystemRandom only fails if the OS has no entropy source; a fake without randomness would
    // silently issue guessable tokens, so failing loudly in test setup is the right outcome.
    ring::rand::SystemRandom::new()
        .fill(&mut v)
        .expect("OS random number generator unavailable");
    v
}

pub(crate) fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID in the usual 8-4-4-4-12 form, as Microsoft uses for trace ids.
pub(crate) fn uuid_v4() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Civil date (year, month, day) from days since 1970-01-01 (Howard Hinnant's algorithm), so we
/// can print Microsoft-style UTC timestamps without a date crate.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// "2024-05-01 12:34:56Z", the format of `timestamp` in Microsoft identity platform errors.
pub(crate) fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}Z",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29 23:59:59 (leap day)
        assert_eq!(utc_timestamp(t), "2024-02-29 23:59:59Z");
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
