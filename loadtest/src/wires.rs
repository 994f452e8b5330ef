//! The mock LLM's native provider formats: Anthropic's Messages API (named SSE events, its error JSON, its
//! auth headers) and Gemini's generateContent (one `GenerateContentResponse` per SSE event, `usageMetadata`,
//! safety blocks, google.rpc errors) and Bedrock's Converse (ConverseStream in AWS's binary event-stream
//! framing, SigV4 `authorization`). Each checks the provider's authentication headers and answers 401 in
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
        Speaks::Bedrock => (
            header("authorization").is_some_and(sigv4_shaped) && header("x-amz-date").is_some(),
            path.ends_with("/converse-stream"),
        ),
        Speaks::OpenAi => (true, false),
    };
    if !authorized {
        return error(speaks, 401, "missing or invalid API key headers", None);
    }
    if speaks == Speaks::Bedrock && request.get("toolConfig").is_none() && has_tool_blocks(&request)
    {
        // Converse's own check.
        let message = "The toolConfig field must be defined when using toolUse and toolResult content blocks.";
        return error(speaks, 400, message, None);
    }
    if behavior.status != 200 {
        let message = behavior
            .error_message
            .clone()
            .unwrap_or_else(|| format!("mock {} failing with {}", state.name, behavior.status));
        return error(speaks, behavior.status, &message, behavior.retry_after);
    }
    let model = match speaks {
        Speaks::Bedrock => path
            .strip_prefix("/model/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("bedrock-mock")
            .replace("%3A", ":"),
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
    if let Some(body) = behavior.plain_body.clone().filter(|_| !stream) {
        return full(200, "application/json", body);
    }
    if !stream {
        let reply = match speaks {
            Speaks::Anthropic => anthropic_message(&model, &text, &behavior),
            Speaks::Bedrock => converse_answer(&text, &behavior),
            _ => gemini_answer(&model, &text, &behavior),
        };
        return full(200, "application/json", reply.to_string());
    }
    let events = match speaks {
        Speaks::Anthropic => anthropic_events(&model, &pieces, &behavior),
        Speaks::Bedrock => converse_frames(&pieces, &behavior),
        _ => gemini_events(&model, &pieces, &behavior),
    };
    let content_type = if speaks == Speaks::Bedrock {
        "application/vnd.amazon.eventstream"
    } else {
        "text/event-stream"
    };
    let (sender, receiver) = mpsc::channel::<Chunk>(4);
    tokio::spawn(async move {
        pause(behavior.first_token_delay).await;
        for (i, event) in events.into_iter().enumerate() {
            if behavior.drop_after == Some(i) {
                let _ = sender.send(Err("mock drops the stream".into())).await;
                return;
            }
            if sender.send(Ok(Frame::data(event))).await.is_err() {
                state.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pause(behavior.chunk_delay).await;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream(receiver))))
        .unwrap_or_else(|_| Response::new(crate::llm::empty()))
}

/// `AWS4-HMAC-SHA256 Credential=<key>/<yyyymmdd>/<region>/bedrock/aws4_request, SignedHeaders=...,
/// Signature=<64 hex>`.
fn sigv4_shaped(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return false;
    };
    let parts: Vec<&str> = rest.split(", ").collect();
    let scope: Vec<&str> = parts[0].split('/').collect();
    parts.len() == 3
        && scope.len() == 5
        && scope[1].len() == 8
        && scope[3] == "bedrock"
        && scope[4] == "aws4_request"
        && parts[1].starts_with("SignedHeaders=")
        && parts[1].contains("host")
        && parts[2]
            .strip_prefix("Signature=")
            .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn error(speaks: Speaks, status: u16, message: &str, retry_after: Option<u64>) -> Response<Body> {
    let body = match speaks {
        Speaks::Bedrock => json!({ "message": message }),
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

/// The signature of the Gemini mock's function calls (`thoughtSignature`).
pub const GEMINI_SIGNATURE: &str = "c2lnbmVkIGJ5IGdlbWluaQ==";

/// The signature of the Anthropic mock's thinking blocks.
pub const MOCK_SIGNATURE: &str = "EqMockSignature0123456789";

fn anthropic_message(model: &str, text: &str, behavior: &Behavior) -> Value {
    let mut content: Vec<Value> = behavior
        .thinking
        .iter()
        .map(
            |thought| json!({"type": "thinking", "thinking": thought, "signature": MOCK_SIGNATURE}),
        )
        .collect();
    content.push(json!({"type": "text", "text": text}));
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

fn anthropic_events(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<Bytes> {
    anthropic_texts(model, pieces, behavior)
        .into_iter()
        .map(Bytes::from)
        .collect()
}

fn anthropic_texts(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<String> {
    let mut events = vec![
        named(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(1)}}),
        ),
        named("ping", json!({"type": "ping"})),
    ];
    // A thinking block first (index 0), when the mock thinks: the text and the tool call follow it.
    let first = usize::from(behavior.thinking.is_some());
    if let Some(thought) = &behavior.thinking {
        events.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": ""}}),
        ));
        events.push(named(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": thought}}),
        ));
        events.push(named(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": MOCK_SIGNATURE}}),
        ));
        events.push(named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    events.push(named(
        "content_block_start",
        json!({"type": "content_block_start", "index": first, "content_block": {"type": "text", "text": ""}}),
    ));
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
            json!({"type": "content_block_delta", "index": first, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(named(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": first}),
    ));
    if let Some((name, input)) = &behavior.tool_call {
        events.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": first + 1, "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}}),
        ));
        // The arguments in two fragments, as Anthropic streams them.
        let arguments = input.to_string();
        let half = arguments.len() / 2;
        for part in [&arguments[..half], &arguments[half..]] {
            events.push(named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": first + 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        events.push(named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": first + 1}),
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
        // Signed, as Gemini 3 signs its function calls.
        parts.push(json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": GEMINI_SIGNATURE}));
    }
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": gemini_usage(5), "modelVersion": model, "responseId": "gemini-mock",
    })
}

