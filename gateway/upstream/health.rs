//! Upkeep of a cluster: resolve backend host names and run active health checks (HTTP status or TCP
//! connect) with healthy/unhealthy thresholds. `lifecycle` runs it for every cluster of the current config
//! generation and restarts it on reload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend as LbBackend;
use tokio::task::JoinSet;

use super::cluster::{Backend, Cluster, HealthCheckSpec};
use super::peer::{http_peer, PeerTimeouts};

/// Keep one cluster's backends current for as long as the config generation lives: resolve names every
/// `dns_refresh`, run the active health check every `interval`. Returns at once when there is nothing to do.
pub async fn upkeep_cluster(cluster: Arc<Cluster>) {
    let mut streaks = vec![Streak::default(); cluster.backends.len()];
    let needs_dns = cluster.backends.iter().any(Backend::needs_dns);
    let mut next_dns = Instant::now();
    loop {
        if needs_dns && Instant::now() >= next_dns {
            resolve_backends(&cluster).await;
            next_dns = Instant::now() + cluster.settings.dns_refresh;
        }
        let wait = match &cluster.settings.health_check {
            Some(spec) => {
                check_backends(&cluster, spec, &mut streaks).await;
                spec.interval
            }
            None if needs_dns => cluster.settings.dns_refresh,
            None => return,
        };
        let until_dns = if needs_dns {
            next_dns.saturating_duration_since(Instant::now())
        } else {
            wait
        };
        tokio::time::sleep(wait.min(until_dns)).await;
    }
}

async fn resolve_backends(cluster: &Cluster) {
    for backend in cluster.backends.iter().filter(|b| b.needs_dns()) {
        let lookup = tokio::net::lookup_host((backend.host.as_str(), backend.port));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(addr) => {
                    if backend.resolved() != Some(addr) {
                        log::info!(
                            "cluster {}: {} resolved to {addr}",
                            cluster.name,
                            backend.address
                        );
                    }
                    backend.set_resolved(addr);
                }
                None => log::warn!(
                    "cluster {}: {} resolved to no address",
                    cluster.name,
                    backend.address
                ),
            },
            Ok(Err(e)) => log::warn!(
                "cluster {}: cannot resolve {}: {e}",
                cluster.name,
                backend.address
            ),
            Err(_) => log::warn!(
                "cluster {}: resolving {} timed out",
                cluster.name,
                backend.address
            ),
        }
    }
}

/// Consecutive results of one backend's checks.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

async fn check_backends(cluster: &Arc<Cluster>, spec: &HealthCheckSpec, streaks: &mut [Streak]) {
    let mut checks = JoinSet::new();
    for (index, backend) in cluster.backends.iter().enumerate() {
        let Some(addr) = backend.resolved() else {
            continue;
        };
        let checker = build_checker(cluster, backend, addr, spec);
        let timeout = spec.timeout * 2 + Duration::from_millis(100);
        checks.spawn(async move {
            let target = LbBackend::new(&addr.to_string()).expect("a socket address parses");
            let passed = matches!(
                tokio::time::timeout(timeout, checker.check(&target)).await,
                Ok(Ok(()))
            );
            (index, passed)
        });
    }
    while let Some(Ok((index, passed))) = checks.join_next().await {
        let streak = &mut streaks[index];
        let backend = &cluster.backends[index];
        if passed {
            streak.passes += 1;
            streak.failures = 0;
            if !backend.is_healthy()
                && streak.passes >= spec.healthy_threshold
                && backend.set_healthy(true)
            {
                log::info!(
                    "cluster {}: backend {} is healthy again",
                    cluster.name,
                    backend.address
                );
            }
        } else {
            streak.failures += 1;
            streak.passes = 0;
            if backend.is_healthy()
                && streak.failures >= spec.unhealthy_threshold
                && backend.set_healthy(false)
            {
                log::warn!(
                    "cluster {}: backend {} failed {} health checks in a row, marked unhealthy",
                    cluster.name,
                    backend.address,
                    streak.failures
                );
            }
        }
    }
}

fn build_checker(
    cluster: &Cluster,
    backend: &Backend,
    addr: std::net::SocketAddr,
    spec: &HealthCheckSpec,
) -> Box<dyn HealthCheck + Send + Sync> {
    let timeouts = PeerTimeouts {
        connect: spec.timeout,
        read: spec.timeout,
        idle: Duration::from_secs(1),
    };
    let peer = http_peer(cluster, backend, addr, timeouts);
    match &spec.http {
        Some(http_spec) => {
            let host = http_spec
                .host
                .clone()
                .unwrap_or_else(|| backend.address.to_string());
            let mut check = HttpHealthCheck::new(&host, cluster.settings.tls.is_some());
            check.peer_template = peer;
            if let Ok(mut req) =
                pingora::http::RequestHeader::build("GET", http_spec.path.as_bytes(), None)
            {
                let _ = req.insert_header("host", &host);
                let _ = req.insert_header("user-agent", "gateway-health-check");
                check.req = req;
            }
            let expected = http_spec.expected_status.clone();
            check.validator = Some(Box::new(move |response: &pingora::http::ResponseHeader| {
                let status = response.status.as_u16();
                if expected.contains(&status) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unexpected health check status", status),
                        "health check",
                    )
                }
            }));
            Box::new(check)
        }
        None => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(spec.timeout);
            check.peer_template.options.total_connection_timeout = Some(spec.timeout);
            check.peer_template.sni = peer.sni.clone();
            check
        }
    }
}
