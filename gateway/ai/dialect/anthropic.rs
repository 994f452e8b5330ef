//! Anthropic's Messages API as spoken by clients (the `anthropic` SDKs, Claude Code): a Messages request is
//! parsed into the common form, and the common answer, stream and errors are rendered back as Anthropic's
//! message object and event sequence (`message_start`, `content_block_start/delta/stop`, `message_delta`,
//! `message_stop`, `error`) — well-formed whatever the provider behind spoke.

use serde_json::{json, Map, Value};

use crate::ai::sse::{event_data, EventBuffer};
use crate::error::Rejection;

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::typed(
        400,
        "invalid_request_error",
        "invalid_request",
        message.into(),
    )
}

/// A Messages request in the common form. `count_only` requests (count_tokens) need no `max_tokens`.
pub fn parse_request(raw: &[u8], count_only: bool) -> Result<Map<String, Value>, Rejection> {
    let request: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| invalid(format!("the request body is not valid JSON: {e}")))?;
    match request.get("model") {
        Some(Value::String(_)) => {}
        None => return Err(invalid("model: Field required")),
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    }
    if !count_only && !request.get("max_tokens").is_some_and(Value::is_u64) {
        return Err(invalid("max_tokens: Field required (a positive integer)"));
    }
    let messages = match request.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err(invalid("messages: at least one message is required")),
        None => return Err(invalid("messages: Field required")),
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    let mut out: Vec<Value> = Vec::new();
    match request.get("system") {
        Some(Value::String(text)) if !text.is_empty() => {
            out.push(json!({"role": "system", "content": text}));
        }
        // With a cache mark the blocks stay text parts, each with its mark (see `marked`).
        Some(Value::Array(blocks)) if blocks.iter().any(|b| b.get("cache_control").is_some()) => {
            let parts: Vec<Value> = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .map(|b| marked(json!({"type": "text", "text": b["text"]}), b))
                .collect();
            out.push(json!({"role": "system", "content": parts}));
        }
        Some(Value::Array(blocks)) => {
            let text = blocks_text(blocks);
            if !text.is_empty() {
                out.push(json!({"role": "system", "content": text}));
            }
        }
        _ => {}
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content");
        match (role, content) {
            (Some("user"), Some(Value::String(text))) => {
                out.push(json!({"role": "user", "content": text}))
            }
            (Some("assistant"), Some(Value::String(text))) => {
                out.push(json!({"role": "assistant", "content": text}))
            }
            (Some("user"), Some(Value::Array(blocks))) => user_blocks(blocks, &mut out),
            (Some("assistant"), Some(Value::Array(blocks))) => out.push(assistant_blocks(blocks)),
            // Claude Code (2.1) sends reminders as `system` turns between the others: they stay system
            // messages of the common form, which each provider places as its API wants.
            (Some("system"), Some(Value::String(text))) => {
                out.push(json!({"role": "system", "content": text}))
            }
            (Some("system"), Some(Value::Array(blocks))) => {
                out.push(json!({"role": "system", "content": blocks_text(blocks)}))
            }
            (Some("user" | "assistant" | "system"), _) => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a string or a list of content blocks"
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
                )))
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), request["model"].clone());
    body.insert("messages".into(), out.into());
    if let Some(max) = request.get("max_tokens") {
        body.insert("max_tokens".into(), max.clone());
    }
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(value) = request.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), value.clone());
        }
    }
    // Extended thinking: the request's `thinking` rides along as it came, for the providers that take it
    // (Anthropic); the others leave it out.
    if let Some(thinking) = request.get("thinking").filter(|t| t.is_object()) {
        body.insert("thinking".into(), thinking.clone());
    }
    if let Some(stops) = request.get("stop_sequences").filter(|s| s.is_array()) {
        body.insert("stop".into(), stops.clone());
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        // Client tools only: server tools (`web_search_...`) have a `type` and no schema of ours.
        let tools: Vec<Value> = tools
            .iter()
            .filter(|tool| tool.get("input_schema").is_some())
            .map(|tool| {
                let mut function =
                    json!({"name": tool["name"], "parameters": tool["input_schema"]});
                if let Some(description) = tool.get("description") {
                    function["description"] = description.clone();
                }
                marked(json!({"type": "function", "function": function}), tool)
            })
            .collect();
        if !tools.is_empty() {
            body.insert("tools".into(), tools.into());
        }
    }
    if let Some(choice) = request.get("tool_choice") {
        let mapped = match choice["type"].as_str() {
            Some("any") => Some(json!("required")),
            Some("none") => Some(json!("none")),
            Some("tool") => Some(json!({"type": "function", "function": {"name": choice["name"]}})),
            Some("auto") => Some(json!("auto")),
            _ => None,
        };
        if let Some(mapped) = mapped.filter(|_| body.contains_key("tools")) {
            body.insert("tool_choice".into(), mapped);
        }
        if choice["disable_parallel_tool_use"] == true {
            body.insert("parallel_tool_calls".into(), false.into());
        }
    }
    // A `Map` index panics on a missing key: every optional field is read with `get`.
    if let Some(user) = request
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        body.insert("user".into(), user.into());
    }
    Ok(body)
}

