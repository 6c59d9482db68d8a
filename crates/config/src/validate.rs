//! Semantic checks that types cannot express: references between tables, required credentials,
//! files that must exist, limits that must make sense. Every problem names its key.

use crate::{
    Account, Config, Flow, ListenerTls, Problem, Provider, Route, SmtpAuth, TlsProfile, UpstreamTls,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

/// Returns (problems that stop the relay, warnings worth logging).
pub fn validate(c: &Config) -> (Vec<Problem>, Vec<Problem>) {
    let mut p = Vec::new();
    let mut w = Vec::new();

    server(c, &mut p);
    listeners(c, &mut p, &mut w);
    accounts(c, &mut p, &mut w);
    devices(c, &mut p, &mut w);

    if c.store.dir.as_os_str().is_empty() {
        p.push(Problem::new("store.dir", "must not be empty"));
    }
    if let Some(h) = &c.admin.password_hash
        && !h.expose().starts_with("$argon2")
    {
        p.push(Problem::new(
            "admin.password_hash",
            "must be an argon2 hash from `smtp2oauth hash-password` (a PHC string starting with $argon2id$)",
        ));
    }
    if let Some(f) = &c.store.master_key_file
        && c.accounts.iter().any(|a| a.is_delegated())
    {
        readable(f, "store.master_key_file", &mut p);
    }
    if !c.admin.listen.is_empty() && c.admin.listen.parse::<SocketAddr>().is_err() {
        p.push(Problem::new(
            "admin.listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:8025",
                c.admin.listen
            ),
        ));
    }
    let d = &c.delivery;
    if d.max_upstream_connections == 0 {
        p.push(Problem::new(
            "delivery.max_upstream_connections",
            "must be at least 1",
        ));
    }
    if d.retry_initial.is_zero() || d.retry_max < d.retry_initial {
        p.push(Problem::new(
            "delivery.retry_max",
            "retry_initial must be longer than zero and retry_max at least retry_initial",
        ));
    }
    if d.max_queue_lifetime.is_zero() {
        p.push(Problem::new(
            "delivery.max_queue_lifetime",
            "must be longer than zero",
        ));
    }
    if let Some(b) = &d.bounce_to
        && !valid_mailbox(b)
    {
        p.push(Problem::new(
            "delivery.bounce_to",
            format!("`{b}` is not a mail address"),
        ));
    }
    if !c.store.fsync {
        w.push(Problem::new(
            "store.fsync",
            "is off: accepted mail can be lost on a crash or power cut (use only to measure)",
        ));
    }
    for (key, d) in [
        ("delivery.connect_timeout", c.delivery.connect_timeout),
        ("delivery.command_timeout", c.delivery.command_timeout),
        ("delivery.data_timeout", c.delivery.data_timeout),
        ("delivery.http_timeout", c.delivery.http_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem::new(key, "must be longer than zero"));
        }
    }
    (p, w)
}

fn server(c: &Config, p: &mut Vec<Problem>) {
    let s = &c.server;
    if let Some(h) = &s.hostname
        && (h.is_empty() || h.contains(|ch: char| ch.is_whitespace() || ch.is_control()))
    {
        p.push(Problem::new(
            "server.hostname",
            "must be a host name without spaces",
        ));
    }
    if !(512..=65536).contains(&s.max_line_length) {
        p.push(Problem::new(
            "server.max_line_length",
            "must be between 512 (RFC 5321) and 65536",
        ));
    }
    if s.max_message_size < 1024 {
        p.push(Problem::new(
            "server.max_message_size",
            "must be at least 1024 bytes",
        ));
    }
    if s.max_recipients == 0 {
        p.push(Problem::new("server.max_recipients", "must be at least 1"));
    }
    if s.max_sessions == 0 {
        p.push(Problem::new("server.max_sessions", "must be at least 1"));
    }
    if s.max_sessions_per_ip == 0 {
        p.push(Problem::new(
            "server.max_sessions_per_ip",
            "must be at least 1",
        ));
    }
    if s.max_auth_failures == 0 {
        p.push(Problem::new(
            "server.max_auth_failures",
            "must be at least 1",
        ));
    }
    if s.max_errors == 0 {
        p.push(Problem::new("server.max_errors", "must be at least 1"));
    }
    for (key, d) in [
        ("server.command_timeout", s.command_timeout),
        ("server.data_timeout", s.data_timeout),
        ("server.session_timeout", s.session_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem::new(key, "must be longer than zero"));
        }
    }
}

