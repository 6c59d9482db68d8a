//! The configuration file's shape: every key, its type and its default.
//!
//! This is a contract with our users (their config files outlive our releases), so names follow
//! the documented examples, unknown keys are errors (a typo must not silently fall back to a
//! default), and every default is written here once. `docs/configuration.md` mirrors this file.

use crate::duration;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret value from the config file. Never printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

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

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment variables holding digits arrive as numbers; a secret is always a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        Ok(Secret(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::U(u) => u.to_string(),
            Raw::F(f) => f.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

/// The whole configuration file: every table, with its defaults.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the inbound SMTP server.
    pub server: Server,
    /// `[tls]`: the listeners' certificate.
    pub tls: Tls,
    /// `[[listeners]]`: where devices connect.
    pub listeners: Vec<Listener>,
    /// `[store]`: the spool, tokens and keys on disk.
    pub store: Store,
    /// `[admin]`: the admin HTTP server.
    pub admin: Admin,
    /// `[delivery]`: the queue and the upstream side.
    pub delivery: Delivery,
    /// `[notify]`: webhook events and alert e-mails.
    pub notify: Notify,
    /// `[[accounts]]`: the mailboxes we send as.
    pub accounts: Vec<Account>,
    /// `[[devices]]`: who may send.
    pub devices: Vec<Device>,
}

/// `[server]`: what the inbound SMTP server accepts, and its limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Name in the greeting, EHLO reply and Received header. Default: the system's host name.
    pub hostname: Option<String>,
    /// Bytes; advertised in SIZE and enforced while the message streams in.
    pub max_message_size: u64,
    /// Longest command line in bytes, CRLF included (RFC 5321 requires at least 512).
    pub max_line_length: usize,
    /// Recipients one message may have.
    pub max_recipients: usize,
    /// Concurrent sessions over all listeners.
    pub max_sessions: usize,
    /// Concurrent sessions from one address.
    pub max_sessions_per_ip: usize,
    /// Concurrent sessions from one address that have not logged in (devices recognised by
    /// address count as logged in). When `max_sessions` is reached, the oldest session that has
    /// not logged in is closed to admit a new connection.
    pub max_unauthenticated_per_ip: usize,
    /// Time allowed for one whole command line to arrive (also the idle time between commands).
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Longest silence while a message body is arriving.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Longest a session may last, whatever it does.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// Longest a session may go without logging in (devices recognised by address are logged in
    /// from the start).
    #[serde(with = "duration")]
    pub preauth_timeout: Duration,
    /// Failed AUTH attempts allowed in one session before it is closed.
    pub max_auth_failures: u32,
    /// Refused commands allowed in one session before it is closed.
    pub max_errors: u32,
    /// Prepend a Received: header to every accepted message.
    pub add_received_header: bool,
    /// How long a successful device login is remembered (a keyed hash of the credentials, in
    /// memory only), so a printer that logs in for every message does not pay argon2's cost
    /// each time. Failed logins are never cached. 0 disables the cache.
    #[serde(with = "duration")]
    pub auth_cache_ttl: Duration,
    /// Threads that verify passwords (argon2id uses ~19 MiB each while it runs).
    /// 0 = one per CPU, at most 4.
    pub auth_workers: usize,
    /// Failed logins from one address within `lockout_window` that lock it out. 0 disables.
    pub lockout_after: u32,
    /// Failed logins for one username within `lockout_window`, from addresses where it has not
    /// logged in successfully within 30 days, after which such addresses get `454 4.7.0` for it
    /// without a password check (for `lockout_time`, doubling up to `lockout_max`). 0 disables.
    pub user_lockout_after: u32,
    /// The window in which failed logins are counted for `lockout_after`.
    #[serde(with = "duration")]
    pub lockout_window: Duration,
    /// First lockout; each further lockout of the same address doubles it, up to `lockout_max`.
    #[serde(with = "duration")]
    pub lockout_time: Duration,
    /// The longest a lockout can grow to.
    #[serde(with = "duration")]
    pub lockout_max: Duration,
    /// Addresses (CIDR) that are never locked out.
    #[serde(deserialize_with = "deserialize_nets")]
    pub lockout_exempt: Vec<IpNet>,
    /// Commands (lines) one session may send.
    pub max_commands: u64,
    /// Bytes one session may send, messages included.
    pub max_session_bytes: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            hostname: None,
            max_message_size: 36_700_160,
            max_line_length: 4096,
            max_recipients: 500,
            max_sessions: 500,
            max_sessions_per_ip: 50,
            max_unauthenticated_per_ip: 10,
            command_timeout: Duration::from_secs(30),
            data_timeout: Duration::from_secs(120),
            session_timeout: Duration::from_secs(30 * 60),
            preauth_timeout: Duration::from_secs(60),
            max_auth_failures: 3,
            max_errors: 20,
            add_received_header: true,
            auth_cache_ttl: Duration::from_secs(15 * 60),
            auth_workers: 0,
            lockout_after: 10,
            user_lockout_after: 20,
            lockout_window: Duration::from_secs(600),
            lockout_time: Duration::from_secs(60),
            lockout_max: Duration::from_secs(3600),
            lockout_exempt: Vec::new(),
            max_commands: 10_000,
            max_session_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// `[tls]`: the certificate for listeners with `tls = "starttls"` or `"implicit"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain of the listeners (goes with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Without cert_file/key_file, generate a self-signed certificate into `<store dir>/tls/`
    /// on first start (devices on a LAN rarely verify certificates; this makes STARTTLS work
    /// out of the box). Set to false to require real files.
    pub self_signed: bool,
    /// How often the certificate, key and client CA files are checked for a change (a renewal);
    /// a changed file is loaded without a restart or SIGHUP. 0 checks only on SIGHUP.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert_file: None,
            key_file: None,
            self_signed: true,
            reload_interval: Duration::from_secs(30),
        }
    }
}