/// `part` with the `cache_control` mark of the Anthropic `block` it came from: the common form carries
/// prompt-cache marks on content parts, tool results and tools, so the Anthropic provider can put them back
/// (and Claude Code's prompt caching keeps working through the gateway); other adapters leave them out.
fn marked(mut part: Value, block: &Value) -> Value {
    if let Some(mark) = block.get("cache_control") {
        part["cache_control"] = mark.clone();
    }
    part
}

fn blocks_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A user turn's blocks: tool results become tool messages (first, as they answer the turn before), the
/// rest one user message.
fn user_blocks(blocks: &[Value], out: &mut Vec<Value>) {
    let mut parts = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("tool_result") => {
                let content = match &block["content"] {
                    Value::String(text) => text.clone(),
                    Value::Array(inner) => blocks_text(inner),
                    _ => String::new(),
                };
                let content = if block["is_error"] == true {
                    format!("Error: {content}")
                } else {
                    content
                };
                let content = match block.get("cache_control") {
                    Some(_) => json!([marked(json!({"type": "text", "text": content}), block)]),
                    None => Value::String(content),
                };
                out.push(json!({"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}));
            }
            Some("text") => parts.push(marked(
                json!({"type": "text", "text": block["text"]}),
                block,
            )),
            Some("image") => {
                let source = &block["source"];
                let url = match source["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source["media_type"].as_str().unwrap_or("image/png"),
                        source["data"].as_str().unwrap_or_default()
                    ),
                    _ => source["url"].as_str().unwrap_or_default().to_string(),
                };
                parts.push(marked(
                    json!({"type": "image_url", "image_url": {"url": url}}),
                    block,
                ));
            }
            _ => {}
        }
    }
    if !parts.is_empty() {
        // A single text part stays a plain string, as most clients send it.
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" && only.get("cache_control").is_none() => {
                only["text"].clone()
            }
            _ => Value::Array(parts),
        };
        out.push(json!({"role": "user", "content": content}));
    }
}

fn assistant_blocks(blocks: &[Value]) -> Value {
    let text = blocks_text(blocks);
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            json!({"id": b["id"], "type": "function",
                "function": {"name": b["name"], "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string)}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = calls.into();
    }
    // Signed thinking blocks go back to Anthropic exactly as they came (it refuses modified ones): they ride
    // in the common form as `thinking_blocks`, the name LiteLLM gives them.
    let thinking: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "thinking" || b["type"] == "redacted_thinking")
        .cloned()
        .collect();
    if !thinking.is_empty() {
        message["thinking_blocks"] = thinking.into();
    }
    message
}

/// Anthropic's stop reason for OpenAI's finish reason. An answer that called tools stops for them even
/// when its provider said `stop` (as some local servers do): Anthropic's clients run tools on `tool_use`.
fn stop_reason(finish: &str, called_tools: bool) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "content_filter" => "refusal",
        "tool_calls" | "function_call" => "tool_use",
        _ if called_tools => "tool_use",
        _ => "end_turn",
    }
}

/// Anthropic's usage from OpenAI's (whose `prompt_tokens` counts the cache tokens Anthropic's
/// `input_tokens` leaves out).
fn usage(usage: &Value) -> Value {
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let cache_read = count(&usage["prompt_tokens_details"]["cached_tokens"]);
    let cache_creation = count(&usage["cache_creation_input_tokens"]);
    let prompt = count(&usage["prompt_tokens"]);
    json!({
        "input_tokens": prompt.saturating_sub(cache_read.saturating_add(cache_creation)),
        "output_tokens": count(&usage["completion_tokens"]),
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    })
}

