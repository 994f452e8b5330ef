//! Client connection limits over raw sockets: a request head dripped byte by byte is answered 408 and
//! closed within `client_header_timeout` (first request and keep-alive ones), an oversize head or too
//! many fields get 431, a stalled body gets 408, one address holds at most `max_connections_per_ip`
//! connections, a body the gateway did not read is not mistaken for the next head, and an HTTP/2 refusal
//! reaches curl whole.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loadtest::MockOrigin;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "connections-test-key-0123456789";

/// A gateway with the given `server` settings in front of `origin`: `/secure` needs alice's API key,
/// `/fixed` answers itself, the rest is proxied.
async fn start(origin: &MockOrigin, server: &[(&str, Value)]) -> (TestDir, Gateway) {
    start_with(origin, server, None).await
}

/// `start`, with one listener option (e.g. `("h2c", true)`).
async fn start_with(
    origin: &MockOrigin,
    server: &[(&str, Value)],
    listener: Option<(&str, Value)>,
) -> (TestDir, Gateway) {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let mut config = TestConfig::new(&dir, &ports)
        .consumer("alice", &[hash_key(KEY)])
        .cluster("origin", &[&origin.addr.to_string()])
        .route(json!({
            "name": "secure",
            "match": {"path": {"prefix": "/secure"}},
            "auth": {"methods": ["api_key"]},
            "proxy": {"cluster": "origin"},
        }))
        .route(json!({
            "name": "fixed",
            "match": {"path": {"prefix": "/fixed"}},
            "respond": {"status": 200, "body": "fixed"},
        }))
        .route(json!({"name": "open", "proxy": {"cluster": "origin"}}));
    for (key, value) in server {
        config = config.server(key, value.clone());
    }
    if let Some((key, value)) = listener {
        config = config.listener(key, value);
    }
    let yaml = config.yaml();
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    (dir, gateway)
}

/// Everything the gateway sends until it closes the connection (or `limit` passes); and whether it closed.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, bool) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

/// Send `request` and read one answer with a Content-Length body.
async fn one_answer(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer: {received:?}");
        received.extend_from_slice(&chunk[..n]);
        if complete_responses(&received) > 0 {
            return String::from_utf8_lossy(&received).into_owned();
        }
    }
}

