//! Prometheus metrics. Per-route counters and histograms are resolved once when the config is compiled,
//! so the request path only bumps atomics (no label lookups, no locks).

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The gateway's metric families, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_ejections: IntCounterVec,
    pub open_connections: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub auth_failures: IntCounterVec,
    pub limited: IntCounterVec,
    pub malformed: IntCounterVec,
    pub ai_provider_errors: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub ai_tokens: IntCounterVec,
    pub ai_cost: prometheus::CounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "gateway_requests_total",
            "Requests answered, by route and status class",
        ),
        &["route", "status_class"],
    )
    .expect("valid metric");
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "gateway_request_duration_seconds",
            "Time from request head to last response byte",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["route"],
    )
    .expect("valid metric");
    let upstream_healthy = IntGaugeVec::new(
        Opts::new(
            "gateway_upstream_healthy",
            "1 when the backend passes its active health check",
        ),
        &["cluster", "backend"],
    )
    .expect("valid metric");
    let upstream_ejections = IntCounterVec::new(
        Opts::new(
            "gateway_upstream_ejections_total",
            "Passive ejections after consecutive failures",
        ),
        &["cluster", "backend"],
    )
    .expect("valid metric");
    let open_connections = IntGaugeVec::new(
        Opts::new(
            "gateway_open_connections",
            "Established client connections per listener",
        ),
        &["listener"],
    )
    .expect("valid metric");
    let config_reloads = IntCounterVec::new(
        Opts::new("gateway_config_reloads_total", "SIGHUP reloads by result"),
        &["result"],
    )
    .expect("valid metric");
    let access_log_dropped = IntCounter::new(
        "gateway_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind",
    )
    .expect("valid metric");
    let auth_failures = IntCounterVec::new(
        Opts::new(
            "gateway_auth_failures_total",
            "Requests refused by authentication, IP rules or allowlists",
        ),
        &["route", "reason"],
    )
    .expect("valid metric");
    let limited = IntCounterVec::new(
        Opts::new(
            "gateway_rate_limited_total",
            "Requests refused by a rate or concurrency limit",
        ),
        &["route", "policy"],
    )
    .expect("valid metric");
    let malformed = IntCounterVec::new(
        Opts::new(
            "gateway_malformed_requests_total",
            "Requests refused with 400 by the request normaliser, by reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let ai_provider_errors = IntCounterVec::new(
        Opts::new(
            "gateway_ai_provider_errors_total",
            "AI answers a provider broke after its response head, by provider and reason",
        ),
        &["provider", "reason"],
    )
    .expect("valid metric");
    let connections_closed = IntCounterVec::new(
        Opts::new(
            "gateway_client_connections_closed_total",
            "Client connections closed by the gateway's connection limits, by reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let ai_tokens = IntCounterVec::new(
        Opts::new(
            "gateway_ai_tokens_total",
            "Tokens of AI answers, as the providers report them",
        ),
        &["model", "kind"],
    )
    .expect("valid metric");
    let ai_cost = prometheus::CounterVec::new(
        Opts::new(
            "gateway_ai_cost_usd_total",
            "Cost of AI answers in USD, from the catalog's prices",
        ),
        &["model"],
    )
    .expect("valid metric");
    for collector in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(duration.clone()),
        Box::new(upstream_healthy.clone()),
        Box::new(upstream_ejections.clone()),
        Box::new(open_connections.clone()),
        Box::new(config_reloads.clone()),
        Box::new(access_log_dropped.clone()),
        Box::new(auth_failures.clone()),
        Box::new(limited.clone()),
        Box::new(malformed.clone()),
        Box::new(ai_provider_errors.clone()),
        Box::new(connections_closed.clone()),
        Box::new(ai_tokens.clone()),
        Box::new(ai_cost.clone()),
    ] {
        registry
            .register(collector)
            .expect("metric names are unique");
    }
    Metrics {
        registry,
        requests,
        duration,
        upstream_healthy,
        upstream_ejections,
        open_connections,
        config_reloads,
        access_log_dropped,
        auth_failures,
        limited,
        malformed,
        ai_provider_errors,
        connections_closed,
        ai_tokens,
        ai_cost,
    }
});

/// Create the refusal counters a route can bump, at zero, so dashboards and alerts see them from the start:
/// `reasons` of `gateway_auth_failures_total`, `policies` of `gateway_rate_limited_total`.
pub fn init_refusal_counters(route: &str, reasons: &[&str], policies: &[&str]) {
    for reason in reasons {
        METRICS.auth_failures.with_label_values(&[route, reason]);
    }
    for policy in policies {
        METRICS.limited.with_label_values(&[route, policy]);
    }
}

/// Counters whose every label value is known up front, created at zero at start (`closed_reasons`: why
/// the connection layer closes connections before a request).
pub fn init_fixed_counters(closed_reasons: &[&str]) {
    for result in ["ok", "rejected"] {
        METRICS.config_reloads.with_label_values(&[result]);
    }
    for reason in closed_reasons {
        METRICS.connections_closed.with_label_values(&[reason]);
    }
}

/// Pre-resolved metric handles of one route (or of unmatched requests).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
    duration: prometheus::Histogram,
}

impl RouteMetrics {
    pub fn for_route(route: &str) -> Self {
        let m = &*METRICS;
        RouteMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx", "client_closed"]
                .map(|class| m.requests.with_label_values(&[route, class])),
            duration: m.duration.with_label_values(&[route]),
        }
    }

    /// Handles not registered anywhere (unit tests).
    pub fn detached() -> Self {
        RouteMetrics {
            by_class: std::array::from_fn(|_| {
                IntCounter::new("detached", "detached").expect("valid metric")
            }),
            duration: prometheus::Histogram::with_opts(HistogramOpts::new("detached", "detached"))
                .expect("valid metric"),
        }
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        // A client that left (499) is not an error of the route: it has a class of its own.
        let class = if status == 499 {
            5
        } else {
            (status / 100).clamp(1, 5) as usize - 1
        };
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

/// Gauge handle for one backend's health.
pub fn upstream_health_gauge(cluster: &str, backend: &str) -> IntGauge {
    METRICS
        .upstream_healthy
        .with_label_values(&[cluster, backend])
}

pub fn upstream_ejection_counter(cluster: &str, backend: &str) -> IntCounter {
    METRICS
        .upstream_ejections
        .with_label_values(&[cluster, backend])
}

/// The text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(8192);
    let families = METRICS.registry.gather();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&families, &mut out);
    out
}

/// Pre-resolved usage counters of one AI model.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    pub prompt_tokens: IntCounter,
    pub completion_tokens: IntCounter,
    /// Prompt tokens (counted in `prompt` too) read from and written to the provider's cache.
    pub cache_read_tokens: IntCounter,
    pub cache_creation_tokens: IntCounter,
    pub cost: prometheus::Counter,
}

impl ModelMetrics {
    pub fn for_model(model: &str) -> Self {
        let m = &*METRICS;
        ModelMetrics {
            prompt_tokens: m.ai_tokens.with_label_values(&[model, "prompt"]),
            completion_tokens: m.ai_tokens.with_label_values(&[model, "completion"]),
            cache_read_tokens: m.ai_tokens.with_label_values(&[model, "cache_read"]),
            cache_creation_tokens: m.ai_tokens.with_label_values(&[model, "cache_creation"]),
            cost: m.ai_cost.with_label_values(&[model]),
        }
    }
}
