//! The console's pages: server-rendered HTML (maud escapes every value it is given; only the
//! fixed style sheet and the rendered docs are marked as already HTML), working without any
//! JavaScript (the CSP forbids scripts altogether). Every form that changes something posts the
//! session's CSRF token.
//!
//! - `layout.rs`: the frame, navigation, the login form and small shared pieces.
//! - `overview.rs`: `/`: problems first, then accounts, queue and recent messages at a glance.
//! - `devices.rs`, `messages.rs`, `queue.rs`: the other pages; the accounts page lives in
//!   `accounts.rs` beside the sign-in it drives.

mod devices;
mod layout;
mod messages;
mod overview;
mod queue;

use crate::console::{Console, Peer};
use crate::session::Session;
use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use smtp2oauth_activity::{Problem, now_ms};
use smtp2oauth_tokens::Secret;
use std::sync::Arc;
use tracing::{info, warn};

pub use layout::{Nav, Notice, badge, button, csrf, layout, login, message, notice, reply, when};

pub fn router() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(overview::page))
        .route("/devices", get(devices::page))
        .route("/messages", get(messages::page))
        .route("/queue", get(queue::list_page))
        .route("/queue/retry", post(queue::retry_all))
        .route("/queue/{id}", get(queue::detail_page))
        .route("/queue/{id}/retry", post(queue::retry))
        .route("/queue/{id}/delete", post(queue::delete))
        .route("/failed/{id}/requeue", post(queue::requeue))
        .route("/docs", get(crate::docs::index))
        .route("/docs/{page}", get(crate::docs::page))
        .route("/login", post(log_in))
        .route("/logout", post(log_out))
}

/// The session of a page view; Err holds the login page when the password is needed first.
pub fn page_session(
    c: &Console,
    headers: &HeaderMap,
    peer: Peer,
    uri: &Uri,
) -> Result<(Session, Option<String>), Box<Response>> {
    let (session, cookie) = c.sessions.get_or_create(headers, peer.ip());
    if c.password_required(&session) {
        let next = uri.path_and_query().map_or("/", |p| p.as_str());
        return Err(Box::new(c.html(
            StatusCode::OK,
            cookie,
            login(&session, None, next),
        )));
    }
    Ok((session, cookie))
}

/// What is wrong now: the accounts' states and the environment the binary measures.
pub async fn current_problems(c: &Console) -> Vec<Problem> {
    let env = (c.state.environment)().await;
    let accounts = c.state.activity.accounts(now_ms());
    smtp2oauth_activity::problems::problems(&accounts, &env)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

/// Where to go after logging in: a path of ours, never another site (`//host` or `/\\host`).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/') && !n.starts_with("//") && !n.contains(['\\', '\r', '\n']) =>
        {
            n
        }
        _ => "/",
    }
}

async fn log_in(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let session = match crate::session::check_post(&c.sessions, &headers, form.csrf.as_deref()) {
        Ok(s) => s,
        Err(why) => return c.refused(why, crate::console::Face::Page),
    };
    let Some(check) = &c.password else {
        return c.redirect("/", None);
    };
    let password = Secret::from(form.password.unwrap_or_default());
    match check.check(peer.ip(), password).await {
        crate::password::Verdict::Ok => {
            let (_, cookie) = c.sessions.log_in(&session, peer.ip());
            info!(address = %peer.ip(), "admin console: logged in");
            c.redirect(local_path(form.next.as_deref()), Some(cookie))
        }
        crate::password::Verdict::Wrong => {
            warn!(address = %peer.ip(), "admin console: wrong password");
            c.html(
                StatusCode::UNAUTHORIZED,
                None,
                login(
                    &session,
                    Some("Wrong password."),
                    local_path(form.next.as_deref()),
                ),
            )
        }
        v => c.verdict_refusal(v, crate::console::Face::Page),
    }
}

async fn log_out(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    match crate::session::check_post(&c.sessions, &headers, form.csrf.as_deref()) {
        Ok(s) => {
            c.sessions.log_out(&s);
            c.redirect("/", None)
        }
        Err(why) => c.refused(why, crate::console::Face::Page),
    }
}
