//! A Pingora-based edge gateway: TLS termination, routing, load-balanced upstream clusters, configured by
//! one strict YAML file.

#![forbid(unsafe_code)]

pub mod ai;
pub mod config;
pub mod edge;
pub mod error;
pub mod lifecycle;
pub mod observe;
pub mod proxy;
pub mod respond;
pub mod runtime;
pub mod server;
pub mod upstream;
