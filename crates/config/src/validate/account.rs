//! One `[[accounts]]` entry: the keys every account has, then its routes and its tokens, and
//! from all of them the [`AccountSpec`] the relay is built from.

use super::{oauth, readable, route, valid_mailbox, valid_url};
use crate::{Account, AccountSpec, Config, Problem, Route, RouteSpec};
use std::collections::HashSet;

/// Checks every account; returns the specs of those without problems of their own.
pub(super) fn accounts(c: &Config, p: &mut Vec<Problem>, w: &mut Vec<Problem>) -> Vec<AccountSpec> {
    if c.accounts.is_empty() {
        p.push(Problem::new(
            "accounts",
            "at least one [[accounts]] entry is needed",
        ));
    }
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, a) in c.accounts.iter().enumerate() {
        let key = format!("accounts.{i}");
        let before = p.len();
        let duplicate = !names.insert(a.name.as_str());
        match account(c, a, &key, duplicate, p, w) {
            Some(spec) if p.len() == before => specs.push(spec),
            Some(_) => {}
            None if p.len() == before => p.push(Problem::new(
                key,
                "cannot be used (an unexpected combination of keys; please report this)",
            )),
            None => {}
        }
    }
    specs
}

/// Checks one account and builds its spec; `None` when a problem was found.
fn account(
    c: &Config,
    a: &Account,
    key: &str,
    duplicate: bool,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) -> Option<AccountSpec> {
    let before = p.len();
    common(a, key, duplicate, p);
    route::combination(a, key, p, w);
    route::large_messages(c, a, key, p, w);
    let routes = a.routes();
    let smarthost = if routes.contains(&Route::Smarthost) {
        route::smarthost(a, key, p)
    } else {
        route::smarthost_keys_ignored(a, key, w);
        None
    };
    let oauth = if a.needs_token() {
        oauth::oauth(c, a, key, p, w)
    } else {
        None
    };
    let smtp = if a.needs_token() && routes.contains(&Route::Smtp) {
        route::smtp(a, key, p, w)
    } else {
        None
    };
    if p.len() > before {
        return None;
    }
    let build = |kind: Route| match kind {
        Route::Smtp => smtp.clone().map(RouteSpec::Smtp),
        Route::Graph => Some(route::graph(c, a)),
        Route::Smarthost => smarthost.clone().map(RouteSpec::Smarthost),
        Route::Capture => Some(RouteSpec::Capture {
            dir: c.capture_dir(a),
        }),
    };
    let fallback = match a.fallback_route.filter(|f| *f != a.route) {
        Some(kind) => Some(build(kind)?),
        None => None,
    };
    Some(AccountSpec {
        name: a.name.clone(),
        mailbox: a.mailbox.clone(),
        route: build(a.route)?,
        fallback,
        oauth: if a.needs_token() { Some(oauth?) } else { None },
        ca_file: a.ca_file.clone(),
        bounce_to: a.bounce_to.clone().or_else(|| c.delivery.bounce_to.clone()),
        max_connections: a
            .max_upstream_connections
            .unwrap_or(c.delivery.max_upstream_connections),
        messages_per_minute: a.messages_per_minute(),
        max_message_size: a.message_size_limit(c.server.max_message_size),
    })
}

/// The keys every account has, whatever its route.
fn common(a: &Account, key: &str, duplicate: bool, p: &mut Vec<Problem>) {
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
    if duplicate {
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
    urls(a, key, p);
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
}

fn urls(a: &Account, key: &str, p: &mut Vec<Problem>) {
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
}
