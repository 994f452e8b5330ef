//! The AI path: the catalog (providers, models, profiles), the routing decision, OpenAI wire-format pieces,
//! the mock provider and the relay that re-originates requests with fallback and streams answers back.

pub mod answer;
pub mod catalog;
pub mod guard;
pub mod heuristics;
pub mod mock;
pub mod openai;
pub mod relay;
pub mod routing;
pub mod secrets;
pub mod sse;
pub mod usage;
