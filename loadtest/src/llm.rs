//! A mock OpenAI-compatible LLM server: `/v1/chat/completions` (plain and SSE streaming), `/v1/completions`,
//! `/v1/embeddings`, `/v1/models` and `/health`. Its behaviour is set per server (`set_behavior`): status,
//! latency before the response head, time to first token, number of chunks and the delay between them,
//! dropping the connection mid-stream, stalling, and a `Retry-After` on errors. Request bodies are recorded.
//! A server may speak a provider's native format instead (`MockLlm::start_speaking`, see `wires.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// How the mock answers.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Status of every answer (errors get an OpenAI error body).
    pub status: u16,
    /// Wait before sending the response head.
    pub head_delay: Duration,
    /// For streams: wait after the head before the first chunk.
    pub first_token_delay: Duration,
    /// For streams: number of content chunks.
    pub chunks: usize,
    /// For streams: wait between chunks.
    pub chunk_delay: Duration,
    /// For streams: close the connection after this many chunks, without `[DONE]`.
    pub drop_after: Option<usize>,
    /// For streams: after this many chunks, stop sending (but keep the connection open).
    pub stall_after: Option<usize>,
    /// For streams: after this many chunks, end the body cleanly, without a finish reason or `[DONE]`.
    pub end_after: Option<usize>,
    /// For plain answers: announce the whole length but send only this many body bytes, then close.
    pub cut_plain_at: Option<usize>,
    /// With `cut_plain_at`: after those bytes, keep the connection open and send nothing more.
    pub stall_plain: bool,
    /// For plain answers: no `Content-Length`; the body goes chunked, in two halves.
    pub chunked_plain: bool,
    /// For streams: end SSE lines with a bare `\r`, as the spec allows, instead of `\n`.
    pub cr_lines: bool,
    /// Sent as `Retry-After` (seconds) on error answers.
    pub retry_after: Option<u64>,
    /// Reply text; the default names the server.
    pub text: Option<String>,
    /// For streams: send exactly these content pieces, one event each (instead of `text` in `chunks`).
    pub pieces: Vec<String>,
    /// For streams: send these `delta` objects, one event each (reasoning, tool calls), instead of content.
    pub deltas: Vec<Value>,
    /// For plain answers: this `message` object instead of one with `text` as its content.
    pub message: Option<Value>,
    /// Native formats: answer with a call of this tool (name, arguments) after the text.
    pub tool_call: Option<(String, Value)>,
    /// Native formats: the message of error answers (e.g. "prompt is too long").
    pub error_message: Option<String>,
    /// Native formats, streams: after this many text pieces, send the format's error event.
    pub error_after: Option<usize>,
    /// Gemini: block the prompt (`promptFeedback.blockReason: SAFETY`).
    pub blocked: bool,
    /// Anthropic: think this text first, in a thinking block signed `MOCK_SIGNATURE`.
    pub thinking: Option<String>,
    /// For plain answers: a 200 with exactly this body (something that is not an answer).
    pub plain_body: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            head_delay: Duration::ZERO,
            first_token_delay: Duration::ZERO,
            chunks: 4,
            chunk_delay: Duration::ZERO,
            drop_after: None,
            stall_after: None,
            end_after: None,
            cut_plain_at: None,
            stall_plain: false,
            chunked_plain: false,
            cr_lines: false,
            retry_after: None,
            text: None,
            pieces: Vec::new(),
            deltas: Vec::new(),
            message: None,
            tool_call: None,
            error_message: None,
            error_after: None,
            blocked: false,
            thinking: None,
            plain_body: None,
        }
    }
}

/// The wire format a mock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    OpenAi,
    /// Anthropic's Messages API; requires `x-api-key` and `anthropic-version`.
    Anthropic,
    /// Gemini's generateContent; requires `x-goog-api-key`.
    Gemini,
    /// Bedrock's Converse and ConverseStream (event-stream framing); requires a SigV4 `authorization`
    /// header of the right shape and `x-amz-date`.
    Bedrock,
}

pub(crate) struct State {
    pub(crate) name: String,
    speaks: Speaks,
    behavior: Mutex<Behavior>,
    bodies: Mutex<VecDeque<RecordedCall>>,
    calls: AtomicUsize,
    /// Streams whose client went away before the end.
    pub(crate) cancelled: AtomicUsize,
}

/// One call the mock received.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedCall {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running mock LLM; dropping it closes the listener and its connections.
pub struct MockLlm {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    connections: Arc<AtomicUsize>,
}

