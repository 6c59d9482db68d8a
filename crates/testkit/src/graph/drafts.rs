//! Drafts: created from MIME, given attachments (in one request or through an upload session),
//! sent, or deleted.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::sendmail::{decode_mime_body, no_recipients};
use super::{
    Draft, GraphAttachment, GraphFailure, GraphMessage, GraphStep, MAX_REQUEST_BODY,
    MAX_UPLOAD_SESSION_SIZE, MIN_UPLOAD_SESSION_SIZE, Shared, UploadSession, admit, bad_request,
    failure_response, iso_now, json_response, media_type_is, message_too_large, mime, new_id,
    not_found, serve, too_large_request, with_request_id,
};
use crate::lock;

/// `POST /v1.0/users/{mailbox}/messages` with base64 MIME: a new draft.
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/messages");
    serve(shared, GraphStep::CreateDraft, "POST", path, &headers, body.len(), |s| {
        let late = match admit(s, GraphStep::CreateDraft, &mailbox, &headers) {
            Ok(late) => late,
            Err(r) => return r,
        };
        let mime = match decode_mime_body(&headers, &body) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let id = new_id("AAMkAD");
        let answer = json!({
            "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#users('{mailbox}')/messages/$entity"),
            "@odata.etag": format!("W/\"{}\"", crate::random_hex(12)),
            "id": id,
            "createdDateTime": iso_now(),
            "lastModifiedDateTime": iso_now(),
            "subject": mime::subject(&mime),
            "hasAttachments": false,
            "isDraft": true,
        });
        lock(&s.state).drafts.push(Draft {
            id,
            mailbox: mailbox.clone(),
            mime,
            attachments: Vec::new(),
            created_at: Instant::now(),
        });
        finish(late, json_response(StatusCode::CREATED, answer))
    })
    .await
}

/// The normal answer, or the failure scripted to replace it after the request took effect.
fn finish(late: Option<GraphFailure>, answer: Response) -> Response {
    match late {
        Some(f) => failure_response(&f),
        None => answer,
    }
}

/// `DELETE /v1.0/users/{mailbox}/messages/{id}`.
pub(super) async fn remove(
    State(shared): State<Arc<Shared>>,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/messages/{id}");
    serve(
        shared,
        GraphStep::DeleteDraft,
        "DELETE",
        path,
        &headers,
        0,
        |s| {
            let late = match admit(s, GraphStep::DeleteDraft, &mailbox, &headers) {
                Ok(late) => late,
                Err(r) => return r,
            };
            let mut st = lock(&s.state);
            let Some(i) = st.drafts.iter().position(|d| d.id == id) else {
                return not_found();
            };
            st.drafts.remove(i);
            st.sessions.retain(|_, u| u.draft_id != id);
            finish(
                late,
                with_request_id(StatusCode::NO_CONTENT.into_response()),
            )
        },
    )
    .await
}

/// `POST /v1.0/users/{mailbox}/messages/{id}/send`: the draft is delivered and disappears.
pub(super) async fn send(
    State(shared): State<Arc<Shared>>,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/messages/{id}/send");
    serve(
        shared,
        GraphStep::SendDraft,
        "POST",
        path,
        &headers,
        body.len(),
        |s| {
            let late = match admit(s, GraphStep::SendDraft, &mailbox, &headers) {
                Ok(late) => late,
                Err(r) => return r,
            };
            if !body.is_empty() {
                return bad_request("ErrorInvalidRequest", "This action takes no request body.");
            }
            match deliver(s, &id) {
                Ok(()) => finish(late, with_request_id(StatusCode::ACCEPTED.into_response())),
                Err(r) => r,
            }
        },
    )
    .await
}

/// Turns draft `id` into a delivered message, if it can be sent.
fn deliver(shared: &Shared, id: &str) -> Result<(), Response> {
    let mut st = lock(&shared.state);
    let Some(i) = st.drafts.iter().position(|d| d.id == id) else {
        return Err(not_found());
    };
    let recipients = mime::header_recipients(&st.drafts[i].mime);
    if recipients.is_empty() {
        return Err(no_recipients());
    }
    let mime_bytes = mime::reassemble(&st.drafts[i].mime, &st.drafts[i].attachments);
    if mime_bytes.len() > st.mailbox_limit {
        return Err(message_too_large());
    }
    let draft = st.drafts.remove(i);
    st.sessions.retain(|_, u| u.draft_id != id);
    st.messages.push(GraphMessage {
        mailbox: draft.mailbox,
        mime: mime_bytes,
        recipients,
        received_at: Instant::now(),
        draft_id: Some(draft.id),
        draft_mime: Some(draft.mime),
        attachments: draft.attachments,
    });
    Ok(())
}

/// `POST .../messages/{id}/attachments` with a `#microsoft.graph.fileAttachment`.
pub(super) async fn add_attachment(
    State(shared): State<Arc<Shared>>,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/messages/{id}/attachments");
    serve(shared, GraphStep::AddAttachment, "POST", path, &headers, body.len(), |s| {
        let late = match admit(s, GraphStep::AddAttachment, &mailbox, &headers) {
            Ok(late) => late,
            Err(r) => return r,
        };
        if body.len() > MAX_REQUEST_BODY {
            return too_large_request();
        }
        let attachment = match file_attachment(&headers, &body) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let answer = json!({
            "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#users('{mailbox}')/messages('{id}')/attachments/$entity"),
            "@odata.type": "#microsoft.graph.fileAttachment",
            "id": attachment.id,
            "name": attachment.name,
            "contentType": attachment.content_type,
            "size": attachment.bytes.len(),
            "isInline": attachment.is_inline,
            "contentId": attachment.content_id,
        });
        match attach(s, &id, attachment) {
            Ok(()) => finish(late, json_response(StatusCode::CREATED, answer)),
            Err(r) => r,
        }
    })
    .await
}

