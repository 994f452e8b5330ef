//! Anthropic's Messages API (`POST {base}/messages`, `x-api-key`, `anthropic-version`): requests are rendered
//! from the common form (system messages lifted into `system`, tool calls and results into `tool_use` and
//! `tool_result` blocks, images into image blocks, `max_tokens` filled from the model's default), answers and
//! the named-event stream (`message_start` ... `message_stop`, `ping`, `error`) are turned back into
//! OpenAI's, with the usage (cache reads and writes included) carried along.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::{
    arguments_object, assistant_message, data_url, function_tools, push_turn, secret_header,
    stop_sequences, text_of, tool_choice, usage_json, Call, Chunks, JsonEvents, Rendered,
    SseDecoder, StreamDecoder, ToolChoice, Unanswered, Wire,
};
use crate::ai::dialect::openai::Endpoint;
use crate::ai::usage::Usage;
use crate::error::Rejection;

/// The API version every request names (the one Anthropic's SDKs send).
pub const VERSION: &str = "2023-06-01";

pub struct AnthropicWire;

impl Wire for AnthropicWire {
    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::ChatCompletions
    }

    fn default_base_url(&self, _region: Option<&str>) -> Option<String> {
        Some("https://api.anthropic.com/v1".to_string())
    }

    fn auth_headers(&self, key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        Ok(vec![
            (HeaderName::from_static("x-api-key"), secret_header(key)?),
            (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(VERSION),
            ),
        ])
    }

    fn render<'a>(
        &self,
        call: &Call<'a>,
        body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection> {
        let request = to_messages_request(body, call.upstream_model, call.default_max_tokens);
        Rendered::json(call, Cow::Borrowed("/messages"), &request)
    }

    fn context_exceeded(&self, body: &str) -> bool {
        body.contains("prompt is too long") || body.contains("context window")
    }

    fn error_message(&self, body: &str) -> Option<(String, String)> {
        let value: Value = serde_json::from_str(body).ok()?;
        let error = value.get("error")?;
        Some((
            error.get("type")?.as_str()?.to_string(),
            error.get("message")?.as_str()?.to_string(),
        ))
    }

    fn whole_answer(&self, body: &[u8], model: &str) -> Result<Option<Vec<u8>>, Unanswered> {
        let answer: Value = serde_json::from_slice(body).map_err(|e| {
            Unanswered::Unreadable(format!(
                "the provider's answer is not an Anthropic message: {e}"
            ))
        })?;
        Ok(Some(
            to_chat_completion(&answer, model).to_string().into_bytes(),
        ))
    }

    fn stream_decoder(&self, model: &str) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(SseDecoder::new(AnthropicStream {
            chunks: Chunks::new(String::new(), model.to_string()),
        })))
    }
}

/// The Messages request for a common-form (OpenAI chat) body.
pub fn to_messages_request(body: &Map<String, Value>, model: &str, default_max: u64) -> Value {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for message in super::messages(body) {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let (role, blocks) = match role {
            "system" | "developer" => {
                match message.get("content") {
                    Some(Value::Array(parts)) => system.extend(parts.iter().filter_map(part_block)),
                    content => system.push(json!({"type": "text", "text": text_of(content)})),
                }
                continue;
            }
            "assistant" => ("assistant", assistant_blocks(message)),
            "tool" | "function" => ("user", vec![tool_result(message)]),
            _ => ("user", content_blocks(message.get("content"))),
        };
        push_turn(&mut messages, role, "content", blocks);
    }
    let mut request = Map::new();
    request.insert("model".into(), model.into());
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(default_max);
    request.insert("max_tokens".into(), max_tokens.into());
    system.retain(|block| block["text"].as_str().is_some_and(|t| !t.is_empty()));
    if system
        .iter()
        .any(|block| block.get("cache_control").is_some())
    {
        // Marked blocks stay blocks, so the prompt cache keeps its breakpoints.
        request.insert("system".into(), system.into());
    } else if !system.is_empty() {
        let texts: Vec<&str> = system.iter().filter_map(|b| b["text"].as_str()).collect();
        request.insert("system".into(), texts.join("\n\n").into());
    }
    request.insert("messages".into(), messages.into());
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
            request.insert(key.into(), value.clone());
        }
    }
    // OpenAI's temperature goes to 2, Anthropic's to 1.
    if let Some(temperature) = body.get("temperature").and_then(Value::as_f64) {
        request.insert("temperature".into(), temperature.min(1.0).into());
    }
    if let Some(stops) = stop_sequences(body) {
        request.insert("stop_sequences".into(), stops);
    }
    if let Some(thinking) = body.get("thinking").filter(|t| t.is_object()) {
        request.insert("thinking".into(), thinking.clone());
    }
    let tools: Vec<Value> = function_tools(body)
        .map(|tool| {
            let mut out = json!({"name": tool.name, "input_schema": tool.schema()});
            if let Some(description) = tool.description {
                out["description"] = description.clone();
            }
            if let Some(mark) = tool.cache_mark {
                out["cache_control"] = mark.clone();
            }
            out
        })
        .collect();
    if !tools.is_empty() {
        request.insert("tools".into(), tools.into());
    }
    let mut choice = tool_choice(body).map(|choice| match choice {
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Named(name) => json!({"type": "tool", "name": name}),
    });
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) && request.contains_key("tools")
    {
        choice
            .get_or_insert_with(|| json!({"type": "auto"}))
            .as_object_mut()
            .map(|c| c.insert("disable_parallel_tool_use".into(), true.into()));
    }
    if let Some(choice) = choice.filter(|_| request.contains_key("tools")) {
        request.insert("tool_choice".into(), choice);
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        request.insert("metadata".into(), json!({"user_id": user}));
    }
    Value::Object(request)
}

