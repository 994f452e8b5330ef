//! The request normaliser over raw sockets: route authentication cannot be walked around through the
//! path (dot-segments, encoded dots and letters, doubled slashes, NUL) or an absolute-form target;
//! HTTP/1.1 without Host is refused; and a request-smuggling corpus (tests/data/desync-corpus.txt) is
//! refused or reaches a strict origin as exactly one well-formed request per answer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loadtest::{MockOrigin, RawOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "normalize-test-key-0123456789";

/// Send `bytes` on a new connection and return everything the gateway answered: reading stops at EOF,
/// or once the answers read so far are complete and nothing more came for a moment.
async fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 16384];
    loop {
        let wait = if complete_responses(&received) > 0 {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(3).saturating_sub(started.elapsed())
        };
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// The status of the first response in `raw`, 0 when there is none.
fn first_status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Decode the corpus escapes `\r \n \t \\ \xNN`.
fn unescape(line: &str) -> Vec<u8> {
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            other => panic!("unknown escape \\{}", other as char),
        }
        i += 2;
    }
    out
}

struct Case {
    name: String,
    refuse: bool,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("data/desync-corpus.txt");
    let mut cases = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(header) = line.strip_prefix("== ") else {
            continue;
        };
        let (expect, name) = header.split_once(' ').unwrap();
        assert!(matches!(expect, "refuse" | "safe"), "{header}");
        let bytes = unescape(lines.next().expect("a request line follows"));
        cases.push(Case {
            name: name.to_string(),
            refuse: expect == "refuse",
            bytes,
        });
    }
    cases
}

