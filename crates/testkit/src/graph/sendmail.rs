//! `POST /v1.0/users/{mailbox}/sendMail` with a MIME message: the one-request way to send.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{
    GraphMessage, GraphStep, MAX_REQUEST_BODY, Shared, admit, bad_request, graph_error,
    media_type_is, mime, serve, too_large_request, with_request_id,
};
use crate::lock;

pub(super) async fn send_mail(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/sendMail");
    serve(
        shared,
        GraphStep::SendMail,
        "POST",
        path,
        &headers,
        body.len(),
        |s| handle(s, &mailbox, &headers, &body),
    )
    .await
}

fn handle(shared: &Shared, mailbox: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(r) = admit(shared, GraphStep::SendMail, mailbox, headers) {
        return r;
    }
    let mime = match decode_mime_body(headers, body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let recipients = mime::header_recipients(&mime);
    if recipients.is_empty() {
        return no_recipients();
    }
    if mime.len() > lock(&shared.state).mailbox_limit {
        return super::message_too_large();
    }
    lock(&shared.state).messages.push(GraphMessage {
        mailbox: mailbox.to_string(),
        mime,
        recipients,
        received_at: Instant::now(),
        draft_id: None,
        draft_mime: None,
        attachments: Vec::new(),
    });
    with_request_id(StatusCode::ACCEPTED.into_response())
}

/// The MIME message of a `text/plain` base64 body (sendMail, or a draft created from MIME).
pub(super) fn decode_mime_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Response> {
    if !media_type_is(headers, "text/plain") {
        return Err(graph_error(
            415,
            "UnsupportedMediaType",
            "A MIME message must be sent as text/plain.",
            None,
        ));
    }
    if body.len() > MAX_REQUEST_BODY {
        return Err(too_large_request());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| {
            bad_request(
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            )
        })
}

pub(super) fn no_recipients() -> Response {
    bad_request(
        "ErrorInvalidRecipients",
        "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
    )
}
