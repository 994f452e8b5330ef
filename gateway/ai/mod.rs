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

use catalog::{Catalog, ProviderKind};

/// Build now what the AI path would otherwise build on its first request: the provider connector (it
/// reads the system's CA certificates, about 100 ms during which the thread serves nothing else) and the
/// stream masker's patterns. Only what the catalog will use, so a gateway without AI routes pays nothing.
pub fn warm_up(catalog: &Catalog) {
    if catalog
        .providers
        .iter()
        .any(|p| p.kind == ProviderKind::OpenAi)
    {
        relay::warm_up();
    }
    if catalog.secrets.is_some() {
        secrets::warm_up();
    }
}
