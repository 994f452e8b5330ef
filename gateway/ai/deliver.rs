//! One candidate's answer on its way to the client: a plain answer read whole, put in the common form,
//! accounted, masked and rendered in the client's dialect; a stream decoded from the provider's format,
//! watched for usage and its proper end, masked and encoded for the client, with its head held back until
//! the first bytes for the client so a provider that fails before then can still be replaced; a provider's
//! own client error, in the client's dialect; and the answers of providers that answer in the gateway (the
//! mock).

use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::proxy::Session;
use serde_json::{Map, Value};

use super::catalog::Model;
use super::dialect::Operation;
use super::provider::{Local, StreamDecoder, Unanswered, Wire};
use super::reply::{
    account_and_mask, bodiless, client_head, frame_unknown_length, render_whole, write_error,
    write_whole, AiOutcome, AiRequest, ClientStream, Failure,
};
use super::routing::Plan;
use super::transport;
use super::usage::UsageScanner;
use crate::error::{Dialect, Rejection};
use crate::observe::metrics::METRICS;
use crate::respond;

/// How relaying one candidate's answer ended.
pub enum Relayed {
    /// The client has its answer (or went away).
    Done,
    /// The answer broke off before anything reached the client (why): the next candidate may answer.
    BrokeOff(String),
}

/// The error that ends a stream the provider broke (written in the client's dialect).
fn stream_error(message: &'static str) -> Rejection {
    Rejection::typed(502, "server_error", "upstream_stream_error", message)
}

/// A provider out of time: 504 `upstream_timeout`, as on proxy routes (`ErrorKind::UpstreamTimeout`).
fn timed_out(message: &'static str) -> Rejection {
    let kind = crate::error::ErrorKind::UpstreamTimeout;
    Rejection::typed(kind.status(), "server_error", kind.code(), message)
}

/// Plain answers up to this size are read whole and sent in one write.
const WHOLE_ANSWER_LIMIT: usize = 1 << 20;

/// One candidate's answer (or its client error) on its way to the client.
pub struct Answer<'r, 'a> {
    pub request: &'r AiRequest<'a>,
    pub plan: &'r Plan,
    pub op: Operation,
    pub wire: &'static dyn Wire,
    pub model: &'r Model,
    /// The prompt's tokens, estimated (for an Anthropic client's `message_start`; 0 for other clients).
    pub prompt_estimate: u64,
}

