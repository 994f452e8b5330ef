//! The `mock` provider: deterministic local answers in the common (OpenAI) form, so the default config works
//! end to end on a fresh machine. It echoes a summary of the request; streams are split into configured
//! chunks. It is an adapter like the others; it only answers in the gateway instead of over a connection.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::{Call, Local, LocalAnswer, Rendered, StreamDecoder, Unanswered, Wire};
use crate::ai::dialect::openai::Endpoint;
use crate::ai::usage::Usage;
use crate::error::Rejection;

pub struct MockWire;

impl Wire for MockWire {
    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint != Endpoint::Models
    }

    fn auth_headers(&self, _key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        Ok(Vec::new())
    }

    fn render<'a>(
        &self,
        _call: &Call<'a>,
        _body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection> {
        Err(Rejection::typed(
            500,
            "server_error",
            "internal_error",
            "the mock provider answers locally",
        ))
    }

    fn context_exceeded(&self, _body: &str) -> bool {
        false
    }

    fn error_message(&self, _body: &str) -> Option<(String, String)> {
        None
    }

    fn whole_answer(&self, _body: &[u8], _model: &str) -> Result<Option<Vec<u8>>, Unanswered> {
        Ok(None)
    }

    fn stream_decoder(&self, _model: &str) -> Option<Box<dyn StreamDecoder>> {
        None
    }

    fn answer_locally(&self, local: &Local<'_>) -> Option<LocalAnswer> {
        let model = local.upstream_model;
        let body = local.body;
        let id = format!("chatcmpl-{}", local.request_id);
        let prompt_tokens = estimate_tokens(serde_json::to_vec(body).map_or(0, |b| b.len()));
        let text = reply_text(model, body);
        let usage = (local.endpoint != Endpoint::Embeddings).then(|| Usage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: estimate_tokens(text.len()) as u64,
            ..Usage::default()
        });
        let whole = match local.endpoint {
            Endpoint::ChatCompletions if local.stream => {
                let events = chat_stream_events(&id, model, &text, local.chunks, prompt_tokens);
                return Some(LocalAnswer {
                    usage,
                    whole: None,
                    events: events.into_iter().map(Bytes::from).collect(),
                });
            }
            Endpoint::Embeddings => embeddings(model, body),
            Endpoint::Completions => text_completion(&id, model, &text, prompt_tokens),
            Endpoint::ChatCompletions | Endpoint::Models => {
                chat_completion(&id, model, &text, prompt_tokens)
            }
        };
        Some(LocalAnswer {
            usage,
            whole: Some(whole.to_string().into_bytes()),
            events: Vec::new(),
        })
    }
}

/// The reply text: which model answered, how many messages, and the start of the last user message.
fn reply_text(model: &str, body: &Map<String, Value>) -> String {
    let messages = body.get("messages").and_then(Value::as_array);
    let count = messages.map_or(0, Vec::len);
    let last_user = messages
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| match m.get("content") {
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Array(parts)) => parts
                .iter()
                .find_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        })
        .or_else(|| {
            body.get("prompt")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let snippet: String = last_user.chars().take(120).collect();
    format!("[mock:{model}] {count} message(s); you said: {snippet}")
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A rough token count (4 bytes a token) for mock usage figures.
pub fn estimate_tokens(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

fn chat_completion(id: &str, model: &str, text: &str, prompt_tokens: usize) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage(prompt_tokens, estimate_tokens(text.len())),
    })
}

fn text_completion(id: &str, model: &str, text: &str, prompt_tokens: usize) -> Value {
    json!({
        "id": id, "object": "text_completion", "created": created(), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
        "usage": usage(prompt_tokens, estimate_tokens(text.len())),
    })
}

/// SSE events of a streamed chat completion: `chunks` content pieces, a final chunk with usage, `[DONE]`.
fn chat_stream_events(
    id: &str,
    model: &str,
    text: &str,
    chunks: usize,
    prompt_tokens: usize,
) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(chunks.max(1)).max(1);
    let mut events: Vec<String> = chars
        .chunks(size)
        .enumerate()
        .map(|(i, piece)| {
            let mut delta = Map::new();
            if i == 0 {
                delta.insert("role".into(), "assistant".into());
            }
            delta.insert("content".into(), Value::String(piece.iter().collect()));
            let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created(), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
            format!("data: {chunk}\n\n")
        })
        .collect();
    let last = json!({"id": id, "object": "chat.completion.chunk", "created": created(), "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage(prompt_tokens, estimate_tokens(text.len()))});
    events.push(format!("data: {last}\n\n"));
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// Deterministic 8-dimensional embeddings, one per input string.
fn embeddings(model: &str, body: &Map<String, Value>) -> Value {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let seed = xxh3_64(text.as_bytes());
            let vector: Vec<f64> = (0..8)
                .map(|i| ((seed >> (i * 8)) & 0xff) as f64 / 255.0)
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| estimate_tokens(t.len())).sum();
    json!({"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

fn created() -> u64 {
    super::now()
}
