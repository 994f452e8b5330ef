//! The AI path over real sockets with mock LLM servers as providers: the OpenAI endpoints, model choice and
//! its explanation headers, fallback (connect refused, 503 with a 1 MiB prompt, 429 with cooldown, timeout),
//! the circuit breaker, streaming (pass-through, mid-stream drop, client disconnect), plain answers that break
//! off, exceed 1 MiB or exceed `ai.max_answer_size`, provider connection reuse (also after the client left), and
//! OpenAI-shaped errors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loadtest::{Behavior, MockLlm};
use serde_json::{json, Value};

fn ai_config(
    dir: &TestDir,
    ports: &Ports,
    providers: &str,
    models: &str,
    profiles: &str,
) -> String {
    ai_config_with(dir, ports, "", providers, models, profiles)
}

/// The same, with `options`: more YAML lines of the `ai` section (indented by two spaces).
fn ai_config_with(
    dir: &TestDir,
    ports: &Ports,
    options: &str,
    providers: &str,
    models: &str,
    profiles: &str,
) -> String {
    let body = format!(
        r#"
ai:
  attempts: 3
{options}
  providers:
    - {{ name: local-mock, type: mock, mock: {{ chunks: 3 }} }}
{providers}
  models:
    - {{ name: mock-echo, provider: local-mock }}
{models}
  aliases: {{ echo: mock-echo }}
  profiles:
{profiles}
routes:
  - name: ai
    match: {{ path: {{ prefix: /v1 }} }}
    ai: {{}}
"#
    );
    dir.plain_config(ports, &body)
}

/// A gateway whose only OpenAI provider, `name`, is `llm`; `models` and `profiles` are YAML lines.
async fn one_provider(
    name: &str,
    llm: &MockLlm,
    models: &str,
    profiles: &str,
) -> (TestDir, Gateway) {
    one_provider_with(name, llm, "", models, profiles).await
}

/// The same, with more lines of the `ai` section (`options`).
async fn one_provider_with(
    name: &str,
    llm: &MockLlm,
    options: &str,
    models: &str,
    profiles: &str,
) -> (TestDir, Gateway) {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        "    - {{ name: {name}, type: openai, base_url: \"{}\" }}",
        llm.base_url()
    );
    let gateway = Gateway::start(
        &dir,
        ports,
        &ai_config_with(&dir, &ports, options, &providers, models, profiles),
    )
    .await;
    (dir, gateway)
}

/// A gateway whose default profile tries `model-a` (upstream `upstream-a`) on the provider `first`, then
/// `model-b` (`upstream-b`) on `second`; `first_options` is more YAML for the first provider's entry.
async fn two_providers(
    first: &MockLlm,
    second: &MockLlm,
    first_options: &str,
) -> (TestDir, Gateway) {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        "    - {{ name: first, type: openai, base_url: \"{}\"{first_options} }}\n    - {{ name: second, type: openai, base_url: \"{}\" }}",
        first.base_url(),
        second.base_url()
    );
    let models = "    - { name: model-a, provider: first, upstream_model: upstream-a }\n    - { name: model-b, provider: second, upstream_model: upstream-b }";
    let config = ai_config(
        &dir,
        &ports,
        &providers,
        models,
        "    default: [model-a, model-b]",
    );
    let gateway = Gateway::start(&dir, ports, &config).await;
    (dir, gateway)
}

