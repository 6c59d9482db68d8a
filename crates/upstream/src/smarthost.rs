//! Delivery to a smart host without a mailbox: the tenant's MX through an inbound connector
//! that knows the office by its fixed IP address or its TLS client certificate.
//!
//! The destination is a fixed host, or the MX hosts of a domain tried in preference order
//! (RFC 5321 §5.1: lowest preference first, hosts of equal preference in a random order so
//! that load spreads as the domain intended, each host's addresses in turn; a domain without MX
//! records is its own mail host; a "null MX" (RFC 7505) accepts no mail). Each host gets EHLO,
//! STARTTLS with certificate verification (required, or opportunistic: only when offered), an
//! optional client certificate, and no AUTH. The envelope and the bytes go out unchanged,
//! through the same transaction code as the SMTP route.
//!
//! A host that cannot be reached, or fails before the mail transaction (greeting, EHLO, TLS),
//! makes us try the next one; once a host has answered MAIL, its verdict is the attempt's.
//! Opportunistic TLS never falls back to plain text after a failed handshake or an unverified
//! certificate: a host that offers TLS and then fails it is a fault to fix, not to hide.
//!
//! DNS goes through hickory-resolver (tokio, the system's resolv.conf unless `dns_servers` is
//! set), so lookups are asynchronous, time-limited and cached per TTL.

use crate::client::Client;
use crate::conversation::{Capabilities, Opening, Starttls, open, transaction};
use crate::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, Stage};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// Whether a smart host must offer STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    /// No TLS, no delivery.
    Required,
    /// TLS when offered, plain text otherwise.
    Opportunistic,
}

impl SmarthostTls {
    /// The setting's value in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SmarthostTls::Required => "required",
            SmarthostTls::Opportunistic => "opportunistic",
        }
    }
}

/// Where the smart host is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// This host.
    Host(String),
    /// The MX hosts of this domain.
    Mx(String),
}

/// What a smart host route needs to know.
#[derive(Clone)]
pub struct SmarthostRouteConfig {
    /// The account's name (for logs and errors).
    pub account: String,
    /// Where the smart host is.
    pub destination: Destination,
    /// Its port (25).
    pub port: u16,
    /// Whether it must offer STARTTLS.
    pub tls: SmarthostTls,
    /// Server verification (web PKI + `ca_file`) and the optional client certificate.
    pub tls_config: Arc<rustls::ClientConfig>,
    /// The name we give in EHLO.
    pub helo_name: String,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for each command's reply.
    pub command_timeout: Duration,
    /// Longest wait for the reply to the message body.
    pub data_timeout: Duration,
}

/// Delivery to a smart host or a domain's MX, without AUTH.
pub struct SmarthostRoute {
    cfg: SmarthostRouteConfig,
    resolver: TokioResolver,
}

/// A resolver using `servers` (`ip:port`), or the system's configuration when empty.
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            provider,
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    builder
        .build()
        .map_err(|e| format!("cannot set up DNS: {e}"))
}

/// One host to try, with the name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hop {
    name: String,
    addrs: Vec<IpAddr>,
}

impl SmarthostRoute {
    /// A route resolving names with `resolver`.
    pub fn new(cfg: SmarthostRouteConfig, resolver: TokioResolver) -> Self {
        SmarthostRoute { cfg, resolver }
    }

    fn dns_failure(&self, what: &str, e: impl std::fmt::Display) -> DeliveryError {
        DeliveryError::Dns {
            target: what.to_string(),
            detail: e.to_string(),
        }
    }

    /// The host names to try, best first.
    async fn mail_hosts(&self) -> Result<Vec<String>, DeliveryError> {
        let domain = match &self.cfg.destination {
            Destination::Host(h) => return Ok(vec![h.clone()]),
            Destination::Mx(d) => d,
        };
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((
                            m.preference,
                            m.exchange.to_utf8().trim_end_matches('.').to_string(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.is_empty() {
                    // RFC 7505 null MX: the domain accepts no mail at all.
                    return Err(DeliveryError::Rejected {
                        stage: Stage::Connect,
                        reply: Reply::with_status(
                            556,
                            (5, 1, 10),
                            format!("{domain} publishes a null MX: it accepts no mail"),
                        ),
                        cause: Cause::Account(AccountIssue::Connector),
                    });
                }
                let hosts = order_mx(mx);
                debug!(account = %self.cfg.account, domain = %domain, mx = ?hosts, "MX hosts");
                Ok(hosts)
            }
            // No MX records: the domain itself is the mail host (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Ok(vec![domain.clone()]),
            Err(e) => Err(self.dns_failure(&format!("MX of {domain}"), e)),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DeliveryError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) => Err(self.dns_failure(host, e)),
        }
    }

