//! Routing over real sockets: precedence, redirects, fixed responses, header rewrites and forwarding
//! headers as seen by the origin, path rewrites, and the body size limit.

mod common;

use common::*;
use loadtest::MockOrigin;

fn routing_config(dir: &TestDir, ports: &Ports, origin: &MockOrigin) -> String {
    let body = format!(
        r#"
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: catch-all
    respond: {{ status: 200, body: catch-all }}
  - name: any-api
    match: {{ path: {{ prefix: /api }} }}
    respond: {{ status: 200, body: any-api }}
  - name: wildcard
    match: {{ hosts: ["*.example.com"] }}
    respond: {{ status: 200, body: wildcard }}
  - name: host-root
    match: {{ hosts: [api.example.com], path: {{ prefix: / }} }}
    respond: {{ status: 200, body: host-root }}
  - name: host-v1
    match: {{ hosts: [api.example.com], path: {{ prefix: /v1 }} }}
    respond: {{ status: 200, body: host-v1 }}
  - name: host-exact
    match: {{ hosts: [api.example.com], path: {{ exact: /v1/users }} }}
    respond: {{ status: 200, body: host-exact }}
  - name: host-regex
    match: {{ hosts: [api.example.com], path: {{ regex: '^/items/[0-9]+$' }} }}
    respond: {{ status: 200, body: host-regex }}
  - name: host-v1-post
    match: {{ hosts: [api.example.com], path: {{ prefix: /v1 }}, methods: [POST] }}
    respond: {{ status: 201, body: host-v1-post }}
  - name: host-v1-canary
    match:
      hosts: [api.example.com]
      path: {{ prefix: /v1 }}
      methods: [POST]
      headers: [{{ name: x-canary, value: "yes" }}]
    respond: {{ status: 201, body: host-v1-canary }}
  - name: moved
    match: {{ hosts: [old.test], path: {{ prefix: / }} }}
    redirect: {{ to: "https://new.test{{uri}}", status: 301 }}
  - name: proxied
    match: {{ hosts: [proxy.test], path: {{ prefix: /svc }} }}
    proxy: {{ cluster: origin, strip_prefix: true }}
    max_body_size: 1KiB
    request_headers:
      set: {{ x-added: "1", user-agent: gateway-test }}
      add: {{ x-multi: two }}
      remove: [x-secret]
    response_headers:
      set: {{ x-frame-options: DENY }}
      remove: [x-origin]
  - name: rewritten
    match: {{ hosts: [proxy.test], path: {{ regex: '^/u/([0-9]+)$' }} }}
    proxy: {{ cluster: origin, rewrite: '/users/$1' }}
"#,
        origin = origin.addr
    );
    dir.plain_config(ports, &body)
}

async fn send(
    client: &reqwest::Client,
    gateway: &Gateway,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = client
        .request(method.parse().unwrap(), gateway.url(path))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn routes_are_matched_most_specific_first() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &routing_config(&dir, &ports, &origin)).await;
    let client = client();
    // (method, host, path, extra headers, expected status, expected route body)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
    );
    let table: &[Case] = &[
        (
            "GET",
            "api.example.com",
            "/v1/users",
            &[],
            200,
            "host-exact",
        ),
        ("GET", "api.example.com", "/v1/other", &[], 200, "host-v1"),
        (
            "GET",
            "API.Example.com:80",
            "/v1/other",
            &[],
            200,
            "host-v1",
        ),
        (
            "POST",
            "api.example.com",
            "/v1/other",
            &[],
            201,
            "host-v1-post",
        ),
        (
            "POST",
            "api.example.com",
            "/v1/other",
            &[("x-canary", "yes")],
            201,
            "host-v1-canary",
        ),
        (
            "POST",
            "api.example.com",
            "/v1/other",
            &[("x-canary", "no")],
            201,
            "host-v1-post",
        ),
        ("GET", "api.example.com", "/items/42", &[], 200, "host-root"),
        ("GET", "api.example.com", "/v1x", &[], 200, "host-root"),
        ("GET", "www.example.com", "/api/x", &[], 200, "wildcard"),
        ("GET", "deep.www.example.com", "/", &[], 200, "wildcard"),
        ("GET", "example.com", "/api/x", &[], 200, "any-api"),
        ("GET", "example.com", "/apiary", &[], 200, "catch-all"),
        ("GET", "unknown.org", "/", &[], 200, "catch-all"),
    ];
    for (method, host, path, headers, status, body) in table {
        let got = send(&client, &gateway, method, host, path, headers).await;
        assert_eq!(
            got,
            (*status, body.to_string()),
            "{method} {host}{path} {headers:?}"
        );
    }
}

