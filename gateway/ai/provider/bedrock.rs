//! Amazon Bedrock's Converse and ConverseStream APIs (`POST {base}/model/{id}/converse`, `/converse-stream`),
//! each request signed with AWS Signature V4 by AWS's own signing crate (credentials from the environment,
//! region from the config). ConverseStream's answer is AWS's binary event-stream framing, decoded by AWS's
//! own decoder; its events (`messageStart`, `contentBlockStart/Delta/Stop`, `messageStop`, `metadata`, and
//! exceptions) become OpenAI chunks.

use std::borrow::Cow;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{HeaderValue as FrameValue, Message};
use bytes::{Buf, BytesMut};
use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::{
    arguments_object, assistant_message, data_url, function_tools, push_turn, stop_sequences,
    text_of, tool_choice, usage_json, Call, Chunks, Rendered, StreamDecoder, ToolChoice,
    Unanswered, Wire,
};
use crate::ai::dialect::openai::Endpoint;
use crate::ai::usage::Usage;
use crate::error::Rejection;

/// How a deployment's requests are signed: the credentials (from the environment when the config loaded)
/// and the region. Never logged.
pub struct Signing {
    identity: Identity,
    region: String,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signing {{ region: {:?} }}", self.region)
    }
}

impl Signing {
    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (for temporary credentials)
    /// `AWS_SESSION_TOKEN`; `None` when the key pair is not set.
    pub fn from_environment(region: &str) -> Option<Signing> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let credentials = Credentials::new(
            var("AWS_ACCESS_KEY_ID")?,
            var("AWS_SECRET_ACCESS_KEY")?,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        );
        Some(Signing {
            identity: credentials.into(),
            region: region.to_string(),
        })
    }
}

pub struct BedrockWire;

impl Wire for BedrockWire {
    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::ChatCompletions
    }

    fn default_base_url(&self, region: Option<&str>) -> Option<String> {
        region.map(|region| format!("https://bedrock-runtime.{region}.amazonaws.com"))
    }

    fn auth_headers(&self, _key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        Err("bedrock signs its requests with AWS credentials from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); remove api_key")
    }

    fn render<'a>(
        &self,
        call: &Call<'a>,
        body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection> {
        let request = to_converse_request(body, call.default_max_tokens);
        let action = if call.stream {
            "converse-stream"
        } else {
            "converse"
        };
        let path = format!("/model/{}/{action}", escape(call.upstream_model));
        let mut rendered = Rendered::json(call, Cow::Owned(path), &request)?;
        if let Some(signing) = &call.deployment.signing {
            rendered.headers = sign_request(call, signing, &rendered.path[1], &rendered.body)?;
        }
        Ok(rendered)
    }

    fn context_exceeded(&self, body: &str) -> bool {
        body.contains("too long") || body.contains("too many input tokens")
    }

    fn error_message(&self, body: &str) -> Option<(String, String)> {
        let value: Value = serde_json::from_str(body).ok()?;
        let message = value
            .get("message")
            .or_else(|| value.get("Message"))?
            .as_str()?;
        Some(("bedrock_error".to_string(), message.to_string()))
    }

    fn whole_answer(&self, body: &[u8], model: &str) -> Result<Option<Vec<u8>>, Unanswered> {
        let answer: Value = serde_json::from_slice(body).map_err(|e| {
            Unanswered::Unreadable(format!("the provider's answer is not Converse JSON: {e}"))
        })?;
        Ok(Some(
            to_chat_completion(&answer, model).to_string().into_bytes(),
        ))
    }

    fn is_stream(&self, content_type: &str) -> bool {
        content_type.starts_with("application/vnd.amazon.eventstream")
    }

    fn stream_decoder(&self, model: &str) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(ConverseStream {
            frames: MessageFrameDecoder::new(),
            buffer: BytesMut::new(),
            chunks: Chunks::new(super::call_id("bedrock"), model.to_string()),
            stopped: false,
        }))
    }
}

