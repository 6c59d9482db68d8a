//! The repository's documentation, served at `/docs/{page}` from the binary itself.
//!
//! The overview links each problem to the doc section that explains it. On a LAN without
//! Internet access (where many of these relays live) a link to a web site would not open, and
//! the docs of another version might say something else; so docs/*.md are embedded at build
//! time (`build.rs`), rendered to HTML with pulldown-cmark, and every heading gets the id GitHub
//! would give it, so `troubleshooting.md#account-degraded` works here and on GitHub alike.
//! Links between the docs are relative (`queue.md#retries`) and resolve under `/docs/` as
//! they do in the repository.

use crate::console::{Console, Peer};
use crate::pages::{Nav, layout, page_session};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{PreEscaped, html};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use std::collections::HashMap;
use std::sync::Arc;

include!(concat!(env!("OUT_DIR"), "/docs.rs"));

/// The markdown of `name` (e.g. `queue.md`).
pub fn source(name: &str) -> Option<&'static str> {
    PAGES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The id GitHub gives a heading: lower case, spaces to `-`, other punctuation dropped.
pub fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES
}

/// The markdown's events with an id on every heading (repeated headings get `-1`, `-2`, ...).
fn events(markdown: &str) -> Vec<Event<'_>> {
    let mut events: Vec<Event> = Parser::new_ext(markdown, options()).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..events.len() {
        let Event::Start(Tag::Heading { .. }) = &events[i] else {
            continue;
        };
        let mut text = String::new();
        for e in &events[i + 1..] {
            match e {
                Event::End(TagEnd::Heading(_)) => break,
                Event::Text(t) | Event::Code(t) => text.push_str(t),
                _ => {}
            }
        }
        let base = slug(&text);
        let n = seen.entry(base.clone()).or_insert(0);
        let id = if *n == 0 { base } else { format!("{base}-{n}") };
        *n += 1;
        if let Event::Start(Tag::Heading { id: slot, .. }) = &mut events[i] {
            *slot = Some(id.into());
        }
    }
    events
}

/// Every heading id of `name`, in order.
pub fn anchors(name: &str) -> Vec<String> {
    source(name)
        .map(|md| {
            events(md)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Start(Tag::Heading { id, .. }) => id.map(|i| i.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when `link` (`page.md` or `page.md#section`) names an embedded page and, with a
/// fragment, one of its headings.
pub fn resolves(link: &str) -> bool {
    let (page, fragment) = match link.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (link, None),
    };
    source(page).is_some() && fragment.is_none_or(|f| anchors(page).iter().any(|a| a == f))
}

/// `name` rendered to HTML.
pub fn render(name: &str) -> Option<String> {
    let md = source(name)?;
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events(md).into_iter());
    Some(out)
}

/// The page's title: its first heading, else its file name.
fn title(name: &str) -> String {
    let md = source(name).unwrap_or_default();
    md.lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(str::to_string)
        .unwrap_or_else(|| name.to_string())
}

/// `/docs`: the list of pages.
pub async fn index(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let body = html! {
        p { "The documentation of this version of smtp2oauth, served by the relay itself." }
        ul { @for (name, _) in PAGES { li { a href={ "/docs/" (name) } { (title(name)) } " " span.muted { (name) } } } }
    };
    c.html(
        StatusCode::OK,
        cookie,
        layout("Documentation", Nav::Docs, Some(&session), None, body),
    )
}

/// `/docs/{page}`: one page.
pub async fn page(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let Some(rendered) = render(&name) else {
        let body = html! { p.err { "No page " code { (name) } " in the documentation." } p { a href="/docs" { "All pages" } } };
        return c.html(
            StatusCode::NOT_FOUND,
            cookie,
            layout("Not found", Nav::Docs, Some(&session), None, body),
        );
    };
    let body = html! {
        p.muted { a href="/docs" { "All pages" } " · " (name) }
        div.doc { (PreEscaped(rendered)) }
    };
    c.html(
        StatusCode::OK,
        cookie,
        layout(&title(&name), Nav::Docs, Some(&session), None, body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_githubs_ids() {
        assert_eq!(slug("Account needs a sign-in"), "account-needs-a-sign-in");
        assert_eq!(
            slug("Replies from Microsoft Graph (route = \"graph\")"),
            "replies-from-microsoft-graph-route--graph"
        );
        assert_eq!(slug("`[admin]`"), "admin");
        let md = "# Title\n\n## Retries\n\ntext\n\n## Retries\n\n### `queue` command\n";
        let html = {
            let mut out = String::new();
            pulldown_cmark::html::push_html(&mut out, events(md).into_iter());
            out
        };
        assert!(html.contains("<h2 id=\"retries\">Retries</h2>"), "{html}");
        assert!(html.contains("<h2 id=\"retries-1\">"), "{html}");
        assert!(html.contains("<h3 id=\"queue-command\">"), "{html}");
    }

    #[test]
    fn every_doc_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".md") {
                assert!(source(&name).is_some(), "{name} is not embedded");
                assert!(render(&name).unwrap().contains("<h1"), "{name}");
            }
        }
        assert!(resolves("queue.md"));
        assert!(!resolves("queue.md#no-such-section"));
        assert!(!resolves("../README.md"));
    }
}
