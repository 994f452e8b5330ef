//! The edge layer: TLS certificates and client certificates, route matching, client identity (trusted
//! proxies, request id), authentication (API keys, JWT, mTLS), limits and IP rules.

pub mod auth;
pub mod client;
pub mod connection;
pub mod consumers;
pub mod forwarding;
pub mod headers;
pub mod ip_rules;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod mtls;
pub mod normalize;
pub mod routes;
pub mod tls;
