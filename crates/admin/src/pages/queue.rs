//! `/queue`: the messages waiting (or failed for good), with a filter, each message's envelope
//! and history, and the Retry / Delete / Requeue buttons. The buttons file requests the relay
//! carries out exactly as it does those of `smtp2oauth queue` (see `crate::queue`), and the
//! page shows the relay's answer.

use super::layout::{Nav, Notice, badge, button, layout, notice, size, when};
use super::{CsrfForm, page_session};
use crate::console::{Caller, Console, Face, Peer};
use crate::session::Session;
use crate::{model, queue};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use smtp2oauth_spool::{Area, ControlAction, ControlTarget, MessageId, Spool};
use std::sync::Arc;

#[derive(Deserialize, Default)]
pub struct QueueQuery {
    area: Option<String>,
    account: Option<String>,
    q: Option<String>,
}

impl QueueQuery {
    fn area(&self) -> Area {
        match self.area.as_deref() {
            Some("failed") => Area::Failed,
            _ => Area::Queue,
        }
    }

    fn matches(&self, e: &model::QueueEntry) -> bool {
        let account = self.account.as_deref().filter(|a| !a.is_empty());
        let text = self
            .q
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase);
        account.is_none_or(|a| a == e.account)
            && text.is_none_or(|t| {
                e.sender.to_lowercase().contains(&t)
                    || e.recipients.iter().any(|r| r.to_lowercase().contains(&t))
                    || e.id.contains(&t)
            })
    }
}

pub async fn list_page(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<QueueQuery>,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let body = list_body(&c, &session, &q, None).await;
    c.html(
        StatusCode::OK,
        cookie,
        layout("Queue", Nav::Queue, Some(&session), None, body),
    )
}