fn gemini_events(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<Bytes> {
    gemini_texts(model, pieces, behavior)
        .into_iter()
        .map(Bytes::from)
        .collect()
}

fn gemini_texts(model: &str, pieces: &[String], behavior: &Behavior) -> Vec<String> {
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

/// Whether a Converse request's messages hold `toolUse` or `toolResult` blocks.
fn has_tool_blocks(request: &Value) -> bool {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .any(|block| block.get("toolUse").is_some() || block.get("toolResult").is_some())
}

fn converse_usage(output: usize) -> Value {
    json!({"inputTokens": 17, "outputTokens": output, "totalTokens": 17 + output, "cacheReadInputTokens": 6, "cacheWriteInputTokens": 0})
}

fn converse_answer(text: &str, behavior: &Behavior) -> Value {
    let mut content = vec![json!({ "text": text })];
    if let Some((name, input)) = &behavior.tool_call {
        content
            .push(json!({"toolUse": {"toolUseId": "tooluse_mock1", "name": name, "input": input}}));
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": if behavior.tool_call.is_some() { "tool_use" } else { "end_turn" },
        "usage": converse_usage(5), "metrics": {"latencyMs": 1},
    })
}

/// One event-stream frame: `:message-type` event (or exception), `:event-type`, a JSON payload.
fn converse_frame(kind: &str, name: &str, payload: Value) -> Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let type_header = if kind == "exception" {
        ":exception-type"
    } else {
        ":event-type"
    };
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(kind.to_string().into()),
        ))
        .add_header(Header::new(
            type_header,
            HeaderValue::String(name.to_string().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    Bytes::from(out)
}

fn converse_frames(pieces: &[String], behavior: &Behavior) -> Vec<Bytes> {
    let mut frames = vec![converse_frame(
        "event",
        "messageStart",
        json!({"role": "assistant"}),
    )];
    for (i, piece) in pieces.iter().enumerate() {
        if behavior.error_after == Some(i) {
            frames.push(converse_frame(
                "exception",
                "throttlingException",
                json!({"message": "Too many requests"}),
            ));
            return frames;
        }
        frames.push(converse_frame(
            "event",
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
        ));
    }
    frames.push(converse_frame(
        "event",
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
    ));
    if let Some((name, input)) = &behavior.tool_call {
        frames.push(converse_frame("event", "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_mock1", "name": name}}})));
        let arguments = input.to_string();
        let half = arguments.len() / 2;
        for part in [&arguments[..half], &arguments[half..]] {
            frames.push(converse_frame(
                "event",
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": part}}}),
            ));
        }
        frames.push(converse_frame(
            "event",
            "contentBlockStop",
            json!({"contentBlockIndex": 1}),
        ));
    }
    let stop = if behavior.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    frames.push(converse_frame(
        "event",
        "messageStop",
        json!({"stopReason": stop}),
    ));
    frames.push(converse_frame(
        "event",
        "metadata",
        json!({"usage": converse_usage(pieces.len()), "metrics": {"latencyMs": 1}}),
    ));
    frames
}
