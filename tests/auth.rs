//! API keys and consumer allowlists over real sockets: keys by header, bearer and query parameter; wrong
//! and missing keys; the key never reaching the upstream, the access log or the error body; identity
//! headers forwarded and never spoofable.

mod common;

use common::*;
use loadtest::MockOrigin;

const ALICE_KEY: &str = "alice-key-0123456789abcdef";
const BOB_KEY: &str = "bob-key-0123456789abcdef";

fn config(dir: &TestDir, ports: &Ports, origin: &MockOrigin) -> String {
    let body = format!(
        r#"
auth:
  api_key: {{ headers: [x-api-key, x-custom-key], query_param: api_key }}
consumers:
  - name: alice
    groups: [staff, beta]
    api_keys: [{{ sha256: "{alice}" }}]
  - name: bob
    api_keys: [{{ env: TEST_BOB_KEY }}]
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: private
    match: {{ path: {{ prefix: /private }} }}
    auth: {{ methods: [api_key] }}
    proxy: {{ cluster: origin }}
  - name: staff-only
    match: {{ path: {{ prefix: /staff }} }}
    auth: {{ methods: [api_key], groups: [staff] }}
    proxy: {{ cluster: origin }}
  - name: bob-only
    match: {{ path: {{ prefix: /bob }} }}
    auth: {{ methods: [api_key], consumers: [bob] }}
    respond: {{ status: 200, body: hi-bob }}
  - name: public
    proxy: {{ cluster: origin }}
"#,
        alice = hash_key(ALICE_KEY),
        origin = origin.addr
    );
    dir.plain_config(ports, &body)
}

async fn start(origin: &MockOrigin) -> (TestDir, Gateway) {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let yaml = config(&dir, &ports, origin);
    let gateway = Gateway::start_with_env(&dir, ports, &yaml, &[("TEST_BOB_KEY", BOB_KEY)]).await;
    (dir, gateway)
}

#[tokio::test]
async fn api_keys_are_accepted_from_header_bearer_and_query_and_never_forwarded() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, gateway) = start(&origin).await;
    let client = client();
    let requests = [
        client
            .get(gateway.url("/private/a"))
            .header("x-api-key", ALICE_KEY),
        client
            .get(gateway.url("/private/a"))
            .header("x-custom-key", ALICE_KEY),
        client.get(gateway.url("/private/a")).bearer_auth(ALICE_KEY),
        client.get(gateway.url(&format!("/private/a?x=1&api_key={ALICE_KEY}&y=2"))),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let seen = origin.requests().pop().unwrap();
        assert_eq!(seen.header("x-consumer-id"), Some("alice"));
        assert_eq!(seen.header("x-consumer-groups"), Some("staff,beta"));
        let everything = format!("{} {:?}", seen.uri, seen.headers);
        assert!(
            !everything.contains(ALICE_KEY),
            "key forwarded: {everything}"
        );
    }
    assert_eq!(origin.requests().pop().unwrap().uri, "/private/a?x=1&y=2");
    // The env-held key of bob works too.
    let response = client
        .get(gateway.url("/private/b"))
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin.requests().pop().unwrap().header("x-consumer-id"),
        Some("bob")
    );
    let logged = eventually(std::time::Duration::from_secs(3), || async {
        dir.access_log().contains("\"consumer\":\"bob\"")
    })
    .await;
    assert!(logged);
    assert!(!dir.access_log().contains(ALICE_KEY) && !dir.gateway_log().contains(ALICE_KEY));
}

#[tokio::test]
async fn wrong_or_missing_keys_get_401_with_a_challenge_and_no_echo() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, gateway) = start(&origin).await;
    let client = client();
    let wrong = "wrong-key-that-must-not-echo";
    let cases = [
        (
            client
                .get(gateway.url("/private"))
                .header("x-api-key", wrong),
            "invalid_api_key",
        ),
        (
            client.get(gateway.url("/private")).bearer_auth(wrong),
            "invalid_api_key",
        ),
        (client.get(gateway.url("/private")), "missing_credentials"),
    ];
    for (request, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"gateway\""));
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.text().await.unwrap();
        assert!(!body.contains(wrong), "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], code);
    }
    assert_eq!(origin.request_count(), 0, "nothing reached the upstream");
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_auth_failures_total{reason="invalid_api_key",route="private"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_auth_failures_total{reason="missing_credentials",route="private"}"#
        ),
        1.0
    );
    let logged = eventually(std::time::Duration::from_secs(3), || async {
        dir.access_log().matches("invalid_api_key").count() == 2
    })
    .await;
    assert!(logged, "{}", dir.access_log());
    assert!(!dir.access_log().contains(wrong));
}

#[tokio::test]
async fn allowlists_refuse_other_consumers_with_403() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(&origin).await;
    let client = client();
    let status = |key: &'static str, path: &'static str| {
        let request = client.get(gateway.url(path)).header("x-api-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(ALICE_KEY, "/staff").await, 200);
    assert_eq!(status(BOB_KEY, "/staff").await, 403);
    assert_eq!(status(BOB_KEY, "/bob").await, 200);
    assert_eq!(status(ALICE_KEY, "/bob").await, 403);
}

#[tokio::test]
async fn identity_headers_from_clients_are_removed() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(&origin).await;
    let client = client();
    client
        .get(gateway.url("/public"))
        .header("x-consumer-id", "admin")
        .header("x-consumer-groups", "root")
        .send()
        .await
        .unwrap();
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-consumer-id"), None);
    assert_eq!(seen.header("x-consumer-groups"), None);
}