/// A model id as one path segment (`anthropic.claude-3-5-sonnet-20240620-v1:0` has a `:`).
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The Signature V4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for temporary
/// credentials) of one request.
fn sign_request(
    call: &Call<'_>,
    signing: &Signing,
    path: &str,
    payload: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
    let failed = |e: &dyn std::fmt::Display| {
        log::warn!("signing a Bedrock request failed: {e}");
        Rejection::typed(
            500,
            "server_error",
            "signing_failed",
            "the request could not be signed",
        )
    };
    let host = call.deployment.host.to_str().map_err(|e| failed(&e))?;
    let url = format!("https://{host}{}{path}", call.deployment.base_path);
    let params = v4::SigningParams::builder()
        .identity(&signing.identity)
        .region(&signing.region)
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let headers = [("host", host), ("content-type", "application/json")];
    let request = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(payload),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
    instructions
        .headers()
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed(&e))?;
            let mut value = HeaderValue::from_str(value).map_err(|e| failed(&e))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

/// The Converse request for a common-form body.
pub fn to_converse_request(body: &Map<String, Value>, default_max: u64) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let specs: Vec<Value> = function_tools(body)
        .flat_map(|tool| {
            let mut spec = json!({"name": tool.name, "inputSchema": {"json": tool.schema()}});
            if let Some(description) = tool.description {
                spec["description"] = description.clone();
            }
            std::iter::once(json!({ "toolSpec": spec }))
                .chain(tool.cache_mark.map(|_| cache_point()))
        })
        .collect();
    let choice = tool_choice(body);
    // Converse has no "none": the tools are left out instead. And it takes tool calls and results in earlier
    // turns only beside a `toolConfig`: without tools on offer, they are told as text.
    let offered = !specs.is_empty() && !matches!(choice, Some(ToolChoice::None));
    for message in super::messages(body) {
        let (role, content) = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                match message.get("content") {
                    Some(content @ Value::Array(_)) => system.extend(content_blocks(Some(content))),
                    content => system.push(json!({"text": text_of(content)})),
                }
                continue;
            }
            Some("assistant") => {
                let mut content = content_blocks(message.get("content"));
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (id, name) = (&call["id"], &call["function"]["name"]);
                    let input = arguments_object(call["function"].get("arguments"));
                    content.push(if offered {
                        json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
                    } else {
                        let (id, name) = (
                            id.as_str().unwrap_or_default(),
                            name.as_str().unwrap_or_default(),
                        );
                        json!({ "text": format!("[tool call {name} {id}: {input}]") })
                    });
                }
                ("assistant", content)
            }
            Some("tool" | "function") => {
                let id = message.get("tool_call_id").cloned().unwrap_or_default();
                let text = text_of(message.get("content"));
                let block = if offered {
                    json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})
                } else {
                    json!({ "text": format!("[tool result {}: {text}]", id.as_str().unwrap_or_default()) })
                };
                ("user", vec![block])
            }
            _ => ("user", content_blocks(message.get("content"))),
        };
        push_turn(&mut messages, role, "content", content);
    }
    let mut request = Map::new();
    request.insert("messages".into(), messages.into());
    if !system.is_empty() {
        request.insert("system".into(), system.into());
    }
    let mut config = Map::new();
    let max = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(default_max);
    config.insert("maxTokens".into(), max.into());
    // OpenAI's temperature goes to 2, Bedrock's (Anthropic's models) to 1.
    if let Some(temperature) = body.get("temperature").and_then(Value::as_f64) {
        config.insert("temperature".into(), temperature.min(1.0).into());
    }
    if let Some(top_p) = body.get("top_p").filter(|v| !v.is_null()) {
        config.insert("topP".into(), top_p.clone());
    }
    if let Some(stops) = stop_sequences(body) {
        config.insert("stopSequences".into(), stops);
    }
    request.insert("inferenceConfig".into(), config.into());
    if offered {
        let mut tool_config = json!({ "tools": specs });
        let choice = choice.and_then(|choice| match choice {
            ToolChoice::Required => Some(json!({"any": {}})),
            ToolChoice::Auto => Some(json!({"auto": {}})),
            ToolChoice::Named(name) => Some(json!({"tool": {"name": name}})),
            ToolChoice::None => None,
        });
        if let Some(choice) = choice {
            tool_config["toolChoice"] = choice;
        }
        request.insert("toolConfig".into(), tool_config);
    }
    Value::Object(request)
}

/// Bedrock's prompt-cache breakpoint, put after what a `cache_control` mark closes.
fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

/// Text and inline images (Bedrock takes image bytes, not URLs: those are left out), with a cache point
/// after each part that carries a cache mark.
fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(text)) if !text.is_empty() => vec![json!({ "text": text })],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| Some((content_block(part)?, part.get("cache_control").is_some())))
            .flat_map(|(block, marked)| std::iter::once(block).chain(marked.then(cache_point)))
            .collect(),
        _ => Vec::new(),
    }
}