fn listeners(c: &Config, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
    if c.listeners.is_empty() {
        p.push(Problem::new(
            "listeners",
            "at least one [[listeners]] entry is needed",
        ));
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut needs_tls = false;
    for (i, l) in c.listeners.iter().enumerate() {
        let key = format!("listeners.{i}");
        // Port 0 lets the system choose, so two such listeners never collide.
        if l.address.port() != 0 && !seen.insert(l.address) {
            p.push(Problem::new(
                format!("{key}.address"),
                format!("{} is used by another listener", l.address),
            ));
        }
        if let Some(n) = &l.name
            && !names.insert(n.as_str())
        {
            p.push(Problem::new(
                format!("{key}.name"),
                format!("listener name `{n}` is used twice"),
            ));
        }
        if l.tls != ListenerTls::None {
            needs_tls = true;
        }
        if l.tls == ListenerTls::None && l.require_tls {
            p.push(Problem::new(
                format!("{key}.require_tls"),
                "needs tls = \"starttls\" (a plain listener cannot require TLS)",
            ));
        }
        if l.allow_insecure_auth && l.tls != ListenerTls::Implicit {
            w.push(Problem::new(
                format!("{key}.allow_insecure_auth"),
                format!("AUTH is allowed without TLS on {}: passwords can be read on the network (allow_insecure_auth, for devices that cannot do TLS)", l.address),
            ));
        }
        if l.tls == ListenerTls::None && l.tls_profile != TlsProfile::Modern {
            p.push(Problem::new(
                format!("{key}.tls_profile"),
                "needs tls = \"starttls\" or \"implicit\" (a plain listener has no TLS to configure)",
            ));
        }
        if l.tls_profile == TlsProfile::Legacy {
            w.push(Problem::new(
                format!("{key}.tls_profile"),
                format!("{} accepts TLS 1.0 and 1.1 with old ciphers (tls_profile = \"legacy\"): use it only on a trusted network segment", l.address),
            ));
        }
        if let Some(ca) = &l.client_ca_file {
            if l.tls == ListenerTls::None {
                p.push(Problem::new(
                    format!("{key}.client_ca_file"),
                    "needs tls = \"starttls\" or \"implicit\" (client certificates are part of TLS)",
                ));
            }
            readable(ca, &format!("{key}.client_ca_file"), p);
        }
        if l.tls == ListenerTls::None && !l.allow_insecure_auth {
            w.push(Problem::new(
                key.to_string(),
                format!("{} has no TLS and allow_insecure_auth = false: only devices with auth = false can send through it", l.address),
            ));
        }
    }
    // A wildcard address takes its port on every interface.
    for (i, a) in c.listeners.iter().enumerate() {
        for b in &c.listeners[..i] {
            if a.address.port() != 0
                && a.address.port() == b.address.port()
                && a.address.ip() != b.address.ip()
                && (a.address.ip().is_unspecified() || b.address.ip().is_unspecified())
            {
                p.push(Problem::new(
                    format!("listeners.{i}.address"),
                    format!(
                        "{} overlaps {}: a wildcard address takes the port on every interface",
                        a.address, b.address
                    ),
                ));
            }
        }
    }
    let t = &c.tls;
    match (&t.cert_file, &t.key_file) {
        (Some(_), None) => p.push(Problem::new("tls.key_file", "is needed with tls.cert_file")),
        (None, Some(_)) => p.push(Problem::new("tls.cert_file", "is needed with tls.key_file")),
        (Some(cert), Some(key)) => {
            readable(cert, "tls.cert_file", p);
            readable(key, "tls.key_file", p);
        }
        (None, None) if needs_tls && !t.self_signed => p.push(Problem::new(
            "tls",
            "a listener uses TLS but there is no tls.cert_file/tls.key_file and tls.self_signed = false",
        )),
        (None, None) => {}
    }
}

fn readable(path: &Path, key: &str, p: &mut Vec<Problem>) {
    if let Err(e) = std::fs::File::open(path) {
        p.push(Problem::new(
            key,
            format!("cannot read {}: {e}", path.display()),
        ));
    }
}

fn valid_mailbox(m: &str) -> bool {
    let mut parts = m.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
        if !l.is_empty() && !d.is_empty() && !m.contains(|c: char| c.is_whitespace() || c == '<' || c == '>'))
}

fn valid_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > 8
        && !u.contains(char::is_whitespace)
}

