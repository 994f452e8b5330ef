//! What an AI client gets back, in its own dialect: the response head (decision headers, the provider's
//! `Cache-Control`, the route's decor), whole answers (usage accounted, secrets masked, rendered for the
//! client), provider errors, and streams (decoded from the provider's format, watched for usage, masked, and
//! encoded for the client) — the stream's head goes out with its first bytes, so a provider that fails
//! before then can still be replaced.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::answer::AnswerView;
use super::catalog::Model;
use super::dialect::{anthropic, Operation};
use super::routing::Plan;
use super::secrets::{SecretMasker, StreamMasker};
use super::usage::Usage;
use crate::error::Rejection;
use crate::respond::{self, Decor};

static X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
static X_GATEWAY_PROFILE: HeaderName = HeaderName::from_static("x-gateway-profile");
static X_GATEWAY_DECISION: HeaderName = HeaderName::from_static("x-gateway-decision");
static X_GATEWAY_ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");

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
    pub fn account(&mut self, model: &Model, usage: Usage) {
        let metrics = &model.metrics;
        metrics.prompt_tokens.inc_by(usage.prompt_tokens);
        metrics.completion_tokens.inc_by(usage.completion_tokens);
        // Most answers use no prompt cache: no atomic add of nothing.
        if usage.cache_read_tokens > 0 {
            metrics.cache_read_tokens.inc_by(usage.cache_read_tokens);
        }
        if usage.cache_creation_tokens > 0 {
            metrics
                .cache_creation_tokens
                .inc_by(usage.cache_creation_tokens);
        }
        self.cost = usage.cost(&model.prices);
        if let Some(cost) = self.cost {
            metrics.cost.inc_by(cost);
        }
        self.usage = Some(usage);
    }
}

/// The request-independent inputs of one AI request.
pub struct AiRequest<'a> {
    pub catalog: &'a super::catalog::Catalog,
    pub policy: &'a super::routing::AiPolicy,
    pub request_id: &'a HeaderValue,
    /// What every answer carries (request id, rate-limit headers, the route's response edits, dialect).
    pub decor: Decor<'a>,
}

