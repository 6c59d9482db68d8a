//! `/`: what is wrong first, each problem with what to do, since when, and the doc section
//! that explains it; then the accounts' states, the queue and the latest messages at a glance.

use super::layout::{Nav, badge, layout, reply, when};
use super::{current_problems, page_session};
use crate::console::{Console, Peer};
use crate::model;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use smtp2oauth_activity::{Level, MessageFilter, Problem, now_ms};
use smtp2oauth_spool::Area;
use std::sync::Arc;

/// The overview reloads itself this often.
const REFRESH_SECONDS: u32 = 30;

pub async fn page(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let problems = current_problems(&c).await;
    let accounts = model::accounts(&c.state.accounts.accounts, &c.state.activity);
    let queue = queue_counts(&c).await;
    let recent = c.state.activity.messages(&MessageFilter {
        limit: Some(10),
        ..MessageFilter::default()
    });
    let devices_seen = c
        .state
        .activity
        .devices(now_ms())
        .iter()
        .filter(|d| d.last_24h.accepted + d.last_24h.refused > 0)
        .count();
    let body = html! {
        (problem_list(&problems))
        div.cards {
            div.card { div.n { (queue.0) } div.muted { "queued" } }
            div.card { div.n { (queue.1) } div.muted { "failed for good" } }
            div.card { div.n { (devices_seen) } div.muted { "devices sending in the last 24 h" } }
            div.card { div.n { (accounts.iter().filter(|a| a.state == "ok").count()) " / " (accounts.len()) } div.muted { "accounts working" } }
        }
        h2 { "Accounts" }
        (account_table(&accounts))
        h2 { "Latest messages" }
        (super::messages::table(&recent))
        p { a href="/messages" { "All recent messages" } " · " a href="/queue" { "Queue" } }
    };
    c.html(
        StatusCode::OK,
        cookie,
        layout(
            "Overview",
            Nav::Overview,
            Some(&session),
            Some(REFRESH_SECONDS),
            body,
        ),
    )
}

async fn queue_counts(c: &Console) -> (usize, usize) {
    let Some(spool) = &c.state.spool else {
        return (0, 0);
    };
    let n = |a| async move { spool.list(a).await.map(|l| l.len()).unwrap_or(0) };
    (n(Area::Queue).await, n(Area::Failed).await)
}

/// Every problem, errors first; or that there is none.
pub fn problem_list(problems: &[Problem]) -> Markup {
    html! {
        @if problems.is_empty() {
            p.ok { "No problems: every account works, nothing waits too long." }
        }
        @for p in problems {
            div class={ "problem" @if p.level == Level::Warning { " warning" } } {
                div.summary {
                    @if p.level == Level::Error { span.bad { "Error: " } } @else { span.warn { "Warning: " } }
                    (p.summary)
                }
                @if let Some(since) = p.since_ms { div.muted { "since " (when(Some(since))) } }
                div.advice { (p.advice) }
                a href={ "/docs/" (p.doc) } { "What this means and what to do" }
            }
        }
    }
}

fn account_table(accounts: &[model::Account]) -> Markup {
    html! {
        table {
            thead { tr { th { "Account" } th { "State" } th { "Since" } th { "Last delivery" } th { "Last failure" } } }
            tbody {
                @for a in accounts {
                    tr {
                        td { a href={ "/accounts#" (a.name) } { (a.name) } br; span.muted { (a.mailbox) " · " (a.route) } }
                        td { (badge(a.state, a.state_words)) }
                        td { (when(a.since.as_ref().map(|s| s.at_ms))) }
                        td { (when(a.last_delivery.as_ref().map(|h| h.at.at_ms))) }
                        td {
                            (when(a.last_failure.as_ref().map(|h| h.at.at_ms)))
                            @if let Some(f) = &a.last_failure { br; (reply(f.reply.as_ref())) }
                        }
                    }
                }
            }
        }
    }
}
