//! Google's Gemini API (`{base}/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `x-goog-api-key`): roles `user`/`model`, `systemInstruction`, function declarations, calls and responses,
//! inline images; `usageMetadata` becomes the usage, and a blocked prompt or answer (`promptFeedback.
//! blockReason`, `finishReason: SAFETY` and kin with nothing said) becomes a clear error, not an empty answer.

use std::borrow::Cow;
use std::collections::HashMap;

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

pub struct GeminiWire;

impl Wire for GeminiWire {
    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::ChatCompletions
    }

    fn default_base_url(&self, _region: Option<&str>) -> Option<String> {
        Some("https://generativelanguage.googleapis.com/v1beta".to_string())
    }

    fn auth_headers(&self, key: &str) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        Ok(vec![(
            HeaderName::from_static("x-goog-api-key"),
            secret_header(key)?,
        )])
    }

    fn render<'a>(
        &self,
        call: &Call<'a>,
        body: &mut Map<String, Value>,
    ) -> Result<Rendered<'a>, Rejection> {
        let request = to_generate_request(body);
        let method = if call.stream {
            ":streamGenerateContent?alt=sse"
        } else {
            ":generateContent"
        };
        let tail = format!("/models/{}{method}", call.upstream_model);
        Rendered::json(call, Cow::Owned(tail), &request)
    }

    fn context_exceeded(&self, body: &str) -> bool {
        body.contains("exceeds the maximum number of tokens") || body.contains("input token count")
    }

    fn error_message(&self, body: &str) -> Option<(String, String)> {
        let value: Value = serde_json::from_str(body).ok()?;
        let error = value.get("error")?;
        Some((
            error["status"]
                .as_str()
                .unwrap_or("INVALID_ARGUMENT")
                .to_string(),
            error.get("message")?.as_str()?.to_string(),
        ))
    }

    fn whole_answer(&self, body: &[u8], model: &str) -> Result<Option<Vec<u8>>, Unanswered> {
        let answer: Value = serde_json::from_slice(body).map_err(|e| {
            Unanswered::Unreadable(format!("the provider's answer is not Gemini's JSON: {e}"))
        })?;
        to_chat_completion(&answer, model)
            .map(|chat| Some(chat.to_string().into_bytes()))
            .map_err(Unanswered::Refused)
    }

    fn stream_decoder(&self, model: &str) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(SseDecoder::new(GeminiStream {
            chunks: Chunks::new(super::call_id("gen"), model.to_string()),
            calls: 0,
        })))
    }
}

/// The `generateContent` request for a common-form body.
pub fn to_generate_request(body: &Map<String, Value>) -> Value {
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Gemini's function responses name their function; OpenAI's tool messages name the call.
    let mut call_names: HashMap<String, Value> = HashMap::new();
    for message in super::messages(body) {
        let (role, parts) = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                system.push(text_of(message.get("content")));
                continue;
            }
            Some("assistant") => {
                let mut parts = content_parts(message.get("content"));
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let function = &call["function"];
                    if let Some(id) = call["id"].as_str() {
                        call_names.insert(id.to_string(), function["name"].clone());
                    }
                    let mut part = json!({"functionCall": {"name": function["name"], "args": arguments_object(function.get("arguments"))}});
                    // Gemini 3 wants the signature of its own call back with it.
                    if let Some(signature) =
                        call["extra_content"]["google"].get("thought_signature")
                    {
                        part["thoughtSignature"] = signature.clone();
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Some("tool" | "function") => {
                let name = message["tool_call_id"]
                    .as_str()
                    .and_then(|id| call_names.get(id).cloned())
                    .or_else(|| message.get("name").cloned())
                    .unwrap_or_default();
                let text = text_of(message.get("content"));
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    _ => json!({ "content": text }),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            _ => ("user", content_parts(message.get("content"))),
        };
        push_turn(&mut contents, role, "parts", parts);
    }
    let mut request = Map::new();
    request.insert("contents".into(), contents.into());
    if !system.is_empty() {
        request.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
        ("max_tokens", "maxOutputTokens"),
        ("max_completion_tokens", "maxOutputTokens"),
    ] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), value.clone());
        }
    }
    if let Some(stops) = stop_sequences(body) {
        config.insert("stopSequences".into(), stops);
    }
    let format = body.get("response_format").unwrap_or(&Value::Null);
    match format["type"].as_str() {
        Some("json_object") => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), "application/json".into());
            if let Some(schema) = format["json_schema"].get("schema") {
                config.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    if !config.is_empty() {
        request.insert("generationConfig".into(), config.into());
    }
    let declarations: Vec<Value> = function_tools(body)
        .map(|tool| {
            let mut out = json!({ "name": tool.name });
            if let Some(description) = tool.description {
                out["description"] = description.clone();
            }
            if let Some(parameters) = tool.parameters {
                out["parametersJsonSchema"] = parameters.clone();
            }
            out
        })
        .collect();
    if !declarations.is_empty() {
        request.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
        let mode = tool_choice(body).and_then(|choice| match choice {
            ToolChoice::None => Some(json!({"mode": "NONE"})),
            ToolChoice::Required => Some(json!({"mode": "ANY"})),
            ToolChoice::Named(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            // AUTO is Gemini's default.
            ToolChoice::Auto => None,
        });
        if let Some(mode) = mode {
            request.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": mode }),
            );
        }
    }
    Value::Object(request)
}

