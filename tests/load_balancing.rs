//! Load balancing over real sockets: weights, consistent hashing, retries on connect failure, active
//! health checks taking a killed backend out and bringing it back, passive ejection, and 503 when no
//! backend is left.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use loadtest::MockOrigin;
use serde_json::json;

async fn origin_of(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    Ok(response
        .headers()
        .get("x-origin")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default())
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let a = MockOrigin::start("a").await.unwrap();
    let b = MockOrigin::start("b").await.unwrap();
    let c = MockOrigin::start("c").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({"backends": [
        {"address": a.addr.to_string(), "weight": 1},
        {"address": b.addr.to_string(), "weight": 2},
        {"address": c.addr.to_string(), "weight": 5},
    ]});
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..800 {
        *counts
            .entry(origin_of(&client, &gateway.url("/")).await.unwrap())
            .or_default() += 1;
    }
    for (name, expected) in [("a", 100.0), ("b", 200.0), ("c", 500.0)] {
        let got = counts[name] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.1,
            "{name}: {got} vs {expected} ({counts:?})"
        );
    }
}

#[tokio::test]
async fn consistent_hash_keeps_each_user_on_one_backend() {
    let origins = [
        MockOrigin::start("a").await.unwrap(),
        MockOrigin::start("b").await.unwrap(),
        MockOrigin::start("c").await.unwrap(),
    ];
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "load_balancing": "consistent_hash",
        "hash_on": {"header": "x-user"},
        "backends": origins.iter().map(|o| json!({"address": o.addr.to_string()})).collect::<Vec<_>>(),
    });
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let response = client
                .get(gateway.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            seen.insert(response.headers()["x-origin"].to_str().unwrap().to_string());
        }
        assert_eq!(
            seen.len(),
            1,
            "user-{user} moved between backends: {seen:?}"
        );
        used.extend(seen);
    }
    assert!(used.len() >= 2, "users spread over backends: {used:?}");
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_backend() {
    let alive = MockOrigin::start("alive").await.unwrap();
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "backends": [{"address": format!("127.0.0.1:{dead}")}, {"address": alive.addr.to_string()}],
        "passive_health": {"consecutive_failures": 0},
        "retries": 1,
    });
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    for i in 0..20 {
        // POST too: nothing reached the dead backend, so retrying is safe for any method.
        let response = client
            .post(gateway.url("/"))
            .body(format!("payload {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(alive.request_count(), 20);
    assert!(alive
        .requests()
        .iter()
        .all(|r| r.body.starts_with(b"payload")));
}

#[tokio::test]
async fn killed_backend_is_taken_out_by_health_checks_and_comes_back() {
    let a = MockOrigin::start("a").await.unwrap();
    let mut b = MockOrigin::start("b").await.unwrap();
    let b_addr = b.addr;
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "backends": [{"address": a.addr.to_string()}, {"address": b_addr.to_string()}],
        "health_check": {
            "path": "/health", "interval": "200ms", "timeout": "200ms",
            "unhealthy_threshold": 1, "healthy_threshold": 1,
        },
        "retries": 1,
    });
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    let gauge = format!("gateway_upstream_healthy{{backend=\"{b_addr}\",cluster=\"web\"}}");
    for _ in 0..10 {
        origin_of(&client, &gateway.url("/")).await.unwrap();
    }
    assert!(b.request_count() > 0);

    b.stop();
    let killed_at = std::time::Instant::now();
    let failures = std::cell::RefCell::new(Vec::new());
    let ejected = eventually(Duration::from_secs(5), || async {
        if let Err(e) = origin_of(&client, &gateway.url("/")).await {
            failures.borrow_mut().push(e);
        }
        let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
        metric_value(&metrics, &gauge) == 0.0
    })
    .await;
    assert!(ejected, "b was not marked unhealthy");
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        killed_at.elapsed()
    );
    assert!(
        failures.borrow().is_empty(),
        "requests failed while b was dying: {failures:?}"
    );
    for _ in 0..50 {
        assert_eq!(origin_of(&client, &gateway.url("/")).await.unwrap(), "a");
    }

    b = MockOrigin::start_on(b_addr, "b", true).await.unwrap();
    let back = eventually(Duration::from_secs(5), || async {
        origin_of(&client, &gateway.url("/")).await.unwrap() == "b"
    })
    .await;
    assert!(back, "b never received traffic again");
    assert!(b.request_count() > 0);
}

