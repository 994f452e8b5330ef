//! Serve an AI route: read and check the body, choose the plan, then re-originate the request ourselves
//! through Pingora's HTTP connector (pooled, TLS with SNI to remote providers), trying candidates in order.
//! Connect errors, timeouts before the first byte, 429 (which also cools the deployment down), 5xx,
//! `context_length_exceeded` and a plain answer whose connection breaks while it is read whole (not one that
//! runs out of time) move on to the next candidate. Once bytes reach the client there is no retry:
//! a failing stream ends with an OpenAI error event. Chunks are relayed as they arrive; a client that goes
//! away drops the upstream connection.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method};
use pingora::connectors::http::v1::Connector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::answer::AnswerView;
use super::catalog::{Catalog, Model, Provider, ProviderKind};
use super::guard::apply_system_prompt;
use super::mock;
use super::openai::{self, check_request_shape, Endpoint};
use super::routing::{decide, AiPolicy, Plan};
use super::secrets::{SecretMasker, StreamMasker};
use super::usage::{Usage, UsageScanner};
use crate::edge::normalize::declared_length;
use crate::error::Rejection;
use crate::observe::metrics::METRICS;
use crate::respond::{self, Decor};
use crate::upstream::peer::{http_peer, PeerTimeouts};

static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));
static X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
static X_GATEWAY_PROFILE: HeaderName = HeaderName::from_static("x-gateway-profile");
static X_GATEWAY_DECISION: HeaderName = HeaderName::from_static("x-gateway-decision");
static X_GATEWAY_ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");

/// Build the provider connector ahead of the first request (see `ai::warm_up`).
pub fn warm_up() {
    LazyLock::force(&CONNECTOR);
}

/// What happened, for the access log and metrics.
#[derive(Debug, Default)]
pub struct AiOutcome {
    /// The model (and so the provider) that answered, or was tried last.
    pub model: Option<Arc<Model>>,
    pub decision: Option<Cow<'static, str>>,
    pub attempts: u32,
    pub error: Option<&'static str>,
    /// Tokens the provider reported, and their cost from the catalog's prices.
    pub usage: Option<Usage>,
    pub cost: Option<f64>,
}

impl AiOutcome {
    /// Record the usage of an answer from `model`, in the outcome and the model's counters.
    fn account(&mut self, model: &Model, usage: Usage) {
        model.metrics.prompt_tokens.inc_by(usage.prompt_tokens);
        model
            .metrics
            .completion_tokens
            .inc_by(usage.completion_tokens);
        self.cost = usage.cost(model.input_price, model.output_price);
        if let Some(cost) = self.cost {
            model.metrics.cost.inc_by(cost);
        }
        self.usage = Some(usage);
    }
}

/// The request-independent inputs of one AI request.
pub struct AiRequest<'a> {
    pub catalog: &'a Catalog,
    pub policy: &'a AiPolicy,
    pub request_id: &'a HeaderValue,
    /// What every answer carries (request id, rate-limit headers, the route's response edits, dialect).
    pub decor: Decor<'a>,
}

/// Answer an AI request completely (the proxy phase then only logs).
pub async fn serve(session: &mut Session, request: AiRequest<'_>) -> pingora::Result<AiOutcome> {
    let mut outcome = AiOutcome::default();
    match prepare_and_relay(session, &request, &mut outcome).await {
        Ok(()) => Ok(outcome),
        Err(Failure::Answer(error)) => {
            outcome.error = Some(error.code);
            write_error(session, &request, &outcome, &error).await?;
            Ok(outcome)
        }
        Err(Failure::Io(e)) => Err(e),
    }
}

enum Failure {
    /// Answer the client with this error (nothing was sent yet).
    Answer(Rejection),
    /// Writing to the client failed.
    Io(Box<pingora::Error>),
}

/// How relaying one candidate's answer ended.
enum Relayed {
    /// The client has its answer (or went away).
    Done,
    /// The answer broke off before anything reached the client (why): the next candidate may answer.
    BrokeOff(String),
}

impl From<Rejection> for Failure {
    fn from(error: Rejection) -> Self {
        Failure::Answer(error)
    }
}

impl From<Box<pingora::Error>> for Failure {
    fn from(error: Box<pingora::Error>) -> Self {
        Failure::Io(error)
    }
}