async fn chat(client: &reqwest::Client, gateway: &Gateway, body: Value) -> reqwest::Response {
    client
        .post(gateway.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Send a streamed chat request; the response, its first body chunk, and how long that chunk took.
async fn first_chunk(
    client: &reqwest::Client,
    gateway: &Gateway,
    request: &Value,
) -> (reqwest::Response, bytes::Bytes, Duration) {
    let started = std::time::Instant::now();
    let mut response = chat(client, gateway, request.clone()).await;
    let first = response.chunk().await.unwrap().unwrap();
    (response, first, started.elapsed())
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_mock_provider_answers_and_decisions_are_explained() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = ai_config(&dir, &ports, "", "", "    default: [mock-echo]");
    let gateway = Gateway::start(&dir, ports, &config).await;
    let client = client();

    let response = chat(
        &client,
        &gateway,
        json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-model"), "mock-echo");
    assert_eq!(header(&response, "x-gateway-provider"), "local-mock");
    assert_eq!(header(&response, "x-gateway-profile"), "default");
    assert_eq!(header(&response, "x-gateway-decision"), "profile:default");
    assert_eq!(header(&response, "x-gateway-attempts"), "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("you said: hi"));

    let response = chat(
        &client,
        &gateway,
        json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(header(&response, "x-gateway-decision"), "alias");
    let logged = eventually(Duration::from_secs(3), || async {
        dir.access_log().contains(r#""decision":"alias""#)
    })
    .await;
    assert!(logged, "{}", dir.access_log());
    let line = dir
        .access_log()
        .lines()
        .find(|l| l.contains(r#""decision":"alias""#))
        .unwrap()
        .to_string();
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["model"], "mock-echo");
    assert_eq!(record["provider"], "local-mock");
    assert_eq!(record["attempts"], 1);

    // Streaming from the mock: three content chunks, a usage chunk and [DONE].
    let response = chat(&client, &gateway, json!({"model": "mock-echo", "stream": true, "messages": [{"role": "user", "content": "stream"}]})).await;
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    let text = response.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let models: Value = client
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock-echo");
    let embeddings: Value = client
        .post(gateway.url("/v1/embeddings"))
        .json(&json!({"model": "mock-echo", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embeddings["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_gateway_keeps_serving() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = ai_config(&dir, &ports, "", "", "    default: [mock-echo]")
        .replace("attempts: 3", "attempts: 3\n  max_body_size: 1KiB");
    let gateway = Gateway::start(&dir, ports, &config).await;
    let client = client();
    let url = gateway.url("/v1/chat/completions");
    let cases = [
        (client.post(&url).header("content-type", "application/json").body("{not json"), 400, "invalid_json"),
        (client.post(&url).json(&json!({"model": "gpt-99", "messages": [{"role": "user", "content": "hi"}]})), 404, "model_not_found"),
        (client.post(&url).json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": {"profile": "nope"}})), 400, "unknown_profile"),
        // Request shapes OpenAI refuses are refused here, not forwarded.
        (client.post(&url).json(&json!({"model": "mock-echo"})), 400, "missing_required_parameter"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": null})), 400, "missing_required_parameter"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": "hi"})), 400, "invalid_type"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": []})), 400, "empty_array"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": ["hi"]})), 400, "invalid_type"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": [{"content": "hi"}]})), 400, "missing_required_parameter"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": [{"role": "wizard", "content": "hi"}]})), 400, "invalid_value"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": [{"role": "user"}]})), 400, "missing_required_parameter"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": 5}]})), 400, "invalid_type"),
        (client.post(&url).json(&json!({"model": 5, "messages": [{"role": "user", "content": "hi"}]})), 400, "invalid_type"),
        (client.post(&url).json(&json!({"model": "mock-echo", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]})), 400, "invalid_type"),
        (client.post(gateway.url("/v1/embeddings")).json(&json!({"model": "mock-echo"})), 400, "missing_required_parameter"),
        (client.post(gateway.url("/v1/embeddings")).json(&json!({"model": "mock-echo", "input": []})), 400, "empty_array"),
        (client.post(gateway.url("/v1/completions")).json(&json!({"model": "mock-echo"})), 400, "missing_required_parameter"),
        (client.post(&url).header("content-type", "text/plain").body("{}"), 415, "unsupported_media_type"),
        (client.post(&url).json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "x".repeat(2000)}]})), 413, "request_too_large"),
        (client.post(gateway.url("/v1/files")).json(&json!({})), 404, "unknown_endpoint"),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        assert!(body["error"]["type"].is_string() && body["error"]["message"].is_string());
        assert!(body["error"].as_object().unwrap().contains_key("param"));
    }
    let ok = chat(
        &client,
        &gateway,
        json!({"model": "mock-echo", "messages": [{"role": "user", "content": "still here"}]}),
    )
    .await;
    assert_eq!(ok.status(), 200);
    // `curl -d` sends JSON labelled as a form: accepted, as OpenAI does.
    let body = json!({"model": "mock-echo", "messages": [{"role": "user", "content": "curl"}]})
        .to_string();
    let curl_like = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(curl_like.status(), 200);
}

#[tokio::test]
async fn a_1mib_prompt_reaches_the_second_candidate_intact_when_the_first_answers_503() {
    let first = MockLlm::start("first").await.unwrap();
    let second = MockLlm::start("second").await.unwrap();
    first.set_behavior(Behavior {
        status: 503,
        ..Behavior::default()
    });
    let (_dir, gateway) = two_providers(&first, &second, "").await;
    let prompt: String = (0..(1024 * 1024))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let request = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}], "temperature": 0.25, "user": "u-1"});
    let response = chat(&client(), &gateway, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-model"), "model-b");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    let received = second.last().unwrap().json();
    assert_eq!(
        received["messages"][0]["content"].as_str().unwrap(),
        prompt,
        "prompt intact"
    );
    assert_eq!(received["model"], "upstream-b");
    assert_eq!(received["temperature"], 0.25);
    assert_eq!(received["user"], "u-1");
    assert_eq!(first.calls(), 1);
    assert_eq!(
        first.last().unwrap().body.len(),
        second.last().unwrap().body.len() - "upstream-b".len() + "upstream-a".len()
    );
}