impl MockLlm {
    /// Start on a free loopback port.
    pub async fn start(name: &str) -> std::io::Result<MockLlm> {
        Self::start_on("127.0.0.1:0".parse().expect("static address"), name).await
    }

    /// Start on a free loopback port, speaking a provider's native format.
    pub async fn start_speaking(name: &str, speaks: Speaks) -> std::io::Result<MockLlm> {
        Self::start_with("127.0.0.1:0".parse().expect("static address"), name, speaks).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<MockLlm> {
        Self::start_with(addr, name, Speaks::OpenAi).await
    }

    async fn start_with(addr: SocketAddr, name: &str, speaks: Speaks) -> std::io::Result<MockLlm> {
        let state = Arc::new(State {
            name: name.to_string(),
            speaks,
            behavior: Mutex::new(Behavior::default()),
            bodies: Mutex::new(VecDeque::new()),
            calls: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
        });
        let served = state.clone();
        let crate::server::Served {
            addr,
            stop,
            connections,
        } = crate::server::serve(addr, move |req| handle(req, served.clone())).await?;
        Ok(MockLlm {
            addr,
            state,
            stop,
            connections,
        })
    }

    /// `http://ip:port/v1`, the base URL a provider config points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().expect("not poisoned") = behavior;
    }

    /// Calls to the API paths (health checks excluded).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::Relaxed)
    }

    /// TCP connections accepted: fewer than `calls` when the client (the gateway) reuses them.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Streams the client abandoned before the end.
    pub fn cancelled_streams(&self) -> usize {
        self.state.cancelled.load(Ordering::Relaxed)
    }

    /// The recorded calls, oldest first (the last 100).
    pub fn recorded(&self) -> Vec<RecordedCall> {
        self.state
            .bodies
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect()
    }

    pub fn last(&self) -> Option<RecordedCall> {
        self.state
            .bodies
            .lock()
            .expect("not poisoned")
            .back()
            .cloned()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.stop();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;
pub(crate) type Chunk = Result<Frame<Bytes>, BoxError>;

pub(crate) fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap_or_else(|_| Response::new(empty()))
}

