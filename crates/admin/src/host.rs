//! Which `Host` names the admin server answers to, and which `Origin`s may use it.
//!
//! Why: a web page on `rebind.attacker.example` whose name is made to resolve to the relay's
//! address is, for the browser, the same origin as the relay: it could read the console, its
//! CSRF token and a device code, and press its buttons. The browser still sends the attacker's
//! name in `Host`, so the server answers only to names it is reached by on purpose: loopback
//! names and addresses, the `listen` address, the address the request arrived on (an IP literal
//! cannot be rebound) and `[admin] allowed_hosts`. Anything else gets `421 Misdirected Request`.
//! A request that carries an `Origin` must come from one of those names too, and from the same
//! host it asks (a cross-site form or script is refused with 403).

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The addresses of one connection: who called, and which of our addresses they called.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the connection arrived on.
    pub local: SocketAddr,
}

impl ConnInfo {
    /// The connection's addresses, as the server put them on the request (tests put them there
    /// with axum's `MockConnectInfo`, which the server's own layer overrides).
    pub fn of(extensions: &axum::http::Extensions) -> Option<ConnInfo> {
        use axum::extract::connect_info::MockConnectInfo;
        extensions
            .get::<ConnectInfo<ConnInfo>>()
            .map(|c| c.0)
            .or_else(|| extensions.get::<MockConnectInfo<ConnInfo>>().map(|m| m.0))
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        let local = stream.io().local_addr().unwrap_or(peer);
        ConnInfo { peer, local }
    }
}

/// The names the server answers to.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    /// `[admin] allowed_hosts`, lower case, without a trailing dot.
    names: Vec<String>,
    /// `[admin] listen`'s address (unless it is the wildcard).
    listen: Option<IpAddr>,
}

impl AllowedHosts {
    /// The names from `[admin] allowed_hosts` and the `listen` address.
    pub fn new(names: &[String], listen: Option<SocketAddr>) -> AllowedHosts {
        AllowedHosts {
            names: names.iter().map(|n| normal(n)).collect(),
            listen: listen.map(|l| l.ip()).filter(|ip| !ip.is_unspecified()),
        }
    }

    /// True when `host` (a `Host` header value, with or without a port) may be served on a
    /// connection that arrived on `local`.
    pub fn allows(&self, host: &str, local: Option<IpAddr>) -> bool {
        let Some(name) = host_part(host) else {
            return false;
        };
        let name = normal(name);
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            let ip = ip.to_canonical();
            return ip.is_loopback()
                || Some(ip) == self.listen.map(|l| l.to_canonical())
                || Some(ip) == local.map(|l| l.to_canonical())
                || self.names.iter().any(|n| {
                    n.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok_and(|a| a.to_canonical() == ip)
                });
        }
        self.names.contains(&name)
    }
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host of `host[:port]` (`[v6]` kept in brackets); None when it is not one.
fn host_part(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.is_empty() || host.len() > 255 || host.chars().any(|c| c.is_control() || c == '/') {
        return None;
    }
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        return (rest.is_empty() || port_ok(rest)).then_some(&host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port_ok(&format!(":{port}")) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn port_ok(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `host[:port]` of an `Origin` value (`http://host:port`); None for `null` and anything else.
pub fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// Why a request is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Misdirected {
    /// The `Host` is not one the server answers to.
    Host,
    /// The `Origin` is another site.
    Origin,
}

/// Checks `Host` and `Origin` of a request that arrived on `local`.
pub fn check(
    allowed: &AllowedHosts,
    headers: &HeaderMap,
    local: Option<IpAddr>,
) -> Result<(), Misdirected> {
    let host = headers.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    // A request without `Host` (HTTP/1.0 tools such as health checks) is not a browser's.
    if let Some(h) = host
        && !allowed.allows(h, local)
    {
        return Err(Misdirected::Host);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if origin == "null" {
        // Chromium sends `null` for same-site form posts under `no-referrer`; the POST checks
        // decide on it with `Sec-Fetch-Site` (session.rs).
        return Ok(());
    }
    match (origin_host(origin), host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) && allowed.allows(o, local) => Ok(()),
        _ => Err(Misdirected::Origin),
    }
}

/// The middleware: 421 for a `Host` the server does not answer to, 403 for another site's
/// `Origin`.
pub async fn guard(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let local = ConnInfo::of(request.extensions()).map(|c| c.local.ip());
    match check(&allowed, request.headers(), local) {
        Ok(()) => next.run(request).await,
        Err(Misdirected::Host) => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .and_then(host_part)
                .unwrap_or("?")
                .chars()
                .take(100)
                .collect::<String>();
            tracing::warn!(host = %host, "admin server: request for a host name it does not answer to refused (421); add it to [admin] allowed_hosts if it is yours");
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "421 Misdirected Request: this console answers only to localhost, loopback addresses, its listen address and the names in [admin] allowed_hosts, not to {host}.\n"
                ),
            )
                .into_response()
        }
        Err(Misdirected::Origin) => (
            StatusCode::FORBIDDEN,
            "403 Forbidden: this request came from another site and was refused.\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts_reached_on_purpose() {
        let a = AllowedHosts::new(
            &["Relay.Contoso.LAN.".into(), "10.1.2.3".into()],
            Some("192.168.1.5:8025".parse().unwrap()),
        );
        let local: Option<IpAddr> = Some("192.168.7.7".parse().unwrap());
        for ok in [
            "localhost",
            "localhost:8025",
            "app.localhost:1",
            "127.0.0.1:8025",
            "127.9.9.9",
            "[::1]:8025",
            "192.168.1.5:8025",
            "192.168.7.7",
            "relay.contoso.lan:8025",
            "RELAY.contoso.lan",
            "10.1.2.3:80",
        ] {
            assert!(a.allows(ok, local), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:8025",
            "relay.contoso.lan.attacker.example",
            "localhost.attacker.example",
            "192.168.1.6",
            "",
            "relay.contoso.lan:80:80",
            "relay/x",
            "[::2]:8025",
        ] {
            assert!(!a.allows(bad, local), "{bad}");
        }
        // The wildcard listen address admits nothing by itself.
        let any = AllowedHosts::new(&[], Some("0.0.0.0:8025".parse().unwrap()));
        assert!(!any.allows("0.0.0.0", None));
    }

    #[test]
    fn origins_must_be_the_host_itself() {
        let a = AllowedHosts::new(&["relay.lan".into()], None);
        let ok = |h: Option<&str>, o: Option<&str>| check(&a, &headers(h, o), None);
        assert_eq!(ok(Some("relay.lan:8025"), None), Ok(()));
        assert_eq!(ok(None, None), Ok(()));
        assert_eq!(
            ok(Some("relay.lan:8025"), Some("http://relay.lan:8025")),
            Ok(())
        );
        assert_eq!(ok(Some("localhost:8025"), Some("null")), Ok(()));
        assert_eq!(
            ok(Some("evil.example"), None),
            Err(Misdirected::Host),
            "a rebound name"
        );
        assert_eq!(
            ok(Some("relay.lan:8025"), Some("http://evil.example")),
            Err(Misdirected::Origin)
        );
        assert_eq!(
            ok(Some("relay.lan:8025"), Some("http://localhost:8025")),
            Err(Misdirected::Origin),
            "another allowed name is still another origin"
        );
        assert_eq!(
            ok(Some("relay.lan:8025"), Some("file://")),
            Err(Misdirected::Origin)
        );
    }
}
