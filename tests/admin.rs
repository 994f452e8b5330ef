//! The admin listener: liveness, readiness and Prometheus metrics that count the requests made.

mod common;

use common::*;
use loadtest::MockOrigin;

#[tokio::test]
async fn admin_endpoints_answer_and_metrics_count_requests() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: web
    backends: [{{ address: "{}" }}]
    health_check: {{ path: /health, interval: 1s }}
routes:
  - name: web
    match: {{ path: {{ prefix: /web }} }}
    proxy: {{ cluster: web }}
  - name: teapot
    match: {{ path: {{ exact: /tea }} }}
    respond: {{ status: 418 }}
"#,
        origin.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    assert_eq!(
        get(&client, &gateway.admin_url("/healthz")).await,
        (200, "ok\n".into())
    );
    assert_eq!(
        get(&client, &gateway.admin_url("/readyz")).await,
        (200, "ready\n".into())
    );
    assert_eq!(get(&client, &gateway.admin_url("/nope")).await.0, 404);

    for _ in 0..7 {
        assert_eq!(get(&client, &gateway.url("/web/x")).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&client, &gateway.url("/tea")).await.0, 418);
    }
    assert_eq!(get(&client, &gateway.url("/missing")).await.0, 404);

    // Hold a keep-alive connection open while scraping.
    let held = reqwest::Client::builder().no_proxy().build().unwrap();
    held.get(gateway.url("/tea")).send().await.unwrap();

    let (status, metrics) = get(&client, &gateway.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_requests_total{route="web",status_class="2xx"}"#
        ),
        7.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_requests_total{route="teapot",status_class="4xx"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_requests_total{route="_unmatched",status_class="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_request_duration_seconds_count{route="web"}"#
        ),
        7.0
    );
    let health = format!(
        "gateway_upstream_healthy{{backend=\"{}\",cluster=\"web\"}}",
        origin.addr
    );
    assert_eq!(metric_value(&metrics, &health), 1.0);
    assert!(
        metric_value(&metrics, r#"gateway_open_connections{listener="http"}"#) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn refusal_and_reload_counters_are_there_at_zero_from_the_start() {
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = r#"
auth:
  api_key: { headers: [x-api-key] }
  jwt_issuers:
    - { name: hs, algorithms: [HS256], secret: "an-hmac-secret-of-at-least-32-bytes!!" }
consumers:
  - name: alice
    api_keys: [{ sha256: "0000000000000000000000000000000000000000000000000000000000000000" }]
limits:
  - { name: per-key, rate: 10/second }
routes:
  - name: secure
    auth: { methods: [api_key, jwt] }
    limits: [per-key]
    ip_rules: { deny: [192.0.2.0/24] }
    respond: { status: 200 }
"#;
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, body)).await;
    let metrics = get(&client(), &gateway.admin_url("/metrics")).await.1;
    for line in [
        r#"gateway_config_reloads_total{result="ok"} 0"#,
        r#"gateway_config_reloads_total{result="rejected"} 0"#,
        r#"gateway_auth_failures_total{reason="missing_credentials",route="secure"} 0"#,
        r#"gateway_auth_failures_total{reason="invalid_api_key",route="secure"} 0"#,
        r#"gateway_auth_failures_total{reason="jwt_expired",route="secure"} 0"#,
        r#"gateway_auth_failures_total{reason="ip_denied",route="secure"} 0"#,
        r#"gateway_rate_limited_total{policy="per-key",route="secure"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
}