/// The one answer in `raw`, framed exactly by its Content-Length (nothing missing, nothing after it): its
/// status and JSON error code.
fn framed_error(raw: &str) -> (u16, String) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(raw.as_bytes()) else {
        panic!("not an HTTP answer: {raw:?}");
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .expect("a Content-Length");
    assert_eq!(
        raw.len(),
        head + length,
        "body length differs from Content-Length: {raw:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&raw[head..]).unwrap();
    (
        response.code.unwrap(),
        body["error"]["code"].as_str().unwrap().to_string(),
    )
}

/// Write `bytes` one at a time, `every` apart, until they are sent or the peer closes.
async fn drip(writer: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8], every: Duration) {
    for byte in bytes {
        if writer.write_all(&[*byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Drip `head` on `stream`; the gateway's answer, whether it closed, and how long that took.
async fn drip_head(stream: TcpStream, head: &[u8]) -> (String, bool, Duration) {
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(async move {
        let outcome = read_until_closed(&mut reader, Duration::from_secs(5)).await;
        (outcome, started.elapsed())
    });
    let head = head.to_vec();
    let dripping = tokio::spawn(async move {
        drip(&mut writer, &head, Duration::from_millis(100)).await;
        // Keep the write side open until the reader is done.
        tokio::time::sleep(Duration::from_secs(6)).await;
    });
    let ((answer, closed), took) = reading.await.unwrap();
    dripping.abort();
    (answer, closed, took)
}

const SLOW_HEAD: &[u8] = b"GET /open/slow HTTP/1.1\r\nHost: gw.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

#[tokio::test]
async fn a_dripped_head_is_answered_408_and_closed_within_the_header_timeout() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(&origin, &[("client_header_timeout", json!("1s"))]).await;
    let port = gateway.ports.http;

    // The first head of a connection, one byte every 100 ms: 9 s to send whole, each byte far within
    // Pingora's per-read timeout.
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (answer, closed, took) = drip_head(stream, SLOW_HEAD).await;
    assert_eq!(
        framed_error(&answer),
        (408, "request_header_timeout".into())
    );
    assert!(closed, "the connection stayed open");
    assert!(took < Duration::from_millis(2500), "took {took:?}");

    // A keep-alive connection whose second head drips.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let first = one_answer(
        &mut stream,
        b"GET /open/a HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let (answer, closed, took) = drip_head(stream, SLOW_HEAD).await;
    assert_eq!(
        framed_error(&answer),
        (408, "request_header_timeout".into())
    );
    assert!(closed && took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        origin.requests().len(),
        1,
        "no dripped request reached the origin"
    );

    // Heads that arrive in time, in pieces, are served.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /open/b HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = one_answer(&mut stream, b"st: gw.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_client_connections_closed_total{reason="header_timeout"}"#
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_oversize_head_or_too_many_fields_get_431() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(
        &origin,
        &[
            ("max_header_size", json!("8KiB")),
            ("max_headers", json!(20)),
        ],
    )
    .await;
    let port = gateway.ports.http;

    let big = format!(
        "GET /open/x HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(big.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(
        framed_error(&answer),
        (431, "request_header_too_large".into())
    );
    assert!(closed);

    let mut many = String::from("GET /open/x HTTP/1.1\r\nHost: gw.test\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(many.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(framed_error(&answer), (431, "too_many_headers".into()));
    assert!(closed);
    assert!(origin.requests().is_empty());

    // Within the limits, the same connection serves request after request.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for _ in 0..3 {
        let ok = format!(
            "GET /open/x HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(7000)
        );
        let answer = one_answer(&mut stream, ok.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, gateway) = start(&origin, &[("client_body_timeout", json!("500ms"))]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.ports.http))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /open/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nhello",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(framed_error(&answer), (408, "request_body_timeout".into()));
    let logged = eventually(Duration::from_secs(5), || async {
        dir.access_log().contains(r#""status":408"#)
    })
    .await;
    assert!(logged, "{}", dir.access_log());
}

/// Open `count` connections, each served one request; they stay open while held.
async fn served_connections(port: u16, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let answer = one_answer(
            &mut stream,
            b"GET /open/x HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        held.push(stream);
    }
    held
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(&origin, &[("max_connections_per_ip", json!(3))]).await;
    let port = gateway.ports.http;
    let mut held = served_connections(port, 3).await;
    let mut fourth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!(framed_error(&answer), (429, "too_many_connections".into()));
    assert!(closed);

    // A closed connection gives its place back.
    drop(held.pop());
    let admitted = eventually(Duration::from_secs(5), || async {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        stream
            .write_all(b"GET /open/x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .await
            .is_ok()
            && read_until_closed(&mut stream, Duration::from_millis(500))
                .await
                .0
                .starts_with("HTTP/1.1 200 ")
    })
    .await;
    assert!(admitted);
}

#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_the_connection_cap() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(
        &origin,
        &[
            ("max_connections_per_ip", json!(1)),
            ("trusted_proxies", json!(["127.0.0.1"])),
        ],
    )
    .await;
    served_connections(gateway.ports.http, 3).await;
}

#[tokio::test]
async fn an_answer_before_the_body_closes_the_connection_so_the_body_is_never_read_as_a_head() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (_dir, gateway) = start(
        &origin,
        &[
            ("max_header_size", json!("8KiB")),
            ("client_header_timeout", json!("2s")),
        ],
    )
    .await;
    for path in ["/fixed/upload", "/secure/upload"] {
        let mut stream = TcpStream::connect(("127.0.0.1", gateway.ports.http))
            .await
            .unwrap();
        // Answered without reading the 9 KiB body, whose blank lines look like the end of a head.
        let body = "line\r\n\r\n".repeat(9 * 1024 / 8);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 ") || answer.starts_with("HTTP/1.1 401 "),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(closed, "{path}: the connection stayed open");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
}

#[tokio::test]
async fn an_http2_refusal_before_the_body_reaches_curl_whole() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, gateway) = start_with(&origin, &[], Some(("h2c", json!(true)))).await;
    // Over the 64 KiB first flow-control window: curl is still sending when the 401 is written.
    let body = dir.path("body.bin");
    std::fs::write(&body, vec![b'x'; 300 * 1024]).unwrap();
    let url = gateway.url("/secure/upload");
    for _ in 0..5 {
        let output = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--http2-prior-knowledge",
                "-X",
                "POST",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(&url)
            .output()
            .await
            .expect("curl runs (.ci/setup installs it)");
        assert!(
            output.status.success(),
            "curl failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), "401");
    }
}
