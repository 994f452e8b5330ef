//! Native provider adapters and the Anthropic Messages ingress over real sockets, with mock servers that
//! speak each provider's own wire format: OpenAI clients through native Anthropic and Gemini providers,
//! Anthropic clients (`/v1/messages`) through OpenAI-compatible and native providers, fallback classes per
//! provider, errors and mid-stream failures in the client's dialect, masking across chunks in every dialect,
//! and usage (with cache tokens) in the access log and metrics.

mod common;

use common::*;
use loadtest::{Behavior, MockLlm, Speaks};
use serde_json::{json, Value};

const KEY: &str = "providers-test-key-0123456789";

/// A gateway with `providers` (each a whole section) and one model per provider named after it; profile
/// `default` is `chain`. Requests need the API key `KEY`. `secrets` turns response masking on.
async fn gateway(providers: Vec<Value>, chain: &[&str], secrets: bool) -> (TestDir, Gateway) {
    gateway_with_env(providers, chain, secrets, &[]).await
}

/// The same, with environment variables for the gateway (AWS credentials).
async fn gateway_with_env(
    providers: Vec<Value>,
    chain: &[&str],
    secrets: bool,
    env: &[(&str, &str)],
) -> (TestDir, Gateway) {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let models: Vec<Value> = providers
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap();
            json!({"name": name, "provider": name, "upstream_model": format!("{name}-upstream"),
                   "max_tokens": 1234, "input_price": 1.0, "output_price": 2.0,
                   "cache_read_price": 0.1, "cache_write_price": 1.25})
        })
        .collect();
    let yaml = TestConfig::new(&dir, &ports)
        .consumer("client", &[hash_key(KEY)])
        .section(
            "ai",
            json!({
                "attempts": 3,
                "providers": providers,
                "models": models,
                "profiles": {"default": chain},
                "guards": {"response_secrets": {"enabled": secrets}},
            }),
        )
        .route(json!({"name": "ai", "match": {"path": {"prefix": "/v1"}},
                      "auth": {"methods": ["api_key"]}, "ai": {}}))
        .yaml();
    let gateway = Gateway::start_with_env(&dir, ports, &yaml, env).await;
    (dir, gateway)
}

const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "AKIDGATEWAYTEST01234"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "aws-secret-never-logged-0123456789",
    ),
    ("AWS_SESSION_TOKEN", "session-token-never-logged"),
];

fn bedrock(name: &str, llm: &MockLlm) -> Value {
    json!({"name": name, "type": "bedrock", "region": "eu-west-1", "base_url": format!("http://{}", llm.addr)})
}

fn anthropic(name: &str, llm: &MockLlm) -> Value {
    json!({"name": name, "type": "anthropic", "base_url": llm.base_url(), "api_key": "sk-ant-provider-secret"})
}

fn gemini(name: &str, llm: &MockLlm) -> Value {
    json!({"name": name, "type": "gemini", "base_url": format!("http://{}/v1beta", llm.addr), "api_key": "gemini-provider-secret"})
}

fn openai(name: &str, llm: &MockLlm) -> Value {
    json!({"name": name, "type": "openai", "base_url": llm.base_url()})
}

async fn post(gateway: &Gateway, path: &str, body: Value, key: Option<&str>) -> reqwest::Response {
    let mut request = client().post(gateway.url(path)).json(&body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

/// The body of the answer to `body` posted with the client's key.
async fn ask_text(gateway: &Gateway, path: &str, body: Value) -> String {
    post(gateway, path, body, Some(KEY))
        .await
        .text()
        .await
        .unwrap()
}

/// The same, read as JSON.
async fn ask_json(gateway: &Gateway, path: &str, body: Value) -> Value {
    post(gateway, path, body, Some(KEY))
        .await
        .json()
        .await
        .unwrap()
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "auto", "stream": stream, "temperature": 1.5,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    })
}

fn messages(stream: bool) -> Value {
    json!({
        "model": "auto", "max_tokens": 300, "stream": stream, "system": "be brief", "top_k": 5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]}],
        "tools": [{"name": "weather", "description": "w", "input_schema": {"type": "object"}}],
    })
}

/// A streamed chat completion carries `text`, ends for a tool call and with `[DONE]`.
async fn streams_text_and_a_tool_call(gateway: &Gateway, text: &str) {
    let raw = ask_text(gateway, "/v1/chat/completions", chat(true)).await;
    assert_eq!(sse_content(&raw), text);
    assert!(
        raw.contains("\"finish_reason\":\"tool_calls\"")
            && raw.trim_end().ends_with("data: [DONE]"),
        "{raw}"
    );
}

/// A streamed Messages answer carries `text` and a call of `weather` for Oslo, and stops for it.
async fn messages_stream_text_and_a_tool_call(gateway: &Gateway, text: &str) {
    let raw = ask_text(gateway, "/v1/messages", messages(true)).await;
    let (streamed, arguments, stop) = read_anthropic_stream(&raw);
    assert_eq!(streamed, text);
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Oslo"})
    );
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
}

