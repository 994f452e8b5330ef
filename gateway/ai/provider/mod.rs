//! The provider seam: each upstream wire format is one adapter behind [`Wire`]. The gateway's common form is
//! OpenAI's chat-completions schema — the request body guards and routing work on, the whole answer usage
//! and masking read, and the SSE chunk stream the masker and the usage scanner watch — so an
//! OpenAI-compatible provider passes through untouched, and every other adapter translates to and from it
//! here, in its own file. A new provider type is one file in this folder plus its `ProviderKind` variant.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod mock;
pub mod openai;

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::catalog::{Deployment, ProviderKind};
use super::dialect::openai::Endpoint;
use super::sse::EventBuffer;
use crate::error::Rejection;

/// One request to one deployment, as the relay hands it to an adapter.
pub struct Call<'a> {
    pub deployment: &'a Deployment,
    /// The provider's own id of the model.
    pub upstream_model: &'a str,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// `max_tokens` for providers that require one, when the client gave none.
    pub default_max_tokens: u64,
    /// OpenAI-compatible providers: send the client's `max_tokens` as `max_completion_tokens`.
    pub max_completion_tokens: bool,
    /// The body came from Anthropic's dialect: it may carry prompt-cache marks (`cache_control`) and fields
    /// (`top_k`) that OpenAI-compatible APIs refuse as unknown.
    pub from_anthropic: bool,
}

/// A request answered in the gateway (by the mock provider).
pub struct Local<'a> {
    pub upstream_model: &'a str,
    pub endpoint: Endpoint,
    pub body: &'a Map<String, Value>,
    pub stream: bool,
    pub request_id: &'a str,
    /// Content pieces of a stream.
    pub chunks: usize,
}

/// A local answer: a whole body, or the events of a stream; and its usage.
pub struct LocalAnswer {
    pub usage: Option<super::usage::Usage>,
    pub whole: Option<Vec<u8>>,
    pub events: Vec<Bytes>,
}