/// TLS on a listener (`tls`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain SMTP; STARTTLS is not offered.
    None,
    /// Plain SMTP with STARTTLS offered.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// `[[listeners]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address and port to listen on (port 0: the system chooses).
    pub address: SocketAddr,
    /// Label for logs and metrics. Default: `smtp-<port>`.
    #[serde(default)]
    pub name: Option<String>,
    /// TLS on this listener. Default `"starttls"`.
    #[serde(default = "default_listener_tls")]
    pub tls: ListenerTls,
    /// AUTH and MAIL are refused until STARTTLS.
    #[serde(default)]
    pub require_tls: bool,
    /// AUTH is allowed without TLS (for devices that cannot do TLS). Off by default.
    #[serde(default)]
    pub allow_insecure_auth: bool,
    /// Which TLS implementation and versions this listener offers.
    #[serde(default)]
    pub tls_profile: TlsProfile,
    /// Require a client certificate issued by one of the CAs in this PEM file; a device
    /// without one cannot complete the TLS handshake.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `[[listeners]] tls_profile`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// rustls: TLS 1.2 and 1.3 with its default cipher suites.
    #[default]
    Modern,
    /// OpenSSL: TLS 1.0 and later with the old cipher suites that printers from before 2015
    /// speak. Only in builds with the `legacy-tls` feature; for a trusted segment only.
    Legacy,
}

fn default_listener_tls() -> ListenerTls {
    ListenerTls::Starttls
}

impl Listener {
    /// The listener's name for logs and metrics: `name`, else `smtp-<port>`.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("smtp-{}", self.address.port()))
    }
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// Spool, captures and generated keys live here. Relative paths are relative to the
    /// working directory. Default: `/var/lib/smtp2oauth`; on Windows `%ProgramData%\smtp2oauth`.
    pub dir: PathBuf,
    /// Make every accepted message durable (fsync) before answering 250. Turning this off
    /// risks losing accepted mail on a crash or power cut; it exists to measure what
    /// durability costs, not for production.
    pub fsync: bool,
    /// New mail is refused with 452 4.3.1 while less than this many bytes are free on the
    /// store's filesystem (on top of the size a device announces with MAIL SIZE=).
    pub min_free_space: u64,
    /// File holding the 64-hex-character master key that encrypts stored sign-ins (refresh
    /// tokens). `SMTP2OAUTH_MASTER_KEY` takes precedence; without either, the key is generated
    /// on first start into `<dir>/master.key` (mode 0600).
    pub master_key_file: Option<PathBuf>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            dir: default_store_dir(),
            fsync: true,
            min_free_space: 1024 * 1024,
            master_key_file: None,
        }
    }
}

