//! `/messages`: the recent-messages log, searchable like a message trace: by device, account,
//! recipient and result, newest first, each with the exact reply and what to do about it.

use super::layout::{Nav, badge, layout, reply, size, when};
use super::page_session;
use crate::api::MessageQuery;
use crate::console::{Console, Peer};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use smtp2oauth_activity::{MessageRecord, now_ms};
use std::sync::Arc;

pub async fn page(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<MessageQuery>,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let (records, error) = match q.filter() {
        Ok(f) => (c.state.activity.messages(&f), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let devices: Vec<String> = c
        .state
        .activity
        .devices(now_ms())
        .into_iter()
        .map(|d| d.name)
        .collect();
    let accounts: Vec<String> = c
        .state
        .accounts
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    let body = html! {
        (filter_form(&q, &devices, &accounts))
        @if let Some(e) = error { p.err { (e) } }
        (table(&records))
        p.muted { (records.len()) " shown, newest first. The log keeps the latest [admin] recent_messages outcomes since the relay started." }
    };
    c.html(
        StatusCode::OK,
        cookie,
        layout("Recent messages", Nav::Messages, Some(&session), None, body),
    )
}

fn select(name: &str, label: &str, options: &[String], chosen: Option<&str>) -> Markup {
    html! {
        label { (label) br;
            select name=(name) {
                option value="" { "any" }
                @for o in options {
                    option value=(o) selected[chosen == Some(o.as_str())] { (o) }
                }
            }
        }
    }
}

fn filter_form(q: &MessageQuery, devices: &[String], accounts: &[String]) -> Markup {
    let results: Vec<String> = ["delivered", "deferred", "failed", "refused"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    html! {
        form.filter method="get" action="/messages" {
            (select("device", "Device", devices, q.device.as_deref()))
            (select("account", "Account", accounts, q.account.as_deref()))
            label { "Recipient contains" br; input type="search" name="rcpt" value=[q.rcpt.as_deref()]; }
            (select("result", "Result", &results, q.result.as_deref()))
            button { "Filter" }
        }
    }
}

/// The records as a table (also on the overview).
pub fn table(records: &[MessageRecord]) -> Markup {
    html! {
        @if records.is_empty() {
            p.muted { "No messages yet." }
        } @else {
            table {
                thead { tr {
                    th { "Time" } th { "Result" } th { "Device" } th { "Account" }
                    th { "Sender → recipients" } th { "Size" } th { "Reply" }
                } }
                tbody {
                    @for r in records {
                        tr {
                            td { (when(Some(r.at_ms))) br;
                                @if let Some(id) = &r.queue_id { a href={ "/queue/" (id) } { code { (id) } } }
                            }
                            td { (badge(r.result.as_str(), r.result.as_str())) }
                            td { (if r.device.is_empty() { "—" } else { &r.device }) br;
                                span.muted { (r.peer.as_deref().unwrap_or("")) } }
                            td { (if r.account.is_empty() { "—" } else { &r.account }) br; span.muted { (r.route) } }
                            td { (r.sender) " → " (r.recipients.join(", ")) }
                            td { (size(r.size)) }
                            td { (reply(r.reply.as_ref()))
                                @if let Some(a) = &r.advice { br; span.muted { (a) } } }
                        }
                    }
                }
            }
        }
    }
}