#[tokio::test]
async fn fallback_on_connect_refused_429_with_cooldown_and_timeout() {
    let limited = MockLlm::start("limited").await.unwrap();
    let slow = MockLlm::start("slow").await.unwrap();
    let good = MockLlm::start("good").await.unwrap();
    limited.set_behavior(Behavior {
        status: 429,
        retry_after: Some(30),
        ..Behavior::default()
    });
    slow.set_behavior(Behavior {
        head_delay: Duration::from_secs(3),
        ..Behavior::default()
    });
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        r#"    - {{ name: dead, type: openai, base_url: "http://127.0.0.1:{dead}/v1" }}
    - {{ name: limited, type: openai, base_url: "{}" }}
    - {{ name: slow, type: openai, base_url: "{}", timeouts: {{ first_byte: 300ms }} }}
    - {{ name: good, type: openai, base_url: "{}" }}"#,
        limited.base_url(),
        slow.base_url(),
        good.base_url()
    );
    let models = "    - { name: m-dead, provider: dead }\n    - { name: m-limited, provider: limited }\n    - { name: m-slow, provider: slow }\n    - { name: m-good, provider: good }";
    let profiles = "    default: [m-dead, m-good]\n    rate: [m-limited, m-good]\n    timeout: [m-slow, m-good]\n    hopeless: [m-dead, m-limited]";
    let gateway = Gateway::start(
        &dir,
        ports,
        &ai_config(&dir, &ports, &providers, models, profiles),
    )
    .await;
    let client = client();
    let ask = |profile: &'static str| {
        let request = client
            .post(gateway.url("/v1/chat/completions"))
            .header("x-gateway-profile", profile)
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "q"}]}));
        async move { request.send().await.unwrap() }
    };
    let response = ask("default").await;
    assert_eq!(
        (
            response.status().as_u16(),
            header(&response, "x-gateway-model")
        ),
        (200, "m-good".to_string())
    );
    assert_eq!(header(&response, "x-gateway-decision"), "profile:header");

    let response = ask("rate").await;
    assert_eq!(
        (
            response.status().as_u16(),
            header(&response, "x-gateway-attempts")
        ),
        (200, "2".to_string())
    );
    assert_eq!(limited.calls(), 1);
    // The 429's Retry-After cooled the deployment down: the next request goes straight to the fallback.
    let response = ask("rate").await;
    assert_eq!(
        (
            response.status().as_u16(),
            header(&response, "x-gateway-attempts")
        ),
        (200, "1".to_string())
    );
    assert_eq!(limited.calls(), 1);

    // Every candidate failing: 502 in OpenAI's shape, naming what was tried.
    let response = ask("hopeless").await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "all_candidates_failed");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("dead/m-dead") && message.contains("limited/m-limited"),
        "{message}"
    );

    let started = std::time::Instant::now();
    let response = ask("timeout").await;
    assert_eq!(
        (
            response.status().as_u16(),
            header(&response, "x-gateway-model")
        ),
        (200, "m-good".to_string())
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_circuit_breaker_opens_and_half_opens_after_the_cooldown() {
    let flaky = MockLlm::start("flaky").await.unwrap();
    let backup = MockLlm::start("backup").await.unwrap();
    flaky.set_behavior(Behavior {
        status: 500,
        ..Behavior::default()
    });
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        "    - {{ name: flaky, type: openai, base_url: \"{}\", circuit_breaker: {{ consecutive_failures: 2, cooldown: 1s }} }}\n    - {{ name: backup, type: openai, base_url: \"{}\" }}",
        flaky.base_url(),
        backup.base_url()
    );
    let models =
        "    - { name: m-flaky, provider: flaky }\n    - { name: m-backup, provider: backup }";
    let gateway = Gateway::start(
        &dir,
        ports,
        &ai_config(
            &dir,
            &ports,
            &providers,
            models,
            "    default: [m-flaky, m-backup]",
        ),
    )
    .await;
    let client = client();
    let request = json!({"model": "auto", "messages": [{"role": "user", "content": "q"}]});
    for _ in 0..5 {
        assert_eq!(chat(&client, &gateway, request.clone()).await.status(), 200);
    }
    assert_eq!(flaky.calls(), 2, "open after two consecutive failures");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Half-open: one trial call; it fails and the breaker opens again at once.
    assert_eq!(chat(&client, &gateway, request.clone()).await.status(), 200);
    assert_eq!(chat(&client, &gateway, request.clone()).await.status(), 200);
    assert_eq!(flaky.calls(), 3);
    // Recovery: after the cooldown a success closes it.
    flaky.set_behavior(Behavior::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(header(&response, "x-gateway-model"), "m-flaky");
    }
}

#[tokio::test]
async fn streams_pass_through_and_a_mid_stream_drop_ends_with_an_error_event() {
    let llm = MockLlm::start("streamer").await.unwrap();
    let (_dir, gateway) = one_provider(
        "streamer",
        &llm,
        "    - { name: m, provider: streamer }",
        "    default: [m]",
    )
    .await;
    let client = client();
    let request =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "q"}]});

    llm.set_behavior(Behavior {
        chunks: 4,
        chunk_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let (mut response, first, waited) = first_chunk(&client, &gateway, &request).await;
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "{first:?}"
    );
    assert!(
        waited < Duration::from_millis(700),
        "first event flushed at once: {waited:?}"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));

    // Response secret masking is on by default; an ordinary token goes on at once, not with the next one.
    llm.set_behavior(Behavior {
        text: Some(" Hello world".into()),
        chunks: 2,
        chunk_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let (mut response, first, waited) = first_chunk(&client, &gateway, &request).await;
    assert!(
        String::from_utf8_lossy(&first).contains("\"content\":\" Hello\""),
        "{first:?}"
    );
    assert!(
        waited < Duration::from_millis(350),
        "the first token was not held for the second: {waited:?}"
    );
    while response.chunk().await.unwrap().is_some() {}

    // The delay lets the first chunks reach the gateway before the drop (hyper discards what it has not
    // written when a body fails): a drop after the client has its first tokens ends in an error event.
    llm.set_behavior(Behavior {
        chunks: 6,
        drop_after: Some(2),
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let text = chat(&client, &gateway, request.clone())
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        text.contains("\"content\""),
        "no token came before the drop: {text}"
    );
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let event: Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["error"]["code"], "upstream_stream_error");
}

#[tokio::test]
async fn a_client_disconnect_closes_the_provider_stream() {
    let llm = MockLlm::start("long").await.unwrap();
    llm.set_behavior(Behavior {
        chunks: 50,
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    });
    let (_dir, gateway) = one_provider(
        "long",
        &llm,
        "    - { name: m, provider: long }",
        "    default: [m]",
    )
    .await;
    let mut response = chat(
        &client(),
        &gateway,
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "q"}]}),
    )
    .await;
    response.chunk().await.unwrap().unwrap();
    drop(response);
    let cancelled = eventually(Duration::from_secs(5), || async {
        llm.cancelled_streams() == 1
    })
    .await;
    assert!(cancelled, "the provider kept streaming to nobody");
}