/// A message id from the common answer's id.
fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{id}"),
        None => "msg_gateway".to_string(),
    }
}

/// A whole common answer (a chat completion) as an Anthropic message.
/// `None` when it is not a chat completion (a provider's 200 with something else in it).
pub fn render_answer(answer: &[u8]) -> Option<Vec<u8>> {
    let answer = serde_json::from_slice::<Value>(answer).ok()?;
    if !answer["choices"].is_array() {
        return None;
    }
    let choice = &answer["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    match message["thinking_blocks"].as_array() {
        // Anthropic's own blocks, signatures and all, so the client can send them back.
        Some(blocks) => content.extend(blocks.iter().cloned()),
        None => {
            if let Some(reasoning) = message["reasoning_content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
            }
        }
    }
    let text = match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => blocks_text(parts),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    json!({
        "id": message_id(answer["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": answer["model"],
        "content": content,
        "stop_reason": stop_reason(
            choice["finish_reason"].as_str().unwrap_or("stop"),
            message["tool_calls"].as_array().is_some_and(|c| !c.is_empty()),
        ),
        "stop_sequence": null,
        "usage": usage(&answer["usage"]),
    })
    .to_string()
    .into_bytes()
    .into()
}

/// `count_tokens`: the gateway's own estimate of the prompt (the one `prompt_tokens_over` rules and
/// `message_start` use), plus the tool definitions at the same 4 bytes a token, as the gateway has no
/// tokenizer of every provider's models.
pub fn count_tokens(body: &Map<String, Value>) -> Vec<u8> {
    let tools = body
        .get("tools")
        .map_or(0, |t| t.to_string().len().div_ceil(4));
    json!({ "input_tokens": crate::ai::heuristics::estimate_prompt_tokens(body) + tools })
        .to_string()
        .into_bytes()
}

/// The block open in the stream being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// Redacted thinking: opened and closed at once.
    Redacted,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// A tool call held back whole: Anthropic's blocks come one after another, while an OpenAI-style stream may
/// interleave the argument deltas of parallel calls. The first call streams as it comes; the others are held
/// to the end of the answer and then go out whole, each as one block.
#[derive(Default)]
struct HeldTool {
    index: u64,
    id: Value,
    name: Value,
    arguments: String,
}

/// Writes a common (OpenAI) SSE stream as Anthropic's event sequence.
#[derive(Default)]
pub struct StreamEncoder {
    held: Vec<HeldTool>,
    /// OpenAI indices of the tool calls that streamed in a block of their own.
    streamed: Vec<u64>,
    /// A late piece of a streamed call was dropped (and logged, once per stream).
    dropped_late: bool,
    events: EventBuffer,
    /// The prompt's tokens as estimated from the request, for `message_start` (the provider's count arrives
    /// with the end of an OpenAI-style stream, in `message_delta`): clients that track their context from
    /// `message_start` see no zero.
    input_estimate: u64,
    started: bool,
    open: Option<Block>,
    /// Index of the next content block.
    next: u64,
    stop_reason: Option<&'static str>,
    called_tools: bool,
    usage: Option<Value>,
    finished: bool,
}

fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

impl StreamEncoder {
    pub fn new(input_estimate: u64) -> Self {
        StreamEncoder {
            input_estimate,
            ..StreamEncoder::default()
        }
    }

    /// Translate the common events `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut datas = Vec::new();
        self.events.read(chunk, |events| {
            let bytes = events.bytes();
            for (event, _) in events {
                let text = String::from_utf8_lossy(&bytes[event]);
                datas.push(event_data(&text).into_owned());
            }
        });
        for data in datas {
            if self.finished {
                break;
            }
            if data.trim() == "[DONE]" {
                self.finish(&mut out);
            } else if let Ok(value) = serde_json::from_str::<Value>(&data) {
                self.chunk(&value, &mut out);
            }
        }
        out
    }

    fn start(&mut self, out: &mut Vec<u8>, chunk: &Value) {
        if self.started {
            return;
        }
        self.started = true;
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(chunk["id"].as_str()), "type": "message", "role": "assistant",
                "model": chunk["model"], "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next - 1}),
            );
        }
    }

    /// The held tool calls (see `HeldTool`), each whole, at the end of the answer.
    fn flush_held(&mut self, out: &mut Vec<u8>) {
        for tool in std::mem::take(&mut self.held) {
            let index = self.next;
            self.next += 1;
            event(
                out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block":
                    {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}}),
            );
            if !tool.arguments.is_empty() {
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": tool.arguments}}),
                );
            }
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// Hold a piece of tool call `index` (its id, name and arguments as they come) until the open block closes.
    fn hold(&mut self, index: u64, call: &Value) {
        let position = match self.held.iter().position(|tool| tool.index == index) {
            Some(position) => position,
            None => {
                self.held.push(HeldTool {
                    index,
                    ..HeldTool::default()
                });
                self.held.len() - 1
            }
        };
        let tool = &mut self.held[position];
        if tool.id.is_null() {
            tool.id = call["id"].clone();
        }
        if tool.name.is_null() {
            tool.name = call["function"]["name"].clone();
        }
        if let Some(arguments) = call["function"]["arguments"].as_str() {
            tool.arguments.push_str(arguments);
        }
    }

    fn open(&mut self, out: &mut Vec<u8>, block: Block, content_block: Value) {
        if self.open == Some(block) {
            return;
        }
        self.close(out);
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next, "content_block": content_block}),
        );
        self.next += 1;
        self.open = Some(block);
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: Value) {
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next - 1, "delta": delta}),
        );
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().unwrap_or("the provider failed");
            let kind = match error["type"].as_str() {
                Some("overloaded_error") => "overloaded_error",
                Some("invalid_request_error") => "invalid_request_error",
                _ => "api_error",
            };
            event(
                out,
                "error",
                &json!({"type": "error", "error": {"type": kind, "message": message}}),
            );
            self.finished = true;
            return;
        }
        self.start(out, chunk);
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["reasoning_content"]
            .as_str()
            .or(delta["reasoning"].as_str())
            .filter(|t| !t.is_empty())
        {
            self.open(
                out,
                Block::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
            );
            self.delta(out, json!({"type": "thinking_delta", "thinking": text}));
        }
        for block in delta["thinking_blocks"].as_array().into_iter().flatten() {
            match block["type"].as_str() {
                Some("thinking") if self.open == Some(Block::Thinking) => {
                    if let Some(signature) = block["signature"].as_str() {
                        self.delta(
                            out,
                            json!({"type": "signature_delta", "signature": signature}),
                        );
                    }
                }
                Some("redacted_thinking") => {
                    self.close(out);
                    self.open(out, Block::Redacted, block.clone());
                    self.close(out);
                }
                _ => {}
            }
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.open(out, Block::Text, json!({"type": "text", "text": ""}));
            self.delta(out, json!({"type": "text_delta", "text": text}));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            self.called_tools = true;
            // Another call streams, or this one is already held: it goes out whole at the end (see
            // `HeldTool`).
            if matches!(self.open, Some(Block::Tool(open)) if open != index)
                || self.held.iter().any(|tool| tool.index == index)
            {
                self.hold(index, call);
                continue;
            }
            if self.open != Some(Block::Tool(index)) && self.streamed.contains(&index) {
                // More arguments for a call whose block was closed when another kind of block began: a block
                // cannot be reopened, and a second one without its id or name would be malformed.
                if !std::mem::replace(&mut self.dropped_late, true) {
                    log::warn!(
                        "a provider sent more of tool call {index} after other content; dropped"
                    );
                }
                continue;
            }
            if self.open != Some(Block::Tool(index)) {
                self.streamed.push(index);
                self.open(
                    out,
                    Block::Tool(index),
                    json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}),
                );
            }
            if let Some(arguments) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                self.delta(
                    out,
                    json!({"type": "input_json_delta", "partial_json": arguments}),
                );
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = Some(stop_reason(finish, self.called_tools));
        }
    }

    /// The end of the stream: an event left unfinished is dropped; then `error` as Anthropic's `error` event,
    /// or, when the common stream ended without its `[DONE]` (a finish reason was its last word), the closing
    /// events. Nothing when the stream was already closed.
    pub fn end(&mut self, error: Option<&Rejection>) -> Vec<u8> {
        self.events.take();
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match error {
            Some(error) => {
                out.extend_from_slice(&error.anthropic_event());
                self.finished = true;
            }
            None => self.finish(&mut out),
        }
        out
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out, &Value::Null);
        self.close(out);
        self.flush_held(out);
        let usage = self
            .usage
            .as_ref()
            .map(usage)
            .unwrap_or_else(|| json!({"output_tokens": 0}));
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_requests_become_the_common_form() {
        let raw = json!({
            "model": "claude-x", "max_tokens": 512, "stop_sequences": ["END"],
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "weather", "description": "w", "input_schema": {"type": "object"}},
                      {"type": "web_search_20250305", "name": "web_search"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
                    {"type": "text", "text": "and?"}]},
            ],
        });
        let body = parse_request(raw.to_string().as_bytes(), false).unwrap();
        let messages = body["messages"].as_array().unwrap();
        // The system block's cache mark stays on it (a text part).
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]})
        );
        assert_eq!(
            messages[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBOR"
        );
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "cold"})
        );
        assert_eq!(messages[4], json!({"role": "user", "content": "and?"}));
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn what_is_absent_or_wrong_is_refused() {
        for (raw, says) in [
            (
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}),
                "role",
            ),
        ] {
            let error = parse_request(raw.to_string().as_bytes(), false).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(error.message.contains(says), "{}", error.message);
        }
        assert!(parse_request(b"{", false).is_err());
    }

    /// The tool_use blocks a client rebuilds from an event sequence, (id, name, input) in block order, and
    /// the text: every block starts after the one before it stopped, with the next index, and every delta
    /// belongs to the open block.
    fn tool_blocks(events: &str) -> (Vec<(String, String, Value)>, String) {
        let (mut blocks, mut text, mut open, mut next) = (Vec::new(), String::new(), None, 0);
        for data in events.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let event: Value = serde_json::from_str(data).unwrap();
            let index = event["index"].as_u64();
            match event["type"].as_str() {
                Some("content_block_start") => {
                    assert!(open.is_none(), "a block inside another: {events}");
                    assert_eq!(index, Some(next), "{events}");
                    (open, next) = (index, next + 1);
                    let block = &event["content_block"];
                    if block["type"] == "tool_use" {
                        let (id, name) = (block["id"].as_str(), block["name"].as_str());
                        let (id, name) = (id.expect(events), name.expect(events));
                        blocks.push((id.to_string(), name.to_string(), String::new()));
                    }
                }
                Some("content_block_delta") => {
                    assert_eq!(open, index, "a delta outside its block: {events}");
                    let delta = &event["delta"];
                    match delta["type"].as_str() {
                        Some("input_json_delta") => {
                            blocks.last_mut().unwrap().2 += delta["partial_json"].as_str().unwrap()
                        }
                        _ => text += delta["text"].as_str().unwrap_or_default(),
                    }
                }
                Some("content_block_stop") => assert_eq!(open.take(), index, "{events}"),
                _ => {}
            }
        }
        let blocks = blocks
            .into_iter()
            .map(|(id, name, input)| (id, name, serde_json::from_str(&input).unwrap()))
            .collect();
        (blocks, text)
    }

    #[test]
    fn parallel_tool_calls_become_whole_blocks_interleaved_or_not() {
        let call = |index: u64, head: Option<(&str, &str)>, arguments: &str| {
            let mut call = json!({"index": index, "function": {"arguments": arguments}});
            if let Some((id, name)) = head {
                call["id"] = json!(id);
                call["function"]["name"] = json!(name);
            }
            format!(
                "data: {}\n\n",
                json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
            )
        };
        let text = |text: &str| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": text}}]})
            )
        };
        let expected = vec![
            (
                "call_a".to_string(),
                "weather".to_string(),
                json!({"city": "Oslo"}),
            ),
            (
                "call_b".to_string(),
                "time".to_string(),
                json!({"zone": "CET"}),
            ),
        ];
        let interleaved = [
            call(0, Some(("call_a", "weather")), ""),
            call(1, Some(("call_b", "time")), ""),
            call(0, None, "{\"city\":"),
            call(1, None, "{\"zone\":"),
            call(0, None, "\"Oslo\"}"),
            call(1, None, "\"CET\"}"),
        ];
        let sequential = [
            call(0, Some(("call_a", "weather")), "{\"city\":"),
            call(0, None, "\"Oslo\"}"),
            call(1, Some(("call_b", "time")), "{\"zone\":"),
            call(1, None, "\"CET\"}"),
        ];
        // Text between them, and the held call's last arguments after it: still two whole calls.
        let with_text = [
            call(0, Some(("call_a", "weather")), "{\"city\":"),
            call(1, Some(("call_b", "time")), "{\"zone\":"),
            call(0, None, "\"Oslo\"}"),
            text("Checking."),
            call(1, None, "\"CET\"}"),
        ];
        for events in [&interleaved[..], &sequential[..], &with_text[..]] {
            let mut encoder = StreamEncoder::default();
            let mut out = Vec::new();
            for event in events {
                out.extend(encoder.push(event.as_bytes()));
            }
            out.extend(encoder.push(
                b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n",
            ));
            let out = String::from_utf8(out).unwrap();
            let (blocks, said) = tool_blocks(&out);
            assert_eq!(blocks, expected, "{out}");
            assert_eq!(said, if events.len() == 5 { "Checking." } else { "" });
            assert!(out.contains("\"stop_reason\":\"tool_use\""), "{out}");
        }
        // More of a call that streamed after its block closed: dropped, never a block without id or name.
        let mut encoder = StreamEncoder::default();
        let mut out = encoder.push(call(0, Some(("call_a", "weather")), "{}").as_bytes());
        out.extend(encoder.push(text("Done.").as_bytes()));
        out.extend(encoder.push(call(0, None, "{}").as_bytes()));
        out.extend(encoder.push(b"data: [DONE]\n\n"));
        let out = String::from_utf8(out).unwrap();
        let (blocks, said) = tool_blocks(&out);
        assert_eq!(
            blocks,
            [("call_a".to_string(), "weather".to_string(), json!({}))]
        );
        assert_eq!(said, "Done.");
    }

    #[test]
    fn answers_and_streams_are_rendered_as_anthropic_messages() {
        let answer = json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 110, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 100}}});
        let message: Value =
            serde_json::from_slice(&render_answer(answer.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(
            message["content"][0],
            json!({"type": "text", "text": "Checking."})
        );
        assert_eq!(message["content"][1]["input"], json!({"city": "Oslo"}));
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["usage"]["input_tokens"], 10);
        assert_eq!(message["usage"]["cache_read_input_tokens"], 100);
        // Not a chat completion: nothing to render (the relay tries the next candidate).
        assert!(render_answer(b"<html>busy</html>").is_none());
        assert!(render_answer(br#"{"object":"list","data":[]}"#).is_none());

        let stream = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n\
            data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"w\",\"arguments\":\"\"}}]}}]}\n\n\
            data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n\
            data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let mut encoder = StreamEncoder::default();
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            out.extend(encoder.push(piece));
        }
        let out = String::from_utf8(out).unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(out.contains("\"stop_reason\":\"tool_use\""));
        assert!(out.contains("\"output_tokens\":2"));
    }

    #[test]
    fn a_stream_is_closed_properly_when_it_ends_without_done_or_breaks_mid_event() {
        let names = |out: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(out)
                .lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .map(str::to_string)
                .collect()
        };
        // A finish reason was the provider's last word: no `[DONE]`.
        let mut encoder = StreamEncoder::default();
        let mut out = encoder.push(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n");
        out.extend(encoder.end(None));
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(encoder.end(None).is_empty(), "closed once");

        // The provider broke off inside an event: it is dropped, and the error is an event of its own.
        let mut encoder = StreamEncoder::default();
        let mut out = encoder.push(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choi");
        let error = Rejection::typed(502, "server_error", "upstream_stream_error", "broken");
        out.extend(encoder.end(Some(&error)));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            names(text.as_bytes()).last().map(String::as_str),
            Some("error"),
            "{text}"
        );
        let last: Value =
            serde_json::from_str(text.trim_end().rsplit("data: ").next().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "api_error");
        assert!(!text.contains("choi\""), "{text}");
    }
}
