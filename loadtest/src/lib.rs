//! Mock upstreams for the gateway's integration tests and benchmarks.

pub mod origin;

pub use origin::{MockOrigin, RecordedRequest};