pub(crate) fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    if path.ends_with("/health") {
        return Ok(full(200, "text/plain", "ok"));
    }
    let behavior = state.behavior.lock().expect("not poisoned").clone();
    if path.ends_with("/models") {
        let models = json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "owned_by": state.name}]});
        return Ok(full(200, "application/json", models.to_string()));
    }
    state.calls.fetch_add(1, Ordering::Relaxed);
    {
        let mut bodies = state.bodies.lock().expect("not poisoned");
        if bodies.len() == 100 {
            bodies.pop_front();
        }
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        bodies.push_back(RecordedCall {
            path: path.clone(),
            headers,
            body: body.clone(),
        });
    }
    pause(behavior.head_delay).await;
    if state.speaks != Speaks::OpenAi {
        return Ok(crate::wires::answer(state.speaks, &parts, &body, behavior, state).await);
    }
    if behavior.status != 200 {
        let error = json!({"error": {"message": format!("mock {} failing with {}", state.name, behavior.status), "type": "server_error", "param": null, "code": null}});
        let mut response = full(behavior.status, "application/json", error.to_string());
        if let Some(seconds) = behavior.retry_after {
            response.headers_mut().insert("retry-after", seconds.into());
        }
        return Ok(response);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"]
        .as_str()
        .unwrap_or("mock-model")
        .to_string();
    let text = behavior
        .text
        .clone()
        .unwrap_or_else(|| format!("Hello from {}.", state.name));
    if path.ends_with("/embeddings") {
        let reply = json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}});
        return Ok(full(200, "application/json", reply.to_string()));
    }
    let stream = request["stream"].as_bool().unwrap_or(false);
    if let Some(body) = behavior.plain_body.clone().filter(|_| !stream) {
        return Ok(full(200, "application/json", body));
    }
    if !stream {
        let reply = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": behavior.message.clone().unwrap_or_else(|| json!({"role": "assistant", "content": text})), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        let reply = Bytes::from(reply.to_string());
        if behavior.chunked_plain {
            let (sender, receiver) = mpsc::channel::<Chunk>(2);
            let half = reply.len() / 2;
            tokio::spawn(async move {
                let _ = sender.send(Ok(Frame::data(reply.slice(..half)))).await;
                let _ = sender.send(Ok(Frame::data(reply.slice(half..)))).await;
            });
            return Ok(streamed_json(None, receiver));
        }
        let Some(cut) = behavior.cut_plain_at else {
            return Ok(full(200, "application/json", reply));
        };
        // The head promises the whole body; a body error after the first bytes makes hyper close the
        // connection short of it.
        let length = reply.len();
        let sent = reply.slice(..cut.min(length));
        let (sender, receiver) = mpsc::channel::<Chunk>(2);
        tokio::spawn(async move {
            let _ = sender.send(Ok(Frame::data(sent))).await;
            if behavior.stall_plain {
                // Holding the sender keeps the body open; the client's going away ends the wait.
                sender.closed().await;
                return;
            }
            // Let hyper write the head and the first bytes before the error closes the connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = sender.send(Err("mock cuts the body".into())).await;
        });
        return Ok(streamed_json(Some(length), receiver));
    }
    let (sender, receiver) = mpsc::channel::<Chunk>(4);
    let deltas: Vec<Value> = if !behavior.deltas.is_empty() {
        behavior.deltas.clone()
    } else if !behavior.pieces.is_empty() {
        behavior
            .pieces
            .iter()
            .map(|p| json!({ "content": p }))
            .collect()
    } else {
        split_text(&text, behavior.chunks.max(1))
            .into_iter()
            .map(|p| json!({ "content": p }))
            .collect()
    };
    let stream_state = state.clone();
    // An event ends with an empty line.
    let end = if behavior.cr_lines { "\r\r" } else { "\n\n" };
    tokio::spawn(async move {
        pause(behavior.first_token_delay).await;
        for (i, delta) in deltas.iter().enumerate() {
            if behavior.drop_after == Some(i) {
                // A body error makes hyper cut the connection without the terminating chunk.
                let _ = sender.send(Err("mock drops the stream".into())).await;
                return;
            }
            if behavior.stall_after == Some(i) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if behavior.end_after == Some(i) {
                // Dropping the sender ends the body with its terminating chunk: a clean end, cut short.
                return;
            }
            // `"usage": null` in every chunk but the last, as OpenAI writes it when asked for usage.
            let chunk = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": null}], "usage": null});
            if sender
                .send(Ok(Frame::data(Bytes::from(format!("data: {chunk}{end}")))))
                .await
                .is_err()
            {
                stream_state.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if i + 1 < deltas.len() {
                pause(behavior.chunk_delay).await;
            }
        }
        let last = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": deltas.len(), "total_tokens": 10 + deltas.len()}});
        let _ = sender
            .send(Ok(Frame::data(Bytes::from(format!(
                "data: {last}{end}data: [DONE]{end}"
            )))))
            .await;
    });
    let body = StreamBody::new(ReceiverStream(receiver));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| Response::new(empty())))
}

/// Sleep, but not at all for zero: a zero tokio sleep still waits for the next timer tick (about 1 ms).
pub(crate) async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// A 200 JSON answer whose body comes from `receiver`: with `Content-Length` when `length` is given, else
/// chunked.
fn streamed_json(length: Option<usize>, receiver: mpsc::Receiver<Chunk>) -> Response<Body> {
    let mut response = Response::builder()
        .status(200)
        .header("content-type", "application/json");
    if let Some(length) = length {
        response = response.header("content-length", length);
    }
    response
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream(receiver))))
        .unwrap_or_else(|_| Response::new(empty()))
}

/// Split text into `n` pieces of about equal size (on char boundaries); fewer only when the text is shorter.
pub(crate) fn split_text(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    (0..n)
        .map(|i| {
            chars[i * chars.len() / n..(i + 1) * chars.len() / n]
                .iter()
                .collect()
        })
        .collect()
}

pub(crate) struct ReceiverStream(pub(crate) mpsc::Receiver<Chunk>);

impl futures_core::Stream for ReceiverStream {
    type Item = Chunk;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::split_text;

    #[test]
    fn text_splits_into_exactly_the_chunks_asked_for() {
        // 10 characters in 6 pieces: sizes differ by at most one, and none is lost or empty.
        let pieces = split_text("abcdefghij", 6);
        assert_eq!(pieces.len(), 6);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        assert_eq!(pieces.concat(), "abcdefghij");
        // Fewer only when the text is shorter than the count.
        assert_eq!(split_text("ab", 5), ["a", "b"]);
        assert_eq!(split_text("", 3), [""]);
    }
}
