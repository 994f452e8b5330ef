//! The official Python SDKs across dialects over TLS: Anthropic's SDK against `/v1/messages` (plain,
//! streamed, tools) through an OpenAI-compatible provider and through the native Anthropic, Gemini and
//! Bedrock providers, OpenAI's SDK through the native providers, and both through the `mock` type.
//! `.ci/setup` installs both SDKs into `target/sdk-venv`; without them the test fails and says so (it is
//! never skipped).

mod common;

use common::*;
use loadtest::Behavior;
use serde_json::json;

const ANTHROPIC_SCRIPT: &str = r#"
import json, sys
try:
    import httpx2 as httpx
except ImportError:
    import httpx
from anthropic import Anthropic

base_url, key, ca, model = sys.argv[1:5]
client = Anthropic(base_url=base_url, api_key=key, max_retries=0, http_client=httpx.Client(verify=ca))
ask = [{"role": "user", "content": "weather in Oslo?"}]
tools = [{"name": "weather", "description": "the weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
reply = client.messages.create(model=model, max_tokens=200, system="be brief", messages=ask)
print(json.dumps({"kind": "plain", "text": "".join(b.text for b in reply.content if b.type == "text"),
                  "stop": reply.stop_reason, "output_tokens": reply.usage.output_tokens}))
with client.messages.stream(model=model, max_tokens=200, messages=ask) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print(json.dumps({"kind": "stream", "text": text, "stop": final.stop_reason}))
reply = client.messages.create(model=model, max_tokens=200, messages=ask, tools=tools)
calls = [{"name": b.name, "input": b.input, "id": b.id} for b in reply.content if b.type == "tool_use"]
print(json.dumps({"kind": "tools", "calls": calls, "stop": reply.stop_reason}))
with client.messages.stream(model=model, max_tokens=200, messages=ask, tools=tools) as stream:
    final = stream.get_final_message()
calls = [{"name": b.name, "input": b.input} for b in final.content if b.type == "tool_use"]
print(json.dumps({"kind": "stream_tools", "calls": calls, "stop": final.stop_reason}))
# The tool's result goes back, and the conversation goes on.
follow = ask + [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "-3C"}]}]
reply = client.messages.create(model=model, max_tokens=200, messages=follow, tools=tools)
print(json.dumps({"kind": "follow_up", "text": "".join(b.text for b in reply.content if b.type == "text")}))
print(json.dumps({"kind": "models", "ids": [m.id for m in client.models.list()]}))
"#;

const OPENAI_SCRIPT: &str = r#"
import json, sys
try:
    import httpx2 as httpx
except ImportError:
    import httpx
from openai import OpenAI

