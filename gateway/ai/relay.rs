//! The fallback loop of one AI request: candidates in the plan's order, each rendered by its provider's
//! adapter and sent over the transport. Connect errors, timeouts before the first byte, 429 (which also
//! cools the deployment down), 5xx, a prompt too long for the model and a plain answer whose connection
//! breaks while it is read whole (not one that runs out of time) move on to the next candidate, as does a
//! stream whose provider fails before anything reached the client. Once bytes reach the client there is no
//! retry: a failing stream ends with an error event in the client's dialect (`deliver`).

use std::time::Duration;

use pingora::proxy::Session;
use serde_json::{Map, Value};

use super::catalog::{Model, ProviderKind};
use super::deliver::{Answer, Relayed};
use super::dialect::Operation;
use super::provider::{self, Call};
use super::reply::{AiOutcome, AiRequest, Failure};
use super::routing::Plan;
use super::transport;
use crate::error::Rejection;
use crate::upstream::peer::{http_peer, PeerTimeouts};

/// Why one candidate did not answer (for the final error message).
fn describe(model: &Model, reason: &str) -> String {
    format!("{}/{} ({reason})", model.provider.name, model.name)
}

/// `max_tokens` for providers that require one, when neither the client nor the model's catalog entry
/// gives it.
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub async fn relay(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
    op: Operation,
    mut body: Map<String, Value>,
    plan: &Plan,
) -> Result<(), Failure> {
    let endpoint = op.endpoint();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    // For an Anthropic client's `message_start`, so only for its streams.
    let prompt_estimate = match op {
        Operation::Messages if stream => super::heuristics::estimate_prompt_tokens(&body) as u64,
        _ => 0,
    };
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
        let wire = provider::wire(provider.kind);
        if !wire.supports(endpoint) {
            tried.push(describe(model, "endpoint not served by this provider type"));
            continue;
        }
        outcome.model = Some(model.clone());
        let answer = Answer {
            request,
            plan,
            op,
            wire,
            model,
            prompt_estimate,
        };
        if provider.kind == ProviderKind::Mock {
            outcome.attempts += 1;
            return answer.locally(session, outcome, &body, stream).await;
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
        let call = Call {
            deployment: &provider.deployments[index],
            upstream_model: &model.upstream_model,
            endpoint,
            stream,
            default_max_tokens: model.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            max_completion_tokens: model.max_completion_tokens,
            from_anthropic: op == Operation::Messages,
        };
        let rendered = match wire.render(&call, &mut body) {
            Ok(rendered) => rendered,
            // This provider could not take the request (its signing failed): the next one may.
            Err(error) => {
                tried.push(describe(model, error.code));
                continue;
            }
        };
        let timeouts = PeerTimeouts {
            connect: provider.timeouts.connect,
            read: provider.timeouts.first_byte,
            idle: Duration::from_secs(30),
        };
        let peer = http_peer(cluster, &cluster.backends[index], addr, timeouts);
        let sent = transport::send(
            &peer,
            provider,
            index,
            &rendered,
            stream,
            request.request_id,
        )
        .await;
        drop(rendered);
        let mut upstream = match sent {
            Ok(upstream) => upstream,
            Err(reason) => {
                cluster.record_failure(index);
                tried.push(describe(model, &reason));
                continue;
            }
        };
        let head = transport::response_head(&upstream)?;
        let status = head.status.as_u16();
        if status == 429 {
            let wait = transport::retry_after(head).unwrap_or(provider.cooldown);
            cluster.cool_down(index, wait);
            tried.push(describe(model, "429"));
            continue;
        }
        // 5xx, and the gateway's own credentials refused (401/403: a bad or expired provider key is the
        // operator's problem, not the client's, and another provider may hold good ones).
        if status >= 500 || status == 401 || status == 403 {
            cluster.record_failure(index);
            tried.push(describe(model, &status.to_string()));
            continue;
        }
        if status >= 400 {
            let (upstream, text) = transport::read_small_body(upstream).await;
            if (status == 400 || status == 413) && wire.context_exceeded(&text) {
                tried.push(describe(model, "context_length_exceeded"));
                continue;
            }
            cluster.record_success(index);
            let head = transport::response_head(&upstream)?;
            return answer.provider_error(session, outcome, head, text).await;
        }
        cluster.record_success(index);
        // The answer's futures borrow the provider session (they stay small: a future is copied whole each
        // time it is moved); it goes back to the pool here once its answer was read to the end, after the
        // client has it (pooling is not on the answer's path), whether or not the client was still there.
        let mut reusable = false;
        let relayed = answer
            .relay(session, outcome, &mut upstream, &mut reusable)
            .await;
        if reusable {
            transport::release(upstream, &peer).await;
        }
        match relayed? {
            Relayed::Done => return Ok(()),
            Relayed::BrokeOff(reason) => {
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
