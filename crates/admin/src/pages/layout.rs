//! The frame of every page, the login form, and small pieces the pages share.

use crate::session::Session;
use crate::time::local_ms;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use smtp2oauth_activity::ReplyInfo;

/// Which entry of the navigation is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Devices,
    Accounts,
    Queue,
    Messages,
    Docs,
    None,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Devices, "/devices", "Devices"),
    (Nav::Accounts, "/accounts", "Accounts"),
    (Nav::Queue, "/queue", "Queue"),
    (Nav::Messages, "/messages", "Messages"),
    (Nav::Docs, "/docs", "Docs"),
];

/// A line above the page's content: the outcome of what was just done.
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#1f2937;color:#fff;padding:.6em 2em;display:flex;gap:1.5em;align-items:center;flex-wrap:wrap}\
header a{color:#d1d5db;text-decoration:none}header a.here{color:#fff;font-weight:bold;border-bottom:2px solid #60a5fa}\
header .brand{font-weight:bold;color:#fff;margin-right:1em}header form{margin-left:auto}\
main{padding:1em 2em 3em;max-width:90em}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%;background:#fff}\
th,td{text-align:left;vertical-align:top;padding:.45em .6em;border-bottom:1px solid #e5e7eb;font-size:.93em}\
th{background:#f3f4f6;font-weight:600}\
.muted{color:#6b7280;font-size:.9em}.good{color:#17632d}.bad{color:#b00020;font-weight:bold}.warn{color:#92400e;font-weight:bold}\
.err{background:#fde8e8;padding:.8em;border-left:4px solid #b00020;margin:.6em 0}\
.ok{background:#e6f4ea;padding:.8em;border-left:4px solid #17632d;margin:.6em 0}\
.problem{background:#fff;border:1px solid #f5c2c7;border-left:6px solid #b00020;padding:.8em 1em;margin:.8em 0}\
.problem.warning{border-color:#fcd34d;border-left-color:#d97706}\
.problem .summary{font-weight:bold}.problem .advice{margin:.4em 0}\
.badge{display:inline-block;padding:.1em .5em;border-radius:.8em;font-size:.85em;font-weight:600}\
.b-ok,.b-delivered{background:#dcfce7;color:#166534}.b-degraded,.b-failed,.b-sign_in_needed,.b-unreachable,.b-refused{background:#fee2e2;color:#991b1b}\
.b-throttled,.b-deferred,.b-queued{background:#fef3c7;color:#92400e}\
.reply{font-family:ui-monospace,monospace;font-size:.88em;white-space:pre-wrap;word-break:break-word}\
.err-text{color:#b00020;font-size:.9em}.prompt td{background:#fff8e1}.note td{background:#eef3fb}\
.code{font-family:monospace;font-size:1.4em;letter-spacing:.1em}\
form.inline{display:inline}form.filter{margin:.6em 0;display:flex;gap:.6em;flex-wrap:wrap;align-items:end}\
form.filter label{font-size:.9em}\
button{padding:.35em .8em;margin:.1em 0}button.primary{background:#0b57d0;color:#fff;border:0;border-radius:4px}\
button.danger{background:#fff;color:#b00020;border:1px solid #b00020;border-radius:4px}\
dl.env{display:grid;grid-template-columns:10em 1fr;gap:.3em 1em}dl.env dt{font-weight:600}dl.env dd{margin:0}\
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #e5e7eb;padding:.8em 1.2em;min-width:10em}\
.card .n{font-size:1.6em;font-weight:bold}\
.doc h1,.doc h2,.doc h3{scroll-margin-top:1em}.doc pre{background:#f3f4f6;padding:.8em;overflow-x:auto}\
.doc code{font-family:ui-monospace,monospace}.doc table{width:auto}\
";

/// The frame of a page: navigation, the title and `body`. `refresh` reloads the page by itself
/// that many seconds later (no script needed).
pub fn layout(
    title: &str,
    nav: Nav,
    session: Option<&Session>,
    refresh: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · smtp2oauth" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span.brand { "smtp2oauth" }
                    @for (n, href, label) in NAV {
                        a href=(href) class=[(n == nav).then_some("here")] { (label) }
                    }
                    @if let Some(s) = session.filter(|s| s.authenticated) {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The notice above a page's content, if any.
pub fn notice(n: Option<&Notice>) -> Markup {
    html! {
        @if let Some(n) = n {
            p class=(if n.ok { "ok" } else { "err" }) role="status" { (n.text) }
        }
    }
}

/// The login form.
pub fn login(session: &Session, error: Option<&str>, next: &str) -> Markup {
    layout(
        "Log in",
        Nav::None,
        None,
        None,
        html! {
            @if let Some(e) = error { p.err { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="next" value=(next);
                label { "Password " input type="password" name="password" autocomplete="current-password" autofocus; }
                " "
                button.primary { "Log in" }
            }
        },
    )
}

/// A page with one message and a way back.
pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        Nav::None,
        None,
        None,
        html! {
            p.err { (text) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

/// `2026-12-06 12:10:31 +01:00 (18 s ago)`, or a dash.
pub fn when(ms: Option<u64>) -> Markup {
    html! {
        @match ms {
            Some(ms) => span title=(crate::time::rfc3339(ms)) { (local_ms(ms)) },
            None => span.muted { "—" },
        }
    }
}

/// A reply, whole, in monospace.
pub fn reply(r: Option<&ReplyInfo>) -> Markup {
    html! {
        @match r {
            Some(r) => span.reply { (r.to_string()) },
            None => span.muted { "—" },
        }
    }
}

/// A state or result name as a coloured badge, with its words.
pub fn badge(name: &str, words: &str) -> Markup {
    html! { span class={ "badge b-" (name) } { (words) } }
}

/// The hidden CSRF field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form that posts to `action`.
pub fn button(session: &Session, action: &str, label: &str, class: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(session))
            button class=[class] { (label) }
        }
    }
}

/// A byte count for people.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}