base_url, key, ca, model = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=httpx.Client(verify=ca))
ask = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Oslo?"}]
tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
reply = client.chat.completions.create(model=model, messages=ask)
print(json.dumps({"kind": "plain", "text": reply.choices[0].message.content, "stop": reply.choices[0].finish_reason}))
parts = []
for chunk in client.chat.completions.create(model=model, messages=ask, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print(json.dumps({"kind": "stream", "text": "".join(parts)}))
reply = client.chat.completions.create(model=model, messages=ask, tools=tools)
calls = [{"name": c.function.name, "input": json.loads(c.function.arguments)} for c in reply.choices[0].message.tool_calls or []]
print(json.dumps({"kind": "tools", "calls": calls, "stop": reply.choices[0].finish_reason}))
"#;

/// Both SDKs, plain and streamed, against the `mock` provider type (it never calls tools).
const MOCK_SCRIPT: &str = r#"
import json, sys
try:
    import httpx2 as httpx
except ImportError:
    import httpx
from anthropic import Anthropic
from openai import OpenAI

root, key, ca, model = sys.argv[1:5]
anthropic = Anthropic(base_url=root, api_key=key, max_retries=0, http_client=httpx.Client(verify=ca))
ask = [{"role": "user", "content": "hello mock"}]
reply = anthropic.messages.create(model=model, max_tokens=100, messages=ask)
with anthropic.messages.stream(model=model, max_tokens=100, messages=ask) as stream:
    streamed = "".join(stream.text_stream)
openai = OpenAI(base_url=root + "/v1", api_key=key, max_retries=0, http_client=httpx.Client(verify=ca))
chat = openai.chat.completions.create(model=model, messages=ask)
parts = [c.choices[0].delta.content for c in openai.chat.completions.create(model=model, messages=ask, stream=True)
         if c.choices and c.choices[0].delta.content]
print(json.dumps({"anthropic": reply.content[0].text, "anthropic_stream": streamed,
                  "openai": chat.choices[0].message.content, "openai_stream": "".join(parts)}))
"#;

#[tokio::test]
async fn the_anthropic_and_openai_sdks_work_through_every_provider_type() {
    let text = "Cold and clear in Oslo.";
    let with_tool = |text: &str| Behavior {
        text: Some(text.into()),
        tool_call: Some(("weather".into(), json!({"city": "Oslo"}))),
        chunks: 4,
        ..Behavior::default()
    };
    let [claude, google, aws, local] = every_kind_of_provider().await;
    claude.set_behavior(with_tool(text));
    google.set_behavior(with_tool(text));
    aws.set_behavior(with_tool(text));
    // The OpenAI-compatible mock calls the tool in both its plain and its streamed answer.
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}});
    local.set_behavior(Behavior {
        message: Some(json!({"role": "assistant", "content": text, "tool_calls": [call]})),
        deltas: vec![
            json!({"content": "Cold and clear "}),
            json!({"content": "in Oslo."}),
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
        ],
        ..Behavior::default()
    });

    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("sdk ca"));
    let (cert, key) = ca.issue(&["localhost"], dir.dir.path(), "server");
    let ca_path = dir.path("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let api_key = "sdk-test-key-0123456789";
    let yaml = TestConfig::new(&dir, &ports)
        .listener("address", format!("127.0.0.1:{}", ports.https))
        .listener("tls", json!({"certificates": [{"cert": cert, "key": key}]}))
        .consumer("sdk", &[hash_key(api_key)])
        .section(
            "ai",
            json!({
                "providers": [
                    {"name": "claude", "type": "anthropic", "base_url": claude.base_url(), "api_key": "provider-key"},
                    {"name": "gem", "type": "gemini", "base_url": format!("http://{}/v1beta", google.addr), "api_key": "provider-key"},
                    {"name": "local", "type": "openai", "base_url": local.base_url()},
                    {"name": "aws", "type": "bedrock", "region": "us-east-1", "base_url": format!("http://{}", aws.addr)},
                    {"name": "mock", "type": "mock", "mock": {"chunks": 3}},
                ],
                "models": [
                    {"name": "claude-model", "provider": "claude"},
                    {"name": "gemini-model", "provider": "gem"},
                    {"name": "local-model", "provider": "local"},
                    {"name": "bedrock-model", "provider": "aws", "upstream_model": "anthropic.claude-3-5-sonnet-20240620-v1:0"},
                    {"name": "mock-model", "provider": "mock"},
                ],
                "profiles": {"default": ["local-model"]},
            }),
        )
        .route(json!({"name": "ai", "match": {"path": {"prefix": "/v1"}}, "auth": {"methods": ["api_key"]}, "ai": {}}))
        .yaml();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", "AKIDSDKTEST000000000"),
        ("AWS_SECRET_ACCESS_KEY", "sdk-test-secret"),
    ];
    let _gateway = Gateway::start_with_env(&dir, ports, &yaml, &aws_env).await;
    let anthropic_script = dir.path("anthropic_sdk.py");
    std::fs::write(&anthropic_script, ANTHROPIC_SCRIPT).unwrap();
    let openai_script = dir.path("openai_sdk.py");
    std::fs::write(&openai_script, OPENAI_SCRIPT).unwrap();
    let mock_script = dir.path("mock_sdk.py");
    std::fs::write(&mock_script, MOCK_SCRIPT).unwrap();
    let root = format!("https://localhost:{}", ports.https);
    let args = |base: &str, model: &str| {
        vec![
            base.to_string(),
            api_key.to_string(),
            ca_path.to_str().unwrap().to_string(),
            model.to_string(),
        ]
    };
    let expected_calls = json!([{"name": "weather", "input": {"city": "Oslo"}}]);

    for model in [
        "local-model",
        "claude-model",
        "gemini-model",
        "bedrock-model",
    ] {
        let lines = run_sdk_script(anthropic_script.clone(), args(&root, model)).await;
        assert_eq!(lines[0]["text"], text, "{model}: {}", lines[0]);
        assert!(lines[0]["output_tokens"].as_u64().unwrap() > 0, "{model}");
        assert_eq!(lines[1]["text"], text, "{model}");
        assert_eq!(
            lines[1]["stop"], "tool_use",
            "{model}: the mocks always call the tool"
        );
        let mut calls = lines[2]["calls"].clone();
        calls[0].as_object_mut().unwrap().remove("id");
        assert_eq!(calls, expected_calls, "{model}");
        assert_eq!(lines[2]["stop"], "tool_use", "{model}");
        assert_eq!(lines[3]["calls"], expected_calls, "{model}");
        assert_eq!(lines[4]["text"], text, "{model}: the conversation goes on");
        assert_eq!(
            lines[5]["ids"],
            json!([
                "claude-model",
                "gemini-model",
                "local-model",
                "bedrock-model",
                "mock-model"
            ]),
            "the Anthropic SDK lists the catalog"
        );
    }
    for model in ["claude-model", "gemini-model", "bedrock-model"] {
        let lines = run_sdk_script(openai_script.clone(), args(&format!("{root}/v1"), model)).await;
        assert_eq!(lines[0]["text"], text, "{model}");
        assert_eq!(lines[0]["stop"], "tool_calls", "{model}");
        assert_eq!(lines[1]["text"], text, "{model}");
        assert_eq!(lines[2]["calls"], expected_calls, "{model}");
    }
    // The tool result reached each native provider as its own kind of block.
    for (llm, pointer, expected) in [
        (&claude, "/messages/2/content/0/type", "tool_result"),
        (
            &google,
            "/contents/2/parts/0/functionResponse/name",
            "weather",
        ),
        (
            &aws,
            "/messages/2/content/0/toolResult/toolUseId",
            "toolu_x",
        ),
    ] {
        let answered_tool = llm
            .recorded()
            .iter()
            .any(|call| call.json().pointer(pointer) == Some(&json!(expected)));
        assert!(answered_tool, "no tool result reached {pointer}");
    }
    // And the mock provider type, through both SDKs.
    let lines = run_sdk_script(mock_script, args(&root, "mock-model")).await;
    for key in ["anthropic", "anthropic_stream", "openai", "openai_stream"] {
        let text = lines[0][key].as_str().unwrap();
        assert!(
            text.starts_with("[mock:mock-model]") && text.contains("hello mock"),
            "{key}: {text}"
        );
    }
}