    /// Connects to one address and brings the session to the point where MAIL can be sent.
    async fn open(&self, name: &str, ip: IpAddr) -> Result<(Client, Capabilities), DeliveryError> {
        let c = &self.cfg;
        let addr = SocketAddr::new(ip, c.port);
        let target = if name == ip.to_string() {
            addr.to_string()
        } else {
            format!("{name}:{} ({ip})", c.port)
        };
        let mut client =
            Client::connect(target, addr, c.connect_timeout, c.command_timeout).await?;
        let starttls = match c.tls {
            SmarthostTls::Required => Starttls::Required {
                setting: "smarthost_tls = \"required\"",
            },
            SmarthostTls::Opportunistic => Starttls::Opportunistic,
        };
        let how = Opening {
            helo: &c.helo_name,
            starttls,
            tls: &c.tls_config,
            server_name: name,
            account: &c.account,
        };
        let caps = open(&mut client, &how).await?;
        Ok((client, caps))
    }

    async fn attempt(&self, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
        let hosts = self.mail_hosts().await?;
        let mut last: Option<DeliveryError> = None;
        for host in &hosts {
            let addrs = match self.addresses(host).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => continue,
                Err(e) => {
                    warn!(account = %self.cfg.account, host = %host, error = %e, "cannot resolve a mail host; trying the next");
                    last = Some(e);
                    continue;
                }
            };
            let hop = Hop {
                name: host.clone(),
                addrs,
            };
            for ip in &hop.addrs {
                let (client, caps) = match self.open(&hop.name, *ip).await {
                    Ok(x) => x,
                    // A permanent refusal before MAIL (a 5xx greeting) is this host's word on
                    // every message: stop here.
                    Err(e) if e.is_permanent() => return Err(e),
                    Err(e) => {
                        warn!(account = %self.cfg.account, host = %hop.name, address = %ip, error = %e, "smart host unusable; trying the next");
                        last = Some(e);
                        continue;
                    }
                };
                let result = self.send(client, &caps, msg).await;
                if let Err(e) = &result
                    && crate::smtp::lost_before_final_reply(e)
                {
                    // A connection dropped mid-transaction usually goes through on the next
                    // one: try once more now rather than at the next retry.
                    warn!(queue_id = %msg.id, account = %self.cfg.account, host = %hop.name, address = %ip, error = %e,
                        "the smart host's connection was lost before its final reply; trying once more on a new connection");
                    return self.send_again(&hop.name, *ip, msg).await;
                }
                return result;
            }
        }
        Err(last.unwrap_or_else(|| DeliveryError::Connect {
            target: self.target(),
            detail: "no address found for any mail host".into(),
        }))
    }
}

impl SmarthostRoute {
    /// One mail transaction on an open session, which is closed politely when it still
    /// speaks SMTP.
    async fn send(
        &self,
        mut client: Client,
        caps: &Capabilities,
        msg: &Message,
    ) -> Result<DeliveryReport, DeliveryError> {
        let result = transaction(&mut client, caps, msg, self.cfg.data_timeout).await;
        match &result {
            Ok(_) | Err(DeliveryError::Rejected { .. }) => client.quit().await,
            Err(_) => {}
        }
        result
    }

    /// The second and last try on a new connection to the same address.
    async fn send_again(
        &self,
        host: &str,
        ip: IpAddr,
        msg: &Message,
    ) -> Result<DeliveryReport, DeliveryError> {
        let (client, caps) = self.open(host, ip).await?;
        self.send(client, &caps, msg).await
    }
}

impl Route for SmarthostRoute {
    fn kind(&self) -> RouteKind {
        RouteKind::Smarthost
    }

    fn target(&self) -> String {
        let dest = match &self.cfg.destination {
            Destination::Host(h) => h.clone(),
            Destination::Mx(d) => format!("MX of {d}"),
        };
        format!(
            "{dest}:{} (STARTTLS {})",
            self.cfg.port,
            self.cfg.tls.as_str()
        )
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(self.attempt(message))
    }
}

/// MX hosts in the order to try them: lowest preference first and, as RFC 5321 §5.1 asks,
/// hosts of equal preference shuffled (a domain with two equal MX hosts wants its load shared,
/// and a relay that always tries the first would send it all to one). Empty names are dropped.
fn order_mx(mut mx: Vec<(u16, String)>) -> Vec<String> {
    use std::hash::BuildHasher;
    // A freshly keyed SipHash per lookup: a different order each time, no RNG dependency.
    let shuffle = std::collections::hash_map::RandomState::new();
    mx.sort_by_cached_key(|(preference, host)| (*preference, shuffle.hash_one(host)));
    mx.into_iter()
        .map(|(_, h)| h)
        .filter(|h| !h.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::order_mx;

    #[test]
    fn mx_hosts_go_by_preference_and_equal_ones_are_shuffled() {
        let records = || {
            vec![
                (20, "backup.contoso.com".to_string()),
                (10, "mx2.contoso.com".to_string()),
                (10, "mx1.contoso.com".to_string()),
                (30, String::new()),
            ]
        };
        let mut first = std::collections::HashSet::new();
        for _ in 0..64 {
            let hosts = order_mx(records());
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "backup.contoso.com");
            first.insert(hosts[0].clone());
        }
        // Both equal-preference hosts come first in some lookups (the chance that 64 lookups
        // all pick the same one is 2^-63).
        assert_eq!(first.len(), 2, "{first:?}");
    }
}
