//! Accounts as validation leaves them: one type per way of delivering and of getting tokens,
//! each carrying only the keys that apply to it, with every default already filled in.
//!
//! The TOML schema keeps an account flat (`[[accounts]]` with some 36 optional keys), which is
//! what admins write; this is what the relay is built from. An [`AccountSpec`] exists only for an
//! account whose keys passed validation, so whoever builds routes and token sources from it has
//! nothing left to check and no default left to choose.

use crate::{
    Flow, GraphLargeMessages, JwtAlg, Provider, Route, Secret, SmarthostTls, SmtpAuth, UpstreamTls,
};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A validated `[[accounts]]` entry.
#[derive(Clone, Debug)]
pub struct AccountSpec {
    /// The account's name (`name`), as devices and the admin refer to it.
    pub name: String,
    /// The mailbox the account sends as (`mailbox`).
    pub mailbox: String,
    /// Where the account's mail goes (`route`).
    pub route: RouteSpec,
    /// Where mail goes that `route` refuses for a reason another route may not share
    /// (`fallback_route`); never the same kind as `route`, never capture.
    pub fallback: Option<RouteSpec>,
    /// How the account gets OAuth tokens; `None` when none of its routes needs one.
    pub oauth: Option<OAuth>,
    /// Extra CA certificates trusted for the upstream and the token endpoint (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Where failure notices go: the account's `bounce_to`, else `[delivery] bounce_to`.
    pub bounce_to: Option<String>,
    /// Concurrent upstream connections: `max_upstream_connections` or `[delivery]`'s.
    pub max_connections: usize,
    /// Delivery attempts started per minute (0: no pacing), the provider's default applied.
    pub messages_per_minute: u32,
    /// The largest message the account's devices may send, `[server] max_message_size` and
    /// the route's own limit applied.
    pub max_message_size: u64,
}

impl AccountSpec {
    /// The account's routes: `route`, then `fallback` when there is one.
    pub fn routes(&self) -> impl Iterator<Item = &RouteSpec> {
        std::iter::once(&self.route).chain(self.fallback.as_ref())
    }

    /// How a person signs in, if one does: `None` for the client-credentials flow and for an
    /// account that needs no token.
    pub fn delegated(&self) -> Option<&OAuth> {
        self.oauth.as_ref().filter(|o| o.flow.is_delegated())
    }

    /// The kind of flow the account gets its tokens with; `None` when it needs no token.
    pub fn flow(&self) -> Option<Flow> {
        self.oauth.as_ref().map(|o| o.flow.kind())
    }
}

/// One way of delivering an account's mail, with the keys that route uses.
#[derive(Clone, Debug)]
pub enum RouteSpec {
    /// SMTP submission with an OAuth token (`route = "smtp"`).
    Smtp(SmtpSpec),
    /// Microsoft Graph `sendMail` with an OAuth token (`route = "graph"`).
    Graph(GraphSpec),
    /// A smart host or the domain's MX hosts, without AUTH (`route = "smarthost"`).
    Smarthost(SmarthostSpec),
    /// Files in a directory, for tests and trials (`route = "capture"`).
    Capture {
        /// Where messages are written: `capture_dir`, else `<store dir>/capture`.
        dir: PathBuf,
    },
}

impl RouteSpec {
    /// The configuration value that names this route.
    pub fn kind(&self) -> Route {
        match self {
            RouteSpec::Smtp(_) => Route::Smtp,
            RouteSpec::Graph(_) => Route::Graph,
            RouteSpec::Smarthost(_) => Route::Smarthost,
            RouteSpec::Capture { .. } => Route::Capture,
        }
    }

    /// The token scope the route asks for; `None` for routes that need no token.
    pub fn scope(&self) -> Option<&str> {
        match self {
            RouteSpec::Smtp(s) => Some(&s.scope),
            RouteSpec::Graph(g) => Some(&g.scope),
            RouteSpec::Smarthost(_) | RouteSpec::Capture { .. } => None,
        }
    }
}

/// `route = "smtp"`: the upstream SMTP server and how we authenticate to it.
#[derive(Clone, Debug)]
pub struct SmtpSpec {
    /// Upstream host: `smtp_host`, else the provider's (Exchange Online of the account's cloud,
    /// or Gmail).
    pub host: String,
    /// Upstream port: `smtp_port`, else 465 for implicit TLS and 587 otherwise.
    pub port: u16,
    /// TLS towards the upstream (`smtp_tls`, default STARTTLS).
    pub tls: UpstreamTls,
    /// The SASL mechanism that carries the token (`smtp_auth`, default XOAUTH2).
    pub auth: SmtpAuth,
    /// The token scope for this route.
    pub scope: String,
}

