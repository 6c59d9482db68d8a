//! The route keys of an account: `route` with `fallback_route`, then the keys of each kind of
//! route, turned into that route's spec.

use super::{parse_dns_server, readable};
use crate::{
    Account, CertificatePair, Config, Destination, EXCHANGE_MAX_SEND_SIZE, GRAPH_MAX_MESSAGE_SIZE,
    GraphLargeMessages, GraphSpec, Problem, Provider, Route, RouteSpec, SmarthostSpec, SmtpAuth,
    SmtpSpec, UpstreamTls,
};

/// How `route`, `fallback_route` and the keys that depend on both fit together.
pub(super) fn combination(a: &Account, key: &str, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
    if let Some(f) = a.fallback_route {
        if f == a.route {
            p.push(Problem::new(
                format!("{key}.fallback_route"),
                format!(
                    "is the same as route (\"{}\"): a fallback must be another route",
                    f.as_str()
                ),
            ));
        } else if f == Route::Capture || a.route == Route::Capture {
            p.push(Problem::new(
                format!("{key}.fallback_route"),
                "route = \"capture\" neither has nor is a fallback (it takes every message)",
            ));
        }
    }
    if a.fallback_scope.is_some() && a.fallback_route.is_none() {
        w.push(Problem::new(
            format!("{key}.fallback_scope"),
            "is ignored without fallback_route",
        ));
    }
    if let Some(m) = a.max_message_size {
        max_message_size(a, m, key, p);
    }
    if a.smtp_auth.is_some() && !a.routes().contains(&Route::Smtp) {
        w.push(Problem::new(
            format!("{key}.smtp_auth"),
            "only applies to route \"smtp\" (or fallback_route = \"smtp\") and is ignored",
        ));
    }
}

fn max_message_size(a: &Account, m: u64, key: &str, p: &mut Vec<Problem>) {
    if m < 1024 {
        p.push(Problem::new(
            format!("{key}.max_message_size"),
            "must be at least 1024 bytes",
        ));
    }
    // Graph refuses request bodies over ~4 MB: 3 MiB of MIME once base64-encoded.
    if a.route == Route::Graph
        && a.graph_large_messages() == GraphLargeMessages::Refuse
        && m > 3 * 1024 * 1024
    {
        p.push(Problem::new(
            format!("{key}.max_message_size"),
            format!(
                "{m} bytes cannot go through one Microsoft Graph request (about 3 MiB of message, default {GRAPH_MAX_MESSAGE_SIZE}); set graph_large_messages = \"upload\" to send larger mail through a draft, or fallback_route = \"smtp\" to send it over SMTP"
            ),
        ));
    }
}

/// The keys of `route = "smarthost"`; `None` when a problem was found.
pub(super) fn smarthost(a: &Account, key: &str, p: &mut Vec<Problem>) -> Option<SmarthostSpec> {
    let before = p.len();
    let destination = match (&a.smarthost_host, &a.mx_domain) {
        (None, None) => {
            p.push(Problem::new(
                format!("{key}.smarthost_host"),
                "route \"smarthost\" needs smarthost_host (a fixed host) or mx_domain (deliver to the domain's MX hosts)",
            ));
            None
        }
        (Some(_), Some(_)) => {
            p.push(Problem::new(
                format!("{key}.mx_domain"),
                "set smarthost_host or mx_domain, not both",
            ));
            None
        }
        (Some(h), None) => Some(Destination::Host(h.clone())),
        (None, Some(d)) => Some(Destination::Mx(d.clone())),
    };
    for (k, v) in [
        ("smarthost_host", &a.smarthost_host),
        ("mx_domain", &a.mx_domain),
    ] {
        if let Some(h) = v
            && (h.trim().is_empty()
                || h.contains(|c: char| c.is_whitespace() || c == '/' || c == ':'))
        {
            p.push(Problem::new(
                format!("{key}.{k}"),
                format!("`{h}` is not a host or domain name"),
            ));
        }
    }
    if a.smarthost_port == Some(0) {
        p.push(Problem::new(
            format!("{key}.smarthost_port"),
            "must not be 0",
        ));
    }
    let dns_servers = dns_servers(a, key, p);
    let client_cert = client_cert(a, key, p);
    if p.len() > before {
        return None;
    }
    Some(SmarthostSpec {
        destination: destination?,
        port: a.smarthost_port(),
        tls: a.smarthost_tls(),
        client_cert,
        dns_servers,
    })
}

fn dns_servers(a: &Account, key: &str, p: &mut Vec<Problem>) -> Vec<std::net::SocketAddr> {
    let mut servers = Vec::new();
    for (j, d) in a.dns_servers.iter().enumerate() {
        match parse_dns_server(d) {
            Some(s) => servers.push(s),
            None => p.push(Problem::new(
                format!("{key}.dns_servers.{j}"),
                format!("`{d}` is not an IP address or IP:port, e.g. \"192.168.1.1\" or \"127.0.0.1:5353\""),
            )),
        }
    }
    servers
}

fn client_cert(a: &Account, key: &str, p: &mut Vec<Problem>) -> Option<CertificatePair> {
    match (&a.tls_client_cert_file, &a.tls_client_key_file) {
        (Some(c), Some(k)) => {
            readable(c, &format!("{key}.tls_client_cert_file"), p);
            readable(k, &format!("{key}.tls_client_key_file"), p);
            Some(CertificatePair {
                cert_file: c.clone(),
                key_file: k.clone(),
            })
        }
        (Some(_), None) => {
            p.push(Problem::new(
                format!("{key}.tls_client_key_file"),
                "is needed with tls_client_cert_file",
            ));
            None
        }
        (None, Some(_)) => {
            p.push(Problem::new(
                format!("{key}.tls_client_cert_file"),
                "is needed with tls_client_key_file",
            ));
            None
        }
        (None, None) => None,
    }
}

