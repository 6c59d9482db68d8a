//! Semantic checks that types cannot express: references between tables, required credentials,
//! files that must exist, limits that must make sense. Every problem names its key.
//!
//! Accounts are not only checked but turned into [`AccountSpec`]s (`account.rs`, with the
//! route keys in `route.rs` and the token keys in `oauth.rs`), so that what was checked is
//! what the relay is built from.

mod account;
mod oauth;
mod route;

use crate::{AccountSpec, Config, Listener, ListenerTls, Problem, TlsProfile};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

/// What validation found: the problems that stop the relay, the warnings worth logging, and
/// the accounts it could turn into specs.
#[derive(Debug, Default)]
pub struct Checked {
    /// Problems that stop the relay.
    pub problems: Vec<Problem>,
    /// Warnings worth logging.
    pub warnings: Vec<Problem>,
    /// One spec for each `[[accounts]]` entry without problems of its own, in file order (all
    /// of them when `problems` is empty).
    pub accounts: Vec<AccountSpec>,
}

/// Returns (problems that stop the relay, warnings worth logging).
pub fn validate(c: &Config) -> (Vec<Problem>, Vec<Problem>) {
    let checked = check(c);
    (checked.problems, checked.warnings)
}

/// Checks everything and turns the accounts into specs.
pub fn check(c: &Config) -> Checked {
    let mut p = Vec::new();
    let mut w = Vec::new();
    server(c, &mut p);
    listeners(c, &mut p, &mut w);
    let accounts = account::accounts(c, &mut p, &mut w);
    devices(c, &mut p, &mut w);
    store_and_admin(c, &mut p, &mut w);
    delivery(c, &mut p);
    notify(c, &mut p);
    Checked {
        problems: p,
        warnings: w,
        accounts,
    }
}

fn store_and_admin(c: &Config, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
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
        readable(f, "store.master_key_file", p);
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
    admin_hosts(c, p);
    if let Some(warning) = admin_exposure(
        &c.admin.listen,
        c.admin.password_hash.is_some(),
        running_in_container(),
    ) {
        w.push(Problem::new("admin.listen", warning));
    }
    if c.admin.metrics_auth && c.admin.password_hash.is_none() {
        p.push(Problem::new(
            "admin.metrics_auth",
            "needs admin.password_hash: the password /metrics would ask for",
        ));
    }
    if !c.store.fsync {
        w.push(Problem::new(
            "store.fsync",
            "is off: accepted mail can be lost on a crash or power cut (use only to measure)",
        ));
    }
}

/// Why an admin server on `listen` without a password is open to others, when it is: it
/// listens beyond loopback. In a container it must listen on every interface of the container
/// to be published at all, so the advice there is to publish the port on the host's loopback.
pub fn admin_exposure(listen: &str, has_password: bool, in_container: bool) -> Option<String> {
    let addr = listen.parse::<SocketAddr>().ok()?;
    if has_password || addr.ip().is_loopback() {
        return None;
    }
    let exposed = format!(
        "{listen} is reachable from the network and [admin] has no password_hash: anyone who can reach it can sign accounts in and out and retry or delete queued mail"
    );
    let port = addr.port();
    Some(if in_container {
        format!(
            "{exposed}; this is a container, so publish the port on the host's loopback only (`-p 127.0.0.1:{port}:{port}`, or `\"127.0.0.1:{port}:{port}\"` under `ports:` in Compose), or set password_hash (from `smtp2oauth hash-password`)"
        )
    } else {
        format!(
            "{exposed}; set password_hash (from `smtp2oauth hash-password`), or listen on 127.0.0.1:{port}"
        )
    })
}

/// True inside a Docker, Podman or systemd-nspawn container (they leave these marks).
fn running_in_container() -> bool {
    Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || std::env::var_os("container").is_some()
}

/// Each `[admin] allowed_hosts` entry is a host name or an IP address, as a browser puts it in
/// `Host` (without the port).
fn admin_hosts(c: &Config, p: &mut Vec<Problem>) {
    for (i, h) in c.admin.allowed_hosts.iter().enumerate() {
        if let Err(why) = host_name_problem(h) {
            p.push(Problem::new(
                format!("admin.allowed_hosts.{i}"),
                format!("`{h}` {why}"),
            ));
        }
    }
}

/// Why `h` is not a host name or an IP address.
fn host_name_problem(h: &str) -> Result<(), &'static str> {
    if h.contains("://") || h.contains('/') {
        return Err("must be only the host name, e.g. relay.contoso.lan (no scheme or path)");
    }
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if h.contains(':') {
        return Err("must be a host name without a port (any port is accepted)");
    }
    if h.is_empty() || h.len() > 253 || !h.trim_end_matches('.').split('.').all(dns_label_ok) {
        return Err("is not a host name (letters, digits, `-` and dots) or an IP address");
    }
    Ok(())
}

/// One label of a DNS name: letters, digits and `-`, not at either end, 1 to 63 bytes.
pub(crate) fn dns_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn notify(c: &Config, p: &mut Vec<Problem>) {
    let n = &c.notify;
    if let Some(url) = &n.webhook_url {
        let u = url.expose();
        let scheme_ok = u.starts_with("https://") || u.starts_with("http://");
        if !scheme_ok || u.contains(char::is_whitespace) {
            p.push(Problem::new(
                "notify.webhook_url",
                "must be an http:// or https:// URL (the receiver's webhook address)",
            ));
        }
    }
    if let Some(a) = &n.notify_account
        && !c.accounts.iter().any(|acc| &acc.name == a)
    {
        p.push(Problem::new(
            "notify.notify_account",
            format!("`{a}` is not the name of an [[accounts]] entry"),
        ));
    }
    for (i, to) in n.email_to.iter().flatten().enumerate() {
        if !valid_mailbox(to) {
            p.push(Problem::new(
                format!("notify.email_to.{i}"),
                format!("`{to}` is not an e-mail address"),
            ));
        }
    }
}

fn delivery(c: &Config, p: &mut Vec<Problem>) {
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
    for (key, d) in [
        ("delivery.connect_timeout", d.connect_timeout),
        ("delivery.command_timeout", d.command_timeout),
        ("delivery.data_timeout", d.data_timeout),
        ("delivery.http_timeout", d.http_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem::new(key, "must be longer than zero"));
        }
    }
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
    if s.max_unauthenticated_per_ip == 0 {
        p.push(Problem::new(
            "server.max_unauthenticated_per_ip",
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
        ("server.preauth_timeout", s.preauth_timeout),
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
        listener_tls(l, &key, p, w);
    }
    wildcard_overlaps(c, p);
    let needs_tls = c.listeners.iter().any(|l| l.tls != ListenerTls::None);
    certificate(c, needs_tls, p);
}

/// The TLS keys of one listener.
fn listener_tls(l: &Listener, key: &str, p: &mut Vec<Problem>, w: &mut Vec<Problem>) {
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

/// A wildcard address takes its port on every interface.
fn wildcard_overlaps(c: &Config, p: &mut Vec<Problem>) {
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
}

/// `[tls]`: the certificate of the TLS listeners.
fn certificate(c: &Config, needs_tls: bool, p: &mut Vec<Problem>) {
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