#[tokio::test]
async fn the_model_command_selects_and_is_stripped() {
    let llm = MockLlm::start("cmd").await.unwrap();
    let (_dir, gateway) = one_provider(
        "cmdp",
        &llm,
        "    - { name: llama, provider: cmdp, upstream_model: llama3:8b }",
        "    default: [mock-echo]",
    )
    .await;
    let client = client();
    for command in ["/model cmdp,llama", "/model llama", "/model cmdp,llama3:8b"] {
        let content = format!("{command}\nwhat is up?");
        let response = chat(
            &client,
            &gateway,
            json!({"model": "auto", "messages": [{"role": "user", "content": content}]}),
        )
        .await;
        assert_eq!(response.status(), 200, "{command}");
        assert_eq!(header(&response, "x-gateway-decision"), "command");
        let seen = llm.last().unwrap().json();
        assert_eq!(seen["messages"][0]["content"], "what is up?");
        assert_eq!(seen["model"], "llama3:8b");
    }
    let response = chat(
        &client,
        &gateway,
        json!({"model": "auto", "messages": [{"role": "user", "content": "/model nope\nq"}]}),
    )
    .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn deployments_share_the_load_health_checks_skip_dead_ones_and_keyless_providers_are_disabled(
) {
    let east = MockLlm::start("east").await.unwrap();
    let west = MockLlm::start("west").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        r#"    - name: pool
      type: openai
      deployments:
        - {{ base_url: "{}", api_key: key-east }}
        - {{ base_url: "{}", api_key: key-west }}
      health_check: {{ path: /models, interval: 200ms, unhealthy_threshold: 1 }}
      headers: {{ x-provider-extra: "yes" }}
    - {{ name: paid, type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${{UNSET_TEST_PROVIDER_KEY:-}}" }}"#,
        east.base_url(),
        west.base_url()
    );
    let models = "    - { name: pooled, provider: pool }\n    - { name: premium, provider: paid }";
    let gateway = Gateway::start(
        &dir,
        ports,
        &ai_config(
            &dir,
            &ports,
            &providers,
            models,
            "    default: [premium, pooled]",
        ),
    )
    .await;
    let log = dir.gateway_log();
    assert!(
        log.contains(
            "AI provider `paid` is disabled: its API key is empty; set UNSET_TEST_PROVIDER_KEY"
        ),
        "{log}"
    );
    let client = client();
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_upstream_healthy{backend="127.0.0.1:9",cluster="ai:paid"}"#
        ),
        0.0,
        "{metrics}"
    );
    assert!(metrics.contains(r#"cluster="ai:paid""#), "{metrics}");
    let request = json!({"model": "auto", "messages": [{"role": "user", "content": "q"}]});
    for _ in 0..10 {
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-gateway-model"), "pooled");
        assert_eq!(
            header(&response, "x-gateway-attempts"),
            "1",
            "the disabled provider is skipped, not tried"
        );
    }
    assert_eq!((east.calls(), west.calls()), (5, 5));
    assert_eq!(
        east.last().unwrap().header("authorization"),
        Some("Bearer key-east")
    );
    assert_eq!(
        west.last().unwrap().header("authorization"),
        Some("Bearer key-west")
    );
    assert_eq!(east.last().unwrap().header("x-provider-extra"), Some("yes"));
    let models: Value = client
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"pooled") && !ids.contains(&"premium"),
        "{ids:?}"
    );

    west.stop();
    let gauge = format!(
        "gateway_upstream_healthy{{backend=\"{}\",cluster=\"ai:pool\"}}",
        west.addr
    );
    let down = eventually(Duration::from_secs(10), || async {
        metric_value(
            &get(&client, &gateway.admin_url("/metrics")).await.1,
            &gauge,
        ) == 0.0
    })
    .await;
    assert!(down, "the health check did not notice the dead deployment");
    for _ in 0..6 {
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(header(&response, "x-gateway-attempts"), "1");
    }
    assert_eq!(east.calls(), 11);
}

