//! Observability: Prometheus metrics, the JSON access log and the admin endpoints.

pub mod access_log;
pub mod admin;
pub mod logger;
pub mod metrics;
