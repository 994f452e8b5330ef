//! The compiled, immutable runtime model of one config generation. The proxy reads it through an
//! `ArcSwap`; a SIGHUP reload builds a new one and swaps it in atomically.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use crate::ai::catalog::Catalog;
use crate::edge::auth::AuthRuntime;
use crate::edge::client::TrustedProxies;
use crate::edge::connection::ClientLimits;
use crate::edge::ip_rules::IpRules;
use crate::edge::normalize::NormalizeSettings;
use crate::edge::routes::RouteTable;
use crate::edge::tls::CertStore;
use crate::observe::access_log::AccessLogTarget;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::cluster::Cluster;

/// Settings fixed for the life of the process (a reload that changes them only warns).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub shutdown_delay: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub upstream_keepalive_pool: usize,
    pub access_log: AccessLogTarget,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerSpec>,
}

/// One listener as bound at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub h2c: bool,
    pub tls: Option<TlsSpec>,
    pub redirect_https: Option<RedirectHttps>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub h2: bool,
    pub client_auth: Option<ClientAuthSpec>,
    pub session_tickets: bool,
}

/// mTLS settings of a listener (fixed for the life of the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthSpec {
    pub ca_ders: Vec<Vec<u8>>,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectHttps {
    pub port: u16,
    pub status: u16,
}

/// What requests are served with; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// Limits of client connections: head timeout and size, body timeout, connections per address.
    pub client: ClientLimits,
    /// How requests are made canonical before routing.
    pub normalize: NormalizeSettings,
    pub trusted_proxies: TrustedProxies,
    /// Providers, models and profiles of the AI routes.
    pub ai: Catalog,
    pub auth: AuthRuntime,
    /// IP rules of listeners that have them, by listener name.
    pub listener_ip_rules: HashMap<String, IpRules>,
    pub routes: RouteTable,
    pub clusters: Vec<Arc<Cluster>>,
    /// Metrics of requests that matched no route.
    pub unmatched_metrics: RouteMetrics,
}

/// Everything one compile produces.
pub struct Compiled {
    pub settings: ProcessSettings,
    pub runtime: Runtime,
    /// The certificate store of each TLS listener, by listener name.
    pub cert_stores: Vec<(String, CertStore)>,
}