#[tokio::test]
async fn smuggling_corpus_is_refused_or_reaches_the_origin_as_one_well_formed_request_per_answer() {
    let origin = RawOrigin::start().await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        "clusters:\n  - name: strict\n    backends: [{{ address: \"{}\" }}]\nroutes:\n  - name: all\n    proxy: {{ cluster: strict }}\n",
        origin.addr
    );
    let _gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let cases = corpus();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut refused = 0;
    for case in &cases {
        let before = origin.requests().len();
        let answer = exchange(ports.http, &case.bytes).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = &origin.requests()[before..];
        let from_origin = answer.to_ascii_lowercase().matches("x-origin: raw").count();
        let status = first_status(&answer);
        if seen.is_empty() && (400..500).contains(&status) {
            refused += 1;
        }
        for request in seen.iter().filter(|r| !r.violations.is_empty()) {
            failures.push(format!(
                "{}: the origin read a malformed request {:?}: {:?}",
                case.name, request.head, request.violations
            ));
        }
        if seen.len() != from_origin {
            failures.push(format!(
                "{}: the origin read {} requests, the client got {} answers from it: {:?}",
                case.name,
                seen.len(),
                from_origin,
                seen.iter().map(|r| &r.head).collect::<Vec<_>>()
            ));
        }
        if case.refuse && !(seen.is_empty() && (400..500).contains(&status)) {
            failures.push(format!(
                "{}: expected a 4xx refusal with nothing forwarded, got status {status} and {} forwarded",
                case.name,
                seen.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The corpus is mostly hostile: most of it must be refused outright.
    assert!(refused > cases.len() / 2, "only {refused} refused");
}

fn auth_config(dir: &TestDir, ports: &Ports, origin: &MockOrigin, normalize: &str) -> String {
    let body = format!(
        r#"
auth:
  api_key: {{ headers: [x-api-key] }}
consumers:
  - name: alice
    api_keys: [{{ sha256: "{hash}" }}]
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: internal
    match: {{ hosts: [internal.test] }}
    auth: {{ methods: [api_key] }}
    proxy: {{ cluster: origin }}
  - name: secure
    match: {{ path: {{ prefix: /secure }} }}
    auth: {{ methods: [api_key] }}
    proxy: {{ cluster: origin }}
  - name: legacy
    match: {{ path: {{ prefix: /legacy }} }}
    proxy: {{ cluster: origin, forward_raw_path: true }}
  - name: public
    proxy: {{ cluster: origin }}
"#,
        hash = hash_key(KEY),
        origin = origin.addr
    );
    dir.plain_config_with(ports, normalize, "", &body)
}

const WALKAROUNDS: &[&[u8]] = &[
    b"/public/../secure/x",
    b"/./secure/x",
    b"/public/%2e%2e/secure/x",
    b"/public/%2E%2E/secure/x",
    b"/public/.%2E/secure/x",
    b"/%73ecure/x",
    b"/%73%65%63%75%72%65/x",
    b"//secure/x",
    b"/public//../secure/x",
    b"\x00/secure/x",
    b"/public%2f..%2fsecure/x",
    b"/public\\..\\secure/x",
];

#[tokio::test]
async fn route_auth_cannot_be_walked_around_through_the_path() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, "")).await;
    for path in WALKAROUNDS {
        let shown = String::from_utf8_lossy(path).escape_debug().to_string();
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(path);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: gw.test\r\n\r\n");
        let before = origin.requests().len();
        let answer = exchange(ports.http, &request).await;
        let status = first_status(&answer);
        assert!(
            status == 401 || status == 400,
            "{shown}: status {status}: {answer}"
        );
        assert_eq!(
            origin.requests().len(),
            before,
            "{shown} reached the origin"
        );

        // With the key, what is accepted reaches the backend as the one path the route matched.
        let mut with_key = b"GET ".to_vec();
        with_key.extend_from_slice(path);
        with_key.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: gw.test\r\nx-api-key: {KEY}\r\n\r\n").as_bytes(),
        );
        let answer = exchange(ports.http, &with_key).await;
        if first_status(&answer) == 200 {
            let seen = origin.requests().pop().unwrap();
            assert_eq!(seen.uri, "/secure/x", "{shown}");
        } else {
            assert_eq!(first_status(&answer), 400, "{shown}: {answer}");
        }
    }
    let logged = eventually(Duration::from_secs(5), || async {
        dir.access_log()
            .matches(r#""error":"escaped_slash_in_path""#)
            .count()
            >= 4
    })
    .await;
    let log = dir.access_log();
    assert!(logged, "{log}");
    assert!(log.contains(r#""path":"/secure/x""#), "{log}");
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    assert!(
        metric_value(
            &metrics,
            r#"gateway_malformed_requests_total{reason="escaped_slash_in_path"}"#
        ) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_forward_raw_path_route_sends_the_path_as_it_came() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let _gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, "")).await;
    let answer = exchange(
        ports.http,
        b"GET /legacy/a/../%62?q=%2e HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    assert_eq!(first_status(&answer), 200, "{answer}");
    assert_eq!(
        origin.requests().pop().unwrap().uri,
        "/legacy/a/../%62?q=%2e"
    );
    // The default forwards what it matched.
    let answer = exchange(
        ports.http,
        b"GET /other/a/../%62?q=%2e HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    assert_eq!(first_status(&answer), 200, "{answer}");
    assert_eq!(origin.requests().pop().unwrap().uri, "/other/b?q=%2e");
}

#[tokio::test]
async fn absolute_form_targets_route_by_their_authority() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let _gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, "")).await;

    // Without Host, the target's authority is the host: the keyed route answers, not the catch-all.
    let answer = exchange(ports.http, b"GET http://internal.test/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(first_status(&answer), 401, "{answer}");
    assert!(origin.requests().is_empty());

    let keyed = format!("GET http://internal.test/x/../y?z=1 HTTP/1.1\r\nx-api-key: {KEY}\r\n\r\n");
    let answer = exchange(ports.http, keyed.as_bytes()).await;
    assert_eq!(first_status(&answer), 200, "{answer}");
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.uri, "/y?z=1");
    assert_eq!(seen.header("host"), Some("internal.test"));

    // A Host that disagrees with the target is refused.
    let answer = exchange(
        ports.http,
        b"GET http://internal.test/x HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    assert_eq!(first_status(&answer), 400, "{answer}");
}

#[tokio::test]
async fn http11_without_host_is_refused_and_http10_is_not() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let _gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, "")).await;
    let answer = exchange(ports.http, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert_eq!(first_status(&answer), 400, "{answer}");
    assert!(answer.contains(r#""code":"missing_host""#), "{answer}");
    assert!(answer.contains("x-request-id"), "{answer}");
    assert!(origin.requests().is_empty());
    let answer = exchange(ports.http, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(first_status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn underscored_header_names_are_dropped_by_default_and_refused_when_configured() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let request =
        b"GET /x HTTP/1.1\r\nHost: gw.test\r\nContent_Length: 9\r\nX_Thing: 1\r\nX-Kept: 2\r\n\r\n";
    {
        let (dir, ports) = (TestDir::new(), Ports::new());
        let _gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, "")).await;
        let answer = exchange(ports.http, request).await;
        assert_eq!(first_status(&answer), 200, "{answer}");
        let seen = origin.requests().pop().unwrap();
        assert_eq!(seen.header("x-kept"), Some("2"));
        assert!(
            seen.headers.iter().all(|(name, _)| !name.contains('_')),
            "{:?}",
            seen.headers
        );
    }
    let (dir, ports) = (TestDir::new(), Ports::new());
    let strict = "  normalize: { underscores_in_headers: reject, merge_slashes: false }";
    let _gateway = Gateway::start(&dir, ports, &auth_config(&dir, &ports, &origin, strict)).await;
    let before = origin.requests().len();
    let answer = exchange(ports.http, request).await;
    assert_eq!(first_status(&answer), 400, "{answer}");
    assert!(answer.contains("underscore_in_header_name"), "{answer}");
    assert_eq!(origin.requests().len(), before);
    // Slashes are kept as they are when merging is off.
    let answer = exchange(ports.http, b"GET //x//y HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    assert_eq!(first_status(&answer), 200, "{answer}");
    assert_eq!(origin.requests().pop().unwrap().uri, "//x//y");
}
