//! Rate limits, concurrency limits and IP rules over real sockets: exact burst accounting with RateLimit
//! headers, independent consumers, in-flight caps, and allow/deny lists behind a trusted proxy.

mod common;

use std::time::Duration;

use common::*;
use loadtest::MockOrigin;
use serde_json::{json, Value};

const ALICE: &str = "alice-key-for-limit-tests-000";
const BOB: &str = "bob-key-for-limit-tests-00000";

fn config(dir: &TestDir, ports: &Ports, origin: &MockOrigin) -> String {
    let with_key = |name: &str, prefix: &str, limits: Value, action: (&str, Value)| {
        let mut route = json!({
            "name": name,
            "match": {"path": {"prefix": prefix}},
            "auth": {"methods": ["api_key"]},
            "limits": limits,
        });
        route[action.0] = action.1;
        route
    };
    let origin_proxy = ("proxy", json!({"cluster": "origin"}));
    let ok = ("respond", json!({"status": 200, "body": "ok"}));
    TestConfig::new(dir, ports)
        .server("trusted_proxies", json!(["127.0.0.1/32"]))
        .listener("ip_rules", json!({"deny": ["198.51.100.0/24"]}))
        .consumer("alice", &[hash_key(ALICE)])
        .consumer("bob", &[hash_key(BOB)])
        .limit(json!({"name": "per-consumer", "rate": "60/minute", "burst": 5}))
        .limit(json!({"name": "per-ip", "rate": "2/hour", "key": "client_ip"}))
        .limit(json!({"name": "two-at-once", "max_in_flight": 2}))
        .limit(json!({"name": "route-wide", "rate": "60/minute", "burst": 3, "key": "route"}))
        .cluster("origin", &[&origin.addr.to_string()])
        .route(with_key(
            "metered",
            "/metered",
            json!(["per-consumer"]),
            origin_proxy.clone(),
        ))
        .route(with_key(
            "combined",
            "/combined",
            json!(["per-consumer", "route-wide"]),
            ok.clone(),
        ))
        .route(json!({
            "name": "by-ip",
            "match": {"path": {"prefix": "/by-ip"}},
            "limits": ["per-ip"],
            "respond": {"status": 200, "body": "ok"},
        }))
        .route(with_key(
            "slow",
            "/slow",
            json!(["two-at-once"]),
            origin_proxy,
        ))
        .route(json!({
            "name": "internal",
            "match": {"path": {"prefix": "/internal"}},
            "ip_rules": {"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]},
            "respond": {"status": 200, "body": "internal"},
        }))
        .yaml()
}

#[tokio::test]
async fn a_burst_passes_exactly_the_burst_and_the_rest_get_429_with_headers() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin)).await;
    let client = client();
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for _ in 0..8 {
        let response = client
            .get(gateway.url("/metered"))
            .header("x-api-key", ALICE)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        let headers = response.headers();
        assert_eq!(headers["ratelimit-limit"], "60");
        remaining.push(
            headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        if response.status() == 429 {
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(
                (1..=2).contains(&retry_after),
                "one token per second: {retry_after}"
            );
            assert!(
                headers["ratelimit-reset"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 5
            );
            let error: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0, 0]);
    assert_eq!(origin.request_count(), 5);
    // Bob has his own bucket.
    for _ in 0..5 {
        let response = client
            .get(gateway.url("/metered"))
            .header("x-api-key", BOB)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // One token comes back per second for alice.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client
        .get(gateway.url("/metered"))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gateway_rate_limited_total{policy="per-consumer",route="metered"}"#
        ),
        3.0
    );
}

#[tokio::test]
async fn several_policies_apply_together_and_the_tightest_is_reported() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin)).await;
    let client = client();
    let mut seen = Vec::new();
    for key in [ALICE, BOB, ALICE, BOB] {
        let response = client
            .get(gateway.url("/combined"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        let remaining = response.headers()["ratelimit-remaining"]
            .to_str()
            .unwrap()
            .to_string();
        seen.push((response.status().as_u16(), remaining));
    }
    // The route-wide bucket (burst 3) is shared by both consumers and is the tightest.
    let expected = [(200, "2"), (200, "1"), (200, "0"), (429, "0")];
    assert_eq!(seen, expected.map(|(s, r)| (s, r.to_string())));
}

#[tokio::test]
async fn client_ip_limits_use_the_address_behind_a_trusted_proxy() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin)).await;
    let client = client();
    let status = |ip: &'static str| {
        let request = client
            .get(gateway.url("/by-ip"))
            .header("x-forwarded-for", ip);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        [
            status("203.0.113.1").await,
            status("203.0.113.1").await,
            status("203.0.113.1").await
        ],
        [200, 200, 429]
    );
    assert_eq!(status("203.0.113.2").await, 200);
}

#[tokio::test]
async fn in_flight_limits_cap_concurrent_requests_per_consumer() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin)).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = gateway.url("/slow?delay_ms=600");
        tasks.push(tokio::spawn(async move {
            client()
                .get(&url)
                .header("x-api-key", ALICE)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429]);
    // Slots come back when requests finish; bob never shared alice's slots.
    let client = client();
    assert_eq!(
        client
            .get(gateway.url("/slow"))
            .header("x-api-key", ALICE)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(gateway.url("/slow"))
            .header("x-api-key", BOB)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn ip_allow_and_deny_lists_apply_through_a_trusted_proxy() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let gateway = Gateway::start(&dir, ports, &config(&dir, &ports, &origin)).await;
    let client = client();
    let status = |path: &'static str, ip: &'static str| {
        let request = client.get(gateway.url(path)).header("x-forwarded-for", ip);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let code = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            (status, code)
        }
    };
    assert_eq!(status("/internal", "10.1.2.3").await.0, 200);
    assert_eq!(
        status("/internal", "10.66.1.1").await,
        (403, Some("ip_denied".into()))
    );
    assert_eq!(
        status("/internal", "192.0.2.10").await,
        (403, Some("ip_denied".into()))
    );
    // The listener denies 198.51.100.0/24 on every route.
    assert_eq!(
        status("/by-ip", "198.51.100.7").await,
        (403, Some("ip_denied".into()))
    );
    // The proxy itself is trusted, but a spoofed chain only counts from the right: the last untrusted hop.
    assert_eq!(status("/internal", "10.1.2.3, 192.0.2.10").await.0, 403);
}
