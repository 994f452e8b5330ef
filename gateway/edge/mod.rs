//! The edge layer: TLS certificates, route matching, client identity (trusted proxies, request id).

pub mod client;
pub mod routes;
pub mod tls;
