//! OpenAI-compatible providers (OpenAI, OpenRouter, DeepSeek, Groq, Mistral, vLLM, Ollama's `/v1`): the
//! common form is their own, so the request changes only its model id (and asks for the usage of a stream),
//! and answers pass through unread by this adapter.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::{Call, Rendered, StreamDecoder, Unanswered, Wire};
use crate::ai::dialect::openai::Endpoint;
use crate::error::Rejection;

pub struct OpenAiWire;

/// Leave out what an Anthropic client's request carries that OpenAI's API refuses as unknown: the
/// `cache_control` marks (on content parts and tools), `top_k`, and extended thinking (the request's
/// `thinking`, the assistant turns' `thinking_blocks`).
fn drop_foreign_fields(body: &mut Map<String, Value>) {
    body.remove("top_k");
    body.remove("thinking");
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages.iter_mut().filter_map(Value::as_object_mut) {
            message.remove("thinking_blocks");
        }
    }
    for (key, nested) in [("messages", true), ("tools", false)] {
        let Some(items) = body.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        for item in items {
            let objects: Vec<&mut Value> = match item.get_mut("content") {
                Some(Value::Array(parts)) if nested => parts.iter_mut().collect(),
                _ if nested => Vec::new(),
                _ => vec![item],
            };
            for object in objects.into_iter().filter_map(Value::as_object_mut) {
                object.remove("cache_control");
            }
        }
    }
}

impl Wire for OpenAiWire {
    fn supports(&self, _endpoint: Endpoint) -> bool {
        true
    }

    fn auth_headers(&self, key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        let value = super::secret_header(&format!("Bearer {key}"))?;
        Ok(vec![(http::header::AUTHORIZATION, value)])
    }

    fn render<'a>(
        &self,
        call: &Call<'a>,
        body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection> {
        if call.stream
            && call.endpoint == Endpoint::ChatCompletions
            && !body.contains_key("stream_options")
        {
            // Ask for the final usage chunk, so streamed answers are accounted too.
            body.insert(
                "stream_options".to_string(),
                serde_json::json!({"include_usage": true}),
            );
        }
        body.insert(
            "model".to_string(),
            Value::String(call.upstream_model.to_string()),
        );
        let rename = call.max_completion_tokens
            && body.contains_key("max_tokens")
            && !body.contains_key("max_completion_tokens");
        let path = Cow::Borrowed(call.endpoint.upstream_path());
        if !(call.from_anthropic || rename) {
            return Rendered::json(call, path, &*body);
        }
        // A copy: the next candidate (an Anthropic one) still renders from the marked body.
        let mut copy = body.clone();
        if call.from_anthropic {
            drop_foreign_fields(&mut copy);
        }
        if rename {
            if let Some(max) = copy.remove("max_tokens") {
                copy.insert("max_completion_tokens".to_string(), max);
            }
        }
        Rendered::json(call, path, &copy)
    }

    fn context_exceeded(&self, body: &str) -> bool {
        body.contains("context_length_exceeded")
    }

    fn error_message(&self, body: &str) -> Option<(String, String)> {
        let value: Value = serde_json::from_str(body).ok()?;
        let error = value.get("error")?;
        let message = match error {
            Value::String(message) => message.clone(),
            _ => error.get("message")?.as_str()?.to_string(),
        };
        let kind = error
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("invalid_request_error");
        Some((kind.to_string(), message))
    }

    fn whole_answer(&self, _body: &[u8], _model: &str) -> Result<Option<Vec<u8>>, Unanswered> {
        Ok(None)
    }

    fn stream_decoder(&self, _model: &str) -> Option<Box<dyn StreamDecoder>> {
        None
    }

    fn speaks_openai_errors(&self) -> bool {
        true
    }
}