impl Answer<'_, '_> {
    /// Relay the provider's answer. A plain answer (masked, translated, or up to 1 MiB) is read whole, and
    /// written with its length in one go; if its connection breaks, nothing was sent yet and the next
    /// candidate is tried (if it runs out of time, the client gets a 504). A larger plain answer that needs
    /// neither streams through with the provider's length. An event stream goes on event by event.
    pub async fn relay(
        &self,
        session: &mut Session,
        outcome: &mut AiOutcome,
        upstream: &mut HttpSession,
        reusable: &mut bool,
    ) -> Result<Relayed, Failure> {
        let provider = &*self.model.provider;
        let decoder = self.wire.stream_decoder(&self.model.upstream_model);
        // Answers the client gets in another form than the provider's need a type of their own.
        let translated = decoder.is_some() || self.op.dialect() != Dialect::OpenAi;
        let (head, is_sse, length) = {
            let upstream_head = transport::response_head(upstream)?;
            let content_type = upstream_head.headers.get(CONTENT_TYPE);
            let is_sse = content_type
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| self.wire.is_stream(v));
            let own_type = match (translated, is_sse) {
                (false, _) => content_type.cloned(),
                (true, true) => Some(HeaderValue::from_static("text/event-stream")),
                (true, false) => None,
            };
            let head = client_head(
                upstream_head.status.as_u16(),
                self.request,
                outcome,
                Some(self.plan),
                own_type.as_ref(),
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
        // When a read that begins at `from` runs out of time: the first-byte timeout, within the total.
        let due = |from: Instant| (from + provider.timeouts.first_byte).min(deadline);
        let secrets = self.request.catalog.secrets.as_ref();
        if !is_sse
            && (secrets.is_some() || translated || length.is_some_and(|n| n <= WHOLE_ANSWER_LIMIT))
        {
            return self
                .whole(session, outcome, upstream, reusable, head, length, &due)
                .await;
        }
        let mut head = head;
        match length {
            Some(length) if !is_sse => head.insert_header(CONTENT_LENGTH, length)?,
            _ => frame_unknown_length(session, &mut head)?,
        }
        let client = ClientStream::new(
            head,
            self.op,
            secrets.filter(|_| is_sse),
            self.prompt_estimate,
        );
        let decoder = decoder.filter(|_| is_sse);
        self.stream(
            session, outcome, upstream, reusable, client, decoder, is_sse, &due,
        )
        .await
    }

    /// Read a plain answer whole, put it in the common form, account and mask it, render it for the client
    /// and write it with its length.
    #[allow(clippy::too_many_arguments)]
    async fn whole(
        &self,
        session: &mut Session,
        outcome: &mut AiOutcome,
        upstream: &mut HttpSession,
        reusable: &mut bool,
        mut head: pingora::http::ResponseHeader,
        length: Option<usize>,
        due: &impl Fn(Instant) -> Instant,
    ) -> Result<Relayed, Failure> {
        let provider = &*self.model.provider;
        let limit = usize::try_from(self.request.catalog.max_answer_size).unwrap_or(usize::MAX);
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
        let body = match transport::read_whole(upstream, capacity, limit, due).await {
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
        // Read to its end: the connection can serve the next request, once the client has this answer.
        *reusable = true;
        let body = match self.wire.whole_answer(&body, &self.model.upstream_model) {
            Ok(Some(common)) => common,
            Ok(None) => body,
            Err(Unanswered::Unreadable(why)) => {
                log::warn!("AI provider {}: {why}", provider.name);
                return Ok(Relayed::BrokeOff("unreadable answer".to_string()));
            }
            Err(Unanswered::Refused(refusal)) => return Err(refusal.into()),
        };
        let secrets = self.request.catalog.secrets.as_ref();
        let Some(body) = render_whole(
            self.op,
            account_and_mask(outcome, self.model, secrets, body),
        ) else {
            // Not an answer the client's dialect can be written from: the next candidate may answer.
            log::warn!(
                "AI provider {} answered with something that is not a chat completion",
                provider.name
            );
            return Ok(Relayed::BrokeOff("unreadable answer".to_string()));
        };
        if !bodiless(&head) {
            head.insert_header(CONTENT_LENGTH, body.len())?;
        }
        write_whole(session, head, body).await?;
        Ok(Relayed::Done)
    }

    /// Relay an event stream (or a large plain answer) piece by piece: decoded into the common form when
    /// the provider speaks another, watched for usage and its proper end, then masked and encoded for the
    /// client. Nothing goes to the client before the first bytes it would see, so a provider that fails
    /// (or ends, or reports an error) before then can still be replaced.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        session: &mut Session,
        outcome: &mut AiOutcome,
        upstream: &mut HttpSession,
        reusable: &mut bool,
        mut client: ClientStream<'_>,
        mut decoder: Option<Box<dyn StreamDecoder>>,
        is_sse: bool,
        due: &impl Fn(Instant) -> Instant,
    ) -> Result<Relayed, Failure> {
        let provider = &*self.model.provider;
        let model = self.model;
        let mut usage = UsageScanner::new(is_sse);
        let mut decoded = Vec::new();
        let timer = tokio::time::sleep_until(due(Instant::now()).into());
        tokio::pin!(timer);
        loop {
            let read_due = due(Instant::now()).into();
            match transport::read_chunk(upstream, timer.as_mut(), read_due).await {
                Ok(Some(chunk)) => {
                    let chunk = match &mut decoder {
                        Some(decoder) => {
                            decoder.push(&chunk, &mut decoded);
                            if let Some(failure) = decoder.failure().filter(|_| client.unsent()) {
                                METRICS
                                    .ai_provider_errors
                                    .with_label_values(&[&*provider.name, "stream_error"])
                                    .inc();
                                return Ok(Relayed::BrokeOff(failure.to_string()));
                            }
                            Bytes::from(std::mem::take(&mut decoded))
                        }
                        None => chunk,
                    };
                    if chunk.is_empty() {
                        continue;
                    }
                    usage.observe(&chunk);
                    if !client.send(session, chunk).await {
                        // The client went away: dropping `upstream` closes the provider connection.
                        outcome.error = Some("client_disconnected");
                        return Ok(Relayed::Done);
                    }
                }
                Ok(None) if is_sse && !usage.ended_at_eof() => {
                    // A clean close without its final event: the answer is cut short. What was streamed
                    // is accounted all the same.
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
                    if client.unsent() {
                        return Ok(Relayed::BrokeOff(
                            "stream ended before its final event".to_string(),
                        ));
                    }
                    outcome.error = Some("upstream_stream_incomplete");
                    let error =
                        stream_error("the provider's stream ended before the answer was complete");
                    let _ = client.end(session, Some(&error)).await;
                    return Ok(Relayed::Done);
                }
                Ok(None) => {
                    if let Some(found) = usage.finish() {
                        outcome.account(model, found);
                    }
                    *reusable = true;
                    client.end(session, None).await?;
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
                    if client.unsent() {
                        // Nothing reached the client: out of time is final (another attempt would start
                        // the whole wait again), anything else goes to the next candidate.
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
                    let error = stream_error("the provider failed while streaming the answer");
                    let _ = client.end(session, Some(&error)).await;
                    return Ok(Relayed::Done);
                }
            }
        }
    }

    /// A provider that answers in the gateway (the mock): the same masking and rendering as any answer; a
    /// stream's events go out with the provider's configured delay between them.
    pub async fn locally(
        &self,
        session: &mut Session,
        outcome: &mut AiOutcome,
        body: &Map<String, Value>,
        stream: bool,
    ) -> Result<(), Failure> {
        let (request, plan, op, wire, model) =
            (self.request, self.plan, self.op, self.wire, self.model);
        let settings = model.provider.mock;
        let local = Local {
            upstream_model: &model.upstream_model,
            endpoint: op.endpoint(),
            body,
            stream,
            request_id: request.request_id.to_str().unwrap_or("mock"),
            chunks: settings.chunks,
        };
        let Some(answer) = wire.answer_locally(&local) else {
            return Err(Rejection::typed(
                500,
                "server_error",
                "internal_error",
                "the provider does not answer locally",
            )
            .into());
        };
        if let Some(usage) = answer.usage {
            outcome.account(model, usage);
        }
        let secrets = request.catalog.secrets.as_ref();
        if let Some(whole) = answer.whole {
            let whole = match secrets {
                Some(secrets) => secrets.mask_body(&whole).unwrap_or(whole),
                None => whole,
            };
            let body = render_whole(op, whole).unwrap_or_default();
            let mut head = client_head(200, request, outcome, Some(plan), None, None)?;
            head.insert_header(CONTENT_LENGTH, body.len())?;
            write_whole(session, head, body).await?;
            return Ok(());
        }
        let event_stream = HeaderValue::from_static("text/event-stream");
        let mut head = client_head(200, request, outcome, Some(plan), Some(&event_stream), None)?;
        frame_unknown_length(session, &mut head)?;
        let mut client = ClientStream::new(head, op, secrets, self.prompt_estimate);
        for (i, event) in answer.events.into_iter().enumerate() {
            if i > 0 && !settings.chunk_delay.is_zero() {
                tokio::time::sleep(settings.chunk_delay).await;
            }
            if !client.send(session, event).await {
                outcome.error = Some("client_disconnected");
                return Ok(());
            }
        }
        client.end(session, None).await?;
        Ok(())
    }

    /// A provider's own client error (not worth a fallback): as it was when the client speaks the provider's
    /// dialect, else its type and message in the client's.
    pub async fn provider_error(
        &self,
        session: &mut Session,
        outcome: &mut AiOutcome,
        head: &ResponseHeader,
        text: String,
    ) -> Result<(), Failure> {
        let (request, plan, op, wire) = (self.request, self.plan, self.op, self.wire);
        outcome.error = Some("provider_error");
        let status = head.status.as_u16();
        if wire.speaks_openai_errors() && matches!(op, Operation::OpenAi(_)) {
            let head = client_head(
                status,
                request,
                outcome,
                Some(plan),
                head.headers.get(CONTENT_TYPE),
                None,
            )?;
            respond::write(session, head, Bytes::from(text)).await?;
            return Ok(());
        }
        let message = wire
            .error_message(&text)
            .map(|(kind, message)| format!("{kind}: {message}"))
            .unwrap_or_else(|| format!("the provider answered {status}"));
        // The class follows the status (an `authentication_error` for a 401, ...), in the client's dialect.
        let error = Rejection::new(status, "provider_error", message);
        write_error(session, request, outcome, Some(plan), &error).await?;
        Ok(())
    }
}