async fn prepare_and_relay(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
) -> Result<(), Failure> {
    let req = session.req_header();
    let endpoint = Endpoint::from_path(req.uri.path()).ok_or_else(|| {
        Rejection::typed(
            404,
            "invalid_request_error",
            "unknown_endpoint",
            format!("no such endpoint: {}", req.uri.path()),
        )
    })?;
    if endpoint == Endpoint::Models {
        if req.method != Method::GET {
            return Err(Rejection::typed(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "use GET for /models",
            )
            .into());
        }
        let body = models_list(request.catalog, request.policy);
        return write_json(session, request, outcome, 200, body).await;
    }
    if req.method != Method::POST {
        return Err(Rejection::typed(
            405,
            "invalid_request_error",
            "method_not_allowed",
            "use POST",
        )
        .into());
    }
    // JSON, no type at all, or curl's `-d` default (form-urlencoded) whose body is JSON all pass; any other
    // declared type is refused.
    let json_content = match req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(value) => {
            let value = value.trim_start().as_bytes();
            let starts = |prefix: &str| {
                value
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
            };
            starts("application/json") || starts("application/x-www-form-urlencoded")
        }
    };
    if !json_content {
        return Err(Rejection::typed(
            415,
            "invalid_request_error",
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        )
        .into());
    }
    let raw = read_body(session, request.catalog.max_body_size).await?;
    let mut body: Map<String, Value> =
        serde_json::from_slice(&raw).map_err(|e| openai::invalid_json(&e.to_string()))?;
    check_request_shape(endpoint, &body)?;
    let report = request.catalog.guards.inspect(&mut body)?;
    let plan = decide(
        request.catalog,
        &mut body,
        &session.req_header().headers,
        request.policy,
        &report,
    )?;
    // The route's system prompt wins over the profile's, which wins over the global one.
    let profile_prompt = plan
        .profile
        .as_ref()
        .and_then(|p| request.catalog.profile_prompts.get(p));
    if let Some(prompt) = request
        .policy
        .system_prompt
        .as_ref()
        .or(profile_prompt)
        .or(request.catalog.guards.system_prompt.as_ref())
    {
        apply_system_prompt(&mut body, prompt);
    }
    outcome.decision = Some(plan.decision.clone());
    relay(session, request, outcome, endpoint, body, &plan).await
}