/// How serving an AI request failed.
pub enum Failure {
    /// Answer the client with this error (nothing was sent yet).
    Answer(Rejection),
    /// Writing to the client failed.
    Io(Box<pingora::Error>),
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

/// Response head for the client: the decision headers and the provider's `Cache-Control`, through the one
/// writer's decor (which comes after them, so a route's edit wins).
pub fn client_head(
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

pub async fn write_error(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &AiOutcome,
    plan: Option<&Plan>,
    error: &Rejection,
) -> pingora::Result<()> {
    let mut result = Ok(());
    respond::reject_with(session, &request.decor, error, |headers| {
        result = decision_headers(headers, outcome, plan);
    })
    .await?;
    result
}

pub async fn write_json(
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

/// Account a whole answer's usage and mask its texts: one borrowed parse serves both, and the body is
/// rewritten only when masking changes a text.
pub fn account_and_mask(
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

/// A whole answer in the client's dialect.
pub fn render_whole(op: Operation, body: Vec<u8>) -> Option<Vec<u8>> {
    match op {
        Operation::Messages => anthropic::render_answer(&body),
        _ => Some(body),
    }
}

/// Send a whole answer, head then body.
pub async fn write_whole(
    session: &mut Session,
    head: ResponseHeader,
    body: Vec<u8>,
) -> pingora::Result<()> {
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// 204 and 304 answers have no body, so no framing header either.
pub fn bodiless(head: &ResponseHeader) -> bool {
    matches!(head.status.as_u16(), 204 | 304)
}

/// A body whose length is not known up front goes chunked to HTTP/1.1 clients, so their connection stays
/// usable; without it Pingora ends the body by closing the connection. HTTP/2 frames bodies itself (Pingora
/// drops the header there) and HTTP/1.0 has no chunked encoding.
pub fn frame_unknown_length(session: &Session, head: &mut ResponseHeader) -> pingora::Result<()> {
    if session.req_header().version == http::Version::HTTP_11 && !bodiless(head) {
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// The client's side of a stream: common-form events, masked, encoded in the client's dialect, behind a
/// head that goes out with the first bytes.
pub struct ClientStream<'a> {
    head: Option<ResponseHeader>,
    /// What went to the client so far ends an event (a blank line), or nothing went yet.
    at_boundary: bool,
    masker: Option<StreamMasker<'a>>,
    encoder: Option<anthropic::StreamEncoder>,
}

impl<'a> ClientStream<'a> {
    /// `prompt_estimate`: the request's prompt tokens, estimated, for an Anthropic client's `message_start`.
    pub fn new(
        head: ResponseHeader,
        op: Operation,
        secrets: Option<&'a SecretMasker>,
        prompt_estimate: u64,
    ) -> Self {
        ClientStream {
            head: Some(head),
            at_boundary: true,
            masker: secrets.map(StreamMasker::new),
            encoder: (op == Operation::Messages)
                .then(|| anthropic::StreamEncoder::new(prompt_estimate)),
        }
    }

    /// Nothing has reached the client yet.
    pub fn unsent(&self) -> bool {
        self.head.is_some()
    }

    /// Common-form bytes as the client gets them (empty while the masker holds text back).
    fn translate(&mut self, chunk: Bytes) -> Bytes {
        let chunk = match &mut self.masker {
            Some(masker) => masker.push(&chunk),
            None => chunk,
        };
        match &mut self.encoder {
            Some(encoder) if !chunk.is_empty() => Bytes::from(encoder.push(&chunk)),
            _ => chunk,
        }
    }

    /// Send common-form bytes; `false` when the client went away.
    pub async fn send(&mut self, session: &mut Session, chunk: Bytes) -> bool {
        let chunk = self.translate(chunk);
        if chunk.is_empty() {
            return true;
        }
        self.write(session, chunk).await
    }

    async fn write(&mut self, session: &mut Session, chunk: Bytes) -> bool {
        // An event ends with an empty line, whichever line end the provider uses.
        self.at_boundary =
            chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n") || chunk.ends_with(b"\r\r");
        if let Some(head) = self.head.take() {
            if session
                .write_response_header(Box::new(head), false)
                .await
                .is_err()
            {
                return false;
            }
        }
        session
            .write_response_body(Some(chunk), false)
            .await
            .is_ok()
    }

    /// End the stream: what the masker held back, then, when the stream failed, `error` as an error event in
    /// the client's dialect; an Anthropic client's stream is closed properly either way (its last block and
    /// `message_delta`/`message_stop` when the provider's stream ended without them), and an event the
    /// provider broke off in the middle is dropped, not glued to the error.
    pub async fn end(
        &mut self,
        session: &mut Session,
        error: Option<&Rejection>,
    ) -> pingora::Result<()> {
        let mut tail = self
            .masker
            .as_mut()
            .map(StreamMasker::finish)
            .unwrap_or_default();
        match &mut self.encoder {
            Some(encoder) => {
                let mut out = if tail.is_empty() {
                    Vec::new()
                } else {
                    encoder.push(&tail)
                };
                out.extend_from_slice(&encoder.end(error));
                tail = out;
            }
            None => {
                if let Some(error) = error {
                    if !self.at_boundary && !tail.ends_with(b"\n\n") {
                        // A blank line ends what the provider broke off, so the error is an event of its own.
                        tail.extend_from_slice(b"\n\n");
                    }
                    tail.extend_from_slice(&error.sse_event());
                }
            }
        }
        if let Some(head) = self.head.take() {
            session.write_response_header(Box::new(head), false).await?;
        }
        if !tail.is_empty() {
            session
                .write_response_body(Some(Bytes::from(tail)), false)
                .await?;
        }
        session.write_response_body(None, true).await
    }
}
