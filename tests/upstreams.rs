//! Upstream connection behaviour over real sockets: TLS backends with SNI and CA verification, host-name
//! backends resolved in the background, per-route timeouts, h2c listeners, and the access log fields.

mod common;

use std::time::Duration;

use common::*;
use loadtest::MockOrigin;
use serde_json::json;

#[tokio::test]
async fn tls_backends_are_verified_against_the_configured_ca_with_sni() {
    // The backend is a second gateway terminating TLS with a certificate for `backend.test`.
    let (backend_dir, backend_ports, ca) =
        (TestDir::new(), Ports::new(), TestCa::new("backend ca"));
    let (cert, key) = ca.issue(&["backend.test"], backend_dir.dir.path(), "backend");
    let backend_config = format!(
        "{}\nlisteners:\n  - name: https\n    address: \"127.0.0.1:{}\"\n    tls: {{ certificates: [{{ cert: {}, key: {}, server_names: [backend.test] }}] }}\nroutes:\n  - name: echo-sni\n    match: {{ hosts: [backend.test] }}\n    respond: {{ status: 200, body: secure-backend }}\n",
        backend_dir.server_section(&backend_ports, ""),
        backend_ports.https,
        cert.display(),
        key.display()
    );
    let _backend = Gateway::start(&backend_dir, backend_ports, &backend_config).await;
    let ca_path = backend_dir.path("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let other_ca = backend_dir.path("other-ca.pem");
    std::fs::write(&other_ca, TestCa::new("other").pem()).unwrap();

    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: good
    backends: [{{ address: "127.0.0.1:{port}" }}]
    tls: {{ sni: backend.test, ca_file: {ca} }}
  - name: wrong-ca
    backends: [{{ address: "127.0.0.1:{port}" }}]
    tls: {{ sni: backend.test, ca_file: {other} }}
  - name: wrong-name
    backends: [{{ address: "127.0.0.1:{port}" }}]
    tls: {{ sni: evil.test, ca_file: {ca} }}
routes:
  - name: good
    match: {{ path: {{ prefix: /good }} }}
    proxy: {{ cluster: good }}
    request_headers: {{ set: {{ host: backend.test }} }}
  - name: wrong-ca
    match: {{ path: {{ prefix: /wrong-ca }} }}
    proxy: {{ cluster: wrong-ca }}
  - name: wrong-name
    match: {{ path: {{ prefix: /wrong-name }} }}
    proxy: {{ cluster: wrong-name }}
"#,
        port = backend_ports.https,
        ca = ca_path.display(),
        other = other_ca.display()
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    assert_eq!(
        get(&client, &gateway.url("/good")).await,
        (200, "secure-backend".into())
    );
    // Same address and SNI as `good`, whose verified connection is pooled: it must not be lent to a
    // cluster that trusts another CA.
    assert_eq!(get(&client, &gateway.url("/wrong-ca")).await.0, 502);
    assert_eq!(get(&client, &gateway.url("/wrong-name")).await.0, 502);
}

#[tokio::test]
async fn host_name_backends_are_resolved_in_the_background() {
    let origin = MockOrigin::start("named").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: named
    backends: [{{ address: "localhost:{port}" }}]
    dns_refresh: 1s
  - name: unresolvable
    backends: [{{ address: "no-such-host.invalid:80" }}]
routes:
  - name: named
    match: {{ path: {{ prefix: /named }} }}
    proxy: {{ cluster: named }}
  - name: unresolvable
    match: {{ path: {{ prefix: /unresolvable }} }}
    proxy: {{ cluster: unresolvable }}
"#,
        port = origin.addr.port()
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    let resolved = eventually(Duration::from_secs(5), || async {
        get(&client, &gateway.url("/named")).await.0 == 200
    })
    .await;
    assert!(resolved, "{}", dir.gateway_log());
    // A name that does not resolve never panics the worker: the cluster simply has no backend.
    assert_eq!(get(&client, &gateway.url("/unresolvable")).await.0, 503);
    assert_eq!(get(&client, &gateway.url("/named")).await.0, 200);
}

#[tokio::test]
async fn route_timeouts_answer_504() {
    let origin = MockOrigin::start("slow").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: slow
    backends: [{{ address: "{}" }}]
    passive_health: {{ consecutive_failures: 0 }}
routes:
  - name: read-limited
    match: {{ path: {{ prefix: /read }} }}
    proxy: {{ cluster: slow }}
    timeouts: {{ read: 300ms }}
  - name: total-limited
    match: {{ path: {{ prefix: /total }} }}
    proxy: {{ cluster: slow }}
    timeouts: {{ total: 400ms }}
"#,
        origin.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    for path in ["/read?delay_ms=2000", "/total?delay_ms=2000"] {
        let started = std::time::Instant::now();
        let response = client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 504, "{path}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "upstream_timeout");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(get(&client, &gateway.url("/read?delay_ms=50")).await.0, 200);
}

#[tokio::test]
async fn h2c_listener_speaks_http2_with_prior_knowledge() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let config = format!(
        "{}\nlisteners:\n  - {{ name: h2c, address: \"127.0.0.1:{}\", h2c: true }}\nroutes:\n  - name: hi\n    respond: {{ status: 200, body: hi }}\n",
        dir.server_section(&ports, ""),
        ports.http
    );
    let gateway = Gateway::start(&dir, ports, &config).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "hi");
    let h1 = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request_with_every_field() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        "clusters:\n  - name: web\n    backends: [{{ address: \"{}\" }}]\nroutes:\n  - name: web\n    proxy: {{ cluster: web }}\n",
        origin.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    let response = client
        .post(gateway.url("/items?x=1"))
        .header("host", "shop.test")
        .body("hello")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let logged = eventually(Duration::from_secs(3), || async {
        dir.access_log().contains(&id)
    })
    .await;
    assert!(logged);
    let line = dir
        .access_log()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap()
        .to_string();
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["method"], "POST");
    assert_eq!(record["host"], "shop.test");
    assert_eq!(record["path"], "/items?x=1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["client"], "127.0.0.1");
    assert_eq!(record["listener"], "http");
    assert_eq!(record["route"], "web");
    assert_eq!(record["upstream"], origin.addr.to_string());
    assert_eq!(record["bytes_in"], 5);
    assert!(record["bytes_out"].as_u64().unwrap() > 0);
    assert!(record["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(record["time"].as_str().unwrap().ends_with('Z'));
    assert!(record["consumer"].is_null());
}

#[tokio::test]
async fn tcp_health_checks_take_a_closed_port_out() {
    let alive = MockOrigin::start("alive").await.unwrap();
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "backends": [{"address": alive.addr.to_string()}, {"address": format!("127.0.0.1:{dead}")}],
        "health_check": {"type": "tcp", "interval": "100ms", "unhealthy_threshold": 1},
        "passive_health": {"consecutive_failures": 0},
        "retries": 0,
    });
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    let dead_gauge =
        format!("gateway_upstream_healthy{{backend=\"127.0.0.1:{dead}\",cluster=\"web\"}}");
    let alive_gauge = format!(
        "gateway_upstream_healthy{{backend=\"{}\",cluster=\"web\"}}",
        alive.addr
    );
    let marked = eventually(Duration::from_secs(3), || async {
        let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
        metric_value(&metrics, &dead_gauge) == 0.0 && metric_value(&metrics, &alive_gauge) == 1.0
    })
    .await;
    assert!(marked);
    for _ in 0..20 {
        assert_eq!(get(&client, &gateway.url("/")).await.0, 200);
    }
}