#[tokio::test]
async fn regex_route_wins_when_no_prefix_route_covers_the_path() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = r#"
routes:
  - name: any
    respond: { status: 200, body: any }
  - name: items
    match: { path: { regex: '^/items/[0-9]+$' } }
    respond: { status: 200, body: items }
"#;
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, body)).await;
    let client = client();
    assert_eq!(
        get(&client, &gateway.url("/items/7")).await,
        (200, "items".into())
    );
    assert_eq!(
        get(&client, &gateway.url("/items/x")).await,
        (200, "any".into())
    );
}

#[tokio::test]
async fn redirect_and_fixed_responses_are_answered_by_the_gateway() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &routing_config(&dir, &ports, &origin)).await;
    let client = no_redirect_client();
    let response = client
        .get(gateway.url("/a/b?c=d"))
        .header("host", "old.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "https://new.test/a/b?c=d");
    assert!(response.headers().contains_key("x-request-id"));
    let response = client
        .get(gateway.url("/anything"))
        .header("host", "x.org")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "catch-all");
    assert_eq!(
        origin.request_count(),
        0,
        "fixed answers never reach an upstream"
    );
}

#[tokio::test]
async fn origin_sees_rewritten_headers_path_and_forwarding_headers() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &routing_config(&dir, &ports, &origin)).await;
    let client = client();
    let response = client
        .get(gateway.url("/svc/users?page=2"))
        .header("host", "proxy.test")
        .header("x-secret", "hunter2")
        .header("x-multi", "one")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert!(
        !response.headers().contains_key("x-origin"),
        "response header removed"
    );
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.uri, "/users?page=2", "prefix stripped, query kept");
    assert_eq!(seen.header("x-added"), Some("1"));
    assert_eq!(seen.header("user-agent"), Some("gateway-test"));
    assert_eq!(seen.header("x-secret"), None);
    let multi: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["one", "two"]);
    // The test client is not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("proxy.test"));
    assert_eq!(seen.header("host"), Some("proxy.test"));
    assert!(seen.header("x-request-id").is_some());

    client
        .get(gateway.url("/u/42"))
        .header("host", "proxy.test")
        .send()
        .await
        .unwrap();
    assert_eq!(origin.requests().pop().unwrap().uri, "/users/42");
}

#[tokio::test]
async fn oversize_bodies_get_413_with_and_without_content_length() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &routing_config(&dir, &ports, &origin)).await;
    let client = client();
    let url = gateway.url("/svc/upload");
    let ok = client
        .post(&url)
        .header("host", "proxy.test")
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = client
        .post(&url)
        .header("host", "proxy.test")
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(big.headers().contains_key("x-request-id"));
    let error: serde_json::Value = big.json().await.unwrap();
    assert_eq!(error["error"]["code"], "body_too_large");
    // A chunked body has no Content-Length: the limit is enforced while it flows.
    let reply = raw_chunked_post(ports.http, "proxy.test", "/svc/upload", 4, 512).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body_too_large"), "{reply}");
    assert_eq!(
        origin
            .requests()
            .iter()
            .filter(|r| r.body.len() > 1024)
            .count(),
        0
    );
}

/// POST a chunked body over a raw socket and return everything the gateway answered.
async fn raw_chunked_post(
    port: u16,
    host: &str,
    path: &str,
    chunks: usize,
    chunk_size: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        let chunk = format!("{chunk_size:x}\r\n{}\r\n", "b".repeat(chunk_size));
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut reply),
    )
    .await;
    String::from_utf8_lossy(&reply).into_owned()
}
