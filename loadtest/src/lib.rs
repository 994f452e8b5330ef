//! Mock upstreams for the gateway's integration tests and benchmarks.

pub mod llm;
pub mod origin;
pub mod raw_origin;
mod server;
mod wires;

pub use wires::{GEMINI_SIGNATURE, MOCK_SIGNATURE};

pub use llm::{Behavior, MockLlm, RecordedCall, Speaks};
pub use origin::{MockOrigin, RecordedRequest};
pub use raw_origin::{RawOrigin, RawRequest};
pub use server::listen_args;