/// A request rendered for a provider: its path (prefix and rest, so the common case copies nothing), extra
/// headers computed per request (signatures), and the body.
pub struct Rendered<'a> {
    pub path: [Cow<'a, str>; 2],
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl<'a> Rendered<'a> {
    /// `request` as JSON to `tail` under the deployment's base path (no headers of its own yet).
    pub fn json(
        call: &Call<'a>,
        tail: Cow<'a, str>,
        request: &impl serde::Serialize,
    ) -> Result<Self, Rejection> {
        // Not the client's fault: what failed to serialise is the gateway's own rendering.
        let payload = serde_json::to_vec(request).map_err(|_| {
            Rejection::typed(
                500,
                "server_error",
                "internal_error",
                "the request could not be written for the provider",
            )
        })?;
        Ok(Rendered {
            path: [Cow::Borrowed(call.deployment.base_path.as_str()), tail],
            headers: Vec::new(),
            body: Bytes::from(payload),
        })
    }
}

/// How one upstream wire format is spoken.
pub trait Wire: Sync {
    /// Whether this format has the endpoint (native providers speak chat only).
    fn supports(&self, endpoint: Endpoint) -> bool;

    /// The public API's base URL, for a provider configured without one (`region`: Bedrock's).
    fn default_base_url(&self, _region: Option<&str>) -> Option<String> {
        None
    }

    /// A deployment's authentication headers from its key, rendered once when the config loads.
    fn auth_headers(&self, key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str>;

    /// The request for this provider from the common form. `body` may be changed in place (the model id);
    /// the next candidate renders from it again.
    fn render<'a>(
        &self,
        call: &Call<'a>,
        body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection>;

    /// Whether a 400/413 error body says the prompt does not fit the model: the next candidate may take it.
    fn context_exceeded(&self, body: &str) -> bool;

    /// A provider error body as (error type, message), for a client that speaks another dialect.
    fn error_message(&self, body: &str) -> Option<(String, String)>;

    /// A whole successful answer in the common form; `None` when it already is (no copy).
    fn whole_answer(
        &self,
        body: &[u8],
        upstream_model: &str,
    ) -> Result<Option<Vec<u8>>, Unanswered>;

    /// Whether an answer of this type is this provider's stream (server-sent events, for most).
    fn is_stream(&self, content_type: &str) -> bool {
        content_type.starts_with("text/event-stream")
    }

    /// The decoder of this provider's streams into common SSE chunks; `None` when they already are.
    fn stream_decoder(&self, upstream_model: &str) -> Option<Box<dyn StreamDecoder>>;

    /// Providers that answer in the gateway itself (the mock): the answer in the common form.
    fn answer_locally(&self, _local: &Local<'_>) -> Option<LocalAnswer> {
        None
    }

    /// Whether an error body of this provider is already in the client's format when the client speaks
    /// OpenAI's dialect (then it passes as it was).
    fn speaks_openai_errors(&self) -> bool {
        false
    }
}

/// Turns a provider's stream, chunk by chunk, into OpenAI chat-completion chunks (`data: {...}\n\n`),
/// ending with `data: [DONE]` when the provider's stream came to its proper end.
pub trait StreamDecoder: Send {
    /// Decode what `chunk` completes into `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>);

    /// The provider reported a failure in the stream (an `error` event): why. Before anything reached the
    /// client, the next candidate may answer instead.
    fn failure(&self) -> Option<&str>;
}

/// The common stream a decoder writes, and what it knows of it: the answer's id and model, the usage so far,
/// whether the role went out (with the first delta), the tool calls by the provider's block index, and how
/// the stream ended.
#[derive(Default)]
pub struct Chunks {
    pub id: String,
    pub model: String,
    pub usage: super::usage::Usage,
    started: bool,
    /// The provider's content block index of each tool call, in the order of the calls.
    tools: Vec<u64>,
    /// Why the provider's stream failed (an error it reported).
    failure: Option<String>,
    /// The stream came to its end (or failed): nothing more is read.
    pub done: bool,
}

impl Chunks {
    pub fn new(id: String, model: String) -> Self {
        Chunks {
            id,
            model,
            ..Chunks::default()
        }
    }

    /// Whether a delta went out yet.
    pub fn started(&self) -> bool {
        self.started
    }

    /// A chunk with `delta` for choice 0 (the first carries the assistant's role) and perhaps a finish reason.
    pub fn delta(&mut self, out: &mut Vec<u8>, mut delta: Value, finish: Option<&str>) {
        if !self.started {
            delta["role"] = "assistant".into();
            self.started = true;
        }
        push_event(out, &chunk(&self.id, &self.model, delta, finish));
    }

    /// The stream's proper end: the usage chunk and `[DONE]`.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        push_event(out, &usage_chunk(&self.id, &self.model, &self.usage));
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// The provider reported a failure (`why`, for the fallback): an error event ends the stream.
    pub fn fail(&mut self, out: &mut Vec<u8>, kind: &str, message: &str, why: String) {
        self.failure = Some(why);
        self.refuse(out, kind, message);
    }

    /// The provider refused (a safety block): an error event ends the stream, and no other candidate is
    /// asked.
    pub fn refuse(&mut self, out: &mut Vec<u8>, kind: &str, message: &str) {
        error_event(out, kind, message);
        self.done = true;
    }

    /// A new tool call, at the provider's content block `block`: its index among the tool calls.
    pub fn open_tool(&mut self, block: u64) -> usize {
        self.tools.push(block);
        self.tools.len() - 1
    }

    /// The index of the tool call at the provider's content block `block`.
    pub fn tool(&self, block: u64) -> usize {
        self.tools.iter().position(|&b| b == block).unwrap_or(0)
    }
}

/// A provider stream of server-sent events whose data is JSON, read event by event.
pub trait JsonEvents: Send {
    fn event(&mut self, data: &Value, out: &mut Vec<u8>);
    fn chunks(&self) -> &Chunks;
}

/// The decoder of such a stream: the events' framing here, their meaning in `T`.
pub struct SseDecoder<T> {
    events: EventBuffer,
    inner: T,
}

impl<T: JsonEvents> SseDecoder<T> {
    pub fn new(inner: T) -> Self {
        SseDecoder {
            events: EventBuffer::default(),
            inner,
        }
    }
}

impl<T: JsonEvents> StreamDecoder for SseDecoder<T> {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for data in self.events.json_events(chunk) {
            if !self.inner.chunks().done {
                self.inner.event(&data, out);
            }
        }
    }

    fn failure(&self) -> Option<&str> {
        self.inner.chunks().failure.as_deref()
    }
}

/// A key as a header value, marked sensitive (never logged).
pub fn secret_header(value: &str) -> Result<HeaderValue, &'static str> {
    let mut value =
        HeaderValue::from_str(value).map_err(|_| "contains characters not allowed in a header")?;
    value.set_sensitive(true);
    Ok(value)
}

