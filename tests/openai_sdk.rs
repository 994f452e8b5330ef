//! The official OpenAI Python SDK drives the gateway over TLS (API key auth, non-stream and stream) and gets
//! exactly what the provider (a mock LLM) sent. `.ci/setup` installs the SDK into `target/sdk-venv`; without
//! it the test fails and says so (it is never skipped).

mod common;

use common::*;
use loadtest::{Behavior, MockLlm};

const SCRIPT: &str = r#"
import json, sys
try:
    import httpx2 as httpx
except ImportError:
    import httpx
from openai import OpenAI

base_url, key, ca = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=httpx.Client(verify=ca))
reply = client.chat.completions.create(model="sdk-model", messages=[{"role": "user", "content": "hello"}])
print(json.dumps({"kind": "plain", "content": reply.choices[0].message.content, "model": reply.model}))
parts = []
for chunk in client.chat.completions.create(model="sdk-model", messages=[{"role": "user", "content": "hello"}], stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print(json.dumps({"kind": "stream", "content": "".join(parts), "chunks": len(parts)}))
models = client.models.list()
print(json.dumps({"kind": "models", "ids": [m.id for m in models.data]}))
"#;

#[tokio::test]
async fn the_official_openai_sdk_gets_exactly_what_the_provider_sent() {
    let provider = MockLlm::start("sdk-provider").await.unwrap();
    let text = "Exactly these words, from the provider.";
    provider.set_behavior(Behavior {
        text: Some(text.into()),
        chunks: 5,
        ..Behavior::default()
    });
    let (dir, ports, ca) = (TestDir::new(), Ports::new(), TestCa::new("sdk ca"));
    let (cert, key) = ca.issue(&["localhost"], dir.dir.path(), "server");
    let ca_path = dir.path("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let api_key = "sdk-test-key-0123456789";
    let config = format!(
        r#"{server}
listeners:
  - name: https
    address: "127.0.0.1:{https}"
    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}
consumers:
  - {{ name: sdk, api_keys: [{{ sha256: "{hash}" }}] }}
ai:
  providers:
    - {{ name: upstream, type: openai, base_url: "{base}" }}
  models:
    - {{ name: sdk-model, provider: upstream, upstream_model: provider-model }}
  profiles:
    default: [sdk-model]
routes:
  - name: ai
    match: {{ path: {{ prefix: /v1 }} }}
    auth: {{ methods: [api_key] }}
    ai: {{}}
"#,
        server = dir.server_section(&ports, ""),
        https = ports.https,
        cert = cert.display(),
        key = key.display(),
        hash = hash_key(api_key),
        base = provider.base_url(),
    );
    let _gateway = Gateway::start(&dir, ports, &config).await;
    let script = dir.path("sdk.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let base_url = format!("https://localhost:{}/v1", ports.https);
    let args = vec![
        base_url,
        api_key.to_string(),
        ca_path.to_str().unwrap().to_string(),
    ];
    let lines = run_sdk_script(script, args).await;
    assert_eq!(lines[0]["content"], text);
    assert_eq!(
        lines[0]["model"], "provider-model",
        "the provider's own answer, untouched"
    );
    assert_eq!(lines[1]["content"], text);
    assert_eq!(lines[1]["chunks"], 5);
    assert_eq!(lines[2]["ids"], serde_json::json!(["sdk-model"]));
    // The provider saw the upstream model id and the gateway's request id, never the client's key.
    let seen = provider.last().unwrap();
    assert_eq!(seen.json()["model"], "provider-model");
    assert!(seen.header("authorization").is_none());
}
