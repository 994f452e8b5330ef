//! The one cluster compiler: a `clusters[]` entry and an AI provider's deployments both become an
//! `upstream::Cluster` here, with the same checks (backend addresses and weights, health check and
//! thresholds, passive health) and their defaults side by side in `Defaults`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::context::Compiler;
use super::schema::{HealthCheckKind, HealthCheckSection, PassiveHealthSection};
use super::units::HumanDuration;
use crate::observe::metrics::{upstream_ejection_counter, upstream_health_gauge};
use crate::upstream::cluster::{
    Backend, Cluster, ClusterSettings, ClusterTimeouts, HashOn, HealthCheckSpec, HttpCheck,
    PassiveHealth, UpstreamTls,
};

/// Largest backend weight (bounds the round-robin table and the hash ring).
const MAX_WEIGHT: u32 = 1000;

/// What a cluster gets for each setting its section leaves out.
pub(super) struct Defaults {
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub cooldown: Duration,
    pub retries: u32,
    pub connect: Duration,
    pub read: Duration,
    pub idle: Duration,
    pub dns_refresh: Duration,
}

/// `clusters[]`: NGINX-like proxying to services nearby.
pub(super) const CLUSTER: Defaults = Defaults {
    health_interval: Duration::from_secs(5),
    health_timeout: Duration::from_secs(1),
    cooldown: Duration::from_secs(10),
    retries: 1,
    connect: Duration::from_secs(3),
    read: Duration::from_secs(60),
    idle: Duration::from_secs(60),
    dns_refresh: Duration::from_secs(30),
};

/// `ai.providers[]`: remote APIs, slower to answer and to check; a failed attempt falls back to the next
/// candidate instead of being retried in the cluster.
pub(super) const PROVIDER: Defaults = Defaults {
    health_interval: Duration::from_secs(15),
    health_timeout: Duration::from_secs(2),
    cooldown: Duration::from_secs(30),
    retries: 0,
    connect: Duration::from_secs(5),
    read: Duration::from_secs(60),
    idle: Duration::from_secs(30),
    dns_refresh: Duration::from_secs(60),
};

/// One backend as written: `address` (`host:port`), its weight, and its YAML path.
pub(super) struct BackendInput {
    pub address: String,
    pub weight: u32,
    pub path: String,
}

/// Everything a cluster is built from.
pub(super) struct ClusterInput<'a> {
    /// The cluster's name, also its metric label (`ai:NAME` for a provider).
    pub name: &'a str,
    /// The YAML path of the section, for errors.
    pub path: &'a str,
    pub backends: Vec<BackendInput>,
    pub consistent_hash: bool,
    pub hash_on: Option<HashOn>,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<&'a HealthCheckSection>,
    /// Prepended to the health check path (a provider's API prefix, e.g. `/v1`).
    pub health_path_prefix: &'a str,
    pub passive: &'a PassiveHealthSection,
    pub retries: Option<u32>,
    pub connect: Option<HumanDuration>,
    pub read: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
    pub dns_refresh: Option<HumanDuration>,
    pub defaults: &'a Defaults,
}

fn or(value: Option<HumanDuration>, default: Duration) -> Duration {
    value.map_or(default, |d| d.0)
}

/// Build a cluster, or report every problem with its YAML path and return `None`. Backends that were in
/// the previous runtime's cluster of the same name keep their live state (resolved addresses, health).
pub(super) fn compile_cluster(c: &mut Compiler, input: ClusterInput) -> Option<Cluster> {
    let errors_before = c.errors.len();
    let path = input.path;
    if input.backends.is_empty() {
        c.error(
            format!("{path}.backends"),
            "a cluster needs at least one backend",
        );
    }
    if input.backends.len() > usize::from(u16::MAX) {
        c.error(
            format!("{path}.backends"),
            "at most 65535 backends per cluster",
        );
    }
    let previous = c
        .previous
        .and_then(|rt| rt.clusters.iter().find(|old| *old.name == *input.name))
        .cloned();
    let mut backends = Vec::with_capacity(input.backends.len());
    for backend in &input.backends {
        if backend.weight == 0 || backend.weight > MAX_WEIGHT {
            c.error(
                format!("{}.weight", backend.path),
                format!(
                    "must be between 1 and {MAX_WEIGHT} (remove the backend to send it nothing)"
                ),
            );
        }
        let Some((host, port)) = split_host_port(&backend.address) else {
            c.error(
                format!("{}.address", backend.path),
                format!("`{}` is not `host:port` or `ip:port`", backend.address),
            );
            continue;
        };
        let built = Backend::new(
            &backend.address,
            host,
            port,
            backend.weight,
            upstream_health_gauge(input.name, &backend.address),
            upstream_ejection_counter(input.name, &backend.address),
        );
        if let Some(old) = previous
            .as_ref()
            .and_then(|p| p.backends.iter().find(|b| *b.address == *backend.address))
        {
            built.inherit(old);
        }
        backends.push(built);
    }
    let health_check = input.health_check.map(|hc| {
        compile_health_check(
            c,
            hc,
            &format!("{path}.health_check"),
            input.health_path_prefix,
            input.defaults,
        )
    });
    if c.errors.len() > errors_before {
        return None;
    }
    let defaults = input.defaults;
    let settings = ClusterSettings {
        hash_on: input.hash_on,
        tls: input.tls,
        health_check,
        passive: PassiveHealth {
            consecutive_failures: input.passive.consecutive_failures,
            cooldown: or(input.passive.cooldown, defaults.cooldown),
        },
        retries: input.retries.unwrap_or(defaults.retries),
        timeouts: ClusterTimeouts {
            connect: or(input.connect, defaults.connect),
            read: or(input.read, defaults.read),
            idle: or(input.idle, defaults.idle),
        },
        dns_refresh: or(input.dns_refresh, defaults.dns_refresh),
    };
    Some(Cluster::new(
        Arc::from(input.name),
        backends,
        input.consistent_hash,
        settings,
    ))
}

fn compile_health_check(
    c: &mut Compiler,
    hc: &HealthCheckSection,
    hpath: &str,
    path_prefix: &str,
    defaults: &Defaults,
) -> HealthCheckSpec {
    if !hc.path.starts_with('/') {
        c.error(format!("{hpath}.path"), "must start with `/`");
    }
    if hc.expected_status.is_empty() || hc.expected_status.iter().any(|s| !(100..=599).contains(s))
    {
        c.error(
            format!("{hpath}.expected_status"),
            "list status codes between 100 and 599",
        );
    }
    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
        c.error(
            hpath,
            "healthy_threshold and unhealthy_threshold must be at least 1",
        );
    }
    let interval = or(hc.interval, defaults.health_interval);
    if interval.is_zero() {
        c.error(format!("{hpath}.interval"), "must be more than 0");
    }
    HealthCheckSpec {
        http: (hc.kind == HealthCheckKind::Http).then(|| HttpCheck {
            path: format!("{path_prefix}{}", hc.path),
            host: hc.host.clone(),
            expected_status: hc.expected_status.clone(),
        }),
        interval,
        timeout: or(hc.timeout, defaults.health_timeout),
        healthy_threshold: hc.healthy_threshold,
        unhealthy_threshold: hc.unhealthy_threshold,
    }
}

/// `host:port`, `1.2.3.4:80` or `[::1]:80`.
pub(super) fn split_host_port(address: &str) -> Option<(String, u16)> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    super::units::check_host_pattern(host)
        .ok()
        .filter(|_| !host.starts_with('*'))?;
    Some((host.to_string(), port))
}
