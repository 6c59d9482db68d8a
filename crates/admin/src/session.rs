//! Browser sessions of the accounts page: a random cookie, a CSRF token per session, and the
//! optional password.
//!
//! Why: the Sign in button starts something on the admin's behalf, and the OAuth callback must
//! only be accepted from the browser that started it. So every state-changing request is a POST
//! that carries the session's CSRF token (and is refused when the browser says it came from
//! another site), and every sign-in's `state` is bound to the session id. The cookie is
//! `HttpOnly` and `SameSite=Lax`: Lax, not Strict, because the provider's redirect back to the
//! callback is a cross-site top-level navigation that must carry it.

use crate::password::address_key;
use axum::http::HeaderMap;
use axum::http::header;
use smtp2oauth_tokens::Secret;
use smtp2oauth_tokens::pkce::random_token;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "smtp2oauth_session";
/// Sessions unused this long are forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Anonymous sessions kept at most (anyone who can reach the page can make one).
const MAX_ANONYMOUS: usize = 1000;
/// Anonymous sessions kept at most per address (IPv6: per /64): beyond it, the address's own
/// oldest one goes, so one visitor cannot push out everybody else's.
const MAX_ANONYMOUS_PER_ADDRESS: usize = 16;
/// Logged-in sessions, and sessions with a sign-in in progress, kept at most. Only a login or a
/// sign-in can push one of these out, never an anonymous visit.
const MAX_PROTECTED: usize = 128;

#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub authenticated: bool,
}

struct Entry {
    csrf: String,
    authenticated: bool,
    /// A sign-in started from this session and its callback has not come yet.
    signing_in: bool,
    address: IpAddr,
    last_seen: Instant,
}

impl Entry {
    fn protected(&self) -> bool {
        self.authenticated || self.signing_in
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session named by the request's cookie, if it is one we know.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.lock();
        let entry = map.get_mut(&id)?;
        if entry.last_seen.elapsed() > IDLE {
            map.remove(&id);
            return None;
        }
        entry.last_seen = Instant::now();
        Some(Session {
            csrf: entry.csrf.clone(),
            authenticated: entry.authenticated,
            id,
        })
    }

    /// The request's session, or a new one for `peer` (then `Some(set-cookie value)` is
    /// returned too).
    pub fn get_or_create(&self, headers: &HeaderMap, peer: IpAddr) -> (Session, Option<String>) {
        if let Some(s) = self.find(headers) {
            return (s, None);
        }
        let s = self.create(peer, false);
        let cookie = set_cookie(&s.id);
        (s, Some(cookie))
    }

    fn create(&self, peer: IpAddr, authenticated: bool) -> Session {
        let id = random_token(32);
        let csrf = random_token(32);
        let address = address_key(peer);
        let mut map = self.lock();
        map.retain(|_, e| e.last_seen.elapsed() <= IDLE);
        if authenticated {
            make_room(&mut map, MAX_PROTECTED, |e| e.protected());
        } else {
            make_room(&mut map, MAX_ANONYMOUS_PER_ADDRESS, |e| {
                !e.protected() && e.address == address
            });
            make_room(&mut map, MAX_ANONYMOUS, |e| !e.protected());
        }
        map.insert(
            id.clone(),
            Entry {
                csrf: csrf.clone(),
                authenticated,
                signing_in: false,
                address,
                last_seen: Instant::now(),
            },
        );
        Session {
            id,
            csrf,
            authenticated,
        }
    }

    /// A sign-in was started from `s`: keep the session until its callback, whatever
    /// anonymous visitors do meanwhile.
    pub fn signing_in(&self, s: &Session) {
        let mut map = self.lock();
        let protected = map.values().filter(|e| e.protected()).count();
        if protected >= MAX_PROTECTED {
            make_room(&mut map, MAX_PROTECTED, |e| {
                e.signing_in && !e.authenticated
            });
        }
        if let Some(e) = map.get_mut(&s.id) {
            e.signing_in = true;
        }
    }

    /// The sign-in started from `s` has come back (done or failed).
    pub fn signed_in(&self, s: &Session) {
        if let Some(e) = self.lock().get_mut(&s.id) {
            e.signing_in = false;
        }
    }

    /// After a correct password: a new session id (the old one may have been planted),
    /// authenticated. Returns the session and its cookie.
    pub fn log_in(&self, old: &Session, peer: IpAddr) -> (Session, String) {
        self.lock().remove(&old.id);
        let s = self.create(peer, true);
        let cookie = set_cookie(&s.id);
        (s, cookie)
    }

    pub fn log_out(&self, s: &Session) {
        self.lock().remove(&s.id);
    }

    /// How many sessions are kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes the least recently used entries among those `counted` until fewer than `max` of
/// them are left (room for one more).
fn make_room(map: &mut HashMap<String, Entry>, max: usize, counted: impl Fn(&Entry) -> bool) {
    let mut ours: Vec<(Instant, String)> = map
        .iter()
        .filter(|(_, e)| counted(e))
        .map(|(k, e)| (e.last_seen, k.clone()))
        .collect();
    if ours.len() < max {
        return;
    }
    ours.sort();
    let excess = ours.len() + 1 - max;
    for (_, k) in ours.into_iter().take(excess) {
        map.remove(&k);
    }
}

fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax")
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Why a POST is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NoSession,
    CrossSite,
    BadToken,
}