/// Where the store is when `[store] dir` is not set: the system's place for a service's state.
pub fn default_store_dir() -> PathBuf {
    if cfg!(windows) {
        program_data().join("smtp2oauth")
    } else {
        PathBuf::from("/var/lib/smtp2oauth")
    }
}

/// Windows' folder for machine-wide application data (`%ProgramData%`, normally
/// `C:\ProgramData`).
pub fn program_data() -> PathBuf {
    std::env::var_os("ProgramData")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from)
}

/// `[admin]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin HTTP server (health, metrics, accounts page, OAuth callback).
    /// Empty string disables it.
    pub listen: String,
    /// argon2id hash (from `smtp2oauth hash-password`) of the password the accounts page asks
    /// for. Unset: the page is open to whoever can reach `listen`.
    pub password_hash: Option<Secret>,
    /// How many message outcomes the console keeps for its recent-messages log and API.
    pub recent_messages: usize,
    /// Host names (or addresses) the admin server may be reached by besides loopback and the
    /// `listen` address, e.g. `relay.contoso.lan`. A request naming another `Host` gets 421:
    /// that stops DNS-rebinding pages from reading or driving the console.
    pub allowed_hosts: Vec<String>,
    /// Ask for the admin password on `/metrics` too (Prometheus then needs `basic_auth`).
    pub metrics_auth: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: "127.0.0.1:8025".into(),
            password_hash: None,
            recent_messages: 1000,
            allowed_hosts: Vec::new(),
            metrics_auth: false,
        }
    }
}

/// `[notify]`: who hears about problems, and how often.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notify {
    /// An HTTP(S) URL that gets a POST for each event (a problem appears, is still there after
    /// `repeat_interval`, clears; a message fails for good). Often carries a secret: never logged.
    pub webhook_url: Option<Secret>,
    /// The receiver's format.
    pub webhook_format: WebhookFormat,
    /// The account that carries failure notices and alert e-mails. Unset: the account the
    /// notice is about while it works, otherwise any healthy account.
    pub notify_account: Option<String>,
    /// Addresses that get alert e-mails (a problem appears, reminders, clears). Unset: the
    /// `bounce_to` addresses of the accounts.
    pub email_to: Option<Vec<String>>,
    /// A queued message older than this is a problem.
    #[serde(with = "duration")]
    pub alert_queue_age: Duration,
    /// While a problem lasts, it is reported again after this long (0: never again).
    #[serde(with = "duration")]
    pub repeat_interval: Duration,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            webhook_url: None,
            webhook_format: WebhookFormat::Json,
            notify_account: None,
            email_to: None,
            alert_queue_age: Duration::from_secs(3600),
            repeat_interval: Duration::from_secs(6 * 3600),
        }
    }
}

/// `[notify] webhook_format`: what the webhook's receiver understands.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// smtp2oauth's own JSON event (docs/monitoring.md).
    #[default]
    Json,
    /// A Microsoft Teams workflow webhook (an Adaptive Card).
    Teams,
    /// A Slack incoming webhook.
    Slack,
    /// An ntfy topic URL.
    Ntfy,
}

impl WebhookFormat {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Teams => "teams",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Ntfy => "ntfy",
        }
    }
}

/// `[delivery]`: the queue, retries, and how we talk to upstreams.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Keep accepted messages in the durable queue and retry them until they are delivered,
    /// refused for good, or expire. `false`: the device's reply is the upstream's verdict and a
    /// temporary failure gives the device a 4xx (nothing is kept).
    pub queue: bool,
    /// After spooling, how long the device waits for the first delivery attempt: it then gets
    /// the upstream's verdict (250, or a permanent refusal with its text). If the attempt takes
    /// longer or fails temporarily, the device gets 250 and the queue takes over. 0 = pure queue.
    #[serde(with = "duration")]
    pub wait_for_upstream: Duration,
    /// First retry delay; it doubles with every attempt (with jitter) up to `retry_max`.
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    /// The longest wait between two attempts (the backoff doubles up to it).
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// A message still undelivered after this long is given up and reported.
    #[serde(with = "duration")]
    pub max_queue_lifetime: Duration,
    /// Where failure notices go (an admin address). Unset: failures are kept in `failed/` and
    /// logged, and no notice is sent. Accounts can override it.
    pub bounce_to: Option<String>,
    /// Concurrent upstream connections per account (Exchange allows 3 per mailbox).
    pub max_upstream_connections: usize,
    /// How long an authenticated upstream SMTP session is kept open after a delivery, for the
    /// next message. 0: a new session for every message.
    #[serde(with = "duration")]
    pub upstream_idle_timeout: Duration,
    /// On SIGTERM, how long deliveries in progress may take to finish.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Name we give in EHLO upstream. Default: `[server] hostname`.
    pub helo_name: Option<String>,
    /// Longest wait for a TCP connection to the upstream.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for any one upstream reply, except the reply to the message body.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Longest wait for the upstream's reply after the whole message body was sent.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Timeout of one HTTP request to a token endpoint.
    #[serde(with = "duration")]
    pub http_timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            queue: true,
            wait_for_upstream: Duration::from_secs(20),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            bounce_to: None,
            max_upstream_connections: 3,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            helo_name: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(600),
            http_timeout: Duration::from_secs(30),
        }
    }
}

