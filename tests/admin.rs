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