#[tokio::test]
async fn a_request_the_client_abandons_is_logged_as_499_not_an_error() {
    let origin = MockOrigin::start("slow").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({"backends": [{"address": origin.addr.to_string()}]});
    let yaml = TestConfig::proxying(&dir, &ports, cluster).yaml();
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient
        .get(gateway.url("/slow?delay_ms=1500"))
        .send()
        .await
        .is_err());
    let logged = eventually(Duration::from_secs(5), || async {
        dir.access_log().contains(r#""status":499"#)
    })
    .await;
    let log = dir.access_log();
    assert!(logged, "{log}");
    assert!(log.contains(r#""error":"client_closed_request""#), "{log}");
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_requests_total{route="web",status_class="client_closed"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_requests_total{route="web",status_class="4xx"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn a_cluster_without_backends_logs_once_per_change_not_per_request() {
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "backends": [{"address": format!("127.0.0.1:{dead}")}],
        "health_check": {"type": "tcp", "interval": "200ms", "unhealthy_threshold": 1},
    });
    let yaml = TestConfig::proxying(&dir, &ports, cluster).yaml();
    let gateway = Gateway::start(&dir, ports, &yaml).await;
    let client = client();
    let down = eventually(Duration::from_secs(5), || async {
        get(&client, &gateway.url("/x")).await.0 == 503
    })
    .await;
    assert!(down);
    for _ in 0..20 {
        assert_eq!(get(&client, &gateway.url("/x")).await.0, 503);
    }
    let log = dir.gateway_log();
    assert_eq!(log.matches("no backend is available").count(), 1, "{log}");
    // Requests that raced the first health check may have failed to connect (502, logged as errors, their
    // retry finding no backend left); none of the 503s is logged per request.
    assert!(
        !log.lines()
            .any(|line| line.contains("no available backend") && line.contains("status: 503")),
        "{log}"
    );
}
