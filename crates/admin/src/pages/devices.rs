//! `/devices`: every configured device: when it was last seen, from where and how, what we last
//! told it, and its counts; then usernames that matched no device (a printer with a typo, or
//! someone guessing).

use super::layout::{Nav, layout, reply, when};
use super::page_session;
use crate::console::{Console, Peer};
use crate::model;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use smtp2oauth_activity::now_ms;
use std::sync::Arc;

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
    let a = &c.state.activity;
    let devices: Vec<_> = a.devices(now_ms()).into_iter().map(model::device).collect();
    let unknown: Vec<_> = a.unknown_logins().into_iter().map(model::unknown).collect();
    let body = html! {
        (device_table(&devices))
        h2 { "Usernames that matched no device" }
        @if unknown.is_empty() {
            p.muted { "None since the relay started." }
        } @else {
            table {
                thead { tr { th { "Username tried" } th { "Attempts" } th { "Last from" } th { "Last tried" } } }
                tbody {
                    @for u in &unknown {
                        tr { td { code { (u.username) } } td { (u.attempts) } td { (u.last_peer) } td { (when(Some(u.last.at_ms))) } }
                    }
                }
            }
        }
        p.muted { "Counts are since the relay started and over the last 24 hours: messages accepted / refused / failed logins." }
    };
    c.html(
        StatusCode::OK,
        cookie,
        layout("Devices", Nav::Devices, Some(&session), None, body),
    )
}

fn counts(c: &model::Counts) -> Markup {
    html! { (c.accepted) " / " (c.refused) " / " (c.failed_logins) }
}

fn device_table(devices: &[model::Device]) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Device" } th { "Last seen" } th { "Peer" } th { "Listener" } th { "TLS" }
                th { "Last result" } th { "Since start" } th { "24 h" }
            } }
            tbody {
                @for d in devices {
                    tr {
                        td { strong { (d.name) } br; span.muted { "account " (d.account) } }
                        td { (when(d.last_seen.as_ref().map(|s| s.at_ms))) }
                        td { (d.peer.as_deref().unwrap_or("—")) }
                        td { (d.listener.as_deref().unwrap_or("—")) }
                        td {
                            @match (&d.tls, &d.listener) {
                                (Some(v), _) => (v),
                                (None, Some(_)) => span.warn { "none" },
                                (None, None) => "—",
                            }
                        }
                        td {
                            @if let Some(r) = &d.last_result {
                                (reply(r.reply.as_ref())) br; span.muted { (when(Some(r.at.at_ms))) }
                            } @else { span.muted { "—" } }
                        }
                        td { (counts(&d.since_start)) }
                        td { (counts(&d.last_24h)) }
                    }
                }
            }
        }
    }
}