#[tokio::test]
async fn consumer_policies_and_profile_system_prompts_apply() {
    let llm = MockLlm::start("policy").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
consumers:
  - {{ name: intern, api_keys: [{{ sha256: "{intern}" }}], ai: {{ allowed_models: [cheap] }} }}
  - {{ name: lead, api_keys: [{{ sha256: "{lead}" }}] }}
ai:
  providers:
    - {{ name: p, type: openai, base_url: "{base}" }}
  models:
    - {{ name: cheap, provider: p }}
    - {{ name: fancy, provider: p }}
  profiles:
    default: [cheap]
    support: {{ models: [fancy], system_prompt: {{ mode: prepend, text: "You are support." }} }}
routes:
  - name: ai
    match: {{ path: {{ prefix: /v1 }} }}
    auth: {{ methods: [api_key] }}
    ai: {{}}
"#,
        intern = hash_key("intern-key-000000000000"),
        lead = hash_key("lead-key-0000000000000000"),
        base = llm.base_url()
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    let ask = |key: &'static str, body: Value| {
        let request = client
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let message =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "q"}]});
    assert_eq!(
        ask("intern-key-000000000000", message("cheap"))
            .await
            .status(),
        200
    );
    let refused = ask("intern-key-000000000000", message("fancy")).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_allowed"
    );
    assert_eq!(
        ask("lead-key-0000000000000000", message("fancy"))
            .await
            .status(),
        200
    );
    // The support profile brings its system prompt.
    let mut support = message("auto");
    support["metadata"] = json!({"profile": "support"});
    assert_eq!(
        ask("lead-key-0000000000000000", support).await.status(),
        200
    );
    let seen = llm.last().unwrap().json();
    assert_eq!(
        seen["messages"][0],
        json!({"role": "system", "content": "You are support."})
    );
    assert_eq!(seen["messages"][1]["content"], "q");
}

#[tokio::test]
async fn usage_and_cost_are_accounted_for_plain_and_streamed_answers() {
    let llm = MockLlm::start("metered").await.unwrap();
    llm.set_behavior(Behavior {
        chunks: 3,
        ..Behavior::default()
    });
    let (dir, ports) = (TestDir::new(), Ports::new());
    let providers = format!(
        "    - {{ name: metered, type: openai, base_url: \"{}\" }}",
        llm.base_url()
    );
    let models = "    - { name: priced, provider: metered, input_price: 2.0, output_price: 8.0 }";
    let gateway = Gateway::start(
        &dir,
        ports,
        &ai_config(&dir, &ports, &providers, models, "    default: [priced]"),
    )
    .await;
    let client = client();
    let plain = json!({"model": "priced", "messages": [{"role": "user", "content": "q"}]});
    assert_eq!(chat(&client, &gateway, plain).await.status(), 200);
    let streamed =
        json!({"model": "priced", "stream": true, "messages": [{"role": "user", "content": "q"}]});
    let text = chat(&client, &gateway, streamed)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"usage\""),
        "the usage chunk reaches the client too"
    );
    assert_eq!(
        llm.last().unwrap().json()["stream_options"],
        json!({"include_usage": true})
    );

    // The mock reports 10 + 5 tokens plain, and 10 + 3 (one per chunk) streamed.
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_ai_tokens_total{kind="prompt",model="priced"}"#
        ),
        20.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_ai_tokens_total{kind="completion",model="priced"}"#
        ),
        8.0
    );
    let cost = metric_value(&metrics, r#"gateway_ai_cost_usd_total{model="priced"}"#);
    assert!(
        (cost - (20.0 * 2.0 + 8.0 * 8.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    let logged = eventually(Duration::from_secs(3), || async {
        dir.access_log().matches("\"completion_tokens\"").count() == 2
    })
    .await;
    assert!(logged, "{}", dir.access_log());
    assert!(dir
        .access_log()
        .contains("\"prompt_tokens\":10,\"completion_tokens\":5,\"cost_usd\":"));
}

/// Read one HTTP/1.1 response off `stream`: its head and its body, framed by Content-Length or chunked
/// encoding (a close-delimited body fails the test, since the connection could not be reused).
async fn read_framed_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the head");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let mut body = data.split_off(head_end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = head.contains("transfer-encoding: chunked");
    assert!(length.is_some() || chunked, "body has no framing: {head}");
    loop {
        let complete = match length {
            Some(length) => body.len() >= length,
            None => body.ends_with(b"\r\n0\r\n\r\n") || body == b"0\r\n\r\n",
        };
        if complete {
            break;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-body: {head}");
        body.extend_from_slice(&buf[..n]);
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn plain_and_streamed_answers_keep_the_client_connection_open() {
    use tokio::io::AsyncWriteExt;
    let llm = MockLlm::start("keeper").await.unwrap();
    let (_dir, gateway) = one_provider(
        "keeper",
        &llm,
        "    - { name: m, provider: keeper }",
        "    default: [m]",
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.ports.http))
        .await
        .unwrap();
    let bodies = [
        json!({"model": "m", "messages": [{"role": "user", "content": "plain"}]}),
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "stream"}]}),
        json!({"model": "mock-echo", "stream": true, "messages": [{"role": "user", "content": "mock"}]}),
        json!({"model": "mock-echo", "messages": [{"role": "user", "content": "mock plain"}]}),
    ];
    for body in &bodies {
        let body = body.to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, text) = read_framed_response(&mut stream).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert!(text.contains("chat.completion"), "{text}");
    }
    assert_eq!(llm.calls(), 2);
}