/// Read the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, Failure> {
    let declared = declared_length(session.req_header());
    if declared.is_some_and(|len| len > limit) {
        session.set_keepalive(None);
        return Err(openai::body_too_large(limit).into());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit) as usize);
    while let Some(chunk) = session.read_request_body().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            session.set_keepalive(None);
            return Err(openai::body_too_large(limit).into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn models_list(catalog: &Catalog, policy: &AiPolicy) -> Bytes {
    let data: Vec<Value> = catalog
        .models
        .iter()
        .filter(|m| m.provider.enabled && (policy.allowed_models.is_empty() || policy.allowed_models.iter().any(|a| **a == *m.name)))
        .map(|m| {
            serde_json::json!({
                "id": &*m.name, "object": "model", "created": 0, "owned_by": &*m.provider.name,
                "context_window": m.context_window, "capabilities": m.capabilities, "local": m.local,
            })
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

/// Why one candidate did not answer (for the final error message).
fn describe(model: &Model, reason: &str) -> String {
    format!("{}/{} ({reason})", model.provider.name, model.name)
}

async fn relay(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
    endpoint: Endpoint,
    mut body: Map<String, Value>,
    plan: &Plan,
) -> Result<(), Failure> {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream && endpoint == Endpoint::ChatCompletions && !body.contains_key("stream_options") {
        // Ask for the final usage chunk, so streamed answers are accounted too.
        body.insert(
            "stream_options".to_string(),
            serde_json::json!({"include_usage": true}),
        );
    }
    let mut tried: Vec<String> = Vec::new();
    let mut any_attempt = false;
    for model in &plan.candidates {
        if outcome.attempts >= request.catalog.attempts {
            break;
        }
        let provider = &model.provider;
        if !provider.enabled {
            tried.push(describe(model, "provider disabled"));
            continue;
        }
        outcome.model = Some(model.clone());
        if provider.kind == ProviderKind::Mock {
            outcome.attempts += 1;
            return answer_mock(
                session, request, outcome, plan, endpoint, &body, model, stream,
            )
            .await;
        }
        let Some(cluster) = &provider.cluster else {
            continue;
        };
        let Some((index, addr)) = cluster.select(None, 0) else {
            tried.push(describe(model, "no healthy deployment"));
            continue;
        };
        outcome.attempts += 1;
        any_attempt = true;
        body.insert(
            "model".to_string(),
            Value::String(model.upstream_model.to_string()),
        );
        let payload = Bytes::from(
            serde_json::to_vec(&body).map_err(|e| openai::invalid_json(&e.to_string()))?,
        );
        let timeouts = PeerTimeouts {
            connect: provider.timeouts.connect,
            read: provider.timeouts.first_byte,
            idle: Duration::from_secs(30),
        };
        let peer = http_peer(cluster, &cluster.backends[index], addr, timeouts);
        match send(
            &peer,
            provider,
            index,
            endpoint,
            payload,
            stream,
            request.request_id,
        )
        .await
        {
            Ok(upstream) => {
                let head = response_head(&upstream)?;
                let status = head.status.as_u16();
                if status == 429 {
                    let wait = retry_after(head).unwrap_or(provider.cooldown);
                    cluster.cool_down(index, wait);
                    tried.push(describe(model, "429"));
                    continue;
                }
                if status >= 500 {
                    cluster.record_failure(index);
                    tried.push(describe(model, &status.to_string()));
                    continue;
                }
                if status == 400 || status == 413 {
                    let (upstream, text) = read_small_body(upstream).await;
                    if text.contains("context_length_exceeded") {
                        tried.push(describe(model, "context_length_exceeded"));
                        continue;
                    }
                    cluster.record_success(index);
                    return pass_error(session, request, outcome, plan, text, upstream).await;
                }
                cluster.record_success(index);
                match stream_back(session, request, outcome, plan, upstream, &peer, model).await? {
                    Relayed::Done => return Ok(()),
                    Relayed::BrokeOff(reason) => {
                        cluster.record_failure(index);
                        tried.push(describe(model, &reason));
                    }
                }
            }
            Err(reason) => {
                cluster.record_failure(index);
                tried.push(describe(model, &reason));
            }
        }
    }
    let (status, code) = if any_attempt {
        (502, "all_candidates_failed")
    } else {
        (503, "no_available_candidate")
    };
    Err(Rejection::typed(
        status,
        "server_error",
        code,
        format!("no candidate could answer; tried: {}", tried.join(", ")),
    )
    .into())
}

/// Send the request and read the response head within the first-byte timeout.
async fn send(
    peer: &HttpPeer,
    provider: &Provider,
    index: usize,
    endpoint: Endpoint,
    payload: Bytes,
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
            .authorization
            .iter()
            .map(|value| (&b"authorization"[..], value.as_bytes())),
    )
    .chain(
        provider
            .headers
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_bytes())),
    );
    let timeout = provider.timeouts.first_byte;
    let path = [
        deployment.base_path.as_bytes(),
        endpoint.upstream_path().as_bytes(),
    ];
    let mut upstream = write_h1(upstream, peer, &path, headers, &payload, timeout)
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
/// client would flush the head on its own,
/// which costs a second `sendto` and wakes the provider twice, and would build a header map only to
/// serialise it. The session is rebuilt around the same connection exactly as Pingora's connector builds
/// it, so reading the answer and returning the connection to the pool work as before (a POST that is not an
/// upgrade and keeps the connection alive). Path and header values were checked when the config loaded.
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

/// The provider's response head, which the session keeps once read (no copy is taken). `send` returns a
/// session only once its head is read, so the error is a guard, the one place that handles its absence.
fn response_head(upstream: &HttpSession) -> Result<&ResponseHeader, Failure> {
    upstream.resp_header().ok_or_else(|| {
        Rejection::typed(
            502,
            "server_error",
            "upstream_stream_error",
            "the provider's response head is missing",
        )
        .into()
    })
}

fn retry_after(head: &ResponseHeader) -> Option<Duration> {
    let value = head.headers.get("retry-after")?.to_str().ok()?;
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .map(|d| d.min(Duration::from_secs(3600)))
}

/// Read at most 64 KiB of an error body.
async fn read_small_body(mut upstream: HttpSession) -> (HttpSession, String) {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = upstream.read_body_bytes().await {
        text.extend_from_slice(&chunk);
        if text.len() > 64 * 1024 {
            break;
        }
    }
    (upstream, String::from_utf8_lossy(&text).into_owned())
}

/// Response head for the client: the decision headers and the provider's `Cache-Control`, through the one
/// writer's decor (which comes after them, so a route's edit wins).
fn client_head(
    status: u16,
    request: &AiRequest<'_>,
    outcome: &AiOutcome,
    plan: Option<&Plan>,
    content_type: Option<&HeaderValue>,
    cache_control: Option<&HeaderValue>,
) -> pingora::Result<ResponseHeader> {
    let mut result = Ok(());
    let head = respond::head(status, &request.decor, |headers| {
        headers.insert(
            CONTENT_TYPE,
            content_type
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/json")),
        );
        if let Some(cache) = cache_control {
            headers.insert(http::header::CACHE_CONTROL, cache.clone());
        }
        result = decision_headers(headers, outcome, plan);
    })?;
    result.map(|()| head)
}

/// The gateway's `x-gateway-*` headers: which model and provider answered, the profile, the decision and
/// the number of attempts.
fn decision_headers(
    headers: &mut http::HeaderMap,
    outcome: &AiOutcome,
    plan: Option<&Plan>,
) -> pingora::Result<()> {
    if let Some(model) = &outcome.model {
        headers.insert(X_GATEWAY_MODEL.clone(), model.name_header.clone());
        headers.insert(
            X_GATEWAY_PROVIDER.clone(),
            model.provider.name_header.clone(),
        );
    }
    // Profile and rule names were checked as header values when the config compiled; the fixed decisions
    // are static values, no copy.
    let text_value = |text: &str| {
        HeaderValue::from_str(text).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "header value", e)
        })
    };
    if let Some(profile) = plan.and_then(|p| p.profile.as_deref()) {
        headers.insert(X_GATEWAY_PROFILE.clone(), text_value(profile)?);
    }
    match &outcome.decision {
        Some(Cow::Borrowed(decision)) => {
            headers.insert(
                X_GATEWAY_DECISION.clone(),
                HeaderValue::from_static(decision),
            );
        }
        Some(Cow::Owned(decision)) => {
            headers.insert(X_GATEWAY_DECISION.clone(), text_value(decision)?);
        }
        None => {}
    }
    headers.insert(
        X_GATEWAY_ATTEMPTS.clone(),
        HeaderValue::from(outcome.attempts),
    );
    Ok(())
}