/// The messages of a common-form body.
pub fn messages(body: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The adapter of a provider type.
pub fn wire(kind: ProviderKind) -> &'static dyn Wire {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAiWire,
        ProviderKind::Anthropic => &anthropic::AnthropicWire,
        ProviderKind::Gemini => &gemini::GeminiWire,
        ProviderKind::Bedrock => &bedrock::BedrockWire,
        ProviderKind::Mock => &mock::MockWire,
    }
}

/// `data: {json}\n\n`, appended to `out`.
pub fn push_event(out: &mut Vec<u8>, json: &Value) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, json);
    out.extend_from_slice(b"\n\n");
}

/// One OpenAI chunk with a delta for choice 0 and perhaps a finish reason.
pub fn chunk(id: &str, model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

/// The usage chunk (`choices: []`) OpenAI sends before `[DONE]` with `include_usage`; the cache counts ride
/// in `prompt_tokens_details.cached_tokens` and `cache_creation_input_tokens`.
pub fn usage_chunk(id: &str, model: &str, usage: &super::usage::Usage) -> Value {
    serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
        "choices": [], "usage": usage_json(usage),
    })
}

/// A usage object in OpenAI's form: `prompt_tokens` counts cached prompt tokens too.
pub fn usage_json(usage: &super::usage::Usage) -> Value {
    let mut json = serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    });
    if usage.cache_read_tokens > 0 || usage.cache_creation_tokens > 0 {
        json["prompt_tokens_details"] =
            serde_json::json!({"cached_tokens": usage.cache_read_tokens});
        json["cache_creation_input_tokens"] = usage.cache_creation_tokens.into();
    }
    json
}

/// An OpenAI error event in a stream.
pub fn error_event(out: &mut Vec<u8>, kind: &str, message: &str) {
    push_event(
        out,
        &serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": kind}}),
    );
}

/// Why a provider's 200 holds no answer for the client.
#[derive(Debug)]
pub enum Unanswered {
    /// The gateway cannot read it (why): nothing was sent yet, so the next candidate may answer.
    Unreadable(String),
    /// The provider refused to answer (a safety block): that refusal is the client's answer.
    Refused(Rejection),
}

/// A fresh id for what a provider leaves unnamed (Gemini's function calls and answers), unique across turns.
pub fn call_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Text content of an OpenAI message: a string, or its text parts joined.
pub fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The `message` of a whole answer in the common form: its text, reasoning (when there is any, as
/// `reasoning_content`) and tool calls (when there are any).
pub fn assistant_message(text: String, reasoning: String, calls: Vec<Value>) -> Value {
    let mut message = serde_json::json!({"role": "assistant", "content": text});
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    message
}

/// A function tool of the common form, as the adapters render it.
pub struct FunctionTool<'a> {
    pub name: &'a Value,
    pub description: Option<&'a Value>,
    pub parameters: Option<&'a Value>,
    /// The tool's prompt-cache mark (from an Anthropic client).
    pub cache_mark: Option<&'a Value>,
}