#[tokio::test]
async fn a_plain_answer_that_breaks_off_goes_to_the_next_candidate_or_ends_in_a_502() {
    let first = MockLlm::start("first").await.unwrap();
    let second = MockLlm::start("second").await.unwrap();
    let cut = Behavior {
        cut_plain_at: Some(20),
        ..Behavior::default()
    };
    first.set_behavior(cut.clone());
    let (_dir, gateway) = two_providers(&first, &second, "").await;
    let client = client();
    let request = json!({"model": "auto", "messages": [{"role": "user", "content": "q"}]});

    // The first provider's answer stops 20 bytes in; nothing reached the client, so the second answers.
    let response = chat(&client, &gateway, request.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-model"), "model-b");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from second."
    );
    assert_eq!(first.calls(), 1);

    // Both break off: an OpenAI error naming why, never a cut connection or half a JSON body.
    second.set_behavior(cut);
    let response = chat(&client, &gateway, request.clone()).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "all_candidates_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("first/model-a (answer broke off")
            && message.contains("second/model-b (answer broke off"),
        "{message}"
    );
    // The gateway goes on serving once a provider answers whole again.
    second.set_behavior(Behavior::default());
    assert_eq!(chat(&client, &gateway, request).await.status(), 200);
}

#[tokio::test]
async fn a_plain_answer_that_stops_mid_body_is_not_retried_after_its_timeout() {
    let slow = MockLlm::start("slow").await.unwrap();
    let spare = MockLlm::start("spare").await.unwrap();
    slow.set_behavior(Behavior {
        cut_plain_at: Some(20),
        stall_plain: true,
        ..Behavior::default()
    });
    let (_dir, gateway) = two_providers(&slow, &spare, ", timeouts: { first_byte: 300ms }").await;
    let response = chat(
        &client(),
        &gateway,
        json!({"model": "auto", "messages": [{"role": "user", "content": "q"}]}),
    )
    .await;
    // The answer stalled after its head: the wait is spent, so no second attempt starts it over. Out of
    // time is 504 `upstream_timeout`, as on proxy routes.
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(spare.calls(), 0);
    assert_eq!(slow.calls(), 1);
}

#[tokio::test]
async fn a_stream_is_timed_out_between_its_chunks_not_over_its_whole_length() {
    let llm = MockLlm::start("paced").await.unwrap();
    let spare = MockLlm::start("spare").await.unwrap();
    // Eight chunks 100 ms apart: the stream lasts longer than the 500 ms first-byte timeout, but no wait
    // between two chunks comes near it.
    llm.set_behavior(Behavior {
        chunks: 8,
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let (_dir, gateway) = two_providers(&llm, &spare, ", timeouts: { first_byte: 500ms }").await;
    let client = client();
    let request =
        json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "q"}]});
    let text = chat(&client, &gateway, request.clone())
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");

    // A stream that stops after its first chunks: the wait for the next one runs out after 500 ms, and the
    // client gets the error event, not a connection held open until the provider gives up.
    llm.set_behavior(Behavior {
        chunks: 6,
        chunk_delay: Duration::from_millis(20),
        stall_after: Some(3),
        ..Behavior::default()
    });
    let waited = stream_cut_short(&gateway, &request).await;
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(spare.calls(), 0);
}

/// Send a streamed chat completion that the gateway must cut short: some text, then the error event, no
/// `[DONE]`. Bounded to 10 s, so a gateway that never times the stream out fails instead of hanging.
/// Returns how long the stream took.
async fn stream_cut_short(gateway: &Gateway, request: &Value) -> Duration {
    let started = Instant::now();
    let text = client()
        .post(gateway.url("/v1/chat/completions"))
        .json(request)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .expect("the stream ends within 10 s");
    let waited = started.elapsed();
    assert!(text.contains("\"content\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let event: Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["error"]["code"], "upstream_stream_error");
    waited
}

#[tokio::test]
async fn a_stream_that_outlasts_the_total_timeout_is_cut_with_the_error_event() {
    let llm = MockLlm::start("long").await.unwrap();
    let spare = MockLlm::start("spare").await.unwrap();
    // Chunks come every 100 ms, well inside the first-byte timeout, but the whole answer would take 2 s.
    llm.set_behavior(Behavior {
        chunks: 20,
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let (_dir, gateway) =
        two_providers(&llm, &spare, ", timeouts: { first_byte: 1s, total: 600ms }").await;
    let request =
        json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "q"}]});
    let waited = stream_cut_short(&gateway, &request).await;
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );
    assert_eq!(spare.calls(), 0);
}