async fn write_error(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &AiOutcome,
    error: &Rejection,
) -> pingora::Result<()> {
    let mut result = Ok(());
    respond::reject_with(session, &request.decor, error, |headers| {
        result = decision_headers(headers, outcome, None);
    })
    .await?;
    result
}

async fn write_json(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &AiOutcome,
    status: u16,
    body: Bytes,
) -> Result<(), Failure> {
    let head = client_head(status, request, outcome, None, None, None)?;
    respond::write(session, head, body).await?;
    Ok(())
}

/// A provider's own client error (not worth a fallback) goes back as it was.
async fn pass_error(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
    plan: &Plan,
    text: String,
    upstream: HttpSession,
) -> Result<(), Failure> {
    let upstream_head = response_head(&upstream)?;
    outcome.error = Some("provider_error");
    let body = Bytes::from(text);
    let head = client_head(
        upstream_head.status.as_u16(),
        request,
        outcome,
        Some(plan),
        upstream_head.headers.get(CONTENT_TYPE),
        None,
    )?;
    respond::write(session, head, body).await?;
    Ok(())
}

/// Plain answers up to this size are read whole and sent in one write.
const WHOLE_ANSWER_LIMIT: usize = 1 << 20;

/// 204 and 304 answers have no body, so no framing header either.
fn bodiless(head: &ResponseHeader) -> bool {
    matches!(head.status.as_u16(), 204 | 304)
}