impl FunctionTool<'_> {
    /// The parameters' JSON schema, an empty object's when the tool gives none.
    pub fn schema(&self) -> Value {
        self.parameters
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"}))
    }
}

/// The request's function tools (those with a name).
pub fn function_tools(body: &Map<String, Value>) -> impl Iterator<Item = FunctionTool<'_>> {
    body.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tool| {
            let function = tool.get("function")?;
            Some(FunctionTool {
                name: function.get("name")?,
                description: function.get("description"),
                parameters: function.get("parameters"),
                cache_mark: tool.get("cache_control"),
            })
        })
}

/// OpenAI's `tool_choice`, read once for every adapter.
pub enum ToolChoice<'a> {
    None,
    Auto,
    Required,
    /// This function (its name).
    Named(&'a Value),
}

pub fn tool_choice(body: &Map<String, Value>) -> Option<ToolChoice<'_>> {
    match body.get("tool_choice")? {
        Value::String(mode) => match mode.as_str() {
            "none" => Some(ToolChoice::None),
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            _ => None,
        },
        Value::Object(named) => named
            .get("function")
            .and_then(|f| f.get("name"))
            .map(ToolChoice::Named),
        _ => None,
    }
}

/// OpenAI's `stop` (a string or a list) as a list, for the providers' stop sequences.
pub fn stop_sequences(body: &Map<String, Value>) -> Option<Value> {
    match body.get("stop")? {
        Value::String(stop) => Some(Value::Array(vec![Value::String(stop.clone())])),
        Value::Array(stops) => Some(Value::Array(stops.clone())),
        _ => None,
    }
}

/// Append a turn of `role` whose items (blocks or parts) sit under `key`, merged into the turn before when
/// that one has the same role: Anthropic, Gemini and Bedrock want roles to alternate (consecutive tool
/// results become one user turn). Turns without items are left out.
pub fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last["role"] == role => {
            if let Some(existing) = last[key].as_array_mut() {
                existing.extend(items);
            }
        }
        _ => turns.push(serde_json::json!({ "role": role, key: items })),
    }
}

/// A `data:` URL's media type and base64 data.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// A tool call's arguments (a JSON string in OpenAI's form) as an object; text that is not a JSON object is
/// kept under `input`, so nothing is lost.
pub fn arguments_object(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) | Err(_) if text.trim().is_empty() => Value::Object(Map::new()),
            _ => serde_json::json!({ "input": text }),
        },
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => Value::Object(Map::new()),
    }
}

/// Every pair of ingress dialect and provider: a request rendered to the provider's format keeps its text,
/// images, tool calls with their arguments and tool results; the provider's answer rendered back for the
/// client keeps text, tool calls with their arguments, and the finish reason.
#[cfg(test)]
mod round_trip {
    use serde_json::{json, Map, Value};

    use super::{anthropic, bedrock, gemini};
    use crate::ai::dialect;