fn content_parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(text)) if !text.is_empty() => vec![json!({ "text": text })],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part["type"].as_str() {
                Some("text") => Some(json!({"text": part["text"]})),
                Some("image_url") => {
                    let url = part["image_url"]["url"].as_str()?;
                    Some(match data_url(url) {
                        Some((mime, data)) => {
                            json!({"inlineData": {"mimeType": mime, "data": data}})
                        }
                        None => json!({"fileData": {"mimeType": image_type(url), "fileUri": url}}),
                    })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An image's media type from its URL's extension.
fn image_type(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

/// OpenAI's finish reason for Gemini's (`None` while the candidate goes on).
fn finish_reason(reason: &str, calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

fn usage_of(metadata: &Value, into: &mut Usage) {
    let count = |key: &str| metadata.get(key).and_then(Value::as_u64).unwrap_or(0);
    if metadata.is_object() {
        *into = Usage {
            prompt_tokens: count("promptTokenCount")
                .saturating_add(count("toolUsePromptTokenCount")),
            completion_tokens: count("candidatesTokenCount")
                .saturating_add(count("thoughtsTokenCount")),
            cache_read_tokens: count("cachedContentTokenCount"),
            cache_creation_tokens: 0,
        };
    }
}

/// Why Gemini blocked the prompt or the answer, when it said nothing at all.
fn blocked(answer: &Value, said_anything: bool) -> Option<String> {
    if let Some(reason) = answer["promptFeedback"]["blockReason"].as_str() {
        return Some(format!("the provider blocked the prompt ({reason})"));
    }
    let reason = answer["candidates"][0]["finishReason"].as_str()?;
    (!said_anything && finish_reason(reason, false) == "content_filter")
        .then(|| format!("the provider blocked the answer ({reason})"))
}

fn blocked_rejection(why: String) -> Rejection {
    Rejection::typed(400, "invalid_request_error", "content_blocked", why)
}

/// The deltas of one candidate's parts: text, thoughts and whole function calls (numbered from `calls`).
fn part_deltas(parts: &Value, calls: &mut usize) -> Vec<Value> {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| {
            if let Some(call) = part.get("functionCall") {
                let index = *calls;
                *calls += 1;
                let mut tool_call = json!({"index": index, "id": super::call_id("call"), "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("args").map_or_else(|| "{}".to_string(), Value::to_string)}});
                // The call's thought signature rides along where Google's OpenAI-compatible API puts it, so a
                // client that sends the assistant turn back as it came sends it back too.
                if let Some(signature) = part.get("thoughtSignature") {
                    tool_call["extra_content"] = json!({"google": {"thought_signature": signature}});
                }
                return Some(json!({ "tool_calls": [tool_call] }));
            }
            let text = part["text"].as_str()?;
            Some(if part["thought"] == true {
                json!({ "reasoning_content": text })
            } else {
                json!({ "content": text })
            })
        })
        .collect()
}

/// A whole `generateContent` answer as a chat completion.
pub fn to_chat_completion(answer: &Value, model: &str) -> Result<Value, Rejection> {
    let candidate = &answer["candidates"][0];
    let mut calls = 0;
    let deltas = part_deltas(&candidate["content"]["parts"], &mut calls);
    if let Some(why) = blocked(answer, !deltas.is_empty()) {
        return Err(blocked_rejection(why));
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for delta in deltas {
        if let Some(piece) = delta["content"].as_str() {
            text.push_str(piece);
        } else if let Some(piece) = delta["reasoning_content"].as_str() {
            reasoning.push_str(piece);
        } else if let Some(call) = delta["tool_calls"].get(0) {
            let mut call = call.clone();
            call.as_object_mut().map(|c| c.remove("index"));
            tool_calls.push(call);
        }
    }
    let message = assistant_message(text, reasoning, tool_calls);
    let mut usage = Usage::default();
    usage_of(&answer["usageMetadata"], &mut usage);
    Ok(json!({
        "id": answer.get("responseId").and_then(Value::as_str).map_or_else(|| super::call_id("gen"), str::to_string),
        "object": "chat.completion",
        "created": super::now(),
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(candidate["finishReason"].as_str().unwrap_or("STOP"), calls > 0)}],
        "usage": usage_json(&usage),
    }))
}

/// Gemini's stream (each event a whole `GenerateContentResponse`, no terminator: the event with a finish
/// reason ends it) into OpenAI chunks.
struct GeminiStream {
    chunks: Chunks,
    /// Function calls so far (Gemini sends each whole).
    calls: usize,
}

impl JsonEvents for GeminiStream {
    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn event(&mut self, data: &Value, out: &mut Vec<u8>) {
        if let Some(error) = data.get("error") {
            let kind = error["status"].as_str().unwrap_or("INTERNAL");
            let message = error["message"].as_str().unwrap_or("the provider failed");
            self.chunks.fail(
                out,
                "server_error",
                message,
                format!("stream error: {kind}"),
            );
            return;
        }
        usage_of(&data["usageMetadata"], &mut self.chunks.usage);
        let candidate = &data["candidates"][0];
        let deltas = part_deltas(&candidate["content"]["parts"], &mut self.calls);
        if let Some(why) = blocked(data, self.chunks.started() || !deltas.is_empty()) {
            self.chunks.refuse(out, "content_blocked", &why);
            return;
        }
        for delta in deltas {
            self.chunks.delta(out, delta, None);
        }
        if let Some(reason) = candidate["finishReason"].as_str() {
            let finish = finish_reason(reason, self.calls > 0);
            self.chunks.delta(out, json!({}), Some(finish));
            self.chunks.end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_roles_system_instruction_tools_and_function_responses() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "max_tokens": 100, "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_9", "content": "{\"temp\":-3}"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        })).unwrap();
        let request = to_generate_request(&body);
        assert_eq!(request["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(request["generationConfig"]["maxOutputTokens"], 100);
        let contents = request["contents"].as_array().unwrap();
        assert_eq!(
            contents[0]["parts"][1]["inlineData"]["mimeType"],
            "image/png"
        );
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"][0]["functionCall"]["args"],
            json!({"city": "Oslo"})
        );
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"]["name"],
            "weather"
        );
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"]["response"],
            json!({"temp": -3})
        );
        assert_eq!(
            request["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"],
            json!(["weather"])
        );
    }

    #[test]
    fn answers_map_calls_usage_and_blocks() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"},
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 4, "cachedContentTokenCount": 8}});
        let chat = to_chat_completion(&answer, "g").unwrap();
        assert_eq!(chat["choices"][0]["message"]["content"], "ok");
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(chat["usage"]["prompt_tokens"], 20);
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 8);

        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}});
        let error = to_chat_completion(&blocked, "g").unwrap_err();
        assert_eq!(error.code, "content_blocked");
        let empty_safety = json!({"candidates": [{"finishReason": "SAFETY"}]});
        assert!(to_chat_completion(&empty_safety, "g").is_err());
    }

    #[test]
    fn streams_end_at_the_finish_reason_with_usage_and_done() {
        let mut decoder = GeminiWire.stream_decoder("g").unwrap();
        let mut out = Vec::new();
        decoder.push(b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n", &mut out);
        decoder.push(b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2}}\r\n\r\n", &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("\"role\":\"assistant\"") && out.contains("\"content\":\"lo\""),
            "{out}"
        );
        assert!(out.contains("\"finish_reason\":\"stop\""));
        assert!(out.contains("\"completion_tokens\":2"));
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn thought_signatures_of_function_calls_make_the_round_trip() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnbmF0dXJl"}]},
            "finishReason": "STOP"}]});
        let chat = to_chat_completion(&answer, "g").unwrap();
        let call = chat["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(
            call["extra_content"]["google"]["thought_signature"],
            "c2lnbmF0dXJl"
        );
        // The client sends the assistant turn back as it came.
        let body: Map<String, Value> = serde_json::from_value(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": chat["choices"][0]["message"]["tool_calls"][0]["id"], "content": "cold"},
        ]})).unwrap();
        let request = to_generate_request(&body);
        assert_eq!(
            request["contents"][1]["parts"][0]["thoughtSignature"],
            "c2lnbmF0dXJl"
        );
        assert_eq!(
            request["contents"][2]["parts"][0]["functionResponse"]["name"],
            "weather"
        );
    }
}