fn accounts(c: &Config, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
    if c.accounts.is_empty() {
        p.push(Problem::new(
            "accounts",
            "at least one [[accounts]] entry is needed",
        ));
    }
    let mut names = HashSet::new();
    for (i, a) in c.accounts.iter().enumerate() {
        let key = format!("accounts.{i}");
        if a.name.is_empty()
            || !a
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            p.push(Problem::new(
                format!("{key}.name"),
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        if !names.insert(a.name.as_str()) {
            p.push(Problem::new(
                format!("{key}.name"),
                format!("account `{}` is defined twice", a.name),
            ));
        }
        if !valid_mailbox(&a.mailbox) {
            p.push(Problem::new(
                format!("{key}.mailbox"),
                format!("`{}` is not a mailbox address", a.mailbox),
            ));
        }
        for (j, pat) in a.allowed_senders.iter().enumerate() {
            if pat.trim().is_empty() {
                p.push(Problem::new(
                    format!("{key}.allowed_senders.{j}"),
                    "must not be empty",
                ));
            }
        }
        for (k, v) in [
            ("authority", &a.authority),
            ("token_url", &a.token_url),
            ("graph_url", &a.graph_url),
            ("authorize_url", &a.authorize_url),
            ("device_code_url", &a.device_code_url),
            ("redirect_uri", &a.redirect_uri),
        ] {
            if let Some(u) = v
                && !valid_url(u)
            {
                p.push(Problem::new(
                    format!("{key}.{k}"),
                    format!("`{u}` is not an http(s) URL"),
                ));
            }
        }
        if let Some(f) = &a.ca_file {
            readable(f, &format!("{key}.ca_file"), p);
        }
        if let Some(b) = &a.bounce_to
            && !valid_mailbox(b)
        {
            p.push(Problem::new(
                format!("{key}.bounce_to"),
                format!("`{b}` is not a mail address"),
            ));
        }
        if a.max_upstream_connections == Some(0) {
            p.push(Problem::new(
                format!("{key}.max_upstream_connections"),
                "must be at least 1",
            ));
        }
        routes(a, &key, p, w);
        if !a.needs_token() {
            continue;
        }
        if a.provider == Provider::Google && a.flow == Flow::ClientCredentials {
            p.push(Problem::new(
                format!("{key}.flow"),
                "Google does not offer the client-credentials flow for Gmail SMTP: use flow = \"authorization_code\" (a person signs in once)",
            ));
        }
        if a.is_delegated() {
            delegated(c, a, &key, p, w);
        }
        if a.provider == Provider::Google && a.routes().contains(&Route::Graph) {
            p.push(Problem::new(
                format!("{key}.provider"),
                "Google has no Graph route: use route = \"smtp\" (smtp.gmail.com)",
            ));
        }
        if a.client_id.as_deref().is_none_or(str::is_empty) {
            p.push(Problem::new(
                format!("{key}.client_id"),
                "is required (the Application (client) ID from Entra ID)",
            ));
        }
        if a.token_url.is_none()
            && a.provider == Provider::Microsoft
            && a.tenant.as_deref().is_none_or(str::is_empty)
        {
            p.push(Problem::new(
                format!("{key}.tenant"),
                "is required (tenant ID or domain, e.g. contoso.onmicrosoft.com), or set token_url",
            ));
        }
        if a.token_url.is_none() && a.provider == Provider::Generic {
            p.push(Problem::new(
                format!("{key}.token_url"),
                "is required with provider = \"generic\"",
            ));
        }
        let secret = a.client_secret.is_some() as u8 + a.client_secret_file.is_some() as u8;
        let cert = a.certificate_file.is_some() || a.private_key_file.is_some();
        match (secret, cert) {
            // Delegated flows may use a public client (no credential at all).
            (0, false) if a.is_delegated() => {}
            (0, false) => p.push(Problem::new(
                format!("{key}.client_secret"),
                "a credential is required: client_secret, client_secret_file, or certificate_file + private_key_file",
            )),
            (2, _) => p.push(Problem::new(format!("{key}.client_secret"), "set client_secret or client_secret_file, not both")),
            (1, true) => p.push(Problem::new(
                format!("{key}.certificate_file"),
                "set either a client secret or a certificate, not both",
            )),
            _ => {}
        }
        if let Some(f) = &a.client_secret_file
            && let Err(e) = a.client_secret()
        {
            let _ = f;
            p.push(Problem::new(format!("{key}.client_secret_file"), e));
        }
        if cert {
            match (&a.certificate_file, &a.private_key_file) {
                (Some(c), Some(k)) => {
                    readable(c, &format!("{key}.certificate_file"), p);
                    readable(k, &format!("{key}.private_key_file"), p);
                }
                (None, _) => p.push(Problem::new(
                    format!("{key}.certificate_file"),
                    "is needed with private_key_file",
                )),
                (_, None) => p.push(Problem::new(
                    format!("{key}.private_key_file"),
                    "is needed with certificate_file",
                )),
            }
        }
        if !a.routes().contains(&Route::Smtp) {
            continue;
        }
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
    }
}

/// Checks for accounts where a person signs in (authorization code or device code).
fn delegated(
    c: &Config,
    a: &crate::Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) {
    let credential =
        a.client_secret.is_some() || a.client_secret_file.is_some() || a.certificate_file.is_some();
    match a.flow {
        Flow::ClientCredentials => {}
        Flow::DeviceCode => {
            if a.provider == Provider::Google {
                p.push(Problem::new(
                    format!("{key}.flow"),
                    "Google's device flow does not allow the Gmail scope (https://mail.google.com/): use flow = \"authorization_code\"",
                ));
            }
            if a.provider == Provider::Microsoft && credential {
                p.push(Problem::new(
                    format!("{key}.client_secret"),
                    "flow = \"device_code\" signs in as a public client, and Microsoft refuses a client secret or certificate from one (AADSTS700025): remove it (and turn on \"Allow public client flows\" for the app)",
                ));
            }
            if a.device_code_url().is_none() {
                p.push(Problem::new(
                    format!("{key}.device_code_url"),
                    "is required for flow = \"device_code\" with provider = \"generic\"",
                ));
            }
        }
        Flow::AuthorizationCode => {
            if a.provider == Provider::Google && !credential {
                p.push(Problem::new(
                    format!("{key}.client_secret"),
                    "Google requires the OAuth client's secret: set client_secret or client_secret_file",
                ));
            }
            if a.authorize_url().is_none() {
                p.push(Problem::new(
                    format!("{key}.authorize_url"),
                    "is required for flow = \"authorization_code\" with provider = \"generic\"",
                ));
            }
            let uri = a.redirect_uri();
            let after_scheme = uri
                .strip_prefix("http://")
                .or_else(|| uri.strip_prefix("https://"));
            let (authority, path) = match after_scheme {
                Some(rest) => rest.split_at(rest.find('/').unwrap_or(rest.len())),
                None => ("", ""),
            };
            if authority.is_empty() || uri.contains(['#', '?', ' ']) {
                p.push(Problem::new(
                    format!("{key}.redirect_uri"),
                    format!("`{uri}` is not an http(s) URL without query or fragment, such as http://localhost:8025/oauth/callback"),
                ));
                return;
            }
            if path.is_empty() || path == "/" {
                p.push(Problem::new(
                    format!("{key}.redirect_uri"),
                    format!("`{uri}` needs a path for the callback, such as /oauth/callback"),
                ));
            }
            let host = authority
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(authority, |(host, _)| host);
            let local = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
            if uri.starts_with("http://") && !local && a.provider != Provider::Generic {
                w.push(Problem::new(
                    format!("{key}.redirect_uri"),
                    format!("`{uri}` uses http:// with a host other than localhost: Microsoft and Google accept plain http only for localhost; open the accounts page through an SSH tunnel to use http://localhost, or serve it over https"),
                ));
            }
            if c.admin.listen.is_empty() {
                w.push(Problem::new(
                    format!("{key}.flow"),
                    "[admin] listen is empty, so there is no accounts page to sign in from: use `smtp2oauth account login` on this machine",
                ));
            } else if local && let Ok(admin) = c.admin.listen.parse::<SocketAddr>() {
                let port = authority
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .unwrap_or(if uri.starts_with("https://") { 443 } else { 80 });
                if admin.port() != 0 && admin.port() != port {
                    w.push(Problem::new(
                        format!("{key}.redirect_uri"),
                        format!("`{uri}` points at port {port} but the accounts page listens on {}: the browser would come back where nothing answers (unless a proxy forwards it)", c.admin.listen),
                    ));
                }
            }
        }
    }
}

/// The keys of `route`, `fallback_route`, the Graph route and the smart-host route.
fn routes(a: &Account, key: &str, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
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
        if m < 1024 {
            p.push(Problem::new(
                format!("{key}.max_message_size"),
                "must be at least 1024 bytes",
            ));
        }
        // Graph refuses request bodies over ~4 MB: 3 MiB of MIME once base64-encoded.
        if a.route == Route::Graph
            && a.fallback_route.is_none_or(|f| f == Route::Capture)
            && m > 3 * 1024 * 1024
        {
            p.push(Problem::new(
                format!("{key}.max_message_size"),
                format!(
                    "{m} bytes cannot go through Microsoft Graph (about 3 MiB of message per request, default {}); set fallback_route = \"smtp\" to send larger mail over SMTP",
                    crate::GRAPH_MAX_MESSAGE_SIZE
                ),
            ));
        }
    }
    let routes = a.routes();
    if a.smtp_auth.is_some() && !routes.contains(&Route::Smtp) {
        w.push(Problem::new(
            format!("{key}.smtp_auth"),
            "only applies to route \"smtp\" (or fallback_route = \"smtp\") and is ignored",
        ));
    }
    let smarthost = routes.contains(&Route::Smarthost);
    if smarthost {
        match (&a.smarthost_host, &a.mx_domain) {
            (None, None) => p.push(Problem::new(
                format!("{key}.smarthost_host"),
                "route \"smarthost\" needs smarthost_host (a fixed host) or mx_domain (deliver to the domain's MX hosts)",
            )),
            (Some(_), Some(_)) => p.push(Problem::new(
                format!("{key}.mx_domain"),
                "set smarthost_host or mx_domain, not both",
            )),
            _ => {}
        }
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
        for (j, d) in a.dns_servers.iter().enumerate() {
            if parse_dns_server(d).is_none() {
                p.push(Problem::new(
                    format!("{key}.dns_servers.{j}"),
                    format!("`{d}` is not an IP address or IP:port, e.g. \"192.168.1.1\" or \"127.0.0.1:5353\""),
                ));
            }
        }
        match (&a.tls_client_cert_file, &a.tls_client_key_file) {
            (Some(c), Some(k)) => {
                readable(c, &format!("{key}.tls_client_cert_file"), p);
                readable(k, &format!("{key}.tls_client_key_file"), p);
            }
            (Some(_), None) => p.push(Problem::new(
                format!("{key}.tls_client_key_file"),
                "is needed with tls_client_cert_file",
            )),
            (None, Some(_)) => p.push(Problem::new(
                format!("{key}.tls_client_cert_file"),
                "is needed with tls_client_key_file",
            )),
            (None, None) => {}
        }
    } else {
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
}

/// A DNS server written as `ip` (port 53) or `ip:port` (`[v6]:port` for IPv6).
pub fn parse_dns_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

fn devices(c: &Config, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
    if c.devices.is_empty() {
        w.push(Problem::new(
            "devices",
            "no [[devices]] are configured: nothing can send through the relay",
        ));
    }
    let mut usernames = HashSet::new();
    for (i, d) in c.devices.iter().enumerate() {
        let key = format!("devices.{i}");
        if c.account(&d.account).is_none() {
            p.push(Problem::new(
                format!("{key}.account"),
                format!("no [[accounts]] entry is named `{}`", d.account),
            ));
        }
        if d.auth {
            match d.username.as_deref() {
                None | Some("") => p.push(Problem::new(
                    format!("{key}.username"),
                    "is required for a device with auth = true",
                )),
                Some(u) => {
                    if !usernames.insert(u.to_string()) {
                        p.push(Problem::new(
                            format!("{key}.username"),
                            format!("username `{u}` is used by another device"),
                        ));
                    }
                    if u.contains(['\0', '\r', '\n']) {
                        p.push(Problem::new(
                            format!("{key}.username"),
                            "must not contain control characters",
                        ));
                    }
                }
            }
            match &d.password_hash {
                None => p.push(Problem::new(
                    format!("{key}.password_hash"),
                    "is required for a device with auth = true (create one with `smtp2oauth hash-password`)",
                )),
                Some(h) if !h.expose().starts_with("$argon2") => p.push(Problem::new(
                    format!("{key}.password_hash"),
                    "must be an argon2 hash from `smtp2oauth hash-password` (a PHC string starting with $argon2id$)",
                )),
                Some(_) => {}
            }
        } else {
            if d.allow_ips.is_empty() {
                p.push(Problem::new(
                    format!("{key}.allow_ips"),
                    "a device with auth = false must list the addresses it connects from (CIDR), or anyone could relay",
                ));
            }
            if d.username.is_some() || d.password_hash.is_some() {
                w.push(Problem::new(
                    key.to_string(),
                    "auth = false: username and password_hash are ignored",
                ));
            }
        }
        if let Some(list) = &d.allowed_senders {
            for (j, pat) in list.iter().enumerate() {
                if pat.trim().is_empty() {
                    p.push(Problem::new(
                        format!("{key}.allowed_senders.{j}"),
                        "must not be empty",
                    ));
                }
            }
        }
    }
}