/// Adds `attachment` to draft `id` if the message stays under the mailbox's limit.
fn attach(shared: &Shared, id: &str, attachment: GraphAttachment) -> Result<(), Response> {
    let mut st = lock(&shared.state);
    let limit = st.mailbox_limit;
    let Some(draft) = st.draft_mut(id) else {
        return Err(not_found());
    };
    let size = draft_size(draft) + mime::encoded_len(attachment.bytes.len());
    if size > limit {
        return Err(message_too_large());
    }
    draft.attachments.push(attachment);
    Ok(())
}

/// The draft's size as Exchange counts it: its MIME plus every attachment, encoded.
fn draft_size(draft: &Draft) -> usize {
    draft.mime.len() + mime::encoded_size(&draft.attachments)
}

fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    if !media_type_is(headers, "application/json") {
        return Err(super::graph_error(
            415,
            "UnsupportedMediaType",
            "The request must be application/json.",
            None,
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        bad_request(
            "RequestBodyRead",
            &format!("The request body is not valid JSON: {e}"),
        )
    })
}

fn file_attachment(headers: &HeaderMap, body: &[u8]) -> Result<GraphAttachment, Response> {
    let v = parse_json(headers, body)?;
    if v["@odata.type"] != "#microsoft.graph.fileAttachment" {
        return Err(bad_request(
            "ErrorInvalidRequest",
            "Only #microsoft.graph.fileAttachment is supported here.",
        ));
    }
    let Some(name) = v["name"].as_str().filter(|n| !n.is_empty()) else {
        return Err(bad_request(
            "ErrorInvalidRequest",
            "The attachment has no name.",
        ));
    };
    let bytes = v["contentBytes"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| {
            bad_request(
                "ErrorInvalidRequest",
                "contentBytes is missing or not valid base64.",
            )
        })?;
    Ok(GraphAttachment {
        id: new_id("AAMkAGAtt"),
        name: name.to_string(),
        content_type: v["contentType"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_string(),
        is_inline: v["isInline"].as_bool().unwrap_or(false),
        content_id: v["contentId"].as_str().map(str::to_string),
        bytes,
        chunks: 0,
    })
}

/// `POST .../messages/{id}/attachments/createUploadSession` with an `AttachmentItem`.
pub(super) async fn create_upload_session(
    State(shared): State<Arc<Shared>>,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession");
    let step = GraphStep::CreateUploadSession;
    serve(shared, step, "POST", path, &headers, body.len(), |s| {
        let late = match admit(s, step, &mailbox, &headers) {
            Ok(late) => late,
            Err(r) => return r,
        };
        let session = match attachment_item(&headers, &body, &mailbox, &id) {
            Ok(u) => u,
            Err(r) => return r,
        };
        match open_session(s, session) {
            Ok(answer) => finish(late, json_response(StatusCode::CREATED, answer)),
            Err(r) => r,
        }
    })
    .await
}

/// Registers the session on its draft; the answer carries the pre-authenticated upload URL.
fn open_session(shared: &Shared, session: UploadSession) -> Result<Value, Response> {
    let mut st = lock(&shared.state);
    let limit = st.mailbox_limit;
    let Some(draft) = st.draft_mut(&session.draft_id) else {
        return Err(not_found());
    };
    if draft_size(draft) + mime::encoded_len(session.size) > limit {
        return Err(message_too_large());
    }
    let sid = new_id("AAMkAGSess");
    let url = format!(
        "{}/api/v2.0/Users('{}')/Messages('{}')/AttachmentSessions('{sid}')?authtoken={}",
        shared.base_url, session.mailbox, session.draft_id, session.authtoken
    );
    st.sessions.insert(sid, session);
    Ok(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
        "uploadUrl": url,
        "expirationDateTime": iso_now(),
        "nextExpectedRanges": ["0-"],
    }))
}

fn attachment_item(
    headers: &HeaderMap,
    body: &[u8],
    mailbox: &str,
    draft_id: &str,
) -> Result<UploadSession, Response> {
    let v = parse_json(headers, body)?;
    // OData action parameters are matched without regard to case.
    let item = v
        .as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("AttachmentItem"))
        })
        .map(|(_, item)| item.clone())
        .ok_or_else(|| bad_request("ErrorInvalidRequest", "AttachmentItem is required."))?;
    if item["attachmentType"] != "file" {
        return Err(bad_request(
            "ErrorInvalidRequest",
            "attachmentType must be file.",
        ));
    }
    let name = item["name"].as_str().filter(|n| !n.is_empty());
    let (Some(name), Some(size)) = (name, item["size"].as_u64()) else {
        return Err(bad_request(
            "ErrorInvalidRequest",
            "AttachmentItem needs a name and a size.",
        ));
    };
    if size < MIN_UPLOAD_SESSION_SIZE {
        return Err(bad_request(
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size must be greater than the minimum size.",
        ));
    }
    if size > MAX_UPLOAD_SESSION_SIZE {
        return Err(message_too_large());
    }
    Ok(UploadSession {
        draft_id: draft_id.to_string(),
        mailbox: mailbox.to_string(),
        authtoken: crate::random_hex(32),
        name: name.to_string(),
        content_type: item["contentType"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_string(),
        size: size as usize,
        is_inline: item["isInline"].as_bool().unwrap_or(false),
        content_id: item["contentId"].as_str().map(str::to_string),
        received: Vec::with_capacity(size as usize),
        chunks: 0,
    })
}
