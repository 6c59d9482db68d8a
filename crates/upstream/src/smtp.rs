//! Submission to an OAuth SMTP server (Exchange Online, Gmail, any server that takes a bearer
//! token through SASL XOAUTH2 or OAUTHBEARER).
//!
//! The conversation: connect, greeting, EHLO, STARTTLS (or implicit TLS), EHLO, AUTH XOAUTH2
//! (or AUTH OAUTHBEARER, RFC 7628) with a token from the account's `TokenSource`, then MAIL,
//! RCPT and DATA — sent in one write
//! when the server offers PIPELINING (RFC 2920), replies matched in order — and the body
//! streamed from disk through the dot encoder. Every reply is kept whole.
//!
//! A token the server refuses is dropped from the cache, and the login is retried once with a
//! fresh token when the refused one came from the cache: a token can be revoked before it
//! expires, and that must not cost a message. A token fetched for this very attempt is not
//! retried: a second fresh one would fare no better.
//!
//! Authenticated sessions are kept between messages (`pool.rs`), so a message on a warm session
//! costs MAIL/RCPT/DATA in one write and the body: two round trips. A reused session that turns
//! out dead before the body was sent is replaced by a new one within the same attempt.

use crate::cause::refused;
use crate::client::Client;
use crate::conversation::{Capabilities, Opening, Starttls, open, transaction};
use crate::pool::{Idle, Pool};
use crate::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind};
use base64::Engine;
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, Stage};
use smtp2oauth_tokens::{AccessToken, TokenSource};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// How the SMTP route encrypts the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS after the greeting (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text; only for tests against local fakes.
    None,
}

impl TlsMode {
    /// The setting's value in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Implicit => "implicit",
            TlsMode::None => "none",
        }
    }
}

/// How the token is presented to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Google's and Microsoft's `XOAUTH2`: Exchange Online offers nothing else.
    #[default]
    Xoauth2,
    /// The standard mechanism, RFC 7628: a GS2 header naming the mailbox, then host, port and
    /// the bearer token.
    Oauthbearer,
}

impl SaslMechanism {
    /// The name on the AUTH command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Xoauth2 => "XOAUTH2",
            SaslMechanism::Oauthbearer => "OAUTHBEARER",
        }
    }

    /// The smtp-proto bit for this mechanism in an EHLO AUTH list.
    fn ehlo_bit(self) -> u64 {
        match self {
            SaslMechanism::Xoauth2 => smtp_proto::AUTH_XOAUTH2,
            SaslMechanism::Oauthbearer => smtp_proto::AUTH_OAUTHBEARER,
        }
    }

    /// What the client answers to a `334` error challenge so the server sends its final
    /// reply: XOAUTH2 (Google) wants an empty response; RFC 7628 section 3.2.3 a single
    /// `%x01`, which is `AQ==` in base64.
    fn error_ack(self) -> &'static str {
        match self {
            SaslMechanism::Xoauth2 => "",
            SaslMechanism::Oauthbearer => "AQ==",
        }
    }
}

/// What an SMTP route needs to know.
#[derive(Clone)]
pub struct SmtpRouteConfig {
    /// The account's name (for logs and errors).
    pub account: String,
    /// The mailbox we authenticate as (`user=` in XOAUTH2, `a=` in OAUTHBEARER).
    pub mailbox: String,
    /// The upstream's host name (also the name its certificate must carry).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is encrypted.
    pub tls: TlsMode,
    /// Server verification (web PKI and `ca_file`).
    pub tls_config: Arc<rustls::ClientConfig>,
    /// How the token is presented.
    pub auth: SaslMechanism,
    /// The name we give in EHLO.
    pub helo_name: String,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for each command's reply.
    pub command_timeout: Duration,
    /// Longest wait for the reply to the message body.
    pub data_timeout: Duration,
    /// Idle authenticated sessions kept for the next message (the account's connection limit).
    pub max_idle: usize,
    /// How long an idle session is kept; zero: a new session for every message.
    pub idle_timeout: Duration,
}