fn content_block(part: &Value) -> Option<Value> {
    match part["type"].as_str() {
        Some("text") => Some(json!({"text": part["text"]})),
        Some("image_url") => {
            let (media, data) = data_url(part["image_url"]["url"].as_str()?)?;
            let format = media.strip_prefix("image/")?;
            Some(json!({"image": {"format": format, "source": {"bytes": data}}}))
        }
        _ => None,
    }
}

fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

fn usage_of(usage: &Value, into: &mut Usage) {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    if usage.is_object() {
        into.cache_read_tokens = count("cacheReadInputTokens");
        into.cache_creation_tokens = count("cacheWriteInputTokens");
        into.prompt_tokens = count("inputTokens")
            .saturating_add(into.cache_read_tokens)
            .saturating_add(into.cache_creation_tokens);
        into.completion_tokens = count("outputTokens");
    }
}

/// A whole Converse answer as a chat completion.
pub fn to_chat_completion(answer: &Value, model: &str) -> Value {
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    for block in answer["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(piece) = block["text"].as_str() {
            text.push_str(piece);
        } else if let Some(piece) = block["reasoningContent"]["reasoningText"]["text"].as_str() {
            reasoning.push_str(piece);
        } else if let Some(call) = block.get("toolUse") {
            calls.push(json!({"id": call["toolUseId"], "type": "function",
                "function": {"name": call["name"], "arguments": call["input"].to_string()}}));
        }
    }
    let message = assistant_message(text, reasoning, calls);
    let mut usage = Usage::default();
    usage_of(&answer["usage"], &mut usage);
    json!({
        "id": super::call_id("bedrock"), "object": "chat.completion", "created": super::now(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(answer["stopReason"].as_str().unwrap_or("end_turn"))}],
        "usage": usage_json(&usage),
    })
}

/// ConverseStream's frames into OpenAI chunks. The stream ends with `metadata` (the usage) after
/// `messageStop`; `[DONE]` follows the metadata.
struct ConverseStream {
    frames: MessageFrameDecoder,
    buffer: BytesMut,
    chunks: Chunks,
    /// `messageStop` came: the `metadata` event that follows ends the stream.
    stopped: bool,
}

fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            FrameValue::String(value) => Some(value.as_str()),
            _ => None,
        })
}

impl ConverseStream {
    fn frame(&mut self, message: &Message, out: &mut Vec<u8>) {
        let payload: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
        if header(message, ":message-type") == Some("exception") {
            let kind = header(message, ":exception-type").unwrap_or("exception");
            let text = payload["message"].as_str().unwrap_or("the provider failed");
            self.chunks
                .fail(out, kind, text, format!("stream error: {kind}"));
            return;
        }
        match header(message, ":event-type") {
            Some("contentBlockStart") => {
                if let Some(tool) = payload["start"].get("toolUse") {
                    let index = self
                        .chunks
                        .open_tool(payload["contentBlockIndex"].as_u64().unwrap_or(0));
                    let delta = json!({"tool_calls": [{"index": index, "id": tool["toolUseId"], "type": "function",
                        "function": {"name": tool["name"], "arguments": ""}}]});
                    self.chunks.delta(out, delta, None);
                }
            }
            Some("contentBlockDelta") => {
                let delta = &payload["delta"];
                if let Some(text) = delta["text"].as_str() {
                    self.chunks.delta(out, json!({ "content": text }), None);
                } else if let Some(text) = delta["reasoningContent"]["text"].as_str() {
                    self.chunks
                        .delta(out, json!({ "reasoning_content": text }), None);
                } else if let Some(input) = delta["toolUse"]["input"].as_str() {
                    let index = self
                        .chunks
                        .tool(payload["contentBlockIndex"].as_u64().unwrap_or(0));
                    self.chunks.delta(
                        out,
                        json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}),
                        None,
                    );
                }
            }
            Some("messageStop") => {
                let finish = finish_reason(payload["stopReason"].as_str().unwrap_or("end_turn"));
                self.stopped = true;
                self.chunks.delta(out, json!({}), Some(finish));
            }
            Some("metadata") => {
                usage_of(&payload["usage"], &mut self.chunks.usage);
                if self.stopped {
                    self.chunks.end(out);
                }
            }
            _ => {}
        }
    }
}