/// A gateway with those four as providers (`claude` first in the default profile), AWS credentials set.
async fn gateway_of_every_kind(
    claude: &MockLlm,
    google: &MockLlm,
    aws: &MockLlm,
    local: &MockLlm,
) -> (TestDir, Gateway) {
    let providers = vec![
        anthropic("claude", claude),
        gemini("gem", google),
        bedrock("aws", aws),
        openai("local", local),
    ];
    gateway_with_env(providers, &["claude"], false, &AWS_ENV).await
}

/// (event name, data) of every event of an Anthropic stream.
fn named_events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_string();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            (name, data)
        })
        .collect()
}

/// The text and the tool call arguments a stream of Anthropic events carries, checking that it is
/// well-formed: `message_start` first, blocks opened before their deltas and closed once, `message_delta`
/// then `message_stop` last.
fn read_anthropic_stream(raw: &str) -> (String, String, Value) {
    let events = named_events(raw);
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("message_start"),
        "{raw}"
    );
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("message_stop"),
        "{raw}"
    );
    // The prompt's size is there from the start (an estimate until the provider's count comes at the end).
    assert!(
        events[0].1["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{raw}"
    );
    let (mut text, mut arguments, mut open) = (String::new(), String::new(), None);
    let mut stop = Value::Null;
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{raw}");
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "a block opened inside another: {raw}");
                open = data["index"].as_u64();
            }
            "content_block_delta" => {
                assert_eq!(open, data["index"].as_u64(), "{raw}");
                text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
                arguments.push_str(data["delta"]["partial_json"].as_str().unwrap_or_default());
            }
            "content_block_stop" => assert_eq!(open.take(), data["index"].as_u64(), "{raw}"),
            "message_delta" => stop = data.clone(),
            _ => {}
        }
    }
    (text, arguments, stop)
}

#[tokio::test]
async fn openai_clients_get_text_tools_and_cache_usage_from_a_native_anthropic_provider() {
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    claude.set_behavior(Behavior {
        text: Some("It is cold in Oslo.".into()),
        tool_call: Some(("weather".into(), json!({"city": "Oslo"}))),
        ..Behavior::default()
    });
    // A configured header wins over the type's own, and goes once.
    let mut config = anthropic("claude", &claude);
    config["headers"] = json!({"anthropic-version": "2099-01-01"});
    let (dir, gateway) = gateway(vec![config], &["claude"], false).await;

    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "claude");
    let body: Value = response.json().await.unwrap();
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "It is cold in Oslo.");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "weather");
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments, json!({"city": "Oslo"}));
    // Anthropic's input_tokens (11) leaves out cache reads (20) and writes (3): OpenAI's prompt_tokens counts them.
    assert_eq!(body["usage"]["prompt_tokens"], 34);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 20);

    // What the provider got: its own path, headers and request shape.
    let call = claude.last().unwrap();
    assert_eq!(call.path, "/v1/messages");
    assert_eq!(call.header("x-api-key"), Some("sk-ant-provider-secret"));
    let versions: Vec<&str> = call
        .headers
        .iter()
        .filter(|(name, _)| name == "anthropic-version")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(versions, ["2099-01-01"]);
    assert_eq!(call.header("authorization"), None);
    let sent = call.json();
    assert_eq!(sent["model"], "claude-upstream");
    assert_eq!(sent["system"], "be brief");
    assert_eq!(
        sent["max_tokens"], 1234,
        "the model's default max_tokens fills the gap"
    );
    assert_eq!(
        sent["temperature"], 1.0,
        "OpenAI's 1.5 capped at Anthropic's 1"
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]}])
    );
    assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));

    let raw = ask_text(&gateway, "/v1/chat/completions", chat(true)).await;
    assert_eq!(sse_content(&raw), "It is cold in Oslo.");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    let chunks: Vec<Value> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let streamed_arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&streamed_arguments).unwrap(),
        json!({"city": "Oslo"})
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    // Usage, cache tokens included, reaches the access log and the metrics.
    let ok = eventually(std::time::Duration::from_secs(5), || async {
        dir.access_log()
            .lines()
            .filter(|l| l.contains("\"cache_read_tokens\":20"))
            .count()
            == 2
    })
    .await;
    assert!(ok, "{}", dir.access_log());
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_ai_tokens_total{kind="cache_read",model="claude"}"#
        ),
        40.0
    );
    assert!(
        !dir.access_log().contains("sk-ant-provider-secret")
            && !dir.gateway_log().contains("sk-ant-provider-secret")
    );
}

