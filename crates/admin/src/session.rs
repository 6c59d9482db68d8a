//! Browser sessions of the accounts page: a random cookie, a CSRF token per session, and the
//! optional password.
//!
//! Why: the Sign in button starts something on the admin's behalf, and the OAuth callback must
//! only be accepted from the browser that started it. So every state-changing request is a POST
//! that carries the session's CSRF token (and is refused when the browser says it came from
//! another site), and every sign-in's `state` is bound to the session id. The cookie is
//! `HttpOnly` and `SameSite=Lax`: Lax, not Strict, because the provider's redirect back to the
//! callback is a cross-site top-level navigation that must carry it.

use axum::http::HeaderMap;
use axum::http::header;
use smtp2oauth_tokens::Secret;
use smtp2oauth_tokens::pkce::random_token;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "smtp2oauth_session";
/// Sessions unused this long are forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (anyone who can reach the page can make one).
const MAX_SESSIONS: usize = 1000;

#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub authenticated: bool,
}

struct Entry {
    csrf: String,
    authenticated: bool,
    last_seen: Instant,
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

    /// The request's session, or a new one (then `Some(set-cookie value)` is returned too).
    pub fn get_or_create(&self, headers: &HeaderMap) -> (Session, Option<String>) {
        if let Some(s) = self.find(headers) {
            return (s, None);
        }
        let s = self.create(false);
        let cookie = set_cookie(&s.id);
        (s, Some(cookie))
    }

    fn create(&self, authenticated: bool) -> Session {
        let id = random_token(32);
        let csrf = random_token(32);
        let mut map = self.lock();
        map.retain(|_, e| e.last_seen.elapsed() <= IDLE);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            id.clone(),
            Entry {
                csrf: csrf.clone(),
                authenticated,
                last_seen: Instant::now(),
            },
        );
        Session {
            id,
            csrf,
            authenticated,
        }
    }

    /// After a correct password: a new session id (the old one may have been planted),
    /// authenticated. Returns the session and its cookie.
    pub fn log_in(&self, old: &Session) -> (Session, String) {
        self.lock().remove(&old.id);
        let s = self.create(true);
        let cookie = set_cookie(&s.id);
        (s, cookie)
    }

    pub fn log_out(&self, s: &Session) {
        self.lock().remove(&s.id);
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
        let (s, cookie) = sessions.get_or_create(&HeaderMap::new());
        let cookie = cookie.unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let h = with_cookie(&s.id);
        assert_eq!(sessions.get_or_create(&h).1, None, "known session reused");

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
        let (logged, _) = sessions.log_in(&s);
        assert!(logged.authenticated && logged.id != s.id);
        assert!(sessions.find(&h).is_none());
    }
}