    /// The same conversation in each ingress dialect, parsed into the common form.
    fn requests() -> Vec<(&'static str, Map<String, Value>)> {
        let openai = json!({
            "model": "m", "max_tokens": 99,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look at this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "minus 3C"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        });
        let anthropic = json!({
            "model": "m", "max_tokens": 99, "system": "be brief",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look at this"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "minus 3C"}]},
            ],
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        });
        vec![
            (
                "openai",
                dialect::Operation::OpenAi(dialect::openai::Endpoint::ChatCompletions)
                    .parse(openai.to_string().as_bytes())
                    .unwrap(),
            ),
            (
                "anthropic",
                dialect::Operation::Messages
                    .parse(anthropic.to_string().as_bytes())
                    .unwrap(),
            ),
        ]
    }

    /// Each provider's rendering of a common request, and its answer (text "Done.", a call of `weather`
    /// with `{"city":"Bergen"}`) turned into the common form.
    /// A provider's name, its request renderer, and its sample answer in the common form.
    type Case = (&'static str, fn(&Map<String, Value>) -> Value, Value);

    fn providers() -> Vec<Case> {
        vec![
            (
                "anthropic",
                |body| anthropic::to_messages_request(body, "m", 100),
                anthropic::to_chat_completion(
                    &json!({"id": "msg_1", "content": [{"type": "text", "text": "Done."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Bergen"}}],
                        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2}}),
                    "m",
                ),
            ),
            (
                "gemini",
                gemini::to_generate_request,
                gemini::to_chat_completion(
                    &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Done."},
                        {"functionCall": {"name": "weather", "args": {"city": "Bergen"}}}]}, "finishReason": "STOP"}]}),
                    "m",
                )
                .unwrap(),
            ),
            (
                "bedrock",
                |body| bedrock::to_converse_request(body, 100),
                bedrock::to_chat_completion(
                    &json!({"output": {"message": {"role": "assistant", "content": [{"text": "Done."},
                        {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Bergen"}}}]}},
                        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 2}}),
                    "m",
                ),
            ),
        ]
    }

    #[test]
    fn every_pair_keeps_text_images_tool_calls_results_and_finish_reasons() {
        for (ingress, body) in requests() {
            for (provider, render, answer) in providers() {
                let pair = format!("{ingress} -> {provider}");
                let sent = render(&body).to_string();
                for kept in [
                    "be brief",
                    "look at this",
                    "iVBORw0KGgo",
                    "weather",
                    "minus 3C",
                ] {
                    assert!(sent.contains(kept), "{pair}: `{kept}` lost in {sent}");
                }
                assert!(
                    sent.contains(r#"{"city":"Oslo"}"#),
                    "{pair}: tool arguments lost in {sent}"
                );
                assert!(
                    sent.contains("image/png") || sent.contains("\"png\""),
                    "{pair}: {sent}"
                );

                let choice = &answer["choices"][0];
                assert_eq!(choice["message"]["content"], "Done.", "{pair}");
                assert_eq!(choice["finish_reason"], "tool_calls", "{pair}");
                let call = &choice["message"]["tool_calls"][0]["function"];
                assert_eq!(call["name"], "weather", "{pair}");
                let arguments: Value =
                    serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(arguments, json!({"city": "Bergen"}), "{pair}");
                if ingress == "anthropic" {
                    let rendered =
                        dialect::anthropic::render_answer(answer.to_string().as_bytes()).unwrap();
                    let message: Value = serde_json::from_slice(&rendered).unwrap();
                    assert_eq!(message["content"][0]["text"], "Done.", "{pair}");
                    assert_eq!(
                        message["content"][1]["input"],
                        json!({"city": "Bergen"}),
                        "{pair}"
                    );
                    assert_eq!(message["stop_reason"], "tool_use", "{pair}");
                }
            }
        }
    }
}

/// Prompt-cache marks from an Anthropic client reach the providers that take them, in their places, and
/// stay away from OpenAI-compatible ones.
#[cfg(test)]
mod cache_marks {
    use std::borrow::Cow;

    use serde_json::{json, Value};

    use super::{anthropic, bedrock, openai::OpenAiWire, Call, Wire};
    use crate::ai::catalog::Deployment;
    use crate::ai::dialect::{openai::Endpoint, Operation};

    #[test]
    fn cache_marks_reach_anthropic_and_bedrock_and_stay_away_from_openai() {
        let mark = json!({"type": "ephemeral"});
        let request = json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "rules"}, {"type": "text", "text": "long context", "cache_control": mark}],
            "tools": [{"name": "weather", "input_schema": {"type": "object"}, "cache_control": mark}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "question", "cache_control": mark}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "cold", "cache_control": mark}]},
            ],
        });
        let mut body = Operation::Messages
            .parse(request.to_string().as_bytes())
            .unwrap();

        let sent = anthropic::to_messages_request(&body, "m", 10);
        assert_eq!(sent["system"][0], json!({"type": "text", "text": "rules"}));
        assert_eq!(sent["system"][1]["cache_control"], mark);
        assert_eq!(sent["tools"][0]["cache_control"], mark);
        assert_eq!(sent["messages"][0]["content"][0]["cache_control"], mark);
        assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(sent["messages"][2]["content"][0]["cache_control"], mark);

        let sent = bedrock::to_converse_request(&body, 10);
        assert_eq!(
            sent["system"][2],
            json!({"cachePoint": {"type": "default"}}),
            "{sent}"
        );
        assert_eq!(
            sent["toolConfig"]["tools"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(
            sent["messages"][0]["content"][1],
            json!({"cachePoint": {"type": "default"}})
        );

        let deployment = Deployment {
            base_path: "/v1".into(),
            auth: Vec::new(),
            host: http::HeaderValue::from_static("localhost"),
            signing: None,
        };
        let call = |from_anthropic| Call {
            deployment: &deployment,
            upstream_model: "m",
            endpoint: Endpoint::ChatCompletions,
            stream: false,
            default_max_tokens: 10,
            max_completion_tokens: false,
            from_anthropic,
        };
        let rendered = OpenAiWire.render(&call(true), &mut body).unwrap();
        assert_eq!(
            rendered.path,
            [Cow::Borrowed("/v1"), Cow::Borrowed("/chat/completions")]
        );
        let sent: Value = serde_json::from_slice(&rendered.body).unwrap();
        assert!(!sent.to_string().contains("cache_control"), "{sent}");
        assert_eq!(sent["messages"][0]["content"][1]["text"], "long context");
        // The marks were left out of a copy: a fallback to Anthropic still has them.
        let sent = anthropic::to_messages_request(&body, "m", 10);
        assert_eq!(sent["system"][1]["cache_control"], mark);

        // An OpenAI client's own marks (OpenRouter takes them) pass as they came.
        let mut own = serde_json::from_value(json!({"model": "m", "messages": [{"role": "user",
            "content": [{"type": "text", "text": "q", "cache_control": mark}]}]}))
        .unwrap();
        let rendered = OpenAiWire.render(&call(false), &mut own).unwrap();
        assert!(String::from_utf8_lossy(&rendered.body).contains("cache_control"));
    }
}