async fn list_body(c: &Console, session: &Session, q: &QueueQuery, n: Option<&Notice>) -> Markup {
    let Some(spool) = &c.state.spool else {
        return html! { p.muted { "This relay has no queue." } };
    };
    let area = q.area();
    let (entries, error) = match queue::list(spool, area).await {
        Ok(items) => (
            items.iter().map(model::queue_entry).collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let shown: Vec<_> = entries.iter().filter(|e| q.matches(e)).collect();
    let accounts: Vec<String> = c
        .state
        .accounts
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    html! {
        (notice(n))
        (filter_form(q, &accounts))
        @if let Some(e) = error { p.err { "Cannot read the spool: " (e) } }
        @if area == Area::Queue && !entries.is_empty() {
            p { (button(session, "/queue/retry", "Retry all now", Some("primary"))) }
        }
        (table(session, &shown))
        p.muted { (shown.len()) " of " (entries.len()) " shown, oldest first." }
    }
}

fn filter_form(q: &QueueQuery, accounts: &[String]) -> Markup {
    let failed = q.area() == Area::Failed;
    html! {
        form.filter method="get" action="/queue" {
            label { "Area" br;
                select name="area" {
                    option value="queue" selected[!failed] { "queued" }
                    option value="failed" selected[failed] { "failed for good" }
                }
            }
            label { "Account" br;
                select name="account" {
                    option value="" { "any" }
                    @for a in accounts { option value=(a) selected[q.account.as_deref() == Some(a.as_str())] { (a) } }
                }
            }
            label { "Sender, recipient or id contains" br; input type="search" name="q" value=[q.q.as_deref()]; }
            button { "Filter" }
        }
    }
}

fn actions(session: &Session, e: &model::QueueEntry) -> Markup {
    html! {
        @if e.state == "queued" {
            (button(session, &format!("/queue/{}/retry", e.id), "Retry", None))
            " "
        } @else {
            (button(session, &format!("/failed/{}/requeue", e.id), "Requeue", None))
            " "
        }
        (button(session, &format!("/queue/{}/delete", e.id), "Delete", Some("danger")))
    }
}

fn table(session: &Session, entries: &[&model::QueueEntry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.muted { "No messages here." }
        } @else {
            table {
                thead { tr {
                    th { "Id" } th { "Account" } th { "Sender → recipients" } th { "Size" }
                    th { "Received" } th { "Attempts" } th { "Next attempt" } th { "Last reply" } th {}
                } }
                tbody {
                    @for e in entries {
                        tr {
                            td { a href={ "/queue/" (e.id) } { code { (e.id) } }
                                @if e.notice { br; span.muted { "failure notice" } } }
                            td { (e.account) br; span.muted { (e.device) } }
                            td { (e.sender) " → " (if e.state == "queued" { e.remaining.join(", ") } else { e.recipients.join(", ") }) }
                            td { (size(e.size)) }
                            td { (when(Some(e.received.at_ms))) }
                            td { (e.attempts) }
                            td { (when(e.next_attempt.as_ref().map(|s| s.at_ms))) }
                            td { span.reply { (e.last_reply.as_deref().unwrap_or("—")) } }
                            td { (actions(session, e)) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn detail_page(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let (status, body) = detail_body(&c, &session, &id, None).await;
    c.html(
        status,
        cookie,
        layout(
            &format!("Message {id}"),
            Nav::Queue,
            Some(&session),
            None,
            body,
        ),
    )
}

async fn detail_body(
    c: &Console,
    session: &Session,
    id: &str,
    n: Option<&Notice>,
) -> (StatusCode, Markup) {
    let found = match (&c.state.spool, MessageId::parse(id)) {
        (Some(spool), Some(id)) => queue::find(spool, &id).await.map_err(|e| e.to_string()),
        _ => Ok(None),
    };
    let back = html! { p { a href="/queue" { "Back to the queue" } } };
    match found {
        Ok(Some(q)) => (
            StatusCode::OK,
            html! { (notice(n)) (detail(session, &model::queue_detail(&q))) (back) },
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            html! { (notice(n)) p.muted { "No message " code { (id) } " in the queue or in failed/: it was delivered or deleted. Recent messages has what became of it." } (back) },
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            html! { p.err { "Cannot read the spool: " (e) } (back) },
        ),
    }
}

fn detail(session: &Session, d: &model::QueueDetail) -> Markup {
    let e = &d.entry;
    html! {
        p { (badge(e.state, e.state)) " " (actions(session, e)) }
        dl.env {
            dt { "Received" } dd { (when(Some(e.received.at_ms))) }
            dt { "Device" } dd { (e.device) " from " (d.client_ip) " (helo " (d.helo) ", listener " (d.listener) ", session " (d.session) ")" }
            dt { "Account" } dd { (e.account) }
            dt { "Sender" } dd { (e.sender) @if let Some(o) = &d.original_sender { " (rewritten from " (o) ")" } }
            dt { "Recipients" } dd { (e.recipients.join(", ")) }
            dt { "Delivered to" } dd { (if e.delivered.is_empty() { "—".to_string() } else { e.delivered.join(", ") }) }
            dt { "Remaining" } dd { (if e.remaining.is_empty() { "—".to_string() } else { e.remaining.join(", ") }) }
            @for r in &e.refused { dt { "Refused" } dd { (r.rcpt) ": " span.reply { (r.reply.to_string()) } } }
            dt { "Size" } dd { (size(e.size)) @if d.eight_bit { ", 8-bit" } }
            dt { "Attempts" } dd { (e.attempts) }
            dt { "Next attempt" } dd { (when(e.next_attempt.as_ref().map(|s| s.at_ms))) }
        }
        h2 { "History" }
        @if d.history.is_empty() { p.muted { "No attempt yet." } }
        @else {
            table {
                thead { tr { th { "Time" } th { "What" } th { "Reply" } } }
                tbody {
                    @for h in &d.history {
                        tr { td { (when(Some(h.at.at_ms))) } td { (h.summary) } td { span.reply { (h.reply.as_deref().unwrap_or("")) } } }
                    }
                }
            }
        }
    }
}

/// A button press: the checks, the request to the relay, and the page with its answer.
async fn press(
    c: &Console,
    peer: Peer,
    headers: &HeaderMap,
    csrf: Option<&str>,
    action: ControlAction,
    id: Option<&str>,
) -> Response {
    let session = match c.post(headers, peer.ip(), csrf, Face::Page).await {
        Ok(Caller::Browser(s)) => s,
        Ok(Caller::Script) => return c.redirect("/queue", None),
        Err(refused) => return refused,
    };
    let target = match id {
        None => Some(ControlTarget::All),
        Some(id) => MessageId::parse(id).map(ControlTarget::One),
    };
    let (Some(spool), Some(target)) = (&c.state.spool, target) else {
        let n = Notice {
            ok: false,
            text: "Not a queue id.".into(),
        };
        return render_after(c, &session, None, &n).await;
    };
    let n = carry_out(c, spool, action, target).await;
    let show = match action {
        ControlAction::Delete => None,
        _ => id,
    };
    render_after(c, &session, show, &n).await
}

async fn carry_out(
    c: &Console,
    spool: &Spool,
    action: ControlAction,
    target: ControlTarget,
) -> Notice {
    match queue::act(spool, &c.state.activity, action, target).await {
        Ok(report) => Notice {
            ok: report.ok,
            text: report.words(),
        },
        Err(e) => Notice {
            ok: false,
            text: format!("Cannot file the request: {e}"),
        },
    }
}

/// The message's page (or the queue, after a delete or a retry of everything) with `n`.
async fn render_after(c: &Console, session: &Session, id: Option<&str>, n: &Notice) -> Response {
    let status = if n.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    let body = match id {
        Some(id) => detail_body(c, session, id, Some(n)).await.1,
        None => list_body(c, session, &QueueQuery::default(), Some(n)).await,
    };
    let title = id.map_or("Queue".to_string(), |id| format!("Message {id}"));
    c.html(
        status,
        None,
        layout(&title, Nav::Queue, Some(session), None, body),
    )
}

pub async fn retry(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    press(
        &c,
        peer,
        &headers,
        f.csrf.as_deref(),
        ControlAction::Retry,
        Some(&id),
    )
    .await
}

pub async fn retry_all(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    press(
        &c,
        peer,
        &headers,
        f.csrf.as_deref(),
        ControlAction::Retry,
        None,
    )
    .await
}

pub async fn delete(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    press(
        &c,
        peer,
        &headers,
        f.csrf.as_deref(),
        ControlAction::Delete,
        Some(&id),
    )
    .await
}

pub async fn requeue(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    press(
        &c,
        peer,
        &headers,
        f.csrf.as_deref(),
        ControlAction::Requeue,
        Some(&id),
    )
    .await
}