/// A body whose length is not known up front goes chunked to HTTP/1.1 clients, so their connection stays
/// usable; without it Pingora ends the body by closing the connection. HTTP/2 frames bodies itself (Pingora
/// drops the header there) and HTTP/1.0 has no chunked encoding.
fn frame_unknown_length(session: &Session, head: &mut ResponseHeader) -> pingora::Result<()> {
    if session.req_header().version == http::Version::HTTP_11 && !bodiless(head) {
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Relay the provider's answer. A plain answer (masked, or up to 1 MiB) is read whole, masked, and written with
/// its length in one go (one write to the client instead of three); if its connection breaks, nothing was sent
/// yet and the next candidate is tried (if it runs out of time, the client gets a 502). A larger unmasked
/// plain answer streams through with the provider's length. An event stream goes on event by event; no retry
/// from there on: a failure ends it with an error event, never a clean-looking end.
#[allow(clippy::too_many_arguments)]
async fn stream_back(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
    plan: &Plan,
    mut upstream: HttpSession,
    peer: &HttpPeer,
    model: &Model,
) -> Result<Relayed, Failure> {
    let provider = &*model.provider;
    let (mut head, is_sse, length) = {
        let upstream_head = response_head(&upstream)?;
        let content_type = upstream_head.headers.get(CONTENT_TYPE);
        let is_sse = content_type
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let head = client_head(
            upstream_head.status.as_u16(),
            request,
            outcome,
            Some(plan),
            content_type,
            upstream_head.headers.get(http::header::CACHE_CONTROL),
        )?;
        let length = upstream_head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        (head, is_sse, length)
    };
    let deadline = Instant::now() + provider.timeouts.total;
    let read_timeout = || {
        let left = deadline.saturating_duration_since(Instant::now());
        Some(
            provider
                .timeouts
                .first_byte
                .min(left.max(Duration::from_millis(1))),
        )
    };
    let secrets = request.catalog.secrets.as_ref();
    // Read whole when masking needs the whole JSON, or when the answer is small enough to cost nothing to
    // hold; a large unmasked answer (embeddings in bulk) streams through with its length.
    if !is_sse && (secrets.is_some() || length.is_some_and(|n| n <= WHOLE_ANSWER_LIMIT)) {
        let limit = usize::try_from(request.catalog.max_answer_size).unwrap_or(usize::MAX);
        let too_large = || {
            log::warn!(
                "AI provider {} answered more than ai.max_answer_size ({limit} bytes); refused",
                provider.name
            );
            Failure::from(Rejection::typed(
                502,
                "server_error",
                "upstream_answer_too_large",
                format!(
                    "the provider's answer is larger than this gateway holds to inspect it \
                     (ai.max_answer_size, {limit} bytes)"
                ),
            ))
        };
        if length.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let capacity = length.unwrap_or(0).min(WHOLE_ANSWER_LIMIT);
        let body = match read_whole(&mut upstream, capacity, limit, &read_timeout).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(too_large()),
            Err(e) => {
                log::warn!(
                    "AI provider {} broke off its answer: {}",
                    provider.name,
                    e.etype().as_str()
                );
                // Out of time: another attempt would start the whole wait again.
                if matches!(e.etype(), pingora::ErrorType::ReadTimedout) {
                    return Err(timed_out("the provider did not finish the answer in time").into());
                }
                // Nothing reached the client yet: the next candidate may still answer.
                let reason = format!("answer broke off: {}", e.etype().as_str());
                return Ok(Relayed::BrokeOff(reason));
            }
        };
        let body = account_and_mask(outcome, model, secrets, body);
        if !bodiless(&head) {
            head.insert_header(CONTENT_LENGTH, body.len())?;
        }
        let written = write_whole(session, head, body).await;
        // The provider connection goes back to the pool after the client has its answer (pooling it is
        // not on the answer's path), whether or not the client was still there to take it. While a slow
        // client takes a large answer, the connection stays out of the pool.
        CONNECTOR
            .release_http_session(upstream, peer, Some(Duration::from_secs(30)))
            .await;
        written?;
        return Ok(Relayed::Done);
    }

    let mut usage = UsageScanner::new(is_sse);
    match length {
        Some(length) if !is_sse => head.insert_header(CONTENT_LENGTH, length)?,
        _ => frame_unknown_length(session, &mut head)?,
    }
    // The head goes out with the first bytes for the client: until then nothing was sent, and a provider
    // that fails (or ends its stream) before its first event can still be replaced by the next candidate.
    let mut head = Some(head);
    let mut masker = secrets.filter(|_| is_sse).map(StreamMasker::new);
    loop {
        upstream.read_timeout = read_timeout();
        match upstream.read_body_bytes().await {
            Ok(Some(chunk)) => {
                usage.observe(&chunk);
                let chunk = match &mut masker {
                    Some(masker) => masker.push(&chunk),
                    None => chunk,
                };
                if chunk.is_empty() {
                    continue;
                }
                let sent = match head.take() {
                    Some(head) => session.write_response_header(Box::new(head), false).await,
                    None => Ok(()),
                };
                if sent.is_err()
                    || session
                        .write_response_body(Some(chunk), false)
                        .await
                        .is_err()
                {
                    // The client went away: dropping `upstream` closes the provider connection.
                    outcome.error = Some("client_disconnected");
                    return Ok(Relayed::Done);
                }
            }
            Ok(None) if is_sse && !usage.ended_at_eof() => {
                // A clean close without `[DONE]`, a finish reason or an error: the answer is cut short.
                // What was streamed is accounted all the same.
                if let Some(found) = usage.finish() {
                    outcome.account(model, found);
                }
                log::warn!(
                    "AI provider {} ended its stream without a final event",
                    provider.name
                );
                METRICS
                    .ai_provider_errors
                    .with_label_values(&[&*provider.name, "stream_incomplete"])
                    .inc();
                if head.is_some() {
                    return Ok(Relayed::BrokeOff(
                        "stream ended before its final event".to_string(),
                    ));
                }
                outcome.error = Some("upstream_stream_incomplete");
                let mut tail = masker
                    .as_mut()
                    .map(StreamMasker::finish)
                    .unwrap_or_default();
                tail.extend_from_slice(&stream_error(
                    "the provider's stream ended before the answer was complete",
                ));
                let _ = session
                    .write_response_body(Some(Bytes::from(tail)), false)
                    .await;
                let _ = session.write_response_body(None, true).await;
                return Ok(Relayed::Done);
            }
            Ok(None) => {
                if let Some(found) = usage.finish() {
                    outcome.account(model, found);
                }
                if let Some(head) = head.take() {
                    session.write_response_header(Box::new(head), false).await?;
                }
                let tail = masker
                    .as_mut()
                    .map(StreamMasker::finish)
                    .unwrap_or_default();
                if !tail.is_empty() {
                    session
                        .write_response_body(Some(Bytes::from(tail)), false)
                        .await?;
                }
                session.write_response_body(None, true).await?;
                CONNECTOR
                    .release_http_session(upstream, peer, Some(Duration::from_secs(30)))
                    .await;
                return Ok(Relayed::Done);
            }
            Err(e) => {
                if let Some(found) = usage.finish() {
                    outcome.account(model, found);
                }
                log::warn!(
                    "AI provider {} failed mid-response: {}",
                    provider.name,
                    e.etype().as_str()
                );
                METRICS
                    .ai_provider_errors
                    .with_label_values(&[&*provider.name, "stream_error"])
                    .inc();
                if head.is_some() {
                    // Nothing reached the client: out of time is final (another attempt would start the
                    // whole wait again), anything else goes to the next candidate.
                    if matches!(e.etype(), pingora::ErrorType::ReadTimedout) {
                        return Err(timed_out("the provider did not answer in time").into());
                    }
                    return Ok(Relayed::BrokeOff(format!(
                        "failed before its first event: {}",
                        e.etype().as_str()
                    )));
                }
                outcome.error = Some("upstream_stream_error");
                if !is_sse {
                    // A plain answer already on its way can only be cut short.
                    session.set_keepalive(None);
                    return Ok(Relayed::Done);
                }
                let _ = session
                    .write_response_body(
                        Some(stream_error(
                            "the provider failed while streaming the answer",
                        )),
                        false,
                    )
                    .await;
                let _ = session.write_response_body(None, true).await;
                return Ok(Relayed::Done);
            }
        }
    }
}

/// The SSE error event that ends a stream the provider broke.
fn stream_error(message: &'static str) -> Bytes {
    Rejection::typed(502, "server_error", "upstream_stream_error", message).sse_event()
}

/// A provider out of time: 504 `upstream_timeout`, as on proxy routes (`ErrorKind::UpstreamTimeout`).
fn timed_out(message: &'static str) -> Rejection {
    let kind = crate::error::ErrorKind::UpstreamTimeout;
    Rejection::typed(kind.status(), "server_error", kind.code(), message)
}

/// Send a whole answer, head then body.
async fn write_whole(
    session: &mut Session,
    head: ResponseHeader,
    body: Vec<u8>,
) -> pingora::Result<()> {
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Read a plain answer to its end; `None` when it grows past `limit` bytes (the rest is left unread, so the
/// connection is not reused).
async fn read_whole(
    upstream: &mut HttpSession,
    capacity: usize,
    limit: usize,
    read_timeout: &impl Fn() -> Option<Duration>,
) -> pingora::Result<Option<Vec<u8>>> {
    let mut body = Vec::with_capacity(capacity);
    loop {
        upstream.read_timeout = read_timeout();
        match upstream.read_body_bytes().await? {
            Some(chunk) if body.len() + chunk.len() > limit => return Ok(None),
            Some(chunk) => body.extend_from_slice(&chunk),
            None => return Ok(Some(body)),
        }
    }
}

/// Account a whole answer's usage and mask its texts: one borrowed parse serves both, and the body is
/// rewritten only when masking changes a text.
fn account_and_mask(
    outcome: &mut AiOutcome,
    model: &Model,
    secrets: Option<&SecretMasker>,
    body: Vec<u8>,
) -> Vec<u8> {
    let answer = AnswerView::parse(&body);
    if let Some(found) = Usage::from_read_json(&body, answer.as_ref()) {
        outcome.account(model, found);
    }
    let masked = secrets.and_then(|secrets| secrets.mask_read_body(&body, answer.as_ref()));
    drop(answer);
    masked.unwrap_or(body)
}

#[allow(clippy::too_many_arguments)]
async fn answer_mock(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
    plan: &Plan,
    endpoint: Endpoint,
    body: &Map<String, Value>,
    model: &Model,
    stream: bool,
) -> Result<(), Failure> {
    let id = format!("chatcmpl-{}", request.request_id.to_str().unwrap_or("mock"));
    let prompt_tokens = mock::estimate_tokens(serde_json::to_vec(body).map_or(0, |b| b.len()));
    let text = mock::reply_text(&model.upstream_model, body);
    if endpoint != Endpoint::Embeddings {
        let completion_tokens = mock::estimate_tokens(text.len()) as u64;
        outcome.account(
            model,
            Usage {
                prompt_tokens: prompt_tokens as u64,
                completion_tokens,
            },
        );
    }
    let reply = match endpoint {
        Endpoint::Embeddings => mock::embeddings(&model.upstream_model, body),
        Endpoint::Completions => {
            mock::text_completion(&id, &model.upstream_model, &text, prompt_tokens)
        }
        Endpoint::ChatCompletions if stream => {
            let event_stream = HeaderValue::from_static("text/event-stream");
            let mut head =
                client_head(200, request, outcome, Some(plan), Some(&event_stream), None)?;
            frame_unknown_length(session, &mut head)?;
            session.write_response_header(Box::new(head), false).await?;
            let settings = model.provider.mock;
            let mut masker = request.catalog.secrets.as_ref().map(StreamMasker::new);
            let events = mock::chat_stream_events(
                &id,
                &model.upstream_model,
                &text,
                settings.chunks,
                prompt_tokens,
            );
            for (i, event) in events.into_iter().enumerate() {
                if i > 0 && !settings.chunk_delay.is_zero() {
                    tokio::time::sleep(settings.chunk_delay).await;
                }
                let bytes = match &mut masker {
                    Some(masker) => masker.push(&Bytes::from(event)),
                    None => Bytes::from(event),
                };
                if !bytes.is_empty()
                    && session
                        .write_response_body(Some(bytes), false)
                        .await
                        .is_err()
                {
                    outcome.error = Some("client_disconnected");
                    return Ok(());
                }
            }
            session.write_response_body(None, true).await?;
            return Ok(());
        }
        Endpoint::ChatCompletions | Endpoint::Models => {
            mock::chat_completion(&id, &model.upstream_model, &text, prompt_tokens)
        }
    };
    let reply = reply.to_string().into_bytes();
    let reply = match &request.catalog.secrets {
        Some(secrets) => secrets.mask_body(&reply).unwrap_or(reply),
        None => reply,
    };
    let body = Bytes::from(reply);
    let mut head = client_head(200, request, outcome, Some(plan), None, None)?;
    head.insert_header(CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