#[tokio::test]
async fn a_plain_answer_over_1mib_streams_through_whole_with_its_length_and_usage() {
    let llm = MockLlm::start("bulk").await.unwrap();
    let text: String = (0..(1536 * 1024))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    llm.set_behavior(Behavior {
        text: Some(text.clone()),
        ..Behavior::default()
    });
    // Unmasked, so the gateway need not hold the answer: it streams through with the provider's length.
    let (_dir, gateway) = one_provider_with(
        "bulk",
        &llm,
        "  guards: { response_secrets: { enabled: false } }",
        "    - { name: big, provider: bulk }",
        "    default: [big]",
    )
    .await;
    let client = client();
    let response = chat(
        &client,
        &gateway,
        json!({"model": "big", "messages": [{"role": "user", "content": "q"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let length: usize = header(&response, "content-length").parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), length);
    assert!(length > 1536 * 1024);
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], text.as_str());
    // The usage at the end of the body is still accounted (the mock reports 10 + 5 tokens).
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_ai_tokens_total{kind="completion",model="big"}"#
        ),
        5.0
    );
}

#[tokio::test]
async fn the_provider_connection_is_pooled_across_plain_and_streamed_answers() {
    let llm = MockLlm::start("pooled").await.unwrap();
    let (_dir, gateway) = one_provider(
        "pooled",
        &llm,
        "    - { name: m, provider: pooled }",
        "    default: [m]",
    )
    .await;
    let client = client();
    for stream in [false, true, false, true, false, true] {
        let response = chat(
            &client,
            &gateway,
            json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "q"}]}),
        )
        .await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let end = if stream {
            "data: [DONE]"
        } else {
            "Hello from pooled"
        };
        assert!(text.contains(end), "{text}");
    }
    // The relay writes each request itself and rebuilds Pingora's session around the pooled connection:
    // every answer, plain or streamed, leaves it usable for the next request.
    assert_eq!(llm.calls(), 6);
    assert_eq!(llm.connections(), 1);
}

#[tokio::test]
async fn a_plain_answer_gives_its_provider_connection_back_even_when_the_client_left() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let llm = MockLlm::start("leaver").await.unwrap();
    // 12 MiB: more than the loopback socket buffers hold, so writing it to a client that has gone fails
    // (checked below with the bytes the access log says went out). Read whole: the default masking is on.
    let size = 12 << 20;
    llm.set_behavior(Behavior {
        text: Some("word ".repeat(size / 5)),
        ..Behavior::default()
    });
    let (dir, gateway) = one_provider(
        "leaver",
        &llm,
        "    - { name: m, provider: leaver }",
        "    default: [m]",
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.ports.http))
        .await
        .unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await.unwrap();
    assert_eq!(&start, b"HTTP/1.1 200");
    drop(stream);
    // The gateway logs a request after its provider connection went back to the pool.
    assert!(
        eventually(Duration::from_secs(10), || async {
            dir.access_log().contains("/v1/chat/completions")
        })
        .await,
        "{}",
        dir.access_log()
    );
    let log = dir.access_log();
    let record: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(record["bytes_out"].as_u64().unwrap() < size as u64, "{log}");
    llm.set_behavior(Behavior::default());
    let response = chat(
        &client(),
        &gateway,
        json!({"model": "m", "messages": [{"role": "user", "content": "again"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("Hello from leaver"));
    assert_eq!(llm.calls(), 2);
    assert_eq!(llm.connections(), 1);
}

#[tokio::test]
async fn a_plain_answer_over_max_answer_size_is_refused_with_a_502_whether_or_not_its_length_is_known(
) {
    let llm = MockLlm::start("wordy").await.unwrap();
    // Masking is on (the default), so plain answers are held whole: at most 1 MiB here.
    let (dir, gateway) = one_provider_with(
        "wordy",
        &llm,
        "  max_answer_size: 1MiB",
        "    - { name: m, provider: wordy }",
        "    default: [m]",
    )
    .await;
    let client = client();
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
    for chunked in [false, true] {
        llm.set_behavior(Behavior {
            text: Some("x".repeat(1536 * 1024)),
            chunked_plain: chunked,
            ..Behavior::default()
        });
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(response.status(), 502, "chunked: {chunked}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(
            error["error"]["code"], "upstream_answer_too_large",
            "{error}"
        );
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ai.max_answer_size"));
        // Under the limit, both framings answer.
        llm.set_behavior(Behavior {
            text: Some("y".repeat(512 * 1024)),
            chunked_plain: chunked,
            ..Behavior::default()
        });
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(response.status(), 200, "chunked: {chunked}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .len(),
            512 * 1024
        );
    }
    assert!(
        dir.gateway_log().contains("ai.max_answer_size"),
        "{}",
        dir.gateway_log()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            dir.access_log().matches("\"status\":502").count() == 2
        })
        .await,
        "{}",
        dir.access_log()
    );
}

#[tokio::test]
async fn a_stream_that_ends_without_its_final_event_is_a_provider_failure() {
    let first = MockLlm::start("first").await.unwrap();
    let second = MockLlm::start("second").await.unwrap();
    let (dir, gateway) = two_providers(&first, &second, "").await;
    let client = client();
    let request =
        json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "q"}]});

    // Ended (or broken off) before its first event: nothing reached the client, the next candidate answers.
    for behavior in [
        Behavior {
            end_after: Some(0),
            ..Behavior::default()
        },
        Behavior {
            drop_after: Some(0),
            ..Behavior::default()
        },
    ] {
        first.set_behavior(behavior);
        let response = chat(&client, &gateway, request.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-gateway-model"), "model-b");
        let text = response.text().await.unwrap();
        assert_eq!(sse_content(&text), "Hello from second.", "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }

    // Ended cleanly after two events, with no finish reason and no [DONE]: the client is told.
    first.set_behavior(Behavior {
        chunks: 6,
        end_after: Some(2),
        ..Behavior::default()
    });
    let response = chat(&client, &gateway, request.clone()).await;
    assert_eq!(header(&response, "x-gateway-model"), "model-a");
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let event: Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["error"]["code"], "upstream_stream_error", "{text}");

    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_ai_provider_errors_total{provider="first",reason="stream_incomplete"}"#
        ),
        2.0,
        "{metrics}"
    );
    let logged = eventually(Duration::from_secs(5), || async {
        dir.access_log()
            .contains(r#""error":"upstream_stream_incomplete""#)
    })
    .await;
    assert!(logged, "{}", dir.access_log());
}