/// Smart-host keys on an account without a smart-host route are worth a warning.
pub(super) fn smarthost_keys_ignored(a: &Account, key: &str, w: &mut Vec<Problem>) {
    let set: Vec<&str> = [
        ("smarthost_host", a.smarthost_host.is_some()),
        ("smarthost_port", a.smarthost_port.is_some()),
        ("mx_domain", a.mx_domain.is_some()),
        ("dns_servers", !a.dns_servers.is_empty()),
        ("smarthost_tls", a.smarthost_tls.is_some()),
        ("tls_client_cert_file", a.tls_client_cert_file.is_some()),
        ("tls_client_key_file", a.tls_client_key_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if !set.is_empty() {
        w.push(Problem::new(
            key.to_string(),
            format!(
                "{} only apply to route \"smarthost\" and are ignored",
                set.join(", ")
            ),
        ));
    }
}

/// The keys of `route = "smtp"`; `None` when a problem was found.
pub(super) fn smtp(
    a: &Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) -> Option<SmtpSpec> {
    let before = p.len();
    if a.smtp_tls() == UpstreamTls::None {
        w.push(Problem::new(
            format!("{key}.smtp_tls"),
            "\"none\" sends tokens and mail in clear text; use it only against a local test server",
        ));
    }
    if let Some(h) = &a.smtp_host
        && (h.is_empty() || h.contains(char::is_whitespace))
    {
        p.push(Problem::new(
            format!("{key}.smtp_host"),
            "must be a host name",
        ));
    }
    if a.smtp_port == Some(0) {
        p.push(Problem::new(format!("{key}.smtp_port"), "must not be 0"));
    }
    // Without smtp_host, microsoft and generic accounts go to Exchange Online, which offers
    // only XOAUTH2: every message would be refused at AUTH (504) and bounce.
    if a.smtp_auth() == SmtpAuth::Oauthbearer
        && a.smtp_host.is_none()
        && a.provider != Provider::Google
    {
        p.push(Problem::new(
            format!("{key}.smtp_auth"),
            format!(
                "\"oauthbearer\" with the default smtp_host {} (Exchange Online), which offers only AUTH XOAUTH2: remove smtp_auth, or set smtp_host to the server that offers OAUTHBEARER",
                a.smtp_host()
            ),
        ));
    }
    (p.len() == before).then(|| SmtpSpec {
        host: a.smtp_host(),
        port: a.smtp_port(),
        tls: a.smtp_tls(),
        auth: a.smtp_auth(),
        scope: a.scope_for(Route::Smtp),
    })
}

/// `route = "graph"` (or `fallback_route = "graph"`); `graph_large_messages` is checked in
/// [`large_messages`].
pub(super) fn graph(c: &Config, a: &Account) -> RouteSpec {
    let large_messages = a.graph_large_messages();
    let max_message_size = match large_messages {
        GraphLargeMessages::Upload => a.message_size_limit(c.server.max_message_size),
        _ => a
            .max_message_size
            .unwrap_or(GRAPH_MAX_MESSAGE_SIZE)
            .min(c.server.max_message_size),
    };
    RouteSpec::Graph(GraphSpec {
        url: a.graph_url(),
        scope: a.scope_for(Route::Graph),
        large_messages,
        max_message_size,
    })
}

/// `graph_large_messages`: where it applies, what `"fallback"` needs, and advice when large
/// messages would be refused without the admin having said so.
pub(super) fn large_messages(
    c: &Config,
    a: &Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) {
    let k = format!("{key}.graph_large_messages");
    if !a.routes().contains(&Route::Graph) {
        if a.graph_large_messages.is_some() {
            w.push(Problem::new(
                k,
                "only applies to route \"graph\" (or fallback_route = \"graph\") and is ignored",
            ));
        }
        return;
    }
    match (a.graph_large_messages, a.graph_large_messages()) {
        (_, GraphLargeMessages::Fallback) if a.route != Route::Graph => p.push(Problem::new(
            k,
            "\"fallback\" needs route = \"graph\"; here Graph is the fallback route itself: use \"upload\" or \"refuse\"",
        )),
        (_, GraphLargeMessages::Fallback) if a.fallback_route.is_none() => p.push(Problem::new(
            k,
            "\"fallback\" needs a fallback_route to hand large messages to (e.g. fallback_route = \"smtp\"), or use \"upload\"",
        )),
        (None, GraphLargeMessages::Refuse) => {
            let when = if a.route == Route::Graph {
                ""
            } else {
                "when the Graph fallback is used, "
            };
            w.push(Problem::new(
                k,
                format!(
                    "is not set: {when}messages over {GRAPH_MAX_MESSAGE_SIZE} bytes (one Microsoft Graph request) are refused with 552 5.3.4; set graph_large_messages = \"upload\" to send them through a draft (needs the permission Mail.ReadWrite), or \"refuse\" to keep this"
                ),
            ))
        }
        (_, GraphLargeMessages::Upload)
            if a.message_size_limit(c.server.max_message_size) > EXCHANGE_MAX_SEND_SIZE =>
        {
            w.push(Problem::new(
                k,
                format!(
                    "\"upload\" with a size limit of {} bytes: Exchange Online refuses messages over {EXCHANGE_MAX_SEND_SIZE} bytes (150 MiB) whatever the mailbox's MaxSendSize",
                    a.message_size_limit(c.server.max_message_size)
                ),
            ))
        }
        _ => {}
    }
}
