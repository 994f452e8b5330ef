//! The one writer of what the gateway answers itself: refusals and errors (edge and AI), fixed responses,
//! redirects, and the heads of AI answers. Every such head, like every proxied one, carries the request
//! id, the `RateLimit-*` headers of the request's tightest rate decision and the route's response header
//! edits (`Decor`); a `Rejection` is rendered in the route's dialect with its `WWW-Authenticate` or
//! `Retry-After`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::edge::headers::HeaderEdits;
use crate::edge::limits::Decision;
use crate::edge::normalize::declared_length;
use crate::edge::routes::HeaderRewrite;
use crate::error::{Dialect, Rejection};

const X_REQUEST_ID: &str = "x-request-id";
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What every answer of a request carries, whoever made it.
#[derive(Debug, Clone, Copy)]
pub struct Decor<'a> {
    pub request_id: &'a HeaderValue,
    /// The tightest rate decision of the route's limits.
    pub limit: Option<&'a Decision>,
    /// The route's `response_headers` edits.
    pub response_headers: Option<&'a HeaderRewrite>,
    /// How the route writes the gateway's own errors.
    pub dialect: Dialect,
}

impl Decor<'_> {
    /// Add the request id and the rate-limit headers to `head`, then the route's response edits (last, so
    /// an operator's edits win).
    pub fn apply(&self, head: &mut impl HeaderEdits) -> Result<()> {
        head.set_static(X_REQUEST_ID, self.request_id.clone())?;
        if let Some(decision) = self.limit {
            decision.write_headers(head)?;
        }
        match self.response_headers {
            Some(rewrite) if !rewrite.is_empty() => rewrite.apply(head),
            _ => Ok(()),
        }
    }
}

/// A head the gateway answers with: `status`, the headers `fill` adds, and the decor. Built as plain
/// `http` parts: Pingora's `insert_header` re-parses every name and keeps a second map of name spellings
/// (a tenth of the gateway's own instructions per AI request, measured); without that map Pingora writes
/// standard names title-cased (`Content-Type`) and the gateway's own in lower case.
pub fn head(
    status: u16,
    decor: &Decor<'_>,
    fill: impl FnOnce(&mut HeaderMap),
) -> Result<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "response status", e)
    })?;
    parts.headers.reserve(8);
    fill(&mut parts.headers);
    decor.apply(&mut parts.headers)?;
    Ok(ResponseHeader::from(parts))
}

/// Write a whole answer: `head` with the body's length (set last: no edit can break the framing), then
/// the body, unless the request was HEAD.
pub async fn write(session: &mut Session, mut head: ResponseHeader, body: Bytes) -> Result<()> {
    head.insert_header(CONTENT_LENGTH, body.len())?;
    let head_only = body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Answer from the gateway itself: `status`, `headers`, `body` and the decor.
pub async fn answer(
    session: &mut Session,
    decor: &Decor<'_>,
    status: u16,
    headers: &[(&HeaderName, &HeaderValue)],
    body: Bytes,
) -> Result<()> {
    let head = head(status, decor, |map| {
        for (name, value) in headers {
            map.insert((*name).clone(), (*value).clone());
        }
    })?;
    write(session, head, body).await
}

/// Answer a rejection: its status, its body in the route's dialect, its challenge or retry header.
pub async fn reject(session: &mut Session, decor: &Decor<'_>, rejection: &Rejection) -> Result<()> {
    reject_with(session, decor, rejection, |_| {}).await
}

/// `reject`, with more headers (the AI path's decision headers).
pub async fn reject_with(
    session: &mut Session,
    decor: &Decor<'_>,
    rejection: &Rejection,
    fill: impl FnOnce(&mut HeaderMap),
) -> Result<()> {
    let body = rejection.body(decor.dialect, decor.request_id.to_str().unwrap_or(""));
    let head = head(rejection.status, decor, |map| {
        map.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
        if let Some(challenge) = rejection.challenge {
            map.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let Some(seconds) = rejection.retry_after {
            map.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        fill(map);
    })?;
    write(session, head, body).await
}

/// Largest HTTP/2 request body read and dropped before an answer that does not need it, and how long that
/// may take.
const H2_DRAIN_LIMIT: usize = 1024 * 1024;
const H2_DRAIN_TIME: Duration = Duration::from_secs(2);

/// Before answering an HTTP/2 request whose body the gateway will not use (a refusal, a fixed response),
/// read and drop that body when it is small, as NGINX does: answered first, the stream ends with
/// `RST_STREAM(NO_ERROR)` while the client is still sending, which some clients (curl 7.88) report as
/// an error instead of showing the answer. Larger bodies are not waited for.
pub async fn drain_small_h2_body(session: &mut Session) {
    if !session.as_downstream().is_http2() || session.is_body_done() {
        return;
    }
    if declared_length(session.req_header()).is_some_and(|length| length > H2_DRAIN_LIMIT as u64) {
        return;
    }
    let _ = tokio::time::timeout(H2_DRAIN_TIME, async {
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > H2_DRAIN_LIMIT {
                return;
            }
        }
    })
    .await;
}