#[tokio::test]
async fn openai_clients_get_text_tools_and_usage_from_a_native_gemini_provider() {
    let google = MockLlm::start_speaking("gem", Speaks::Gemini)
        .await
        .unwrap();
    google.set_behavior(Behavior {
        text: Some("Minus three.".into()),
        tool_call: Some(("weather".into(), json!({"city": "Oslo"}))),
        ..Behavior::default()
    });
    let (_dir, gateway) = gateway(vec![gemini("gem", &google)], &["gem"], false).await;

    let body = ask_json(&gateway, "/v1/chat/completions", chat(false)).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Minus three.");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 13);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let call = google.last().unwrap();
    assert_eq!(call.path, "/v1beta/models/gem-upstream:generateContent");
    assert_eq!(
        call.header("x-goog-api-key"),
        Some("gemini-provider-secret")
    );
    let sent = call.json();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(sent["contents"][0]["role"], "user");
    assert_eq!(
        sent["generationConfig"]["temperature"], 1.5,
        "Gemini's goes to 2"
    );
    // The call's thought signature rides on the OpenAI tool call, and goes back with it.
    let assistant = body["choices"][0]["message"].clone();
    assert_eq!(
        assistant["tool_calls"][0]["extra_content"]["google"]["thought_signature"],
        loadtest::GEMINI_SIGNATURE
    );
    let mut follow_up = chat(false);
    let call_id = assistant["tool_calls"][0]["id"].clone();
    follow_up["messages"].as_array_mut().unwrap().extend([
        assistant,
        json!({"role": "tool", "tool_call_id": call_id, "content": "-3C"}),
    ]);
    assert_eq!(
        post(&gateway, "/v1/chat/completions", follow_up, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = google.last().unwrap().json();
    // The model's turn: its text, then its function call with the signature.
    assert_eq!(sent["contents"][1]["parts"][0]["text"], "Minus three.");
    assert_eq!(
        sent["contents"][1]["parts"][1]["thoughtSignature"],
        loadtest::GEMINI_SIGNATURE
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["name"],
        "weather"
    );
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"],
        "weather"
    );

    streams_text_and_a_tool_call(&gateway, "Minus three.").await;
    assert_eq!(
        google.last().unwrap().path,
        "/v1beta/models/gem-upstream:streamGenerateContent"
    );

    // A blocked prompt is a clear error, not an empty answer: plain and streamed.
    google.set_behavior(Behavior {
        blocked: true,
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "content_blocked");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SAFETY"));
    let raw = ask_text(&gateway, "/v1/chat/completions", chat(true)).await;
    assert!(
        raw.contains("content_blocked") && raw.contains("SAFETY"),
        "{raw}"
    );
}

#[tokio::test]
async fn provider_errors_fall_back_or_pass_through_by_their_class_in_the_clients_dialect() {
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    let backup = MockLlm::start("backup").await.unwrap();
    // Every failure below counts against the deployment: the breaker must not open in between.
    let mut claude_config = anthropic("claude", &claude);
    claude_config["circuit_breaker"] = json!({"consecutive_failures": 100});
    let (_dir, gateway) = gateway(
        vec![claude_config, openai("backup", &backup)],
        &["claude", "backup"],
        false,
    )
    .await;
    let answered_by = |response: &reqwest::Response| {
        response.headers()["x-gateway-provider"]
            .to_str()
            .unwrap()
            .to_string()
    };

    // Overloaded (529), "prompt is too long" and a refused provider key (401/403) move on to the next
    // candidate.
    for (status, message) in [
        (529, "Overloaded"),
        (400, "prompt is too long: 250000 tokens > 200000 maximum"),
        // The gateway's own key refused: the operator's problem; another provider may hold a good one.
        (401, "invalid x-api-key"),
        (403, "forbidden"),
    ] {
        claude.set_behavior(Behavior {
            status,
            error_message: Some(message.into()),
            ..Behavior::default()
        });
        let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
        assert_eq!(
            (response.status().as_u16(), answered_by(&response)),
            (200, "backup".into()),
            "{status}"
        );
    }
    // An error event before any content (after message_start) also falls back.
    claude.set_behavior(Behavior {
        error_after: Some(0),
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/chat/completions", chat(true), Some(KEY)).await;
    assert_eq!(answered_by(&response), "backup");
    assert_eq!(
        sse_content(&response.text().await.unwrap()),
        "Hello from backup."
    );

    // So does a 200 that is not an Anthropic message.
    claude.set_behavior(Behavior {
        plain_body: Some("<html>busy</html>".into()),
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(
        (response.status().as_u16(), answered_by(&response)),
        (200, "backup".into())
    );

    // An invalid request does not: the client gets it, in its own dialect.
    claude.set_behavior(Behavior {
        status: 400,
        error_message: Some("messages.0: bad block".into()),
        ..Behavior::default()
    });
    let before = backup.calls();
    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad block"),
        "{error}"
    );
    let response = post(&gateway, "/v1/messages", messages(false), Some(KEY)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad block"),
        "{error}"
    );
    assert_eq!(backup.calls(), before);

    // Once text reached the client, a provider error ends the stream with an error event in its dialect.
    claude.set_behavior(Behavior {
        chunks: 4,
        error_after: Some(2),
        ..Behavior::default()
    });
    let raw = ask_text(&gateway, "/v1/chat/completions", chat(true)).await;
    assert!(
        !sse_content(&raw).is_empty() && raw.contains("\"error\"") && raw.contains("Overloaded"),
        "{raw}"
    );
    assert!(!raw.contains("[DONE]"), "{raw}");
    let raw = ask_text(&gateway, "/v1/messages", messages(true)).await;
    let events = named_events(&raw);
    let last = events.last().unwrap();
    assert_eq!(last.0, "error", "{raw}");
    assert_eq!(last.1["error"]["type"], "overloaded_error", "{raw}");
}

#[tokio::test]
async fn gemini_and_bedrock_errors_fall_back_by_their_class_too() {
    let [_, google, aws, local] = every_kind_of_provider().await;
    // Every failure below counts against its deployment: the breakers must not open in between.
    let patient = |mut provider: Value| {
        provider["circuit_breaker"] = json!({"consecutive_failures": 100});
        provider
    };
    let (_dir, gateway) = gateway_with_env(
        vec![
            patient(gemini("gem", &google)),
            patient(bedrock("aws", &aws)),
            openai("local", &local),
        ],
        &["gem", "aws", "local"],
        false,
        &AWS_ENV,
    )
    .await;
    let failing = |status: u16, message: &str| Behavior {
        status,
        error_message: Some(message.into()),
        ..Behavior::default()
    };
    // Each one's "prompt too long" (Gemini's token count, Bedrock's validation message), an overloaded
    // Gemini and a refused credential (Bedrock's 403) move on, down to the OpenAI-compatible provider. (A 429
    // would also rest the deployment for a while, which the last step here must not meet.)
    for (gem_error, aws_error) in [
        (
            (400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
            (400, "Input is too long for requested model."),
        ),
        ((503, "The model is overloaded. Please try again later."), (403, "The security token included in the request is invalid.")),
    ] {
        google.set_behavior(failing(gem_error.0, gem_error.1));
        aws.set_behavior(failing(aws_error.0, aws_error.1));
        let calls = (google.calls(), aws.calls());
        let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
        assert_eq!(response.status(), 200, "{gem_error:?} {aws_error:?}");
        assert_eq!(response.headers()["x-gateway-provider"], "local");
        assert_eq!((google.calls(), aws.calls()), (calls.0 + 1, calls.1 + 1));
    }
    // An invalid request does not: the client gets Gemini's message, and Bedrock is not asked.
    google.set_behavior(failing(400, "Invalid JSON payload received."));
    let before = aws.calls();
    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid JSON payload"),
        "{error}"
    );
    assert_eq!(aws.calls(), before);
}

#[tokio::test]
async fn a_model_may_take_its_output_cap_as_max_completion_tokens() {
    // OpenAI's reasoning models refuse `max_tokens`; the model says which name its cap goes under.
    let reasoning = MockLlm::start("reasoning").await.unwrap();
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let yaml = TestConfig::new(&dir, &ports)
        .consumer("client", &[hash_key(KEY)])
        .section(
            "ai",
            json!({
                "providers": [openai("reasoning", &reasoning), anthropic("claude", &claude)],
                "models": [
                    {"name": "o-model", "provider": "reasoning", "max_tokens_field": "max_completion_tokens"},
                    {"name": "claude-model", "provider": "claude"},
                ],
                "profiles": {"default": ["o-model", "claude-model"]},
            }),
        )
        .route(json!({"name": "ai", "match": {"path": {"prefix": "/v1"}},
                      "auth": {"methods": ["api_key"]}, "ai": {}}))
        .yaml();
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    // An Anthropic client's required max_tokens, and an OpenAI client's own.
    let response = post(&gateway, "/v1/messages", messages(false), Some(KEY)).await;
    assert_eq!(response.status(), 200);
    let sent = reasoning.last().unwrap().json();
    assert_eq!(sent["max_completion_tokens"], 300, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let mut body = chat(false);
    body["max_tokens"] = json!(77);
    assert!(ask_json(&gateway, "/v1/chat/completions", body).await["choices"].is_array());
    let sent = reasoning.last().unwrap().json();
    assert_eq!(sent["max_completion_tokens"], 77, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    // A client's own max_completion_tokens wins.
    let mut body = chat(false);
    body["max_tokens"] = json!(77);
    body["max_completion_tokens"] = json!(88);
    ask_json(&gateway, "/v1/chat/completions", body).await;
    let sent = reasoning.last().unwrap().json();
    assert_eq!(sent["max_completion_tokens"], 88, "{sent}");
    // The renaming is this model's: when it fails, the Anthropic model behind it still gets max_tokens.
    reasoning.set_behavior(Behavior {
        status: 503,
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/messages", messages(false), Some(KEY)).await;
    assert_eq!(response.headers()["x-gateway-provider"], "claude");
    assert_eq!(claude.last().unwrap().json()["max_tokens"], 300);
}

#[tokio::test]
async fn the_messages_api_is_served_through_openai_compatible_and_native_providers() {
    let local = MockLlm::start("local").await.unwrap();
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    let (_dir, gateway) = gateway(
        vec![openai("local", &local), anthropic("claude", &claude)],
        &["local", "claude"],
        false,
    )
    .await;
    // Through an OpenAI-compatible provider: text and a tool call streamed as OpenAI deltas.
    local.set_behavior(Behavior {
        deltas: vec![
            json!({"content": "Let me "}),
            json!({"content": "check."}),
            json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
        ],
        ..Behavior::default()
    });
    let raw = ask_text(&gateway, "/v1/messages", messages(true)).await;
    let (text, arguments, _) = read_anthropic_stream(&raw);
    assert_eq!(text, "Let me check.");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Oslo"})
    );
    // Parallel tool calls whose argument deltas interleave: Anthropic's blocks cannot, so each call
    // arrives as a block of its own, with its id, name and whole arguments.
    local.set_behavior(Behavior {
        deltas: vec![
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"zone\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"CET\"}"}}]}),
        ],
        ..Behavior::default()
    });
    let raw = ask_text(&gateway, "/v1/messages", messages(true)).await;
    // Well formed (blocks one after another), and a tool_use stop though the mock says "stop".
    let (_, _, stop) = read_anthropic_stream(&raw);
    assert_eq!(stop["delta"]["stop_reason"], "tool_use", "{raw}");
    let mut calls: Vec<(Value, Value, String)> = Vec::new();
    for (name, data) in named_events(&raw) {
        match name.as_str() {
            "content_block_start" if data["content_block"]["type"] == "tool_use" => calls.push((
                data["content_block"]["id"].clone(),
                data["content_block"]["name"].clone(),
                String::new(),
            )),
            "content_block_delta" => {
                let open = calls.last_mut().expect("a delta inside a block");
                open.2 += data["delta"]["partial_json"].as_str().unwrap_or_default();
            }
            _ => {}
        }
    }
    let calls: Vec<(Value, Value, Value)> = calls
        .into_iter()
        .map(|(id, name, input)| (id, name, serde_json::from_str(&input).unwrap()))
        .collect();
    assert_eq!(
        calls,
        [
            (json!("call_a"), json!("weather"), json!({"city": "Oslo"})),
            (json!("call_b"), json!("time"), json!({"zone": "CET"})),
        ],
        "{raw}"
    );

    let sent = local.last().unwrap().json();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["max_tokens"], 300);
    assert!(sent.get("top_k").is_none(), "OpenAI refuses top_k");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"],
        json!({"type": "object"})
    );

    let mut cached = messages(false);
    cached["system"] =
        json!([{"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}]);
    assert_eq!(
        post(&gateway, "/v1/messages", cached, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = local.last().unwrap().json();
    assert_eq!(
        sent["messages"][0]["content"],
        json!([{"type": "text", "text": "long rules"}])
    );

    local.set_behavior(Behavior {
        text: Some("Cold.".into()),
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/messages", messages(false), Some(KEY)).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "Cold."}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 10);

    // A 200 from the local provider that is not an answer: the next candidate answers.
    local.set_behavior(Behavior {
        plain_body: Some("<html>busy</html>".into()),
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/messages", messages(false), Some(KEY)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "claude");
    assert_eq!(
        claude.last().unwrap().json()["top_k"],
        5,
        "Anthropic takes top_k"
    );

    // Through the native Anthropic provider (the local one failing): both translations, usage intact.
    local.set_behavior(Behavior {
        status: 503,
        ..Behavior::default()
    });
    claude.set_behavior(Behavior {
        text: Some("Frosty.".into()),
        tool_call: Some(("weather".into(), json!({"city": "Oslo"}))),
        ..Behavior::default()
    });
    let message = ask_json(&gateway, "/v1/messages", messages(false)).await;
    assert_eq!(message["content"][0]["text"], "Frosty.");
    assert_eq!(message["content"][1]["type"], "tool_use");
    assert_eq!(message["content"][1]["input"], json!({"city": "Oslo"}));
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["usage"]["input_tokens"], 11);
    assert_eq!(message["usage"]["cache_read_input_tokens"], 20);
    messages_stream_text_and_a_tool_call(&gateway, "Frosty.").await;

    // The tool result goes back as the provider's own block.
    let mut follow_up = messages(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"}]},
    ]);
    assert_eq!(
        post(&gateway, "/v1/messages", follow_up, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = claude.last().unwrap().json();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"})
    );

    // Prompt-cache marks reach the native provider in their places (and an OpenAI-compatible one never:
    // see the start of the test).
    let mut cached = messages(false);
    cached["system"] =
        json!([{"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}]);
    assert_eq!(
        post(&gateway, "/v1/messages", cached, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = claude.last().unwrap().json();
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}])
    );

    // Claude Code 2.1 puts a `system` turn between the others: it is lifted into the provider's `system`,
    // and the user turns around it merge (Anthropic wants roles to alternate).
    let mut reminded = messages(false);
    reminded["messages"] = json!([
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "system", "content": [{"type": "text", "text": "a reminder"}]},
        {"role": "user", "content": "second"},
    ]);
    assert_eq!(
        post(&gateway, "/v1/messages", reminded, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = claude.last().unwrap().json();
    assert_eq!(sent["system"], "be brief\n\na reminder");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1, "{sent}");
    assert_eq!(sent["messages"][0]["content"][1]["text"], "second");

    // Claude Code's `?beta=true` and `anthropic-beta` header: accepted, and the header is not forwarded.
    let response = client()
        .post(gateway.url("/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&messages(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(claude.last().unwrap().header("anthropic-beta"), None);
    assert_eq!(claude.last().unwrap().path, "/v1/messages");
    let counted: Value = post(
        &gateway,
        "/v1/messages/count_tokens",
        json!({"model": "auto", "messages": [{"role": "user", "content": "hello there"}]}),
        Some(KEY),
    )
    .await
    .json()
    .await
    .unwrap();
    // 11 bytes of text, 4 a token; counted in the gateway, no provider asked.
    let calls = (local.calls(), claude.calls());
    assert_eq!(counted["input_tokens"], 3, "{counted}");
    assert_eq!((local.calls(), claude.calls()), calls);
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped_from_auth_to_routing() {
    let local = MockLlm::start("local").await.unwrap();
    let (_dir, gateway) = gateway(vec![openai("local", &local)], &["local"], false).await;
    let check = |status: u16, kind: &'static str| {
        move |response: reqwest::Response| async move {
            assert_eq!(response.status(), status);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], kind, "{body}");
            assert!(body["error"]["message"].is_string());
        }
    };
    check(401, "authentication_error")(post(&gateway, "/v1/messages", messages(false), None).await)
        .await;
    check(401, "authentication_error")(
        post(
            &gateway,
            "/v1/messages",
            messages(false),
            Some("wrong-key-0123456789"),
        )
        .await,
    )
    .await;
    let mut no_max = messages(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    check(400, "invalid_request_error")(post(&gateway, "/v1/messages", no_max, Some(KEY)).await)
        .await;
    let mut unknown = messages(false);
    unknown["model"] = json!("claude-nonexistent");
    check(404, "not_found_error")(post(&gateway, "/v1/messages", unknown, Some(KEY)).await).await;
    let response = client()
        .post(gateway.url("/v1/messages"))
        .header("authorization", format!("Bearer {KEY}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    check(400, "invalid_request_error")(response).await;
    // `Authorization: Bearer` works as well as `x-api-key`.
    let response = client()
        .post(gateway.url("/v1/messages"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&messages(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The OpenAI endpoints keep OpenAI's errors.
    let response = post(&gateway, "/v1/chat/completions", chat(false), None).await;
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["type"].is_string() && body.get("type").is_none(),
        "{body}"
    );
}

#[tokio::test]
async fn secrets_split_across_chunks_are_masked_in_every_dialect_and_provider() {
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    let google = MockLlm::start_speaking("gem", Speaks::Gemini)
        .await
        .unwrap();
    let text = "Use sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX and API_KEY=abcdef123456 now.";
    let behavior = Behavior {
        text: Some(text.into()),
        chunks: 9,
        ..Behavior::default()
    };
    claude.set_behavior(behavior.clone());
    google.set_behavior(behavior);
    let expected = "Use [REDACTED] and API_KEY=[REDACTED] now.";
    let aws = MockLlm::start_speaking("aws", Speaks::Bedrock)
        .await
        .unwrap();
    aws.set_behavior(Behavior {
        text: Some(text.into()),
        chunks: 9,
        ..Behavior::default()
    });
    for (provider, llm) in [("claude", &claude), ("gem", &google), ("aws", &aws)] {
        let config = match provider {
            "claude" => anthropic(provider, llm),
            "gem" => gemini(provider, llm),
            _ => bedrock(provider, llm),
        };
        let (_dir, gateway) = gateway_with_env(vec![config], &[provider], true, &AWS_ENV).await;
        let raw = ask_text(&gateway, "/v1/chat/completions", chat(true)).await;
        assert_eq!(sse_content(&raw), expected, "{provider}: {raw}");
        let raw = ask_text(&gateway, "/v1/messages", messages(true)).await;
        assert!(
            !raw.contains("ABCDEFGHIJ") && !raw.contains("abcdef123456"),
            "{provider}: {raw}"
        );
        assert_eq!(read_anthropic_stream(&raw).0, expected, "{provider}");
        let message = ask_json(&gateway, "/v1/messages", messages(false)).await;
        assert_eq!(message["content"][0]["text"], expected, "{provider}");
    }
}

#[tokio::test]
async fn openai_and_anthropic_clients_reach_bedrock_with_signed_requests_and_event_streams() {
    let aws = MockLlm::start_speaking("aws", Speaks::Bedrock)
        .await
        .unwrap();
    let backup = MockLlm::start("backup").await.unwrap();
    aws.set_behavior(Behavior {
        text: Some("Bedrock says hi.".into()),
        tool_call: Some(("weather".into(), json!({"city": "Oslo"}))),
        ..Behavior::default()
    });
    let (dir, gateway) = gateway_with_env(
        vec![bedrock("aws", &aws), openai("backup", &backup)],
        &["aws", "backup"],
        false,
        &AWS_ENV,
    )
    .await;
    let body = ask_json(&gateway, "/v1/chat/completions", chat(false)).await;
    assert_eq!(
        body["choices"][0]["message"]["content"], "Bedrock says hi.",
        "{body}"
    );
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 23);
    let call = aws.last().unwrap();
    assert_eq!(call.path, "/model/aws-upstream/converse");
    let authorization = call.header("authorization").unwrap();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST01234/"),
        "{authorization}"
    );
    assert!(
        authorization.contains("/eu-west-1/bedrock/aws4_request"),
        "{authorization}"
    );
    assert_eq!(
        call.header("x-amz-security-token"),
        Some("session-token-never-logged")
    );
    let sent = call.json();
    assert_eq!(sent["system"], json!([{"text": "be brief"}]));
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 1234);
    assert_eq!(sent["inferenceConfig"]["temperature"], 1.0, "capped at 1");
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "weather"
    );
    // Converse has no "none": the tools are left out, and the earlier tool turns (which Converse, like the
    // mock, refuses without tools) go as text.
    let mut no_tools = chat(false);
    no_tools["tool_choice"] = json!("none");
    no_tools["messages"] = json!([
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "cold"},
    ]);
    let answer = ask_json(&gateway, "/v1/chat/completions", no_tools.clone()).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Bedrock says hi.",
        "{answer}"
    );
    let sent = aws.last().unwrap().json();
    assert!(sent.get("toolConfig").is_none(), "{sent}");
    assert_eq!(
        sent["messages"][2]["content"][0]["text"], "[tool result t1: cold]",
        "{sent}"
    );
    // Without tools at all, the same.
    no_tools.as_object_mut().unwrap().remove("tools");
    no_tools.as_object_mut().unwrap().remove("tool_choice");
    let answer = ask_json(&gateway, "/v1/chat/completions", no_tools).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Bedrock says hi.",
        "{answer}"
    );

    streams_text_and_a_tool_call(&gateway, "Bedrock says hi.").await;
    assert_eq!(
        aws.last().unwrap().path,
        "/model/aws-upstream/converse-stream"
    );
    messages_stream_text_and_a_tool_call(&gateway, "Bedrock says hi.").await;

    // A throttling exception before any text falls back; after text, the client gets an error event.
    aws.set_behavior(Behavior {
        error_after: Some(0),
        ..Behavior::default()
    });
    let response = post(&gateway, "/v1/chat/completions", chat(true), Some(KEY)).await;
    assert_eq!(response.headers()["x-gateway-provider"], "backup");
    aws.set_behavior(Behavior {
        chunks: 3,
        error_after: Some(1),
        ..Behavior::default()
    });
    let raw = ask_text(&gateway, "/v1/chat/completions", chat(true)).await;
    assert!(
        raw.contains("throttlingException") && !raw.contains("[DONE]"),
        "{raw}"
    );
    let log = dir.gateway_log() + &dir.access_log();
    assert!(
        !log.contains("aws-secret-never-logged") && !log.contains("session-token-never-logged")
    );
}

#[tokio::test]
async fn bedrock_without_credentials_is_disabled_and_says_which_variables_to_set() {
    let aws = MockLlm::start_speaking("aws", Speaks::Bedrock)
        .await
        .unwrap();
    let backup = MockLlm::start("backup").await.unwrap();
    let (dir, gateway) = gateway(
        vec![bedrock("aws", &aws), openai("backup", &backup)],
        &["aws", "backup"],
        false,
    )
    .await;
    let response = post(&gateway, "/v1/chat/completions", chat(false), Some(KEY)).await;
    assert_eq!(response.headers()["x-gateway-provider"], "backup");
    assert_eq!(aws.calls(), 0);
    assert!(
        dir.gateway_log().contains("AWS_ACCESS_KEY_ID"),
        "{}",
        dir.gateway_log()
    );
}

#[tokio::test]
async fn a_provider_failing_mid_stream_ends_each_dialects_stream_with_its_error_event() {
    let [claude, google, aws, local] = every_kind_of_provider().await;
    for llm in [&claude, &google, &aws] {
        llm.set_behavior(Behavior {
            chunks: 4,
            error_after: Some(2),
            ..Behavior::default()
        });
    }
    // The OpenAI-compatible provider breaks its connection after two chunks.
    local.set_behavior(Behavior {
        chunks: 4,
        drop_after: Some(2),
        // Apart in time, so the first chunks reach the client before the connection breaks.
        chunk_delay: std::time::Duration::from_millis(20),
        ..Behavior::default()
    });
    let (_dir, gateway) = gateway_of_every_kind(&claude, &google, &aws, &local).await;
    for model in ["claude", "gem", "aws", "local"] {
        let mut ask = chat(true);
        ask["model"] = json!(model);
        let raw = ask_text(&gateway, "/v1/chat/completions", ask).await;
        assert!(
            !sse_content(&raw).is_empty(),
            "{model}: text went out first: {raw}"
        );
        let last: Value = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap();
        assert!(last["error"]["message"].is_string(), "{model}: {raw}");
        assert!(!raw.contains("[DONE]"), "{model}: {raw}");

        let mut ask = messages(true);
        ask["model"] = json!(model);
        let raw = ask_text(&gateway, "/v1/messages", ask).await;
        let events = named_events(&raw);
        assert_eq!(events[0].0, "message_start", "{model}: {raw}");
        assert!(
            events.iter().any(|(name, _)| name == "content_block_delta"),
            "{model}: {raw}"
        );
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{model}: {raw}");
        assert_eq!(data["type"], "error", "{model}: {raw}");
        assert!(
            data["error"]["type"].is_string() && data["error"]["message"].is_string(),
            "{model}: {raw}"
        );
        assert!(
            !events.iter().any(|(name, _)| name == "message_stop"),
            "{model}: {raw}"
        );
    }
}

#[tokio::test]
async fn usage_from_every_provider_reaches_the_access_log_and_metrics() {
    let [claude, google, aws, local] = every_kind_of_provider().await;
    let (dir, gateway) = gateway_of_every_kind(&claude, &google, &aws, &local).await;
    // (model, prompt tokens as the common form counts them, completion tokens of a plain answer, cache reads,
    // USD at 1.0 per 1M uncached prompt tokens, 0.1 per cache read, 1.25 per cache write, 2.0 per completion
    // token: claude has 11 uncached, 20 read and 3 written)
    let expected = [
        ("claude", 34, 5, 20, 26.75e-6),
        ("gem", 13, 5, 4, 19.4e-6),
        ("aws", 23, 5, 6, 27.6e-6),
        ("local", 10, 5, 0, 20e-6),
    ];
    for (model, _, _, _, _) in expected {
        for (path, body) in [
            ("/v1/chat/completions", chat(false)),
            ("/v1/messages", messages(true)),
        ] {
            let mut body = body;
            body["model"] = json!(model);
            let response = post(&gateway, path, body, Some(KEY)).await;
            assert_eq!(response.status(), 200, "{model} {path}");
            response.text().await.unwrap();
        }
    }
    let logged = eventually(std::time::Duration::from_secs(5), || async {
        dir.access_log()
            .lines()
            .filter(|l| l.contains("\"prompt_tokens\""))
            .count()
            == 8
    })
    .await;
    assert!(logged, "{}", dir.access_log());
    let log = dir.access_log();
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    for (model, prompt, completion, cache, cost) in expected {
        let line: Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["model"] == model && l["path"] == "/v1/chat/completions")
            .unwrap();
        assert_eq!(line["prompt_tokens"], prompt, "{model}: {line}");
        assert_eq!(line["completion_tokens"], completion, "{model}: {line}");
        if cache > 0 {
            assert_eq!(line["cache_read_tokens"], cache, "{model}: {line}");
        }
        let logged = line["cost_usd"].as_f64().unwrap();
        assert!((logged - cost).abs() < 1e-12, "{model}: {logged}");
        let prompt_total = metric_value(
            &metrics,
            &format!(r#"gateway_ai_tokens_total{{kind="prompt",model="{model}"}}"#),
        );
        assert_eq!(
            prompt_total,
            2.0 * prompt as f64,
            "{model}: plain and streamed"
        );
    }
}

#[tokio::test]
async fn extended_thinking_goes_to_the_anthropic_provider_and_back_signed() {
    let claude = MockLlm::start_speaking("claude", Speaks::Anthropic)
        .await
        .unwrap();
    let local = MockLlm::start("local").await.unwrap();
    claude.set_behavior(Behavior {
        text: Some("Four.".into()),
        thinking: Some("Two plus two is four.".into()),
        ..Behavior::default()
    });
    let (_dir, gateway) = gateway(
        vec![anthropic("claude", &claude), openai("local", &local)],
        &["claude"],
        false,
    )
    .await;
    let mut ask = messages(false);
    ask["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let message = ask_json(&gateway, "/v1/messages", ask.clone()).await;
    let thought = json!({"type": "thinking", "thinking": "Two plus two is four.", "signature": loadtest::MOCK_SIGNATURE});
    assert_eq!(message["content"][0], thought, "{message}");
    assert_eq!(message["content"][1]["text"], "Four.");
    assert_eq!(claude.last().unwrap().json()["thinking"], ask["thinking"]);

    // Streamed: the thinking block, its text and its signature, then the text.
    ask["stream"] = json!(true);
    let raw = ask_text(&gateway, "/v1/messages", ask.clone()).await;
    let (text, _, _) = read_anthropic_stream(&raw);
    assert_eq!(text, "Four.");
    let events = named_events(&raw);
    assert_eq!(events[1].1["content_block"]["type"], "thinking", "{raw}");
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| &data["delta"])
        .collect();
    assert_eq!(deltas[0]["thinking"], "Two plus two is four.");
    assert_eq!(
        deltas[1],
        &json!({"type": "signature_delta", "signature": loadtest::MOCK_SIGNATURE})
    );

    // The next turn sends the signed block back: Anthropic gets it first in the assistant turn, unchanged.
    let mut follow_up = ask.clone();
    follow_up["stream"] = json!(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [thought, {"type": "text", "text": "Four."}]},
        {"role": "user", "content": "and 3+3?"},
    ]);
    assert_eq!(
        post(&gateway, "/v1/messages", follow_up.clone(), Some(KEY))
            .await
            .status(),
        200
    );
    let sent = claude.last().unwrap().json();
    assert_eq!(sent["messages"][1]["content"][0], thought, "{sent}");

    // An OpenAI-compatible provider gets neither the request's thinking nor the blocks.
    follow_up["model"] = json!("local");
    assert_eq!(
        post(&gateway, "/v1/messages", follow_up, Some(KEY))
            .await
            .status(),
        200
    );
    let sent = local.last().unwrap().json();
    let text = sent.to_string();
    assert!(
        sent.get("thinking").is_none()
            && !text.contains("thinking_blocks")
            && !text.contains("Two plus two")
            && !text.contains(loadtest::MOCK_SIGNATURE),
        "{sent}"
    );

    // An OpenAI client sees the thinking as reasoning.
    let body = ask_json(&gateway, "/v1/chat/completions", chat(false)).await;
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Two plus two is four."
    );
}