/// Submission with an OAuth token over pooled sessions.
pub struct SmtpRoute {
    cfg: SmtpRouteConfig,
    tokens: Arc<dyn TokenSource>,
    pool: Arc<Pool<Capabilities>>,
}

/// `base64("user=" + mailbox + "\x01auth=Bearer " + token + "\x01\x01")`.
pub fn xoauth2_initial_response(mailbox: &str, token: &str) -> String {
    let raw = format!("user={mailbox}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// `base64("n,a=" + mailbox + ",\x01host=" + host + "\x01port=" + port + "\x01auth=Bearer " +
/// token + "\x01\x01")`: the OAUTHBEARER initial response of RFC 7628 section 3.1. The GS2
/// header says "no channel binding" (`n`) and names the mailbox as the authorization identity,
/// with `,` and `=` escaped as RFC 5801 requires; `host` and `port` are those we connected to.
pub fn oauthbearer_initial_response(mailbox: &str, host: &str, port: u16, token: &str) -> String {
    let authzid = mailbox.replace('=', "=3D").replace(',', "=2C");
    let raw =
        format!("n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

impl SmtpRoute {
    /// A route getting its tokens from `tokens`.
    pub fn new(cfg: SmtpRouteConfig, tokens: Arc<dyn TokenSource>) -> Self {
        let pool = Pool::new(cfg.max_idle, cfg.idle_timeout);
        SmtpRoute { cfg, tokens, pool }
    }

    /// Idle sessions kept right now.
    pub fn idle_sessions(&self) -> usize {
        self.pool.idle_count()
    }

    async fn token(&self) -> Result<AccessToken, DeliveryError> {
        self.tokens
            .token()
            .await
            .map_err(|e| token_error(&self.cfg.account, &e))
    }

    /// Connects and says EHLO, upgrading to TLS as configured. Returns the client and the
    /// capabilities of the (encrypted) session.
    async fn open(&self) -> Result<(Client, Capabilities), DeliveryError> {
        let c = &self.cfg;
        let mut client = Client::connect(
            format!("{}:{}", c.host, c.port),
            (c.host.as_str(), c.port),
            c.connect_timeout,
            c.command_timeout,
        )
        .await?;
        if c.tls == TlsMode::Implicit {
            client.start_tls(c.tls_config.clone(), &c.host).await?;
        }
        let starttls = match c.tls {
            TlsMode::Starttls => Starttls::Required {
                setting: "smtp_tls = \"starttls\"",
            },
            TlsMode::Implicit | TlsMode::None => Starttls::Off,
        };
        let how = Opening {
            helo: &c.helo_name,
            starttls,
            tls: &c.tls_config,
            server_name: &c.host,
            account: &c.account,
        };
        let caps = open(&mut client, &how).await?;
        Ok((client, caps))
    }

    /// Logs in with the configured mechanism; returns when the token used expires.
    async fn authenticate(
        &self,
        client: &mut Client,
        caps: &Capabilities,
    ) -> Result<(SystemTime, u64), DeliveryError> {
        let mechanism = self.cfg.auth;
        if let Some(offered) = caps.auth
            && offered & mechanism.ehlo_bit() == 0
        {
            // Try anyway (a server may accept more than it lists); the warning explains the
            // refusal that is likely to follow.
            warn!(account = %self.cfg.account, mechanism = mechanism.as_str(), offered = %auth_names(offered), "upstream does not offer the configured AUTH mechanism (smtp_auth)");
        }
        let mut retried = false;
        // A token obtained after this point was fetched for this attempt; one obtained before
        // came from the cache and may have been revoked since.
        let started = SystemTime::now();
        loop {
            let token = self.token().await?;
            let reply = self.sasl(client, &token).await?;
            if reply.code() == 235 {
                return Ok((token.expires_at(), token.id()));
            }
            // The server refused this token: make sure the next attempt fetches a new one.
            self.tokens.invalidate(&token);
            let from_cache = token.obtained_at() < started;
            if reply.code() == 535 && !retried && from_cache {
                info!(account = %self.cfg.account, reply = %reply, "upstream refused a cached token; retrying once with a new one");
                retried = true;
                continue;
            }
            return Err(refused(Stage::Auth, reply));
        }
    }

    /// One AUTH exchange with `token`; the server's final reply.
    async fn sasl(&self, client: &mut Client, token: &AccessToken) -> Result<Reply, DeliveryError> {
        let c = &self.cfg;
        let mechanism = c.auth;
        let ir = match mechanism {
            SaslMechanism::Xoauth2 => xoauth2_initial_response(&c.mailbox, token.secret()),
            SaslMechanism::Oauthbearer => {
                oauthbearer_initial_response(&c.mailbox, &c.host, c.port, token.secret())
            }
        };
        // The client logs AUTH lines as "AUTH [redacted]": the token never reaches a log.
        let reply = client
            .command(&format!("AUTH {} {ir}", mechanism.as_str()), Stage::Auth)
            .await?;
        if reply.code() != 334 {
            return Ok(reply);
        }
        // A refusal as a 334 with a base64 JSON error (Google's XOAUTH2, and RFC 7628 for every
        // OAUTHBEARER server): the exchange must be finished with the mechanism's dummy
        // response to receive the final 535 (or whatever the server decides).
        let detail = base64::engine::general_purpose::STANDARD
            .decode(reply.text().trim())
            .ok()
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        let fin = client.command(mechanism.error_ack(), Stage::Auth).await?;
        if !detail.is_empty() {
            warn!(account = %self.cfg.account, error = %detail, reply = %fin, "upstream refused the token");
        }
        Ok(fin)
    }

    async fn send(
        &self,
        client: &mut Client,
        caps: &Capabilities,
        msg: &Message,
    ) -> Result<DeliveryReport, DeliveryError> {
        transaction(client, caps, msg, self.cfg.data_timeout).await
    }

    /// A new authenticated session.
    async fn open_session(&self) -> Result<Idle<Capabilities>, DeliveryError> {
        let (mut client, caps) = self.open().await?;
        match self.authenticate(&mut client, &caps).await {
            Ok((token_expires, token_id)) => Ok(Idle {
                client,
                caps,
                token_expires,
                token_id,
                since: tokio::time::Instant::now(),
                uses: 0,
            }),
            Err(e) => {
                if matches!(e, DeliveryError::Rejected { .. }) {
                    client.quit().await;
                }
                Err(e)
            }
        }
    }

    /// Gives a clean session to the pool, or says QUIT when the pool does not keep it.
    async fn keep(&self, session: Idle<Capabilities>) {
        if let Some(s) = self.pool.put(session) {
            s.client.quit().await;
        }
    }

    async fn attempt(&self, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
        let mut tries = Tries::default();
        loop {
            let (result, reused) = self.try_once(msg, tries.reconnected).await;
            match &result {
                Err(e) if reused && !tries.replaced && dead_before_body(e) => {
                    // The upstream dropped the idle session (or is closing it) and nothing of
                    // this message was accepted: carry on with a new session.
                    debug!(account = %self.cfg.account, error = %e, "reused upstream session failed before the body; opening a new one");
                    tries.replaced = true;
                }
                Err(e) if !tries.reconnected && lost_before_final_reply(e) => {
                    // A brief fault (a restart, a dropped connection mid-DATA) usually clears
                    // by the next connection: try once more now rather than at the next retry.
                    // A copy may already have been accepted, as with any later retry.
                    warn!(queue_id = %msg.id, account = %self.cfg.account, error = %e, "the upstream connection was lost before its final reply; trying once more on a new connection");
                    tries.reconnected = true;
                }
                _ => return result,
            }
        }
    }

    /// One try on one session: a pooled one unless `fresh`, else a new one. Returns the
    /// result and whether the session was reused from the pool; a session that can carry
    /// the next message goes back to the pool.
    async fn try_once(
        &self,
        msg: &Message,
        fresh: bool,
    ) -> (Result<DeliveryReport, DeliveryError>, bool) {
        // Only a session opened with the token the account holds now: after a sign-out (no
        // token) or a new sign-in (another token), sessions of the earlier sign-in must not
        // carry mail; after a routine refresh the few pooled sessions are simply renewed.
        let pooled = match self.tokens.held_token_id() {
            Some(id) if !fresh => self.pool.take(id),
            Some(_) => None,
            None => {
                self.pool.close_all("the account holds no token");
                None
            }
        };
        let (mut session, reused) = match pooled {
            Some(s) => (s, true),
            None => match self.open_session().await {
                Ok(s) => (s, false),
                Err(e) => return (Err(e), false),
            },
        };
        let result = self.send(&mut session.client, &session.caps, msg).await;
        match &result {
            Ok(_) => {
                session.uses += 1;
                self.keep(session).await;
            }
            Err(DeliveryError::Rejected { stage, reply, .. }) if reply.code() != 421 => {
                // The session still speaks SMTP. After a refused body the transaction is
                // over; before it, RSET closes it. Either way it can carry the next message.
                if *stage == Stage::Body {
                    self.keep(session).await;
                } else {
                    match session.client.command("RSET", Stage::Mail).await {
                        Ok(r) if r.code() == 250 => self.keep(session).await,
                        Ok(_) => session.client.quit().await,
                        Err(_) => {}
                    }
                }
            }
            // A 421 ends the session; only a connection that still speaks SMTP gets a QUIT.
            Err(DeliveryError::Rejected { .. }) => session.client.quit().await,
            Err(_) => {}
        }
        (result, reused)
    }
}

/// Which second chances an attempt has used: each is taken at most once.
#[derive(Default)]
struct Tries {
    /// A reused session proved dead before the body and was replaced.
    replaced: bool,
    /// The connection was lost before the final reply and a new one was opened.
    reconnected: bool,
}

/// The names of the SASL mechanisms in smtp-proto's bit set, for a log line.
fn auth_names(bits: u64) -> String {
    use smtp_proto::response::generate::BitToString;
    let names: Vec<&str> = (0..64)
        .map(|i| 1u64 << i)
        .filter(|b| bits & b != 0)
        .map(|b| b.to_mechanism())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// A failure that proves a reused session dead (or closing) before the upstream could have
/// accepted the message: safe to try again at once on a new session.
fn dead_before_body(e: &DeliveryError) -> bool {
    match e {
        DeliveryError::ConnectionLost { stage, .. } => {
            matches!(stage, Stage::Mail | Stage::Rcpt | Stage::Data)
        }
        DeliveryError::Rejected { stage, reply, .. } => {
            reply.code() == 421 && matches!(stage, Stage::Mail | Stage::Rcpt | Stage::Data)
        }
        _ => false,
    }
}

/// The connection broke before the upstream gave its final reply to the message (anywhere
/// from the greeting to the end of the body): nothing says the message was accepted, and a
/// new connection may well go through.
pub(crate) fn lost_before_final_reply(e: &DeliveryError) -> bool {
    matches!(e, DeliveryError::ConnectionLost { .. })
}

/// A token the account could not get, as a delivery failure: temporary whatever the cause,
/// but marked as the account's when a person must sign in or the app's registration is wrong.
pub(crate) fn token_error(account: &str, e: &smtp2oauth_tokens::TokenError) -> DeliveryError {
    use smtp2oauth_tokens::TokenErrorKind;
    let cause = match e.kind {
        TokenErrorKind::SignInRequired => Cause::Account(AccountIssue::SignIn),
        TokenErrorKind::Configuration => Cause::Account(AccountIssue::AppRegistration),
        TokenErrorKind::Transient => Cause::Transient,
    };
    DeliveryError::Token {
        account: account.to_string(),
        reason: e.to_string(),
        cause,
    }
}

impl Route for SmtpRoute {
    fn kind(&self) -> RouteKind {
        RouteKind::Smtp
    }

    fn target(&self) -> String {
        format!(
            "{}:{} ({})",
            self.cfg.host,
            self.cfg.port,
            self.cfg.tls.as_str()
        )
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(self.attempt(message))
    }

    fn wait_for_token(&self) -> crate::TokenWait<'_> {
        crate::token_wait(&self.cfg.account, self.tokens.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_string_matches_the_documented_format() {
        // From Microsoft's and Google's documentation of the SASL XOAUTH2 mechanism.
        let ir = xoauth2_initial_response(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        );
        assert_eq!(
            ir,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn oauthbearer_string_matches_the_rfc_7628_example() {
        // RFC 7628 section 4.1: user@example.com at server.example.com port 143.
        let ir = oauthbearer_initial_response(
            "user@example.com",
            "server.example.com",
            143,
            "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==",
        );
        assert_eq!(
            ir,
            "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2c9PQEB"
        );
    }

    #[test]
    fn oauthbearer_escapes_the_authorization_identity() {
        // RFC 5801 saslname: "," and "=" would end or corrupt the GS2 header.
        let cases = [
            ("plain@example.com", "n,a=plain@example.com,"),
            ("a,b@example.com", "n,a=a=2Cb@example.com,"),
            ("a=b@example.com", "n,a=a=3Db@example.com,"),
            ("=2C@example.com", "n,a==3D2C@example.com,"),
        ];
        for (mailbox, header) in cases {
            let ir = oauthbearer_initial_response(mailbox, "smtp.example.net", 587, "tok");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(ir)
                .unwrap();
            let want =
                format!("{header}\x01host=smtp.example.net\x01port=587\x01auth=Bearer tok\x01\x01");
            assert_eq!(String::from_utf8(raw).unwrap(), want, "{mailbox}");
        }
    }

    #[test]
    fn error_challenges_are_answered_as_each_mechanism_requires() {
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(SaslMechanism::Xoauth2.error_ack(), "");
        assert_eq!(
            b64.decode(SaslMechanism::Oauthbearer.error_ack()).unwrap(),
            [0x01]
        );
        assert_eq!(SaslMechanism::default(), SaslMechanism::Xoauth2);
    }

    #[test]
    fn capabilities_from_exchange_ehlo() {
        let mut asm = smtp2oauth_proto::ReplyAssembler::new();
        let lines = [
            "250-SN4PR0601CA0001.outlook.office365.com Hello [203.0.113.9]",
            "250-SIZE 157286400",
            "250-PIPELINING",
            "250-DSN",
            "250-ENHANCEDSTATUSCODES",
            "250-AUTH LOGIN XOAUTH2",
            "250-8BITMIME",
            "250-BINARYMIME",
            "250-CHUNKING",
            "250-X-RCPTLIMIT 500",
            "250 SMTPUTF8",
        ];
        let mut reply = None;
        for l in lines {
            reply = asm.push_line(l.as_bytes()).unwrap();
        }
        let caps = crate::conversation::capabilities(&reply.unwrap());
        assert!(caps.pipelining && caps.eight_bit && caps.smtputf8 && !caps.starttls);
        assert_eq!(caps.size, Some(157_286_400));
        let auth = caps.auth.expect("AUTH line");
        assert_ne!(auth & SaslMechanism::Xoauth2.ehlo_bit(), 0);
        assert_eq!(auth & SaslMechanism::Oauthbearer.ehlo_bit(), 0);
        assert_eq!(auth_names(auth), "XOAUTH2 LOGIN");
    }
}