/// How an account's mail leaves the relay (`route`, `fallback_route`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// SMTP submission with an OAuth token (Exchange Online, Gmail, any XOAUTH2 server).
    Smtp,
    /// Microsoft Graph `sendMail` with an OAuth token.
    Graph,
    /// A smart host or the domain's MX hosts, without AUTH.
    Smarthost,
    /// Files in a directory, for trials and tests.
    Capture,
}

impl Route {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Smtp => "smtp",
            Route::Graph => "graph",
            Route::Smarthost => "smarthost",
            Route::Capture => "capture",
        }
    }
}

/// Whose identity platform issues the account's tokens (`provider`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft Entra ID (the default).
    Microsoft,
    /// Google (Gmail SMTP).
    Google,
    /// Any RFC 6749 token endpoint (`token_url` required).
    Generic,
}

/// The OAuth 2.0 flow an account gets its tokens with (`flow`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// The app's own permission; no person signs in (the default).
    ClientCredentials,
    /// A person signs in in a browser (authorization code with PKCE).
    AuthorizationCode,
    /// A person signs in on any device with a short code.
    DeviceCode,
}

impl Flow {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::ClientCredentials => "client_credentials",
            Flow::AuthorizationCode => "authorization_code",
            Flow::DeviceCode => "device_code",
        }
    }
}

/// TLS towards the upstream SMTP server (`smtp_tls`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain connection upgraded with STARTTLS (port 587; the default).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text: only for tests against local fakes; logged as a warning.
    None,
}

/// The SASL mechanism that presents the token to the upstream SMTP server (`route = "smtp"`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpAuth {
    /// `AUTH XOAUTH2`: Exchange Online (its only mechanism), Gmail, most OAuth mail servers.
    #[default]
    #[serde(alias = "XOAUTH2")]
    Xoauth2,
    /// `AUTH OAUTHBEARER` (RFC 7628): the standard mechanism; Gmail and servers that do not
    /// offer XOAUTH2.
    #[serde(alias = "OAUTHBEARER")]
    Oauthbearer,
}

impl SmtpAuth {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpAuth::Xoauth2 => "xoauth2",
            SmtpAuth::Oauthbearer => "oauthbearer",
        }
    }
}

/// STARTTLS towards a smart host (`route = "smarthost"`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS with a verified certificate, or no delivery.
    Required,
    /// STARTTLS (verified) when the host offers it; plain text when it does not.
    Opportunistic,
}

impl SmarthostTls {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SmarthostTls::Required => "required",
            SmarthostTls::Opportunistic => "opportunistic",
        }
    }
}

/// The largest message `route = "graph"` takes by default: Graph refuses request bodies over
/// about 4 MB, and the MIME travels base64-encoded (4 bytes for every 3), so 4 MiB of request
/// carries 3 MiB of message; 64 KiB of that is kept for the headers smtp2oauth adds (the
/// `Received:` header, a `Bcc:` header for envelope-only recipients).
pub const GRAPH_MAX_MESSAGE_SIZE: u64 = 3 * 1024 * 1024 - 64 * 1024;

/// What a Graph route does with a message too large for one `sendMail` request
/// (`graph_large_messages`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GraphLargeMessages {
    /// Send it through Graph anyway: a draft, its large attachments added one by one (upload
    /// sessions for the largest), then `send`. Needs the permission `Mail.ReadWrite`.
    Upload,
    /// Hand it to the account's `fallback_route`.
    Fallback,
    /// Refuse it with `552 5.3.4`; devices are told the limit in EHLO.
    Refuse,
}

