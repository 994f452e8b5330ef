//! The HTTP/1 transport to providers: Pingora's connector (pooled, TLS with SNI to remote providers), the
//! request written in one write, the answer head read within the first-byte timeout, bodies read whole or
//! in part, and connections handed back to the pool.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use pingora::connectors::http::v1::Connector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType::ReadTimedout};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::catalog::Provider;
use super::provider::Rendered;
use crate::error::Rejection;

static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// Build the provider connector ahead of the first request (see `ai::warm_up`).
pub fn warm_up() {
    LazyLock::force(&CONNECTOR);
}

/// Send the rendered request to deployment `index` and read the response head within the first-byte
/// timeout. The error says why, for the fallback's list of what was tried.
pub async fn send(
    peer: &HttpPeer,
    provider: &Provider,
    index: usize,
    rendered: &Rendered<'_>,
    stream: bool,
    request_id: &HeaderValue,
) -> Result<HttpSession, String> {
    let deployment = &provider.deployments[index];
    let upstream = match CONNECTOR.reused_http_session(peer).await {
        Some(pooled) => pooled,
        // Connecting (TCP, perhaps TLS) is a future of several KiB: boxed, so that it is not part of the state
        // of every request, which is copied whole when the request's future is boxed.
        None => {
            Box::pin(CONNECTOR.get_http_session(peer))
                .await
                .map_err(|e| format!("connect: {}", e.etype().as_str()))?
                .0
        }
    };
    let accept: &[u8] = if stream {
        b"text/event-stream"
    } else {
        b"application/json"
    };
    // Every header the provider gets but `content-length`: the gateway writes the whole request, nothing of
    // the client's passes.
    let headers = [
        (&b"host"[..], deployment.host.as_bytes()),
        (b"content-type", b"application/json"),
        (b"accept", accept),
        (b"x-request-id", request_id.as_bytes()),
    ]
    .into_iter()
    .chain(
        deployment
            .auth
            .iter()
            .chain(&rendered.headers)
            .chain(&provider.headers)
            .map(|(name, value)| (name.as_ref(), value.as_bytes())),
    );
    let timeout = provider.timeouts.first_byte;
    let path = [rendered.path[0].as_bytes(), rendered.path[1].as_bytes()];
    let mut upstream = write_h1(upstream, peer, &path, headers, &rendered.body, timeout)
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    upstream.read_timeout = Some(timeout);
    upstream
        .read_response()
        .await
        .map_err(|e| match e.etype() {
            pingora::ErrorType::ReadTimedout => "timeout".to_string(),
            other => format!("read: {}", other.as_str()),
        })?;
    Ok(upstream)
}

/// Write an HTTP/1.1 request, head (`headers`, then the body's length) and body, in one write. Pingora's
/// client would flush the head on its own, which costs a second `sendto` and wakes the provider twice, and
/// would build a header map only to serialise it. The session is rebuilt around the same connection exactly
/// as Pingora's connector builds it, so reading the answer and returning the connection to the pool work as
/// before (a POST that is not an upgrade and keeps the connection alive). Path and header values were
/// checked when the config loaded.
async fn write_h1<'a>(
    h1: HttpSession,
    peer: &HttpPeer,
    path: &[&[u8]],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    payload: &[u8],
    timeout: Duration,
) -> pingora::Result<HttpSession> {
    let mut wire = Vec::with_capacity(512 + payload.len());
    wire.extend_from_slice(b"POST ");
    path.iter().for_each(|part| wire.extend_from_slice(part));
    wire.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        wire.extend_from_slice(name);
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value);
        wire.extend_from_slice(b"\r\n");
    }
    // Written as digits straight into the buffer: no string per request.
    let _ = write!(wire, "content-length: {}\r\n\r\n", payload.len());
    wire.extend_from_slice(payload);
    let mut stream = h1.into_inner();
    let write = async {
        stream.write_all(&wire).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(HttpSession::new_with_options(stream, peer)),
        Ok(Err(e)) => Err(pingora::Error::because(
            pingora::ErrorType::WriteError,
            "writing the request",
            e,
        )),
        Err(_) => Err(pingora::Error::explain(
            pingora::ErrorType::WriteTimedout,
            "writing the request",
        )),
    }
}

/// Give a provider connection whose answer was read to its end back to the pool.
pub async fn release(upstream: HttpSession, peer: &HttpPeer) {
    CONNECTOR
        .release_http_session(upstream, peer, Some(Duration::from_secs(30)))
        .await;
}

/// The provider's response head, which the session keeps once read (no copy is taken). `send` returns a
/// session only once its head is read, so the error is a guard, the one place that handles its absence.
pub fn response_head(upstream: &HttpSession) -> Result<&ResponseHeader, Rejection> {
    upstream.resp_header().ok_or_else(|| {
        Rejection::typed(
            502,
            "server_error",
            "upstream_stream_error",
            "the provider's response head is missing",
        )
    })
}

pub fn retry_after(head: &ResponseHeader) -> Option<Duration> {
    let value = head.headers.get("retry-after")?.to_str().ok()?;
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .map(|d| d.min(Duration::from_secs(3600)))
}

/// Read at most 64 KiB of an error body.
pub async fn read_small_body(mut upstream: HttpSession) -> (HttpSession, String) {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = upstream.read_body_bytes().await {
        text.extend_from_slice(&chunk);
        if text.len() > 64 * 1024 {
            break;
        }
    }
    (upstream, String::from_utf8_lossy(&text).into_owned())
}

/// Read a plain answer to its end; `None` when it grows past `limit` bytes (the rest is left unread, so the
/// connection is not reused). `due` says when a read that begins at a given time runs out (see `read_chunk`).
pub async fn read_whole(
    upstream: &mut HttpSession,
    capacity: usize,
    limit: usize,
    due: &impl Fn(std::time::Instant) -> std::time::Instant,
) -> pingora::Result<Option<Vec<u8>>> {
    let mut body = Vec::with_capacity(capacity);
    let timer = tokio::time::sleep_until(due(std::time::Instant::now()).into());
    tokio::pin!(timer);
    loop {
        let read_due = due(std::time::Instant::now()).into();
        match read_chunk(upstream, timer.as_mut(), read_due).await? {
            Some(chunk) if body.len() + chunk.len() > limit => return Ok(None),
            Some(chunk) => body.extend_from_slice(&chunk),
            None => return Ok(Some(body)),
        }
    }
}

/// The next piece of a provider's body, or a `ReadTimedout` error once `due` has passed. `timer` serves the
/// whole body and is moved only when it fires before `due` (the read began later than the timer was set
/// for): a read costs no timer of its own, where `HttpSession::read_timeout` registers one with Pingora's
/// timer thread for every read that waits, that is for every chunk of a stream.
pub async fn read_chunk(
    upstream: &mut HttpSession,
    mut timer: Pin<&mut Sleep>,
    due: Instant,
) -> pingora::Result<Option<Bytes>> {
    upstream.read_timeout = None;
    let read = upstream.read_body_bytes();
    tokio::pin!(read);
    loop {
        tokio::select! {
            biased;
            result = &mut read => return result,
            () = &mut timer => {
                if Instant::now() >= due {
                    return Error::e_explain(ReadTimedout, "waiting for the provider's next bytes");
                }
                timer.as_mut().reset(due);
            }
        }
    }
}