/// The CSRF checks for a state-changing request: a known session, the session's token in the
/// form, and no sign from the browser that the request came from another site.
pub fn check_post(
    sessions: &Sessions,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Refused> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return Err(Refused::CrossSite);
    }
    let same_origin_fetch = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("same-origin"));
    // Under `Referrer-Policy: no-referrer` (which these pages send) Chromium sends
    // `Origin: null` even for a same-site form POST, together with `Sec-Fetch-Site:
    // same-origin`. Only that pair is taken as same-site; `null` alone is refused.
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| !(*o == "null" && same_origin_fetch))
    {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(Refused::CrossSite);
        }
    }
    let session = sessions.find(headers).ok_or(Refused::NoSession)?;
    match csrf {
        Some(t) if Secret::from(t) == Secret::from(session.csrf.as_str()) => Ok(session),
        _ => Err(Refused::BadToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap(),
        );
        h.insert(header::HOST, HeaderValue::from_static("localhost:8025"));
        h
    }

    #[test]
    fn csrf_rules() {
        let sessions = Sessions::default();
        let (s, cookie) = sessions.get_or_create(&HeaderMap::new(), PEER);
        let cookie = cookie.unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let h = with_cookie(&s.id);
        assert_eq!(
            sessions.get_or_create(&h, PEER).1,
            None,
            "known session reused"
        );

        assert!(check_post(&sessions, &h, Some(&s.csrf)).is_ok());
        assert_eq!(
            check_post(&sessions, &h, Some("guess")).err(),
            Some(Refused::BadToken)
        );
        assert_eq!(
            check_post(&sessions, &h, None).err(),
            Some(Refused::BadToken)
        );
        assert_eq!(
            check_post(&sessions, &with_cookie("unknown"), Some(&s.csrf)).err(),
            Some(Refused::NoSession)
        );
        let mut cross = h.clone();
        cross.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(
            check_post(&sessions, &cross, Some(&s.csrf)).err(),
            Some(Refused::CrossSite)
        );
        let mut same = h.clone();
        same.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:8025"),
        );
        assert!(check_post(&sessions, &same, Some(&s.csrf)).is_ok());
        // Chromium's same-site POST under no-referrer: Origin null with Sec-Fetch-Site.
        let mut null_same = h.clone();
        null_same.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(
            check_post(&sessions, &null_same, Some(&s.csrf)).err(),
            Some(Refused::CrossSite),
            "Origin null alone is refused"
        );
        null_same.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_post(&sessions, &null_same, Some(&s.csrf)).is_ok());
        let mut null_cross = h.clone();
        null_cross.insert(header::ORIGIN, HeaderValue::from_static("null"));
        null_cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(
            check_post(&sessions, &null_cross, Some(&s.csrf)).err(),
            Some(Refused::CrossSite)
        );
        let mut fetch = h.clone();
        fetch.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(
            check_post(&sessions, &fetch, Some(&s.csrf)).err(),
            Some(Refused::CrossSite)
        );

        // Logging in replaces the session id.
        let (logged, _) = sessions.log_in(&s, PEER);
        assert!(logged.authenticated && logged.id != s.id);
        assert!(sessions.find(&h).is_none());
    }

    /// 1000 anonymous visits from one address, then from many, push out neither the admin's
    /// logged-in session nor a sign-in in progress, nor other addresses' anonymous sessions
    /// (for the one-address flood).
    #[test]
    fn anonymous_visitors_never_evict_a_login_or_a_sign_in() {
        let sessions = Sessions::default();
        let admin_ip: IpAddr = "192.0.2.50".parse().unwrap();
        let (anon, _) = sessions.get_or_create(&HeaderMap::new(), admin_ip);
        let (admin, _) = sessions.log_in(&anon, admin_ip);
        let (signer, _) = sessions.get_or_create(&HeaderMap::new(), admin_ip);
        sessions.signing_in(&signer);
        let (bystander, _) =
            sessions.get_or_create(&HeaderMap::new(), "192.0.2.60".parse().unwrap());
        for _ in 0..1000 {
            sessions.get_or_create(&HeaderMap::new(), PEER);
        }
        let alive = |s: &Session| sessions.find(&with_cookie(&s.id)).is_some();
        assert!(alive(&admin) && alive(&signer) && alive(&bystander));
        assert!(
            sessions.len() <= 3 + MAX_ANONYMOUS_PER_ADDRESS,
            "{}",
            sessions.len()
        );
        for i in 0..3000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            sessions.get_or_create(&HeaderMap::new(), ip);
        }
        assert!(alive(&admin) && alive(&signer));
        assert!(sessions.len() <= MAX_ANONYMOUS + 2, "{}", sessions.len());
        assert!(
            sessions
                .find(&with_cookie(&admin.id))
                .unwrap()
                .authenticated
        );
    }
}