impl GraphLargeMessages {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            GraphLargeMessages::Upload => "upload",
            GraphLargeMessages::Fallback => "fallback",
            GraphLargeMessages::Refuse => "refuse",
        }
    }
}

/// The largest message Exchange Online lets a mailbox send (its `MaxSendSize` can be raised to
/// 150 MB, no further).
pub const EXCHANGE_MAX_SEND_SIZE: u64 = 150 * 1024 * 1024;

/// Signature algorithm of the JWT client assertion with a certificate credential (`jwt_alg`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum JwtAlg {
    /// RSASSA-PSS with SHA-256 (the default).
    #[serde(alias = "ps256", alias = "Ps256")]
    PS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(alias = "rs256", alias = "Rs256")]
    RS256,
}

/// `[[accounts]]`: a mailbox we send as, and how we get its tokens and reach its upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Name that devices and the admin use for the account.
    pub name: String,
    /// The mailbox the account sends as.
    pub mailbox: String,
    /// How the account's mail leaves. Default `"smtp"`.
    #[serde(default = "default_route")]
    pub route: Route,
    /// Whose identity platform issues the tokens. Default `"microsoft"`.
    #[serde(default = "default_provider")]
    pub provider: Provider,
    /// Entra ID tenant (ID or domain), for Microsoft's endpoints.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The application (client) ID.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The app's client secret (or `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (Docker secrets and the like).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Certificate (PEM) whose key signs a client assertion (with `private_key_file`).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Private key (PEM, not encrypted) of `certificate_file`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Signature of the JWT client assertion with a certificate credential.
    #[serde(default = "default_jwt_alg")]
    pub jwt_alg: JwtAlg,
    /// The OAuth 2.0 flow. Default `"client_credentials"`.
    #[serde(default = "default_flow")]
    pub flow: Flow,
    /// Rewrite the envelope sender (and From:) of devices to `mailbox`.
    #[serde(default)]
    pub rewrite_sender: bool,
    /// Extra envelope senders this account may send as: exact addresses or patterns with `*`
    /// and `?` (case-insensitive), e.g. `"*@contoso.com"`.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Identity platform base URL. Default for microsoft: `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority: Option<String>,
    /// Token endpoint; default `{authority}/{tenant}/oauth2/v2.0/token`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Default for microsoft with client credentials: `https://outlook.office365.com/.default`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Upstream SMTP host. Default: the provider's (Exchange Online of the account's cloud, or Gmail).
    #[serde(default)]
    pub smtp_host: Option<String>,
    /// Upstream SMTP port. Default 587, or 465 with `smtp_tls = "implicit"`.
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// TLS towards the upstream SMTP server. Default `"starttls"`.
    #[serde(default)]
    pub smtp_tls: Option<UpstreamTls>,
    /// SASL mechanism for the upstream SMTP server. Default `"xoauth2"`.
    #[serde(default)]
    pub smtp_auth: Option<SmtpAuth>,
    /// Extra CA certificates (PEM) trusted for this account's upstream and token endpoint,
    /// in addition to the built-in web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `route = "graph"`: Microsoft Graph base URL. Default `https://graph.microsoft.com`
    /// (follows `authority` for sovereign clouds).
    #[serde(default)]
    pub graph_url: Option<String>,
    // --- routes beyond SMTP submission: Graph sendMail, MX smart host, fallback ---
    /// The route to try when `route` refuses a message for a reason this route may not share
    /// (SMTP AUTH disabled for the tenant, a message too large for Graph, a connector refusing
    /// our address). Must differ from `route`; `"capture"` is not a fallback.
    #[serde(default)]
    pub fallback_route: Option<Route>,
    /// Token scope for the fallback route. Default: that route's default scope.
    #[serde(default)]
    pub fallback_scope: Option<String>,
    /// What a Graph route does with a message too large for one request: `"upload"` (a draft
    /// and upload sessions), `"fallback"` (the `fallback_route`) or `"refuse"`. Default
    /// `"fallback"` for `route = "graph"` with a `fallback_route`, otherwise `"refuse"`.
    #[serde(default)]
    pub graph_large_messages: Option<GraphLargeMessages>,
    /// Largest message (bytes) this account's devices may send. Default: `[server]
    /// max_message_size`, or [`GRAPH_MAX_MESSAGE_SIZE`] for `route = "graph"` when
    /// `graph_large_messages` is `"refuse"`.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// For `route = "smarthost"`: a fixed host to deliver to (`mx_domain` is the alternative).
    #[serde(default)]
    pub smarthost_host: Option<String>,
    /// Port of the smart host, or of every MX host of `mx_domain`. Default 25.
    #[serde(default)]
    pub smarthost_port: Option<u16>,
    /// For `route = "smarthost"`: deliver to the MX hosts of this domain, in preference order.
    #[serde(default)]
    pub mx_domain: Option<String>,
    /// DNS servers (`ip` or `ip:port`) used to resolve `mx_domain` and smart-host names.
    /// Default: the system's resolver configuration (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// STARTTLS towards the smart host. Default `"required"`.
    #[serde(default)]
    pub smarthost_tls: Option<SmarthostTls>,
    /// TLS client certificate chain (PEM) presented to the smart host, for certificate-based
    /// connectors. Goes with `tls_client_key_file`.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Private key (PEM, not encrypted) of `tls_client_cert_file`.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// For `route = "capture"`: where messages are written. Default `<store dir>/capture`.
    #[serde(default)]
    pub capture_dir: Option<PathBuf>,
    /// Overrides `[delivery] bounce_to` for this account.
    #[serde(default)]
    pub bounce_to: Option<String>,
    /// Overrides `[delivery] max_upstream_connections` for this account.
    #[serde(default)]
    pub max_upstream_connections: Option<usize>,
    /// Delivery attempts started per minute for this account (0: no pacing). Default 30 for
    /// Microsoft accounts on the SMTP and Graph routes (Exchange Online's sending limit per
    /// mailbox), off otherwise.
    #[serde(default)]
    pub max_messages_per_minute: Option<u32>,
    // Delegated sign-in (flow = "authorization_code" | "device_code").
    /// Where the provider sends the browser back after sign-in; must be registered with the
    /// app exactly. Default `http://localhost:8025/oauth/callback` (the accounts page).
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Authorization endpoint; default `{authority}/{tenant}/oauth2/v2.0/authorize`.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Device-authorization endpoint; default `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    #[serde(default)]
    pub device_code_url: Option<String>,
}

/// The redirect URI delegated accounts use unless they set one: the accounts page's callback
/// on the default admin address, reachable from the admin's browser through an SSH tunnel.
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost:8025/oauth/callback";

fn default_route() -> Route {
    Route::Smtp
}
fn default_provider() -> Provider {
    Provider::Microsoft
}
fn default_flow() -> Flow {
    Flow::ClientCredentials
}
fn default_jwt_alg() -> JwtAlg {
    JwtAlg::PS256
}

impl Account {
    pub(crate) fn authority(&self) -> String {
        self.authority
            .clone()
            .unwrap_or_else(|| "https://login.microsoftonline.com".into())
            .trim_end_matches('/')
            .to_string()
    }

    /// The token endpoint URL, from `token_url` or `{authority}/{tenant}/oauth2/v2.0/token`.
    pub(crate) fn token_url(&self) -> Option<String> {
        if let Some(u) = &self.token_url {
            return Some(u.clone());
        }
        match self.provider {
            Provider::Microsoft => {
                let tenant = self.tenant.as_deref()?;
                Some(format!("{}/{}/oauth2/v2.0/token", self.authority(), tenant))
            }
            Provider::Google => Some("https://oauth2.googleapis.com/token".into()),
            Provider::Generic => None,
        }
    }

    /// The Microsoft cloud the authority belongs to: (Exchange resource host, SMTP host).
    /// Sovereign clouds use their own hosts for both.
    fn microsoft_cloud(&self) -> (&'static str, &'static str) {
        let authority = self.authority();
        if authority.contains("login.microsoftonline.us") {
            ("outlook.office365.us", "smtp.office365.us")
        } else if authority.contains("login.partner.microsoftonline.cn")
            || authority.contains("login.chinacloudapi.cn")
        {
            ("partner.outlook.cn", "smtp.partner.outlook.cn")
        } else {
            ("outlook.office365.com", "smtp.office365.com")
        }
    }

    /// True for the flows where a person signs in (authorization code, device code).
    pub(crate) fn is_delegated(&self) -> bool {
        self.flow != Flow::ClientCredentials
    }

    pub(crate) fn redirect_uri(&self) -> String {
        self.redirect_uri
            .clone()
            .unwrap_or_else(|| DEFAULT_REDIRECT_URI.into())
    }

    /// The authorization endpoint, from `authorize_url` or the provider's.
    pub(crate) fn authorize_url(&self) -> Option<String> {
        if let Some(u) = &self.authorize_url {
            return Some(u.clone());
        }
        match self.provider {
            Provider::Microsoft => {
                let tenant = self.tenant.as_deref()?;
                Some(format!(
                    "{}/{}/oauth2/v2.0/authorize",
                    self.authority(),
                    tenant
                ))
            }
            Provider::Google => Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            Provider::Generic => None,
        }
    }

    /// The device-authorization endpoint, from `device_code_url` or the provider's.
    pub(crate) fn device_code_url(&self) -> Option<String> {
        if let Some(u) = &self.device_code_url {
            return Some(u.clone());
        }
        match self.provider {
            Provider::Microsoft => {
                let tenant = self.tenant.as_deref()?;
                Some(format!(
                    "{}/{}/oauth2/v2.0/devicecode",
                    self.authority(),
                    tenant
                ))
            }
            Provider::Google => Some("https://oauth2.googleapis.com/device/code".into()),
            Provider::Generic => None,
        }
    }

    pub(crate) fn smtp_host(&self) -> String {
        self.smtp_host
            .clone()
            .unwrap_or_else(|| match self.provider {
                Provider::Google => "smtp.gmail.com".into(),
                _ => self.microsoft_cloud().1.into(),
            })
    }

    /// The Microsoft Graph base URL (no trailing `/`): `graph_url`, or the Graph endpoint of the
    /// account's cloud (following `authority` for sovereign clouds).
    pub(crate) fn graph_url(&self) -> String {
        match &self.graph_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => self.graph_resource(),
        }
    }

    /// The Graph resource of the account's cloud, whatever `graph_url` says (a proxy or a test
    /// endpoint still needs tokens for the real resource).
    fn graph_resource(&self) -> String {
        let authority = self.authority();
        if authority.contains("login.microsoftonline.us") {
            "https://graph.microsoft.us".into()
        } else if authority.contains("login.partner.microsoftonline.cn")
            || authority.contains("login.chinacloudapi.cn")
        {
            "https://microsoftgraph.chinacloudapi.cn".into()
        } else {
            "https://graph.microsoft.com".into()
        }
    }

    /// The default token scope of a route for this account (`scope` and `fallback_scope`
    /// override it for the primary and the fallback route).
    pub(crate) fn default_scope_for(&self, route: Route) -> String {
        match route {
            // A draft is a write to the mailbox: uploading needs Mail.ReadWrite as well.
            Route::Graph
                if self.is_delegated()
                    && self.graph_large_messages() == GraphLargeMessages::Upload =>
            {
                let r = self.graph_resource();
                format!("{r}/Mail.Send {r}/Mail.ReadWrite offline_access")
            }
            Route::Graph if self.is_delegated() => {
                format!("{}/Mail.Send offline_access", self.graph_resource())
            }
            Route::Graph => format!("{}/.default", self.graph_resource()),
            _ => {
                let (resource, _) = self.microsoft_cloud();
                match (self.provider, self.flow) {
                    (Provider::Google, _) => "https://mail.google.com/".into(),
                    (_, Flow::ClientCredentials) => format!("https://{resource}/.default"),
                    // Delegated: the user's permission, plus offline_access for a refresh token.
                    _ if resource == "outlook.office365.com" => {
                        "https://outlook.office.com/SMTP.Send offline_access".into()
                    }
                    _ => format!("https://{resource}/SMTP.Send offline_access"),
                }
            }
        }
    }

    /// The token scope for `route` when it is this account's primary or fallback route.
    pub(crate) fn scope_for(&self, route: Route) -> String {
        let explicit = if route == self.route {
            self.scope.clone()
        } else {
            self.fallback_scope.clone()
        };
        explicit.unwrap_or_else(|| self.default_scope_for(route))
    }

    /// True when delivering through `route` needs an OAuth token.
    pub(crate) fn route_needs_token(route: Route) -> bool {
        matches!(route, Route::Smtp | Route::Graph)
    }

    /// Routes this account uses: its `route`, then its `fallback_route`.
    pub(crate) fn routes(&self) -> Vec<Route> {
        let mut v = vec![self.route];
        if let Some(f) = self.fallback_route
            && f != self.route
        {
            v.push(f);
        }
        v
    }

    /// True when some route of this account needs an OAuth token (and so a credential).
    pub(crate) fn needs_token(&self) -> bool {
        self.routes().into_iter().any(Account::route_needs_token)
    }

    /// What the account's Graph route does with a message too large for one request:
    /// `graph_large_messages`, else `"fallback"` for `route = "graph"` with another route as
    /// `fallback_route`, else `"refuse"`.
    pub fn graph_large_messages(&self) -> GraphLargeMessages {
        let has_fallback = self
            .fallback_route
            .is_some_and(|f| !matches!(f, Route::Graph | Route::Capture));
        self.graph_large_messages
            .unwrap_or(if self.route == Route::Graph && has_fallback {
                GraphLargeMessages::Fallback
            } else {
                GraphLargeMessages::Refuse
            })
    }

    /// The largest message this account takes, given the server's limit: the smaller of
    /// `[server] max_message_size` and `max_message_size`; for `route = "graph"` with
    /// `graph_large_messages = "refuse"`, at most [`GRAPH_MAX_MESSAGE_SIZE`] unless set.
    pub fn message_size_limit(&self, server_max: u64) -> u64 {
        let route_default = if self.route == Route::Graph
            && self.graph_large_messages() == GraphLargeMessages::Refuse
        {
            GRAPH_MAX_MESSAGE_SIZE
        } else {
            server_max
        };
        self.max_message_size
            .unwrap_or(route_default)
            .min(server_max)
    }

    pub(crate) fn smarthost_port(&self) -> u16 {
        self.smarthost_port.unwrap_or(25)
    }

    pub(crate) fn smarthost_tls(&self) -> SmarthostTls {
        self.smarthost_tls.unwrap_or(SmarthostTls::Required)
    }

    /// The pacing limit in force: `max_messages_per_minute`, or the provider's default.
    pub(crate) fn messages_per_minute(&self) -> u32 {
        self.max_messages_per_minute
            .unwrap_or(match (self.provider, self.route) {
                (Provider::Microsoft, Route::Smtp | Route::Graph) => 30,
                _ => 0,
            })
    }

    pub(crate) fn smtp_tls(&self) -> UpstreamTls {
        self.smtp_tls.unwrap_or(UpstreamTls::Starttls)
    }

    pub(crate) fn smtp_auth(&self) -> SmtpAuth {
        self.smtp_auth.unwrap_or_default()
    }

    pub(crate) fn smtp_port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.smtp_tls() {
            UpstreamTls::Implicit => 465,
            _ => 587,
        })
    }
}

/// `[[devices]]`: who may send, and as which account.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Label for logs. Default: the username.
    #[serde(default)]
    pub name: Option<String>,
    /// The AUTH user name of a device with `auth = true`.
    #[serde(default)]
    pub username: Option<String>,
    /// An argon2id PHC string from `smtp2oauth hash-password`.
    #[serde(default)]
    pub password_hash: Option<Secret>,
    /// false: the device does not authenticate and is recognised by its address (`allow_ips`).
    #[serde(default = "default_true")]
    pub auth: bool,
    /// Addresses (CIDR) the device may connect from. For `auth = false` devices this is how
    /// they are recognised; for authenticating devices it is an extra restriction when set.
    #[serde(default, deserialize_with = "deserialize_nets")]
    pub allow_ips: Vec<IpNet>,
    /// The `[[accounts]]` entry the device sends as.
    pub account: String,
    /// Overrides the account's `allowed_senders` for this device when set.
    #[serde(default)]
    pub allowed_senders: Option<Vec<String>>,
    /// Overrides the account's `rewrite_sender` for this device when set.
    #[serde(default)]
    pub rewrite_sender: Option<bool>,
}

fn default_true() -> bool {
    true
}

impl Device {
    /// The device's name for logs: `name`, else the username.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.username.clone())
            .unwrap_or_else(|| "unnamed-device".into())
    }
}

/// Accepts CIDR networks and plain addresses (`192.168.1.50` means `/32`).
fn deserialize_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    raw.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!("`{s}` is not an IP address or CIDR network"))
                })
        })
        .collect()
}
