//! `PUT {uploadUrl}`: the bytes of a large attachment, in order, through the pre-authenticated
//! URL an upload session answered. Real Graph serves it from outlook.office.com, so a Graph
//! bearer token there is the wrong audience and refused.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{
    CHUNK_GRANULE, GraphAttachment, GraphStep, MAX_CHUNK, Shared, UploadSession, bad_request,
    failure_response, graph_error, iso_now, json_response, media_type_is, new_id, not_found, serve,
    with_request_id,
};
use crate::lock;

pub(super) async fn put_chunk(
    State(shared): State<Arc<Shared>>,
    Path(session): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The log keeps the path without the query: the authtoken is a credential.
    let path = format!("/api/v2.0/{session}");
    serve(
        shared,
        GraphStep::UploadChunk,
        "PUT",
        path,
        &headers,
        body.len(),
        |s| handle(s, &session, query.get("authtoken"), &headers, &body),
    )
    .await
}

fn handle(
    shared: &Shared,
    session_path: &str,
    authtoken: Option<&String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return graph_error(
            401,
            "InvalidAudience",
            "The audience claim value is invalid 'aud'.",
            None,
        );
    }
    let Some(sid) = session_id(session_path) else {
        return not_found();
    };
    let mut st = lock(&shared.state);
    let Some(session) = st.sessions.get(&sid) else {
        return not_found();
    };
    if authtoken != Some(&session.authtoken) {
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
            None,
        );
    }
    let late = match st.step_script(GraphStep::UploadChunk) {
        Some((f, false)) => return failure_response(&f),
        Some((f, true)) => Some(f),
        None => None,
    };
    let Some(session) = st.sessions.get_mut(&sid) else {
        return not_found();
    };
    if let Err(r) = check_chunk(session, headers, body) {
        return r;
    }
    session.received.extend_from_slice(body);
    session.chunks += 1;
    let answer = if session.received.len() < session.size {
        let next = session.received.len();
        json_response(
            StatusCode::OK,
            json!({
                "@odata.context": format!("{}/api/v2.0/$metadata#{}/$entity", shared.base_url, session_path),
                "expirationDateTime": iso_now(),
                "nextExpectedRanges": [next.to_string()],
            }),
        )
    } else {
        let done = st.sessions.remove(&sid).expect("session present");
        match complete(&mut st, shared, done) {
            Ok(r) => r,
            Err(r) => return r,
        }
    };
    match late {
        Some(f) => failure_response(&f),
        None => answer,
    }
}

/// `Users('m')/Messages('d')/AttachmentSessions('s')` → `s`.
fn session_id(path: &str) -> Option<String> {
    let rest = path.rsplit_once("AttachmentSessions('")?.1;
    let (sid, tail) = rest.split_once("')")?;
    tail.is_empty().then(|| sid.to_string())
}

/// The chunk rules: `application/octet-stream`, `Content-Length`, a `Content-Range` that starts
/// where the last chunk ended and matches the body and the announced size, at most 4 MiB, a
/// multiple of 320 KiB unless it is the last.
fn check_chunk(session: &UploadSession, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    if !media_type_is(headers, "application/octet-stream") {
        return Err(graph_error(
            415,
            "UnsupportedMediaType",
            "Upload chunks must be application/octet-stream.",
            None,
        ));
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return Err(graph_error(
            411,
            "LengthRequired",
            "Content-Length is required.",
            None,
        ));
    }
    let range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range);
    let Some((start, end, total)) = range else {
        return Err(bad_request(
            "InvalidContentRange",
            "Content-Range must be 'bytes {start}-{end}/{total}'.",
        ));
    };
    if total != session.size || end < start || end >= total || end - start + 1 != body.len() {
        return Err(bad_request(
            "InvalidContentRange",
            "Content-Range does not match the body or the attachment's size.",
        ));
    }
    if start != session.received.len() {
        return Err(graph_error(
            416,
            "InvalidRange",
            &format!(
                "The next expected range starts at {}.",
                session.received.len()
            ),
            None,
        ));
    }
    let last = end + 1 == total;
    if body.len() > MAX_CHUNK || (!last && !body.len().is_multiple_of(CHUNK_GRANULE)) {
        return Err(bad_request(
            "InvalidChunkSize",
            "Chunks must be at most 4 MiB and a multiple of 320 KiB, except the last.",
        ));
    }
    Ok(())
}

fn parse_content_range(v: &str) -> Option<(usize, usize, usize)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// The whole attachment has arrived: it joins its draft; `201` with its `Location`.
fn complete(
    st: &mut super::GraphState,
    shared: &Shared,
    done: UploadSession,
) -> Result<Response, Response> {
    let Some(draft) = st.draft_mut(&done.draft_id) else {
        return Err(not_found());
    };
    let id = new_id("AAMkAGAtt");
    let location = format!(
        "{}/api/v2.0/Users('{}')/Messages('{}')/Attachments('{id}')",
        shared.base_url, done.mailbox, done.draft_id
    );
    draft.attachments.push(GraphAttachment {
        id,
        name: done.name,
        content_type: done.content_type,
        is_inline: done.is_inline,
        content_id: done.content_id,
        bytes: done.received,
        chunks: done.chunks,
    });
    let mut r = with_request_id(StatusCode::CREATED.into_response());
    if let Ok(v) = location.parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_session_paths_parse() {
        assert_eq!(
            parse_content_range("bytes 0-2097151/3483322"),
            Some((0, 2_097_151, 3_483_322))
        );
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("0-1/2"), None);
        assert_eq!(
            session_id("Users('a@b')/Messages('m=')/AttachmentSessions('s1=')").as_deref(),
            Some("s1=")
        );
        assert_eq!(session_id("Users('a@b')/Messages('m=')"), None);
    }
}
