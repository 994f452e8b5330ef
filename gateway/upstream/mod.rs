//! Upstream clusters: backends, load balancing, active and passive health, DNS, Pingora peers.

pub mod cluster;
pub mod health;
pub mod peer;
pub mod url;
