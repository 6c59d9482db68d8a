//! The JSON API under `/api/v1/`: the same data as the pages, for scripts and dashboards.
//!
//! Same login as the pages (a logged-in browser session, or HTTP Basic with the admin password
//! and any user name); a POST from a browser also needs its session's CSRF token in the
//! `X-CSRF-Token` header (see `console.rs`). Field names are a contract, documented with an
//! example each in docs/admin.md; times are RFC 3339 (UTC, milliseconds) beside ms since the
//! epoch. Errors are `{"error": "..."}` with a fitting status.

use crate::console::{Console, Face, Peer};
use crate::{model, queue};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use smtp2oauth_activity::{MessageFilter, MessageResult, now_ms};
use smtp2oauth_spool::{Area, ControlAction, ControlTarget, MessageId};
use std::sync::Arc;

/// Most records `/messages` returns.
const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<Arc<Console>> {
    Router::new()
        .route("/devices", get(devices))
        .route("/accounts", get(accounts))
        .route("/accounts/{name}/test", post(send_test))
        .route("/messages", get(messages))
        .route("/problems", get(problems))
        .route("/queue", get(queue_list))
        .route("/queue/retry", post(retry_all))
        .route("/queue/{id}", get(queue_show))
        .route("/queue/{id}/retry", post(retry))
        .route("/queue/{id}/delete", post(delete))
        .route("/failed/{id}/requeue", post(requeue))
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": text.into()})),
    )
        .into_response()
}

async fn devices(State(c): State<Arc<Console>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let a = &c.state.activity;
    let devices: Vec<_> = a.devices(now_ms()).into_iter().map(model::device).collect();
    let unknown: Vec<_> = a.unknown_logins().into_iter().map(model::unknown).collect();
    axum::Json(serde_json::json!({"devices": devices, "unknown_logins": unknown})).into_response()
}

async fn accounts(State(c): State<Arc<Console>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let accounts = model::accounts(&c.state.accounts.accounts, &c.state.activity);
    axum::Json(serde_json::json!({ "accounts": accounts })).into_response()
}

async fn problems(State(c): State<Arc<Console>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let problems = crate::pages::current_problems(&c).await;
    let list: Vec<_> = problems
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "subject": p.subject.key(), "level": p.level, "state": p.state,
                "summary": p.summary, "advice": p.advice, "doc": format!("/docs/{}", p.doc),
                "since": p.since_ms.map(model::Stamp::new),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "problems": list })).into_response()
}

/// `?device=&account=&rcpt=&result=&limit=`.
#[derive(Deserialize, Default)]
pub struct MessageQuery {
    pub device: Option<String>,
    pub account: Option<String>,
    pub rcpt: Option<String>,
    pub result: Option<String>,
    pub limit: Option<usize>,
}

impl MessageQuery {
    /// The activity filter, or why the query is wrong.
    pub fn filter(&self) -> Result<MessageFilter, String> {
        let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
        let result = match nonempty(&self.result) {
            None => None,
            Some(r) => Some(MessageResult::parse(&r).ok_or_else(|| {
                format!("result must be delivered, deferred, failed or refused, not `{r}`")
            })?),
        };
        Ok(MessageFilter {
            device: nonempty(&self.device),
            account: nonempty(&self.account),
            rcpt: nonempty(&self.rcpt),
            queue_id: None,
            result,
            limit: Some(self.limit.unwrap_or(100).min(MAX_LIMIT)),
        })
    }
}

async fn messages(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<MessageQuery>,
) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let list: Vec<_> = c
        .state
        .activity
        .messages(&filter)
        .into_iter()
        .map(model::message)
        .collect();
    axum::Json(serde_json::json!({ "messages": list })).into_response()
}

#[derive(Deserialize)]
struct AreaQuery {
    area: Option<String>,
}

async fn queue_list(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<AreaQuery>,
) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let Some(spool) = &c.state.spool else {
        return error(StatusCode::NOT_FOUND, "this relay has no queue");
    };
    let area = match q.area.as_deref() {
        None | Some("queue") => Area::Queue,
        Some("failed") => Area::Failed,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("area must be queue or failed, not `{other}`"),
            );
        }
    };
    match queue::list(spool, area).await {
        Ok(items) => {
            let list: Vec<_> = items.iter().map(model::queue_entry).collect();
            axum::Json(serde_json::json!({ "messages": list })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn queue_show(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = c.api_read(&headers, peer.ip()).await {
        return r;
    }
    let Some(spool) = &c.state.spool else {
        return error(StatusCode::NOT_FOUND, "this relay has no queue");
    };
    let Some(id) = MessageId::parse(&id) else {
        return error(StatusCode::BAD_REQUEST, "not a queue id (16 hex digits)");
    };
    match queue::find(spool, &id).await {
        Ok(Some(q)) => axum::Json(model::queue_detail(&q)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the queue or in failed/"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Carries out a queue action for a caller the POST rules let in.
async fn action(
    c: &Console,
    peer: Peer,
    headers: &HeaderMap,
    action: ControlAction,
    target: Option<ControlTarget>,
) -> Response {
    if let Err(r) = c.post(headers, peer.ip(), None, Face::Api).await {
        return r;
    }
    let Some(spool) = &c.state.spool else {
        return error(StatusCode::NOT_FOUND, "this relay has no queue");
    };
    let Some(target) = target else {
        return error(StatusCode::BAD_REQUEST, "not a queue id (16 hex digits)");
    };
    match queue::act(spool, &c.state.activity, action, target).await {
        Ok(report) => {
            let status = action_status(&report);
            (status, axum::Json(report)).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot file the request: {e}"),
        ),
    }
}

/// 200 when done; 404 for an unknown id; 409 when the message is not where the action works;
/// 504 when the relay did not answer in time; 500 for a spool error.
fn action_status(r: &queue::ActionReport) -> StatusCode {
    if !r.answered {
        return StatusCode::GATEWAY_TIMEOUT;
    }
    if r.ok {
        return StatusCode::OK;
    }
    let worst = r
        .outcomes
        .iter()
        .find(|o| !matches!(o.outcome, "done" | "after_attempt"))
        .map(|o| o.outcome);
    match worst {
        Some("unknown_id") => StatusCode::NOT_FOUND,
        Some("error") => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    }
}

fn one(id: &str) -> Option<ControlTarget> {
    MessageId::parse(id).map(ControlTarget::One)
}

async fn retry(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    action(&c, peer, &headers, ControlAction::Retry, one(&id)).await
}

async fn retry_all(State(c): State<Arc<Console>>, peer: Peer, headers: HeaderMap) -> Response {
    action(
        &c,
        peer,
        &headers,
        ControlAction::Retry,
        Some(ControlTarget::All),
    )
    .await
}

async fn delete(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    action(&c, peer, &headers, ControlAction::Delete, one(&id)).await
}

async fn requeue(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    action(&c, peer, &headers, ControlAction::Requeue, one(&id)).await
}

#[derive(Deserialize)]
struct TestBody {
    to: String,
}

async fn send_test(
    State(c): State<Arc<Console>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = c.post(&headers, peer.ip(), None, Face::Api).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<TestBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"to\": \"someone@example.com\"}",
        );
    };
    let Some(run) = &c.state.send_test else {
        return error(StatusCode::NOT_FOUND, "send-test is not available here");
    };
    match run(name, body.to).await {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            (status, axum::Json(report)).into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}
