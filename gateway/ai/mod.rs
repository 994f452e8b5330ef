//! The AI path: the catalog (providers, models, profiles), the ingress dialects clients speak, the guards
//! and the routing decision, the provider adapters, and the relay that re-originates requests with fallback
//! and streams answers back.

pub mod answer;
pub mod catalog;
pub mod deliver;
pub mod dialect;
pub mod guard;
pub mod heuristics;
pub mod provider;
pub mod relay;
pub mod reply;
pub mod routing;
pub mod secrets;
pub mod serve;
pub mod sse;
pub mod transport;
pub mod usage;

use catalog::{Catalog, ProviderKind};

/// Build now what the AI path would otherwise build on its first request: the provider connector (it
/// reads the system's CA certificates, about 100 ms during which the thread serves nothing else) and the
/// stream masker's patterns. Only what the catalog will use, so a gateway without AI routes pays nothing.
pub fn warm_up(catalog: &Catalog) {
    if catalog
        .providers
        .iter()
        .any(|p| p.kind != ProviderKind::Mock)
    {
        transport::warm_up();
    }
    if catalog.secrets.is_some() {
        secrets::warm_up();
    }
}