/// Every refusal goes through one writer: the same 401 and 429 on an edge route and an AI route, each in
/// its route's dialect (the gateway's JSON error, OpenAI's error object), each with its challenge or
/// retry header, the request id, the RateLimit-* headers and the route's response headers; AI answers
/// carry the last two as well.
#[tokio::test]
async fn refusals_answer_in_the_dialect_of_the_route_with_the_same_headers() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let key = "dialect-key-0000000000000";
    let guarded = |name: &str, prefix: &str, action: &str, value: Value| {
        let mut route = json!({
            "name": name,
            "match": {"path": {"prefix": prefix}},
            "auth": {"methods": ["api_key"]},
            "limits": ["two"],
            "response_headers": {"set": {"x-route": name}},
        });
        route[action] = value;
        route
    };
    let config = TestConfig::new(&dir, &ports)
        .consumer("c", &[hash_key(key)])
        .limit(json!({"name": "two", "rate": "2/hour", "burst": 2, "key": "route"}))
        .section(
            "ai",
            json!({
                "providers": [{"name": "local-mock", "type": "mock"}],
                "models": [{"name": "mock-echo", "provider": "local-mock"}],
                "profiles": {"default": ["mock-echo"]},
            }),
        )
        .route(guarded(
            "edge",
            "/edge",
            "respond",
            json!({"status": 200, "body": "ok"}),
        ))
        .route(guarded("ai", "/v1", "ai", json!({})))
        .yaml();
    let gateway = Gateway::start(&dir, ports, &config).await;
    let client = client();
    let message = json!({"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]});
    let send = |route: &str, with_key: bool| {
        let request = if route == "ai" {
            client
                .post(gateway.url("/v1/chat/completions"))
                .json(&message)
        } else {
            client.get(gateway.url("/edge"))
        };
        let request = if with_key {
            request.bearer_auth(key)
        } else {
            request
        };
        async move { request.send().await.unwrap() }
    };
    for route in ["edge", "ai"] {
        // 401: the challenge, the request id and the route's header; the body in the route's dialect.
        let refused = send(route, false).await;
        assert_eq!(refused.status(), 401, "{route}");
        assert!(
            header(&refused, "www-authenticate").starts_with("Bearer realm="),
            "{route}"
        );
        assert!(!header(&refused, "x-request-id").is_empty(), "{route}");
        assert_eq!(header(&refused, "x-route"), route);
        let error = refused.json::<Value>().await.unwrap()["error"].clone();
        assert_eq!(error["code"], "missing_credentials", "{route}: {error}");
        if route == "ai" {
            assert_eq!(error["type"], "authentication_error", "{error}");
            assert!(
                error.get("param").is_some() && error.get("status").is_none(),
                "{error}"
            );
        } else {
            assert_eq!(error["status"], 401, "{error}");
            assert!(error.get("type").is_none(), "{error}");
        }

        // Two answers within the limit carry the RateLimit headers and the route's header.
        for remaining in ["1", "0"] {
            let served = send(route, true).await;
            assert_eq!(served.status(), 200, "{route}");
            assert_eq!(header(&served, "ratelimit-limit"), "2", "{route}");
            assert_eq!(header(&served, "ratelimit-remaining"), remaining, "{route}");
            assert_eq!(header(&served, "x-route"), route);
            assert!(!header(&served, "x-request-id").is_empty(), "{route}");
        }

        // 429: Retry-After and the RateLimit headers, in the route's dialect.
        let limited = send(route, true).await;
        assert_eq!(limited.status(), 429, "{route}");
        assert!(header(&limited, "retry-after").parse::<u64>().unwrap() > 0);
        assert_eq!(header(&limited, "ratelimit-remaining"), "0", "{route}");
        assert_eq!(header(&limited, "x-route"), route);
        let error = limited.json::<Value>().await.unwrap()["error"].clone();
        assert_eq!(error["code"], "rate_limited", "{route}: {error}");
        if route == "ai" {
            assert_eq!(error["type"], "rate_limit_error", "{error}");
        } else {
            assert_eq!(error["status"], 429, "{error}");
        }
    }
}