/// `route = "graph"`: Microsoft Graph `sendMail`, and a draft for larger messages.
#[derive(Clone, Debug)]
pub struct GraphSpec {
    /// Graph base URL without a trailing `/`: `graph_url`, else the account's cloud's.
    pub url: String,
    /// The token scope for this route.
    pub scope: String,
    /// What the route does with a message too large for one `sendMail` request
    /// (`graph_large_messages`, its default applied). `Fallback` only when the route is the
    /// account's `route` and it has a `fallback_route`.
    pub large_messages: GraphLargeMessages,
    /// The largest message this route sends: with `Upload` the account's limit; otherwise
    /// `max_message_size`, else [`GRAPH_MAX_MESSAGE_SIZE`](crate::GRAPH_MAX_MESSAGE_SIZE), at
    /// most the server's limit.
    pub max_message_size: u64,
}

/// `route = "smarthost"`: delivery without AUTH to a fixed host or to a domain's MX hosts.
#[derive(Clone, Debug)]
pub struct SmarthostSpec {
    /// Where to connect.
    pub destination: Destination,
    /// Port of the host, or of every MX host (`smarthost_port`, default 25).
    pub port: u16,
    /// STARTTLS policy (`smarthost_tls`, default required).
    pub tls: SmarthostTls,
    /// The TLS client certificate presented to the host, for certificate-based connectors.
    pub client_cert: Option<CertificatePair>,
    /// DNS servers for MX and host lookups; empty means the system's resolver.
    pub dns_servers: Vec<SocketAddr>,
}

/// The host a smart-host route connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A fixed host (`smarthost_host`).
    Host(String),
    /// The MX hosts of a domain, in preference order (`mx_domain`).
    Mx(String),
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatePair {
    /// The certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM, not encrypted).
    pub key_file: PathBuf,
}

/// How an account gets OAuth tokens.
#[derive(Clone, Debug)]
pub struct OAuth {
    /// The identity provider, for defaults and for provider-specific requests.
    pub provider: Provider,
    /// The application (client) ID.
    pub client_id: String,
    /// The token endpoint: `token_url`, else the provider's (with the tenant for Microsoft).
    pub token_url: String,
    /// The OAuth 2.0 flow and what it needs.
    pub flow: FlowSpec,
}

/// An OAuth 2.0 flow with the keys that flow uses.
#[derive(Clone, Debug)]
pub enum FlowSpec {
    /// The app's own permission; no person signs in.
    ClientCredentials {
        /// The app's credential.
        credential: Credential,
    },
    /// A person signs in in a browser, which comes back to `redirect_uri`.
    AuthorizationCode {
        /// A confidential client's credential; `None` for a public client.
        credential: Option<Credential>,
        /// The authorization endpoint: `authorize_url`, else the provider's.
        authorize_url: String,
        /// Where the browser comes back (`redirect_uri`, default
        /// [`DEFAULT_REDIRECT_URI`](crate::DEFAULT_REDIRECT_URI)).
        redirect_uri: String,
    },
    /// A person signs in on any device with a short code.
    DeviceCode {
        /// A credential, for providers whose device flow takes one; `None` for a public client.
        credential: Option<Credential>,
        /// The device-authorization endpoint: `device_code_url`, else the provider's.
        device_code_url: String,
    },
}

impl FlowSpec {
    /// The configuration value that names this flow.
    pub fn kind(&self) -> Flow {
        match self {
            FlowSpec::ClientCredentials { .. } => Flow::ClientCredentials,
            FlowSpec::AuthorizationCode { .. } => Flow::AuthorizationCode,
            FlowSpec::DeviceCode { .. } => Flow::DeviceCode,
        }
    }

    /// True for the flows where a person signs in.
    pub fn is_delegated(&self) -> bool {
        !matches!(self, FlowSpec::ClientCredentials { .. })
    }

    /// The client credential, if the flow uses one.
    pub fn credential(&self) -> Option<&Credential> {
        match self {
            FlowSpec::ClientCredentials { credential } => Some(credential),
            FlowSpec::AuthorizationCode { credential, .. }
            | FlowSpec::DeviceCode { credential, .. } => credential.as_ref(),
        }
    }
}

/// How the app proves who it is to the token endpoint.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A client secret (`client_secret`, or read from `client_secret_file`).
    Secret(Secret),
    /// A certificate whose key signs a JWT client assertion.
    Certificate {
        /// `certificate_file` and `private_key_file`.
        pair: CertificatePair,
        /// The assertion's signature algorithm (`jwt_alg`).
        alg: JwtAlg,
    },
}