#[tokio::test]
async fn unhealthy_backend_answers_its_health_check_badly_and_gets_no_traffic() {
    let a = MockOrigin::start("a").await.unwrap();
    let b = MockOrigin::start("b").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let cluster = json!({
        "backends": [{"address": a.addr.to_string()}, {"address": b.addr.to_string()}],
        "health_check": {
            "path": "/health", "expected_status": [200, 204], "interval": "100ms",
            "unhealthy_threshold": 2, "healthy_threshold": 2,
        },
    });
    let gateway = Gateway::start(
        &dir,
        ports,
        &TestConfig::proxying(&dir, &ports, cluster).yaml(),
    )
    .await;
    let client = client();
    b.set_health_status(500);
    // Wait for the checks to take b out (no fixed sleep: CI machines are slow and shared).
    let gauge = format!(
        "gateway_upstream_healthy{{backend=\"{}\",cluster=\"web\"}}",
        b.addr
    );
    let marked = eventually(Duration::from_secs(10), || async {
        metric_value(
            &get(&client, &gateway.admin_url("/metrics")).await.1,
            &gauge,
        ) == 0.0
    })
    .await;
    assert!(marked, "b was never marked unhealthy");
    let settled = b.request_count();
    for _ in 0..20 {
        assert_eq!(origin_of(&client, &gateway.url("/")).await.unwrap(), "a");
    }
    assert_eq!(b.request_count(), settled, "b got traffic while unhealthy");
    b.set_health_status(204);
    assert!(
        eventually(Duration::from_secs(3), || async {
            origin_of(&client, &gateway.url("/")).await.unwrap() == "b"
        })
        .await
    );
}

#[tokio::test]
async fn no_healthy_backend_gives_503_json_and_passive_ejection_applies() {
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: gone
    backends: [{{ address: "127.0.0.1:{dead}" }}]
    passive_health: {{ consecutive_failures: 2, cooldown: 30s }}
routes:
  - name: gone
    proxy: {{ cluster: gone }}
"#
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        let status = response.status().as_u16();
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["request_id"], request_id.as_str());
        codes.push((status, error["error"]["code"].as_str().unwrap().to_string()));
    }
    assert_eq!(codes[0], (502, "upstream_connect_failed".to_string()));
    assert_eq!(codes[1], (502, "upstream_connect_failed".to_string()));
    assert_eq!(
        codes[2],
        (503, "no_healthy_upstream".to_string()),
        "{codes:?}"
    );
    assert_eq!(codes[3], (503, "no_healthy_upstream".to_string()));
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    let ejections = format!(
        "gateway_upstream_ejections_total{{backend=\"127.0.0.1:{dead}\",cluster=\"gone\"}}"
    );
    assert_eq!(metric_value(&metrics, &ejections), 1.0);
}

#[tokio::test]
async fn an_ejection_counts_once_and_after_the_cooldown_one_probe_goes_first() {
    let alive = MockOrigin::start("alive").await.unwrap();
    let dead = free_port();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: pair
    backends: [{{ address: "127.0.0.1:{dead}" }}, {{ address: "{alive}" }}]
    passive_health: {{ consecutive_failures: 1, cooldown: 1s }}
    retries: 1
routes:
  - name: pair
    proxy: {{ cluster: pair }}
"#,
        alive = alive.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    let ejections = format!(
        "gateway_upstream_ejections_total{{backend=\"127.0.0.1:{dead}\",cluster=\"pair\"}}"
    );
    let burst = || async {
        let requests = (0..20).map(|i| {
            let client = client.clone();
            let url = gateway.url(&format!("/r{i}"));
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        });
        futures_statuses(requests).await
    };
    // Half the burst picks the dead backend before its first failure is recorded: one ejection, and every
    // request is retried on the live backend.
    assert!(burst().await.iter().all(|&s| s == 200));
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(metric_value(&metrics, &ejections), 1.0, "{metrics}");

    // After the cooldown the dead backend gets one probe, not the whole burst: one more ejection.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(burst().await.iter().all(|&s| s == 200));
    let metrics = get(&client, &gateway.admin_url("/metrics")).await.1;
    assert_eq!(metric_value(&metrics, &ejections), 2.0, "{metrics}");
    let log = dir.gateway_log();
    assert_eq!(log.matches("ejected for").count(), 2, "{log}");
}

/// Run the requests concurrently; their statuses.
async fn futures_statuses<F: std::future::Future<Output = u16> + Send + 'static>(
    requests: impl Iterator<Item = F>,
) -> Vec<u16> {
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

/// A backend that accepts connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_idempotent_request_whose_backend_times_out_goes_to_the_next_backend() {
    let (silent, _task) = black_hole().await;
    let alive = MockOrigin::start("alive").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let body = format!(
        r#"
clusters:
  - name: pair
    backends: [{{ address: "{silent}" }}, {{ address: "{alive}" }}]
    read_timeout: 300ms
    passive_health: {{ consecutive_failures: 0 }}
routes:
  - name: strict
    match: {{ path: {{ prefix: /strict }} }}
    proxy: {{ cluster: pair, retry_on_timeout: false }}
  - name: pair
    proxy: {{ cluster: pair }}
"#,
        alive = alive.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();
    // Round robin sends every other request to the silent backend first.
    for i in 0..4 {
        let (status, _) = get(&client, &gateway.url(&format!("/get{i}"))).await;
        assert_eq!(status, 200, "GET {i}");
    }
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for i in 0..4 {
            let response = client
                .post(gateway.url(&format!("/post{i}")))
                .body("x")
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    };
    assert!(
        statuses.contains(&504),
        "a POST is never retried: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let mut strict = Vec::new();
    for i in 0..4 {
        strict.push(get(&client, &gateway.url(&format!("/strict/{i}"))).await.0);
    }
    assert!(strict.contains(&504), "retry_on_timeout: false: {strict:?}");
}