impl StreamDecoder for ConverseStream {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.buffer.extend_from_slice(input);
        while !self.chunks.done {
            match self.frames.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => self.frame(&message, out),
                Ok(DecodedFrame::Incomplete) => break,
                Err(e) => self.chunks.fail(
                    out,
                    "server_error",
                    "the provider's event stream is malformed",
                    format!("event-stream framing: {e}"),
                ),
            }
        }
        if self.chunks.done {
            self.buffer.advance(self.buffer.len());
        }
    }

    fn failure(&self) -> Option<&str> {
        self.chunks.failure.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;

    fn frame(event: &str, payload: Value) -> Vec<u8> {
        let message = Message::new(bytes::Bytes::from(payload.to_string()))
            .add_header(Header::new(
                ":message-type",
                FrameValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                FrameValue::String(event.to_string().into()),
            ));
        let mut out = Vec::new();
        write_message_to(&message, &mut out).unwrap();
        out
    }

    #[test]
    fn requests_use_converse_blocks_and_tool_config() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "cold"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        })).unwrap();
        let request = to_converse_request(&body, 777);
        assert_eq!(request["system"], json!([{"text": "be brief"}]));
        assert_eq!(request["inferenceConfig"]["maxTokens"], 777);
        assert_eq!(
            request["messages"][0]["content"][1]["image"]["format"],
            "png"
        );
        assert_eq!(
            request["messages"][1]["content"][0]["toolUse"]["input"],
            json!({"city": "Oslo"})
        );
        assert_eq!(
            request["messages"][2]["content"][0]["toolResult"]["toolUseId"],
            "t1"
        );
        assert_eq!(request["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(escape("anthropic.claude-v2:1"), "anthropic.claude-v2%3A1");
    }

    #[test]
    fn tool_choice_none_leaves_the_tools_out_and_earlier_tool_turns_become_text() {
        let tools = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
        let fresh: Map<String, Value> = serde_json::from_value(json!({
            "tool_choice": "none", "tools": tools,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert!(to_converse_request(&fresh, 100).get("toolConfig").is_none());
        // Converse refuses tool blocks without a toolConfig: earlier tool turns are told as text, with
        // tool_choice none and with no tools at all.
        let history = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "cold"},
        ]);
        let none: Map<String, Value> = serde_json::from_value(
            json!({"tool_choice": "none", "tools": tools, "messages": history}),
        )
        .unwrap();
        let no_tools: Map<String, Value> =
            serde_json::from_value(json!({"messages": history})).unwrap();
        for body in [none, no_tools] {
            let request = to_converse_request(&body, 100);
            assert!(request.get("toolConfig").is_none(), "{request}");
            assert_eq!(
                request["messages"][1]["content"],
                json!([{"text": "[tool call weather t1: {\"city\":\"Oslo\"}]"}])
            );
            assert_eq!(
                request["messages"][2]["content"],
                json!([{"text": "[tool result t1: cold]"}])
            );
        }
        // With tools on offer the blocks stay.
        let offered: Map<String, Value> =
            serde_json::from_value(json!({"tools": tools, "messages": history})).unwrap();
        let request = to_converse_request(&offered, 100);
        assert_eq!(
            request["messages"][1]["content"][0]["toolUse"]["name"],
            "weather"
        );
        assert_eq!(
            request["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "weather"
        );
    }

    #[test]
    fn event_stream_frames_become_chunks_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend(frame("messageStart", json!({"role": "assistant"})));
        stream.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ));
        stream.extend(frame(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "w"}}}),
        ));
        stream.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}}),
        ));
        stream.extend(frame("messageStop", json!({"stopReason": "tool_use"})));
        stream.extend(frame(
            "metadata",
            json!({"usage": {"inputTokens": 7, "outputTokens": 3, "cacheReadInputTokens": 2}}),
        ));
        let mut decoder = BedrockWire.stream_decoder("m").unwrap();
        let mut out = Vec::new();
        for piece in stream.chunks(5) {
            decoder.push(piece, &mut out);
        }
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("\"content\":\"Hi\"") && out.contains("\"name\":\"w\""),
            "{out}"
        );
        assert!(out.contains("\"finish_reason\":\"tool_calls\""));
        assert!(out.contains("\"prompt_tokens\":9") && out.contains("\"cached_tokens\":2"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(decoder.failure().is_none());
    }
}