/// Anthropic's extended thinking between an Anthropic client and the Anthropic provider: signed and redacted
/// blocks come through the common form unchanged, in a stream too.
#[cfg(test)]
mod thinking {
    use serde_json::{json, Value};

    use super::anthropic::AnthropicWire;
    use super::Wire;
    use crate::ai::dialect::anthropic::StreamEncoder;

    #[test]
    fn signed_and_redacted_thinking_blocks_stream_through_unchanged() {
        let stream = [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "OPAQUE"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "done"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
            json!({"type": "message_stop"}),
        ];
        let raw: String = stream
            .iter()
            .map(|event| {
                format!(
                    "event: {}\ndata: {event}\n\n",
                    event["type"].as_str().unwrap()
                )
            })
            .collect();
        let mut decoder = AnthropicWire.stream_decoder("m").unwrap();
        let mut common = Vec::new();
        decoder.push(raw.as_bytes(), &mut common);
        let mut encoder = StreamEncoder::new(3);
        let out = String::from_utf8(encoder.push(&common)).unwrap();
        let events: Vec<Value> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "{out}"
        );
        assert_eq!(
            events[2]["delta"],
            json!({"type": "thinking_delta", "thinking": "hmm"})
        );
        assert_eq!(
            events[3]["delta"],
            json!({"type": "signature_delta", "signature": "SIG"})
        );
        assert_eq!(
            events[5]["content_block"],
            json!({"type": "redacted_thinking", "data": "OPAQUE"})
        );
        // Every block has its own index, in order.
        let indexes: Vec<u64> = events.iter().filter_map(|e| e["index"].as_u64()).collect();
        assert_eq!(indexes, [0, 0, 0, 0, 1, 1, 2, 2, 2]);
    }
}
