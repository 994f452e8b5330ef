//! The mock LLM's native provider formats: Anthropic's Messages API (named SSE events, its error JSON, its
//! auth headers) and Gemini's generateContent (one `GenerateContentResponse` per SSE event, `usageMetadata`,
//! safety blocks, google.rpc errors). Each checks the provider's authentication headers and answers 401 in
//! its own format without them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::http::request::Parts;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::llm::{full, pause, split_text, Behavior, Body, Chunk, ReceiverStream, Speaks, State};

pub(crate) async fn answer(
    speaks: Speaks,
    parts: &Parts,
    body: &Bytes,
    behavior: Behavior,
    state: Arc<State>,
) -> Response<Body> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path();
    let (authorized, stream) = match speaks {
        Speaks::Anthropic => (
            header("x-api-key").is_some_and(|k| !k.is_empty())
                && header("anthropic-version").is_some(),
            request["stream"].as_bool().unwrap_or(false),
        ),
        Speaks::Gemini => (
            header("x-goog-api-key").is_some_and(|k| !k.is_empty()),
            path.contains(":streamGenerateContent")
                && parts.uri.query().is_some_and(|q| q.contains("alt=sse")),
        ),
        Speaks::OpenAi => (true, false),
    };
    if !authorized {
        return error(speaks, 401, "missing or invalid API key headers", None);
    }
    if behavior.status != 200 {
        let message = behavior
            .error_message
            .clone()
            .unwrap_or_else(|| format!("mock {} failing with {}", state.name, behavior.status));
        return error(speaks, behavior.status, &message, behavior.retry_after);
    }
    let model = match speaks {
        Speaks::Gemini => path
            .rsplit('/')
            .next()
            .and_then(|last| last.split(':').next())
            .unwrap_or("gemini-mock")
            .to_string(),
        _ => request["model"]
            .as_str()
            .unwrap_or("mock-model")
            .to_string(),
    };
    let text = behavior
        .text
        .clone()
        .unwrap_or_else(|| format!("Hello from {}.", state.name));
    let pieces = if behavior.pieces.is_empty() {
        split_text(&text, behavior.chunks.max(1))
    } else {
        behavior.pieces.clone()
    };
    if !stream {
        let reply = match speaks {
            Speaks::Anthropic => anthropic_message(&model, &text, &behavior),
            _ => gemini_answer(&model, &text, &behavior),
        };
        return full(200, "application/json", reply.to_string());
    }
    let events = match speaks {
        Speaks::Anthropic => anthropic_events(&model, &pieces, &behavior),
        _ => gemini_events(&model, &pieces, &behavior),
    };
    let (sender, receiver) = mpsc::channel::<Chunk>(4);
    tokio::spawn(async move {
        pause(behavior.first_token_delay).await;
        for (i, event) in events.into_iter().enumerate() {
            if behavior.drop_after == Some(i) {
                let _ = sender.send(Err("mock drops the stream".into())).await;
                return;
            }
            if sender
                .send(Ok(Frame::data(Bytes::from(event))))
                .await
                .is_err()
            {
                state.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pause(behavior.chunk_delay).await;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream(receiver))))
        .unwrap_or_else(|_| Response::new(crate::llm::empty()))
}

fn error(speaks: Speaks, status: u16, message: &str, retry_after: Option<u64>) -> Response<Body> {
    let body = match speaks {
        Speaks::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        _ => {
            let kind = match status {
                400 => "INVALID_ARGUMENT",
                401 | 403 => "PERMISSION_DENIED",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status, "message": message, "status": kind}})
        }
    };
    let mut response = full(status, "application/json", body.to_string());
    if let Some(seconds) = retry_after {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

fn anthropic_usage(output: usize) -> Value {
    json!({"input_tokens": 11, "output_tokens": output, "cache_read_input_tokens": 20, "cache_creation_input_tokens": 3})
}

fn anthropic_message(model: &str, text: &str, behavior: &Behavior) -> Value {
    let mut content = vec![json!({"type": "text", "text": text})];
    if let Some((name, input)) = &behavior.tool_call {
        content
            .push(json!({"type": "tool_use", "id": "toolu_mock1", "name": name, "input": input}));
    }
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": if behavior.tool_call.is_some() { "tool_use" } else { "end_turn" },
        "stop_sequence": null, "usage": anthropic_usage(5),
    })
}

fn named(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn anthropic_events(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<String> {
    let mut events = vec![
        named(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(1)}}),
        ),
        named("ping", json!({"type": "ping"})),
        named(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for (i, piece) in pieces.iter().enumerate() {
        if behavior.error_after == Some(i) {
            events.push(named(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return events;
        }
        events.push(named(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(named(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    if let Some((name, input)) = &behavior.tool_call {
        events.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}}),
        ));
        // The arguments in two fragments, as Anthropic streams them.
        let arguments = input.to_string();
        let half = arguments.len() / 2;
        for part in [&arguments[..half], &arguments[half..]] {
            events.push(named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        events.push(named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    let stop = if behavior.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    events.push(named(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": pieces.len()}}),
    ));
    events.push(named("message_stop", json!({"type": "message_stop"})));
    events
}

fn gemini_usage(output: usize) -> Value {
    json!({"promptTokenCount": 13, "candidatesTokenCount": output, "totalTokenCount": 13 + output, "cachedContentTokenCount": 4})
}

fn gemini_answer(model: &str, text: &str, behavior: &Behavior) -> Value {
    if behavior.blocked {
        return json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": gemini_usage(0)});
    }
    let mut parts = vec![json!({ "text": text })];
    if let Some((name, args)) = &behavior.tool_call {
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": gemini_usage(5), "modelVersion": model, "responseId": "gemini-mock",
    })
}

fn gemini_events(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<String> {
    let data = |value: Value| format!("data: {value}\r\n\r\n");
    if behavior.blocked {
        return vec![data(
            json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": gemini_usage(0)}),
        )];
    }
    let mut events = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if behavior.error_after == Some(i) {
            events.push(data(json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})));
            return events;
        }
        events.push(data(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
            "usageMetadata": gemini_usage(i + 1), "modelVersion": model})));
    }
    let mut last_parts = Vec::new();
    if let Some((name, args)) = &behavior.tool_call {
        last_parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    events.push(data(json!({"candidates": [{"content": {"role": "model", "parts": last_parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": gemini_usage(pieces.len()), "modelVersion": model})));
    events
}
