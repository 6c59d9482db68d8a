//! The upstream side of one measurement: a fresh token endpoint and a fresh sink.
//!
//! Why its own module: every peer (the sink alone, the relay, Postfix) is measured against the
//! same kind of upstream, started the same way, and counted the same way (connections at the
//! sink, requests at the token endpoint), so the figures of one peer can be divided by another's.
//! The sink is the testkit's `FakeSmtp` in its Exchange-like configuration: STARTTLS required,
//! every XOAUTH2 token checked against those the fake IdP issued, an optional delay before every
//! reply to emulate a WAN round trip. For Postfix, which cannot speak XOAUTH2, the same sink also
//! accepts one fixed user and password with AUTH PLAIN/LOGIN (after STARTTLS, like XOAUTH2).

use anyhow::{Context as _, bail};
use smtp2oauth_testkit::{FakeIdp, FakeSmtp, IdpConfig, SmtpConfig, TestPki};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The account's mailbox; devices send as it, so no sender rewriting is involved.
pub const MAILBOX: &str = "scanner@contoso.example";
pub const RECIPIENT: &str = "archive@contoso.example";
/// The scope the relay asks for (client credentials, Exchange Online).
pub const SCOPE: &str = "https://outlook.office365.com/.default";
/// Postfix's SMTP client login at the sink (the password is random per run).
pub const POSTFIX_SINK_USER: &str = "bench-postfix";

#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Delay before every write of replies by the sink.
    pub reply_delay: Duration,
    /// Largest message the sink takes (it must never be what refuses a message).
    pub max_size: usize,
    /// Lifetime of the tokens the fake IdP issues (`expires_in`).
    pub token_lifetime: Duration,
    /// Also accept AUTH PLAIN/LOGIN with this password for [`POSTFIX_SINK_USER`].
    pub password_login: Option<String>,
}

pub struct Upstream {
    pub pki: TestPki,
    pub idp: FakeIdp,
    pub idp_config: IdpConfig,
    pub sink: FakeSmtp,
}

impl Upstream {
    pub async fn start(opts: &UpstreamOptions) -> Upstream {
        let pki = TestPki::new();
        let idp_config = IdpConfig {
            expires_in: opts.token_lifetime,
            ..IdpConfig::default()
        };
        let idp = FakeIdp::start(idp_config.clone()).await;
        let mut smtp_cfg = SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator());
        smtp_cfg.reply_delay = opts.reply_delay;
        smtp_cfg.max_size = smtp_cfg.max_size.max(opts.max_size);
        // A sink for measurements: the peers under comparison choose their own number of
        // connections (the relay's `max_upstream_connections`, Postfix's destination
        // concurrency) and senders, so Exchange's per-mailbox limits are off here.
        smtp_cfg.max_sessions_per_mailbox = None;
        smtp_cfg.send_as = None;
        let sink = FakeSmtp::start(smtp_cfg).await;
        if let Some(password) = &opts.password_login {
            sink.set_password_login(Some((POSTFIX_SINK_USER.into(), password.clone())));
        }
        Upstream {
            pki,
            idp,
            idp_config,
            sink,
        }
    }

    /// A token obtained the way the relay obtains one: a client-credentials POST to the fake
    /// token endpoint (so it counts as one token request, like the relay's).
    pub async fn fetch_token(&self) -> anyhow::Result<String> {
        let secret = self.idp_config.client_secret.clone().unwrap_or_default();
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.idp_config.client_id),
            ("client_secret", &secret),
            ("scope", SCOPE),
        ]);
        let path = format!("/{}/oauth2/v2.0/token", self.idp_config.tenant);
        let addr = self.idp.addr();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .context("connecting to the fake token endpoint")?;
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut response))
            .await
            .context("the fake token endpoint did not answer")??;
        let text = String::from_utf8_lossy(&response);
        let (head, json) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "token request failed: {}",
                head.lines().next().unwrap_or("")
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(json.trim()).context("token response is not JSON")?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .context("token response has no access_token")
    }
}

/// `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A random password for Postfix's login at the sink.
pub fn random_password() -> String {
    let mut bytes = [0u8; 16];
    // getrandom(2) into a local buffer; a short read leaves zeros, still a fine test password.
    // SAFETY: the pointer and length describe `bytes`, which outlives the call.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[("scope", "https://x/.default"), ("a b", "c~d")]),
            "scope=https%3A%2F%2Fx%2F.default&a%20b=c~d"
        );
    }

    /// The ceiling's token is a real one: the sink accepts it and the IdP counted the request.
    #[tokio::test]
    async fn fetches_a_token_the_sink_accepts() {
        let up = Upstream::start(&UpstreamOptions {
            reply_delay: Duration::ZERO,
            max_size: 1 << 20,
            token_lifetime: Duration::from_secs(3600),
            password_login: None,
        })
        .await;
        let token = up.fetch_token().await.unwrap();
        assert!(up.idp.validate(&token).is_ok());
        assert_eq!(up.idp.token_requests(), 1);
    }
}
