//! Serve an AI route: which operation the path names, the method and body checks, the body read and parsed
//! in the client's dialect into the common form, then the guards, the routing decision and the system
//! prompt; the relay does the rest. Errors are answered in the client's dialect.

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::Method;
use pingora::proxy::Session;
use serde_json::Value;

use super::catalog::Catalog;
use super::dialect::openai::{self, Endpoint};
use super::dialect::{anthropic, Operation};
use super::guard::apply_system_prompt;
use super::relay::relay;
use super::reply::{write_error, write_json, AiOutcome, AiRequest, Failure};
use super::routing::{decide, AiPolicy};
use crate::edge::normalize::declared_length;
use crate::error::Rejection;

/// Answer an AI request completely (the proxy phase then only logs).
pub async fn serve(session: &mut Session, request: AiRequest<'_>) -> pingora::Result<AiOutcome> {
    let mut outcome = AiOutcome::default();
    match prepare_and_relay(session, &request, &mut outcome).await {
        Ok(()) => Ok(outcome),
        Err(Failure::Answer(error)) => {
            outcome.error = Some(error.code);
            write_error(session, &request, &outcome, None, &error).await?;
            Ok(outcome)
        }
        Err(Failure::Io(e)) => Err(e),
    }
}

async fn prepare_and_relay(
    session: &mut Session,
    request: &AiRequest<'_>,
    outcome: &mut AiOutcome,
) -> Result<(), Failure> {
    let req = session.req_header();
    let op = Operation::from_path(req.uri.path()).ok_or_else(|| {
        Rejection::typed(
            404,
            "invalid_request_error",
            "unknown_endpoint",
            format!("no such endpoint: {}", req.uri.path()),
        )
    })?;
    if op == Operation::OpenAi(Endpoint::Models) {
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
    let mut body = op.parse(&raw)?;
    drop(raw);
    if op == Operation::CountTokens {
        let count = Bytes::from(anthropic::count_tokens(&body));
        return write_json(session, request, outcome, 200, count).await;
    }
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
    relay(session, request, outcome, op, body, &plan).await
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

/// The models this route may use, in a list both SDKs read: OpenAI's (`object`, `created`, `owned_by`) and
/// Anthropic's (`type`, `display_name`, `created_at`, `has_more`, `first_id`, `last_id`) fields side by side.
fn models_list(catalog: &Catalog, policy: &AiPolicy) -> Bytes {
    let data: Vec<Value> = catalog
        .models
        .iter()
        .filter(|m| m.provider.enabled && (policy.allowed_models.is_empty() || policy.allowed_models.iter().any(|a| **a == *m.name)))
        .map(|m| {
            serde_json::json!({
                "id": &*m.name, "object": "model", "created": 0, "owned_by": &*m.provider.name,
                "type": "model", "display_name": &*m.name, "created_at": "1970-01-01T00:00:00Z",
                "context_window": m.context_window, "capabilities": m.capabilities, "local": m.local,
            })
        })
        .collect();
    let first = data.first().map(|m| m["id"].clone());
    let last = data.last().map(|m| m["id"].clone());
    Bytes::from(
        serde_json::json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})
            .to_string(),
    )
}