/// Content blocks of a user turn: text and images.
fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(text)) if !text.is_empty() => {
            vec![json!({"type": "text", "text": text})]
        }
        Some(Value::Array(parts)) => parts.iter().filter_map(part_block).collect(),
        _ => Vec::new(),
    }
}

fn part_block(part: &Value) -> Option<Value> {
    let mut block = unmarked_block(part)?;
    if let Some(mark) = part.get("cache_control") {
        block["cache_control"] = mark.clone();
    }
    Some(block)
}

fn unmarked_block(part: &Value) -> Option<Value> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part.get("text")?.as_str().filter(|t| !t.is_empty())?;
            Some(json!({"type": "text", "text": text}))
        }
        Some("image_url") => {
            let url = part.get("image_url")?.get("url")?.as_str()?;
            Some(match data_url(url) {
                Some((media_type, data)) => {
                    json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
                }
                None => json!({"type": "image", "source": {"type": "url", "url": url}}),
            })
        }
        _ => None,
    }
}

fn assistant_blocks(message: &Value) -> Vec<Value> {
    // Thinking blocks first, as Anthropic wrote them (it checks their signatures).
    let mut blocks: Vec<Value> = message["thinking_blocks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    blocks.extend(content_blocks(message.get("content")));
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = &call["function"];
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or_else(|| "toolu_gateway".into()),
            "name": function.get("name").cloned().unwrap_or_default(),
            "input": arguments_object(function.get("arguments")),
        }));
    }
    blocks
}

fn tool_result(message: &Value) -> Value {
    let mut block = json!({
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id").cloned().unwrap_or_default(),
        "content": text_of(message.get("content")),
    });
    let mark = message["content"]
        .as_array()
        .and_then(|parts| parts.iter().find_map(|p| p.get("cache_control")));
    if let Some(mark) = mark {
        block["cache_control"] = mark.clone();
    }
    block
}

/// OpenAI's finish reason for Anthropic's stop reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's usage in the common form: `prompt_tokens` counts cache reads and writes, which Anthropic's
/// `input_tokens` leaves out.
fn usage_of(usage: &Value, into: &mut Usage) {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    if let Some(input) = count("input_tokens") {
        into.cache_read_tokens = count("cache_read_input_tokens").unwrap_or(into.cache_read_tokens);
        into.cache_creation_tokens =
            count("cache_creation_input_tokens").unwrap_or(into.cache_creation_tokens);
        into.prompt_tokens = input
            .saturating_add(into.cache_read_tokens)
            .saturating_add(into.cache_creation_tokens);
    }
    if let Some(output) = count("output_tokens") {
        into.completion_tokens = output;
    }
}

