//! Request ids over real sockets: generated (UUIDv7) for ordinary clients, kept from trusted proxies,
//! sent upstream, echoed on every response (errors included) and written to the access log.

mod common;

use common::*;
use loadtest::MockOrigin;

fn config(dir: &TestDir, ports: &Ports, origin: &MockOrigin, trusted: &str) -> String {
    let server = dir.server_section(ports, &format!("  trusted_proxies: [{trusted}]"));
    format!(
        r#"{server}
listeners:
  - {{ name: http, address: "127.0.0.1:{http}" }}
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
  - name: dead
    backends: [{{ address: "127.0.0.1:{dead}" }}]
routes:
  - name: proxied
    match: {{ path: {{ prefix: /proxied }} }}
    proxy: {{ cluster: origin }}
    max_body_size: 10
  - name: dead
    match: {{ path: {{ prefix: /dead }} }}
    proxy: {{ cluster: dead }}
"#,
        http = ports.http,
        origin = origin.addr,
        dead = free_port(),
    )
}

fn is_uuid_v7(value: &str) -> bool {
    uuid::Uuid::parse_str(value).is_ok_and(|u| u.get_version_num() == 7)
}

#[tokio::test]
async fn untrusted_clients_get_a_fresh_uuid_v7_sent_upstream_and_echoed() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin, "10.0.0.0/8")).await;
    let client = client();
    let response = client
        .get(gateway.url("/proxied"))
        .header("x-request-id", "client-chosen")
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(echoed, "client-chosen");
    assert!(is_uuid_v7(&echoed), "{echoed}");
    assert_eq!(
        origin.requests().pop().unwrap().header("x-request-id"),
        Some(echoed.as_str())
    );
    let logged = eventually(std::time::Duration::from_secs(3), || async {
        dir.access_log().contains(&echoed)
    })
    .await;
    assert!(logged, "access log: {}", dir.access_log());
}

#[tokio::test]
async fn trusted_proxies_keep_their_request_id() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin, "127.0.0.1/32")).await;
    let client = client();
    let response = client
        .get(gateway.url("/proxied"))
        .header("x-request-id", "edge-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "edge-123");
    assert_eq!(
        origin.requests().pop().unwrap().header("x-request-id"),
        Some("edge-123")
    );
    // A trusted proxy's X-Forwarded-For is extended, not replaced.
    client
        .get(gateway.url("/proxied"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let seen = origin.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    // Unprintable or overlong ids are replaced even from a trusted proxy.
    let long = "x".repeat(200);
    let response = client
        .get(gateway.url("/proxied"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    assert!(is_uuid_v7(
        response.headers()["x-request-id"].to_str().unwrap()
    ));
}

#[tokio::test]
async fn error_responses_carry_the_request_id() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = config(&dir, &ports, &origin, "10.0.0.0/8").replace(
        "routes:\n",
        "routes:\n  - name: only-get\n    match: { path: { exact: /only }, methods: [GET] }\n    respond: { status: 204 }\n",
    );
    let gateway = Gateway::start(&dir, ports, &body).await;
    let client = client();
    let cases = [
        (client.get(gateway.url("/nowhere")), 404, "route_not_found"),
        (client.post(gateway.url("/only")), 404, "route_not_found"),
        (
            client
                .post(gateway.url("/proxied"))
                .body("more than ten bytes"),
            413,
            "body_too_large",
        ),
        (
            client.get(gateway.url("/dead")),
            502,
            "upstream_connect_failed",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(is_uuid_v7(&id));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["request_id"], id.as_str());
    }
}