/// A whole Messages answer as a chat completion.
pub fn to_chat_completion(answer: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    for block in answer
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("thinking") => {
                reasoning.push_str(block["thinking"].as_str().unwrap_or_default());
                thinking.push(block.clone());
            }
            Some("redacted_thinking") => thinking.push(block.clone()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = assistant_message(text, reasoning, calls);
    if !thinking.is_empty() {
        message["thinking_blocks"] = thinking.into();
    }
    let mut usage = Usage::default();
    usage_of(&answer["usage"], &mut usage);
    json!({
        "id": answer.get("id").cloned().unwrap_or_else(|| "msg".into()),
        "object": "chat.completion",
        "created": super::now(),
        "model": answer.get("model").and_then(Value::as_str).unwrap_or(model),
        "choices": [{
            "index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(answer["stop_reason"].as_str().unwrap_or("end_turn")),
        }],
        "usage": usage_json(&usage),
    })
}

/// Anthropic's named events into OpenAI chunks. Nothing is written for `message_start`, `ping` and block
/// starts of text: the first chunk carries the first text or tool call, so a provider that fails right
/// after `message_start` can still be replaced.
struct AnthropicStream {
    chunks: Chunks,
}

impl JsonEvents for AnthropicStream {
    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn event(&mut self, data: &Value, out: &mut Vec<u8>) {
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = &data["message"];
                if let Some(id) = message["id"].as_str() {
                    self.chunks.id = id.to_string();
                }
                if let Some(model) = message["model"].as_str() {
                    self.chunks.model = model.to_string();
                }
                usage_of(&message["usage"], &mut self.chunks.usage);
            }
            Some("content_block_start") => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.chunks.open_tool(data["index"].as_u64().unwrap_or(0));
                        let delta = json!({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""}}]});
                        self.chunks.delta(out, delta, None);
                    }
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            self.chunks.delta(out, json!({ "content": text }), None);
                        }
                    }
                    Some("redacted_thinking") => {
                        let blocks = json!([block]);
                        self.chunks
                            .delta(out, json!({ "thinking_blocks": blocks }), None);
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        self.chunks
                            .delta(out, json!({"content": delta["text"]}), None);
                    }
                    Some("thinking_delta") => {
                        self.chunks.delta(
                            out,
                            json!({"reasoning_content": delta["thinking"]}),
                            None,
                        );
                    }
                    Some("signature_delta") => {
                        let block = json!([{"type": "thinking", "signature": delta["signature"]}]);
                        self.chunks
                            .delta(out, json!({ "thinking_blocks": block }), None);
                    }
                    Some("input_json_delta") => {
                        let index = self.chunks.tool(data["index"].as_u64().unwrap_or(0));
                        let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]});
                        self.chunks.delta(out, delta, None);
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                usage_of(&data["usage"], &mut self.chunks.usage);
                if let Some(stop) = data["delta"]["stop_reason"].as_str() {
                    self.chunks.delta(out, json!({}), Some(finish_reason(stop)));
                }
            }
            Some("message_stop") => {
                self.chunks.end(out);
            }
            Some("error") => {
                let kind = data["error"]["type"].as_str().unwrap_or("api_error");
                let message = data["error"]["message"]
                    .as_str()
                    .unwrap_or("the provider failed while streaming");
                self.chunks
                    .fail(out, kind, message, format!("stream error: {kind}"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(stream: &str) -> (String, Option<String>) {
        let mut decoder = AnthropicWire.stream_decoder("m").unwrap();
        let mut out = Vec::new();
        // Byte by byte: every event is split across chunks.
        for byte in stream.as_bytes() {
            decoder.push(std::slice::from_ref(byte), &mut out);
        }
        (
            String::from_utf8(out).unwrap(),
            decoder.failure().map(str::to_string),
        )
    }

    #[test]
    fn requests_lift_system_and_map_tools_images_and_results() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "x", "stop": "END", "tool_choice": "required", "user": "u1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
                {"role": "tool", "tool_call_id": "call_2", "content": "wet"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "w", "parameters": {"type": "object"}}}],
        })).unwrap();
        let request = to_messages_request(&body, "claude-x", 4096);
        assert_eq!(request["model"], "claude-x");
        assert_eq!(request["max_tokens"], 4096);
        assert_eq!(request["system"], "be brief");
        assert_eq!(request["stop_sequences"], json!(["END"]));
        assert_eq!(request["tool_choice"], json!({"type": "any"}));
        assert_eq!(request["metadata"]["user_id"], "u1");
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{request}");
        assert_eq!(
            messages[0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(messages[0]["content"][2]["source"]["type"], "url");
        assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Oslo"}));
        // Two tool results merge into one user turn.
        assert_eq!(messages[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(messages[2]["content"][1]["tool_use_id"], "call_2");
        assert_eq!(
            request["tools"][0]["input_schema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn answers_become_chat_completions_with_cache_usage() {
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}});
        let chat = to_chat_completion(&answer, "m");
        let choice = &chat["choices"][0];
        assert_eq!(choice["message"]["content"], "Let me check.");
        assert_eq!(choice["finish_reason"], "tool_calls");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Oslo"}));
        assert_eq!(chat["usage"]["prompt_tokens"], 115);
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(chat["usage"]["cache_creation_input_tokens"], 5);
    }

    #[test]
    fn streams_become_chunks_with_tool_deltas_usage_and_done() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
            event: ping\ndata: {\"type\":\"ping\"}\n\n\
            event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
            event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
            event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Oslo\\\"}\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (out, failure) = decode(stream);
        assert_eq!(failure, None);
        let events: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "Hi"})
        );
        assert_eq!(
            events[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "weather"
        );
        let arguments: String = events[2..4]
            .iter()
            .map(|e| {
                e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(events[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[5]["usage"]["prompt_tokens"], 12);
        assert_eq!(events[5]["usage"]["completion_tokens"], 9);
    }

    #[test]
    fn an_error_event_is_a_failure_and_an_openai_error() {
        let (out, failure) = decode("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(failure.as_deref(), Some("stream error: overloaded_error"));
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(!out.contains("[DONE]"));
    }
}
