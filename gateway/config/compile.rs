//! Validate the parsed file and build the runtime model: regexes compiled, certificates loaded, routes
//! linked to clusters, every problem reported with its YAML path in one pass. Binds no sockets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::cluster::{self, BackendInput, ClusterInput};
use super::schema::*;
use super::security;
use super::units::{check_host_pattern, DurationOr};
use super::{ConfigErrors, GatewayConfig};
use crate::edge::auth::{AuthRuntime, RouteAuth};
use crate::edge::client::TrustedProxies;
use crate::edge::connection::ClientLimits;
use crate::edge::ip_rules::IpRules;
use crate::edge::limits::LimitPolicy;
use crate::edge::normalize::{EscapedSlashes, NormalizeSettings, Underscores};
use crate::edge::routes::{
    HeaderCondition, HeaderMatcher, HeaderRewrite, PathMatcher, PathRewrite, Route, RouteAction,
    RouteTable, RouteTimeouts,
};
use crate::edge::tls::{load_ca_bundle, load_certified_key, CertStore};
use crate::error::Dialect;
use crate::observe::access_log::AccessLogTarget;
use crate::observe::metrics::{init_fixed_counters, init_refusal_counters, RouteMetrics};
use crate::runtime::*;
use crate::upstream::cluster::{Cluster, HashOn, UpstreamTls};
use crate::upstream::peer::ca_list;

use super::context::Compiler;
pub use super::context::Mode;

const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;

/// Compile a parsed config. `previous` lends live backend state (DNS, health) to unchanged backends.
pub fn compile(
    config: &GatewayConfig,
    mode: Mode,
    previous: Option<&Runtime>,
) -> Result<Compiled, ConfigErrors> {
    let mut c = Compiler {
        errors: Vec::new(),
        mode,
        previous,
        config,
    };
    let server = &config.server;

    let trusted_proxies =
        TrustedProxies::parse(&server.trusted_proxies).unwrap_or_else(|(i, message)| {
            c.error(format!("server.trusted_proxies[{i}]"), message);
            TrustedProxies::default()
        });
    let threads = server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        c.error("server.threads", "must be at least 1");
    }
    let access_log = match server.access_log.target.as_str() {
        "off" => AccessLogTarget::Off,
        "stdout" => AccessLogTarget::Stdout,
        "" => {
            c.error(
                "server.access_log.target",
                "must be `stdout`, `off` or a file path",
            );
            AccessLogTarget::Off
        }
        path => AccessLogTarget::File(path.to_string()),
    };
    let admin = config
        .admin
        .as_ref()
        .and_then(|admin| match admin.address.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                c.error(
                    "admin.address",
                    format!("`{}` is not an `ip:port` address", admin.address),
                );
                None
            }
        });
    let default_max_body = server.max_body_size.map_or(DEFAULT_MAX_BODY, |s| s.0);

    let (listeners, cert_stores, listener_ip_rules) =
        compile_listeners(&mut c, &config.listeners, admin);
    let clusters = compile_clusters(&mut c, &config.clusters);
    let auth = security::compile_auth(&mut c, &config.consumers, &config.auth);
    let limits = security::compile_limits(&mut c, &config.limits);
    let ai = super::ai::compile_ai(&mut c, &config.ai);
    for (i, consumer) in config.consumers.iter().enumerate() {
        for (j, model) in consumer.ai.allowed_models.iter().enumerate() {
            if ai.model(model).is_none() {
                c.error(
                    format!("consumers[{i}].ai.allowed_models[{j}]"),
                    format!("no model or alias named `{model}`"),
                );
            }
        }
        for (j, profile) in consumer.ai.allowed_profiles.iter().enumerate() {
            if !ai.profiles.contains_key(profile) {
                c.error(
                    format!("consumers[{i}].ai.allowed_profiles[{j}]"),
                    format!("no profile named `{profile}`"),
                );
            }
        }
    }
    let routes = compile_routes(
        &mut c,
        &config.routes,
        RouteContext {
            clusters: &clusters,
            limits: &limits,
            auth: &auth,
            ai: &ai,
            default_max_body,
        },
    );

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    let settings = ProcessSettings {
        threads,
        work_stealing: server.work_stealing.unwrap_or(false),
        grace_period: server.grace_period.or_secs(10),
        shutdown_delay: server.shutdown_delay.or_secs(0),
        graceful_shutdown_timeout: server.graceful_shutdown_timeout.or_secs(5),
        pid_file: server
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/gateway.pid".into()),
        upgrade_sock: server
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/tmp/gateway_upgrade.sock".into()),
        upstream_keepalive_pool: server.upstream_keepalive_pool.unwrap_or(128),
        access_log,
        admin,
        listeners,
    };
    // Provider deployments are clusters too: the same upkeep resolves and health-checks them.
    let mut all_clusters: Vec<Arc<Cluster>> = clusters.into_values().collect();
    all_clusters.extend(
        ai.providers
            .iter()
            .filter(|p| p.enabled)
            .filter_map(|p| p.cluster.clone()),
    );
    let defaults = ClientLimits::default();
    let client = ClientLimits {
        header_timeout: server
            .client_header_timeout
            .map_or(defaults.header_timeout, |d| d.0),
        body_timeout: server
            .client_body_timeout
            .map_or(defaults.body_timeout, |d| d.0),
        max_header_size: server
            .max_header_size
            .map_or(defaults.max_header_size, |s| {
                usize::try_from(s.0).unwrap_or(usize::MAX)
            }),
        max_headers: server.max_headers.unwrap_or(defaults.max_headers),
        max_connections_per_ip: server
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
    };
    for (path, timeout) in [
        ("server.client_header_timeout", client.header_timeout),
        ("server.client_body_timeout", client.body_timeout),
    ] {
        if timeout.is_zero() {
            c.error(path, "must be longer than zero");
        }
    }
    // Pingora refuses a head over 1 MiB or 256 fields with a plain 400 before the gateway sees it.
    if client.max_header_size > 1024 * 1024 - 1 {
        c.error("server.max_header_size", "at most 1MiB less one byte");
    }
    if client.max_headers == 0 || client.max_headers > 250 {
        c.error("server.max_headers", "between 1 and 250");
    }
    let runtime = Runtime {
        ai,
        client,
        normalize: compile_normalize(&server.normalize),
        trusted_proxies,
        auth,
        listener_ip_rules,
        routes: RouteTable::new(routes),
        clusters: all_clusters,
        unmatched_metrics: RouteMetrics::for_route("_unmatched"),
    };
    init_fixed_counters(&crate::edge::connection::CLOSED_REASONS);
    if !runtime.listener_ip_rules.is_empty() {
        init_refusal_counters("_unmatched", &["ip_denied"], &[]);
    }
    Ok(Compiled {
        settings,
        runtime,
        cert_stores,
    })
}

fn compile_normalize(section: &NormalizeSection) -> NormalizeSettings {
    let defaults = NormalizeSettings::default();
    NormalizeSettings {
        merge_slashes: section.merge_slashes.unwrap_or(defaults.merge_slashes),
        escaped_slashes: match section.escaped_slashes {
            None => defaults.escaped_slashes,
            Some(EscapedSlashesSection::Reject) => EscapedSlashes::Reject,
            Some(EscapedSlashesSection::Keep) => EscapedSlashes::Keep,
        },
        underscores_in_headers: match section.underscores_in_headers {
            None => defaults.underscores_in_headers,
            Some(UnderscoresSection::Drop) => Underscores::Drop,
            Some(UnderscoresSection::Reject) => Underscores::Reject,
            Some(UnderscoresSection::Allow) => Underscores::Allow,
        },
    }
}

type CompiledListeners = (
    Vec<ListenerSpec>,
    Vec<(String, CertStore)>,
    HashMap<String, IpRules>,
);

fn compile_listeners(
    c: &mut Compiler,
    listeners: &[ListenerSection],
    admin: Option<SocketAddr>,
) -> CompiledListeners {
    if listeners.is_empty() {
        c.error(
            "listeners",
            "at least one listener is needed, e.g. `- {name: http, address: \"0.0.0.0:8080\"}`",
        );
    }
    let mut names = HashSet::new();
    let mut addresses: HashSet<SocketAddr> = admin.into_iter().collect();
    let mut specs = Vec::new();
    let mut stores = Vec::new();
    let mut ip_rules = HashMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if !names.insert(listener.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("duplicate listener name `{}`", listener.name),
            );
        }
        let Ok(address) = listener.address.parse::<SocketAddr>() else {
            c.error(
                format!("{path}.address"),
                format!("`{}` is not an `ip:port` address", listener.address),
            );
            continue;
        };
        if !addresses.insert(address) {
            c.error(
                format!("{path}.address"),
                format!("{address} is already used by another listener or admin"),
            );
        }
        if listener.tls.is_some() && listener.h2c {
            c.error(
                format!("{path}.h2c"),
                "h2c is for plain listeners; TLS listeners offer h2 with `tls.h2`",
            );
        }
        let redirect_https = listener.redirect_https.as_ref().map(|r| {
            if listener.tls.is_some() {
                c.error(
                    format!("{path}.redirect_https"),
                    "only a plain listener can redirect to HTTPS",
                );
            }
            if ![301, 302, 307, 308].contains(&r.status) {
                c.error(
                    format!("{path}.redirect_https.status"),
                    "must be 301, 302, 307 or 308",
                );
            }
            RedirectHttps {
                port: r.port,
                status: r.status,
            }
        });
        let tls = listener.tls.as_ref().map(|tls| {
            stores.push((
                listener.name.clone(),
                compile_certificates(c, tls, &format!("{path}.tls")),
            ));
            let client_auth =
                tls.client_auth
                    .as_ref()
                    .and_then(|auth| match load_ca_bundle(&auth.ca_file) {
                        Ok(ca_ders) => Some(ClientAuthSpec {
                            ca_ders,
                            required: auth.required,
                        }),
                        Err(message) => {
                            c.error(format!("{path}.tls.client_auth.ca_file"), message);
                            None
                        }
                    });
            TlsSpec {
                h2: tls.h2,
                client_auth,
                session_tickets: tls.session_tickets,
            }
        });
        if let Some(rules) = &listener.ip_rules {
            ip_rules.insert(
                listener.name.clone(),
                security::compile_ip_rules(c, rules, &format!("{path}.ip_rules")),
            );
        }
        specs.push(ListenerSpec {
            name: listener.name.clone(),
            address,
            h2c: listener.h2c,
            tls,
            redirect_https,
        });
    }
    (specs, stores, ip_rules)
}

fn compile_certificates(c: &mut Compiler, tls: &TlsSection, path: &str) -> CertStore {
    let mut store = CertStore::default();
    if tls.certificates.is_empty() {
        c.error(
            format!("{path}.certificates"),
            "a TLS listener needs at least one certificate",
        );
    }
    if tls.certificates.iter().filter(|cert| cert.default).count() > 1 {
        c.error(
            format!("{path}.certificates"),
            "only one certificate can be `default: true`",
        );
    }
    for (i, cert) in tls.certificates.iter().enumerate() {
        let path = format!("{path}.certificates[{i}]");
        for (j, name) in cert.server_names.iter().enumerate() {
            if let Err(message) = check_host_pattern(name) {
                c.error(format!("{path}.server_names[{j}]"), message);
            }
        }
        let missing = !Path::new(&cert.cert).exists() || !Path::new(&cert.key).exists();
        if missing && cert.self_signed_if_missing && c.mode == Mode::Validate {
            continue;
        }
        match load_certified_key(&cert.cert, &cert.key) {
            Ok(key) => store.add(Arc::new(key), &cert.server_names, cert.default),
            Err(message) => c.error(path, message),
        }
    }
    store
}

fn compile_clusters(
    c: &mut Compiler,
    clusters: &[ClusterSection],
) -> HashMap<String, Arc<Cluster>> {
    let mut out = HashMap::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if out.contains_key(&cluster.name) {
            c.error(
                format!("{path}.name"),
                format!("duplicate cluster name `{}`", cluster.name),
            );
            continue;
        }
        if let Some(built) = compile_cluster(c, cluster, &path) {
            out.insert(cluster.name.clone(), Arc::new(built));
        }
    }
    out
}

fn compile_cluster(c: &mut Compiler, cluster: &ClusterSection, path: &str) -> Option<Cluster> {
    let errors_before = c.errors.len();
    let consistent_hash = cluster.load_balancing == LoadBalancingSection::ConsistentHash;
    let hash_on = match (&cluster.hash_on, consistent_hash) {
        (Some(_), false) => {
            c.error(
                format!("{path}.hash_on"),
                "only used with `load_balancing: consistent_hash`",
            );
            None
        }
        (None, true) => {
            c.error(
                format!("{path}.hash_on"),
                "consistent_hash needs `hash_on: client_ip`, `{header: NAME}` or `{cookie: NAME}`",
            );
            None
        }
        (Some(HashOnSection::ClientIp), true) => Some(HashOn::ClientIp),
        (Some(HashOnSection::Header(name)), true) => {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(HashOn::Header(name)),
                Err(_) => {
                    c.error(
                        format!("{path}.hash_on.header"),
                        format!("`{name}` is not a valid header name"),
                    );
                    None
                }
            }
        }
        (Some(HashOnSection::Cookie(name)), true) => Some(HashOn::Cookie(name.clone())),
        (None, false) => None,
    };
    let tls = cluster.tls.as_ref().map(|tls| UpstreamTls {
        sni: tls.sni.clone(),
        verify: tls.verify,
        ca: tls
            .ca_file
            .as_ref()
            .and_then(|file| match load_ca_bundle(file) {
                Ok(ders) => Some(ca_list(ders)),
                Err(message) => {
                    c.error(format!("{path}.tls.ca_file"), message);
                    None
                }
            }),
    });
    let backends = cluster
        .backends
        .iter()
        .enumerate()
        .map(|(j, backend)| BackendInput {
            address: backend.address.clone(),
            weight: backend.weight,
            path: format!("{path}.backends[{j}]"),
        })
        .collect();
    let built = cluster::compile_cluster(
        c,
        ClusterInput {
            name: &cluster.name,
            path,
            backends,
            consistent_hash,
            hash_on,
            tls,
            health_check: cluster.health_check.as_ref(),
            health_path_prefix: "",
            passive: &cluster.passive_health,
            retries: cluster.retries,
            connect: cluster.connect_timeout,
            read: cluster.read_timeout,
            idle: cluster.idle_timeout,
            dns_refresh: cluster.dns_refresh,
            defaults: &cluster::CLUSTER,
        },
    );
    // Hash and TLS problems are reported too, but leave no cluster.
    built.filter(|_| c.errors.len() == errors_before)
}

/// What routes may refer to.
struct RouteContext<'a> {
    clusters: &'a HashMap<String, Arc<Cluster>>,
    limits: &'a HashMap<String, Arc<LimitPolicy>>,
    auth: &'a AuthRuntime,
    ai: &'a crate::ai::catalog::Catalog,
    default_max_body: u64,
}

fn compile_routes(
    c: &mut Compiler,
    routes: &[RouteSection],
    context: RouteContext,
) -> Vec<Arc<Route>> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for (i, route) in routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(route.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("duplicate route name `{}`", route.name),
            );
        }
        if let Some(built) = compile_route(c, route, &path, &context) {
            out.push(Arc::new(built));
        }
    }
    out
}

fn compile_route(
    c: &mut Compiler,
    route: &RouteSection,
    path: &str,
    context: &RouteContext,
) -> Option<Route> {
    let clusters = context.clusters;
    let errors_before = c.errors.len();
    let m = &route.matcher;
    let mut hosts = Vec::with_capacity(m.hosts.len());
    for (j, host) in m.hosts.iter().enumerate() {
        match check_host_pattern(host) {
            Ok(()) => hosts.push(host.to_ascii_lowercase()),
            Err(message) => c.error(format!("{path}.match.hosts[{j}]"), message),
        }
    }
    let path_matcher = match &m.path {
        None => PathMatcher::Any,
        Some(PathMatchSection::Exact(p)) | Some(PathMatchSection::Prefix(p))
            if !p.starts_with('/') =>
        {
            c.error(
                format!("{path}.match.path"),
                format!("`{p}` must start with `/`"),
            );
            PathMatcher::Any
        }
        Some(PathMatchSection::Exact(p)) => PathMatcher::Exact(p.clone()),
        Some(PathMatchSection::Prefix(p)) => PathMatcher::Prefix(p.clone()),
        Some(PathMatchSection::Regex(r)) => match Regex::new(r) {
            Ok(regex) => PathMatcher::Regex(regex),
            Err(e) => {
                c.error(
                    format!("{path}.match.path.regex"),
                    format!("invalid regex: {e}"),
                );
                PathMatcher::Any
            }
        },
    };
    let mut methods = Vec::new();
    for (j, method) in m.methods.iter().enumerate() {
        match Method::from_bytes(method.as_bytes()) {
            Ok(parsed) if method.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(parsed),
            _ => c.error(
                format!("{path}.match.methods[{j}]"),
                format!("`{method}` is not an uppercase HTTP method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (j, header) in m.headers.iter().enumerate() {
        let hpath = format!("{path}.match.headers[{j}]");
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            c.error(
                format!("{hpath}.name"),
                format!("`{}` is not a valid header name", header.name),
            );
            continue;
        };
        let condition = match (&header.value, &header.regex) {
            (Some(_), Some(_)) => {
                c.error(hpath, "give `value` or `regex`, not both");
                continue;
            }
            (Some(value), None) => match HeaderValue::from_str(value) {
                Ok(value) => HeaderCondition::Exact(value),
                Err(_) => {
                    c.error(format!("{hpath}.value"), "not a valid header value");
                    continue;
                }
            },
            (None, Some(regex)) => match Regex::new(regex) {
                Ok(regex) => HeaderCondition::Regex(regex),
                Err(e) => {
                    c.error(format!("{hpath}.regex"), format!("invalid regex: {e}"));
                    continue;
                }
            },
            (None, None) => HeaderCondition::Present,
        };
        headers.push(HeaderMatcher { name, condition });
    }

    let actions = [
        route.proxy.is_some(),
        route.redirect.is_some(),
        route.respond.is_some(),
        route.ai.is_some(),
    ];
    let action = match actions.iter().filter(|a| **a).count() {
        1 => match &route.ai {
            Some(ai) => Some(compile_ai_route(c, ai, path, context.ai)),
            None => compile_action(c, route, path, &path_matcher, clusters),
        },
        0 => {
            c.error(
                path.to_string(),
                "a route needs one action: `proxy`, `redirect`, `respond` or `ai`",
            );
            None
        }
        _ => {
            c.error(
                path.to_string(),
                "a route has exactly one action: `proxy`, `redirect`, `respond` or `ai`",
            );
            None
        }
    };
    let request_headers = compile_header_rewrite(
        c,
        &route.request_headers,
        &format!("{path}.request_headers"),
    );
    let response_headers = compile_header_rewrite(
        c,
        &route.response_headers,
        &format!("{path}.response_headers"),
    );
    let route_auth = route
        .auth
        .as_ref()
        .map(|auth| security::compile_route_auth(c, auth, path, context.auth));
    let route_limits: Vec<Arc<LimitPolicy>> = route
        .limits
        .iter()
        .enumerate()
        .filter_map(|(j, name)| match context.limits.get(name) {
            Some(policy) => Some(policy.clone()),
            None => {
                let known: Vec<&str> = context.limits.keys().map(String::as_str).collect();
                c.error(
                    format!("{path}.limits[{j}]"),
                    format!(
                        "no limit policy named `{name}` (defined: {})",
                        known.join(", ")
                    ),
                );
                None
            }
        })
        .collect();
    let route_ip_rules = route
        .ip_rules
        .as_ref()
        .map(|rules| security::compile_ip_rules(c, rules, &format!("{path}.ip_rules")));
    if c.errors.len() > errors_before {
        return None;
    }
    let mut reasons = route_auth
        .as_ref()
        .map(RouteAuth::refusal_codes)
        .unwrap_or_default();
    if route_ip_rules.is_some() {
        reasons.push("ip_denied");
    }
    let policies: Vec<&str> = route_limits.iter().map(|policy| &*policy.name).collect();
    init_refusal_counters(&route.name, &reasons, &policies);
    let action = action?;
    let dialect = match action {
        RouteAction::Ai(_) => Dialect::OpenAi,
        _ => Dialect::Gateway,
    };
    Some(Route {
        name: Arc::from(route.name.as_str()),
        hosts,
        path: path_matcher,
        methods,
        headers,
        action,
        dialect,
        request_headers,
        response_headers,
        timeouts: RouteTimeouts {
            connect: route.timeouts.connect.map(|d| d.0),
            read: route.timeouts.read.map(|d| d.0),
            total: route.timeouts.total.map(|d| d.0),
        },
        max_body_size: route
            .max_body_size
            .map_or(context.default_max_body, |s| s.0),
        auth: route_auth,
        limits: route_limits,
        ip_rules: route_ip_rules,
        metrics: RouteMetrics::for_route(&route.name),
    })
}

fn compile_ai_route(
    c: &mut Compiler,
    ai: &AiRouteSection,
    path: &str,
    catalog: &crate::ai::catalog::Catalog,
) -> RouteAction {
    if catalog.is_empty() {
        c.error(
            format!("{path}.ai"),
            "an `ai` route needs models in the `ai:` section",
        );
    }
    for (i, model) in ai.allowed_models.iter().enumerate() {
        if catalog.model(model).is_none() {
            c.error(
                format!("{path}.ai.allowed_models[{i}]"),
                format!("no model or alias named `{model}`"),
            );
        }
    }
    for (i, profile) in ai.allowed_profiles.iter().enumerate() {
        if !catalog.profiles.contains_key(profile) {
            c.error(
                format!("{path}.ai.allowed_profiles[{i}]"),
                format!("no profile named `{profile}`"),
            );
        }
    }
    RouteAction::Ai(crate::ai::routing::AiPolicy {
        allowed_models: ai.allowed_models.clone(),
        allowed_profiles: ai.allowed_profiles.clone(),
        system_prompt: ai.system_prompt.as_ref().map(super::ai::system_prompt),
    })
}

fn compile_action(
    c: &mut Compiler,
    route: &RouteSection,
    path: &str,
    path_matcher: &PathMatcher,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Option<RouteAction> {
    if let Some(proxy) = &route.proxy {
        let Some(cluster) = clusters.get(&proxy.cluster) else {
            let known: Vec<&str> = clusters.keys().map(String::as_str).collect();
            c.error(
                format!("{path}.proxy.cluster"),
                format!(
                    "no cluster named `{}` (defined: {})",
                    proxy.cluster,
                    known.join(", ")
                ),
            );
            return None;
        };
        if proxy.forward_raw_path && (proxy.strip_prefix || proxy.rewrite.is_some()) {
            c.error(
                format!("{path}.proxy.forward_raw_path"),
                "the raw path cannot be rewritten: drop `strip_prefix`/`rewrite` or this option",
            );
            return None;
        }
        let rewrite = match (path_matcher, proxy.strip_prefix, &proxy.rewrite) {
            _ if proxy.forward_raw_path => PathRewrite::Raw,
            (_, true, Some(_)) => {
                c.error(
                    format!("{path}.proxy"),
                    "use `strip_prefix` or `rewrite`, not both",
                );
                return None;
            }
            (PathMatcher::Prefix(prefix), true, None) => PathRewrite::ReplacePrefix {
                prefix: prefix.clone(),
                with: String::new(),
            },
            (_, true, None) => {
                c.error(
                    format!("{path}.proxy.strip_prefix"),
                    "needs a `match.path.prefix`",
                );
                return None;
            }
            (_, false, None) => PathRewrite::Keep,
            (_, false, Some(to)) if !to.starts_with('/') => {
                c.error(format!("{path}.proxy.rewrite"), "must start with `/`");
                return None;
            }
            (PathMatcher::Prefix(prefix), false, Some(to)) => PathRewrite::ReplacePrefix {
                prefix: prefix.clone(),
                with: to.clone(),
            },
            (PathMatcher::Regex(regex), false, Some(to)) => PathRewrite::Regex {
                regex: regex.clone(),
                replacement: to.clone(),
            },
            (_, false, Some(to)) => PathRewrite::ReplaceWhole(to.clone()),
        };
        return Some(RouteAction::Proxy {
            cluster: cluster.clone(),
            rewrite,
            retry_on_timeout: proxy.retry_on_timeout.unwrap_or(true),
        });
    }
    if let Some(redirect) = &route.redirect {
        if ![301, 302, 303, 307, 308].contains(&redirect.status) {
            c.error(
                format!("{path}.redirect.status"),
                "must be 301, 302, 303, 307 or 308",
            );
        }
        if redirect.to.is_empty() || HeaderValue::from_str(&redirect.to).is_err() {
            c.error(format!("{path}.redirect.to"), "must be a non-empty URL");
        }
        return Some(RouteAction::Redirect {
            to: redirect.to.clone(),
            status: redirect.status,
        });
    }
    let respond = route.respond.as_ref()?;
    if !(200..=599).contains(&respond.status) {
        c.error(
            format!("{path}.respond.status"),
            "must be between 200 and 599",
        );
    } else if matches!(respond.status, 204 | 304) && !respond.body.is_empty() {
        c.error(
            format!("{path}.respond.body"),
            format!("a {} response cannot have a body", respond.status),
        );
    }
    let content_type = respond
        .content_type
        .as_deref()
        .unwrap_or("text/plain; charset=utf-8");
    let Ok(content_type) = HeaderValue::from_str(content_type) else {
        c.error(
            format!("{path}.respond.content_type"),
            "not a valid header value",
        );
        return None;
    };
    Some(RouteAction::Respond {
        status: respond.status,
        body: Bytes::from(respond.body.clone()),
        content_type,
    })
}

fn compile_header_rewrite(
    c: &mut Compiler,
    section: &HeaderRewriteSection,
    path: &str,
) -> HeaderRewrite {
    let mut rewrite = HeaderRewrite::default();
    // The gateway frames every message itself; an edit of a framing or hop-by-hop header would contradict it.
    let framing = |name: &HeaderName| {
        [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "proxy-connection",
        ]
        .contains(&name.as_str())
    };
    let framing_error = "the gateway frames messages itself; framing and hop-by-hop headers \
                         (Content-Length, Transfer-Encoding, Connection, Keep-Alive, Upgrade, TE, Trailer) \
                         cannot be edited";
    let pairs = |map: &std::collections::BTreeMap<String, String>, kind: &str, c: &mut Compiler| {
        let mut out = Vec::new();
        for (name, value) in map {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(_)) if framing(&name) => {
                    c.error(format!("{path}.{kind}.{name}"), framing_error)
                }
                (Ok(name), Ok(value)) => out.push((name, value)),
                (Err(_), _) => c.error(format!("{path}.{kind}.{name}"), "not a valid header name"),
                (_, Err(_)) => c.error(format!("{path}.{kind}.{name}"), "not a valid header value"),
            }
        }
        out
    };
    rewrite.add = pairs(&section.add, "add", c);
    rewrite.set = pairs(&section.set, "set", c);
    for (j, name) in section.remove.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) if framing(&name) => c.error(format!("{path}.remove[{j}]"), framing_error),
            Ok(name) => rewrite.remove.push(name),
            Err(_) => c.error(
                format!("{path}.remove[{j}]"),
                format!("`{name}` is not a valid header name"),
            ),
        }
    }
    rewrite
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    /// Every `expected` text begins one of the `errors`.
    fn assert_reported(errors: &[String], expected: &[&str]) {
        for expected in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{expected}: {errors:?}"
            );
        }
    }

    fn errors_of(text: &str) -> Vec<String> {
        let config = parse_str(text).expect("schema-valid");
        match compile(&config, Mode::Validate, None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn cross_references_and_regexes_are_checked_together() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
clusters:
  - name: web
    backends: [{ address: "127.0.0.1:9000" }]
routes:
  - name: a
    match: { path: { regex: "([" } }
    proxy: { cluster: web }
  - name: b
    proxy: { cluster: missing }
  - name: c
    match: { methods: [get] }
    respond: { status: 200 }
  - name: d
    respond: { status: 200 }
    redirect: { to: "https://x" }
"#,
        );
        assert_reported(&errors, &["routes[0].match.path.regex: invalid regex"]);
        assert_reported(
            &errors,
            &["routes[1].proxy.cluster: no cluster named `missing`"],
        );
        assert_reported(&errors, &["routes[2].match.methods[0]"]);
        assert_reported(&errors, &["routes[3]: a route has exactly one action"]);
    }

    #[test]
    fn max_tokens_field_is_for_openai_compatible_providers_only() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
ai:
  providers:
    - { name: o, type: openai, base_url: "http://127.0.0.1:9000/v1" }
    - { name: a, type: anthropic, api_key: k }
  models:
    - { name: reasoning, provider: o, max_tokens_field: max_completion_tokens }
    - { name: claude, provider: a, max_tokens_field: max_completion_tokens }
  profiles:
    default: [reasoning]
routes:
  - name: ai
    ai: {}
"#,
        );
        assert_reported(
            &errors,
            &["ai.models[1].max_tokens_field: applies to `type: openai` providers only"],
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn a_native_provider_without_a_key_is_told_its_own_variable() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
ai:
  providers:
    - { name: g, type: gemini }
    - { name: a, type: anthropic }
  models:
    - { name: gem, provider: g }
    - { name: claude, provider: a }
  profiles:
    default: [gem]
routes:
  - name: ai
    ai: {}
"#,
        );
        assert_reported(
            &errors,
            &[
                "ai.providers[0].api_key: this provider type needs a key, e.g. api_key: ${GEMINI_API_KEY:-}",
                "ai.providers[1].api_key: this provider type needs a key, e.g. api_key: ${ANTHROPIC_API_KEY:-}",
            ],
        );
    }

    #[test]
    fn header_edits_may_not_touch_framing() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
routes:
  - name: a
    response_headers: { set: { content-length: "1", x-ok: "1" }, remove: [transfer-encoding] }
    request_headers: { add: { Connection: close } }
    respond: { status: 200 }
"#,
        );
        assert_reported(
            &errors,
            &[
                "routes[0].response_headers.set.content-length: the gateway frames messages itself",
                "routes[0].response_headers.remove[0]: the gateway frames messages itself",
                "routes[0].request_headers.add.connection: the gateway frames messages itself",
            ],
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn clusters_and_provider_deployments_are_checked_by_one_compiler() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
clusters:
  - name: web
    backends: [{ address: "127.0.0.1:9000", weight: 0 }]
    health_check: { healthy_threshold: 0 }
ai:
  providers:
    - name: local
      type: openai
      deployments:
        - { base_url: "http://127.0.0.1:8000/v1", weight: 0 }
      health_check: { unhealthy_threshold: 0, path: models }
"#,
        );
        assert_reported(
            &errors,
            &[
                "clusters[0].backends[0].weight: must be between 1 and 1000",
                "clusters[0].health_check: healthy_threshold and unhealthy_threshold must be at least 1",
                "ai.providers[0].deployments[0].weight: must be between 1 and 1000",
                "ai.providers[0].health_check: healthy_threshold and unhealthy_threshold must be at least 1",
                "ai.providers[0].health_check.path: must start with `/`",
            ],
        );
    }

    #[test]
    fn bad_listeners_and_clusters_are_reported() {
        let errors = errors_of(
            r#"
listeners:
  - { name: a, address: "nope" }
  - name: b
    address: "127.0.0.1:8443"
    tls: { certificates: [{ cert: /nonexistent.crt, key: /nonexistent.key }] }
clusters:
  - name: c
    backends: [{ address: "no-port" }]
    load_balancing: consistent_hash
"#,
        );
        assert_reported(&errors, &["listeners[0].address"]);
        assert_reported(&errors, &["listeners[1].tls.certificates[0]: cannot read"]);
        assert_reported(&errors, &["clusters[0].backends[0].address"]);
        assert_reported(&errors, &["clusters[0].hash_on"]);
    }

    #[test]
    fn provider_headers_may_not_set_the_request_framing() {
        let errors = errors_of(
            r#"
listeners:
  - { name: http, address: "127.0.0.1:8080" }
ai:
  providers:
    - name: p
      type: openai
      base_url: "http://127.0.0.1:9000/v1"
      headers: { transfer-encoding: chunked, Content-Length: "5", x-team: ok }
  models:
    - { name: m, provider: p }
  profiles: { default: [m] }
routes:
  - name: ai
    ai: {}
"#,
        );
        for name in ["transfer-encoding", "content-length"] {
            assert!(
                errors.iter().any(
                    |e| e.starts_with(&format!("ai.providers[0].headers.{name}"))
                        && e.contains("remove this header")
                ),
                "{errors:?}"
            );
        }
        // Other headers are the operator's to set.
        assert!(!errors.iter().any(|e| e.contains("x-team")), "{errors:?}");
    }

    #[test]
    fn provider_and_model_names_must_fit_a_response_header() {
        let errors = errors_of(
            "
listeners:
  - { name: http, address: \"127.0.0.1:8080\" }
ai:
  providers:
    - { name: \"p\\x01\", type: mock }
    - { name: ok, type: mock }
  models:
    - { name: \"m\\nx\", provider: ok }
    - { name: m, provider: ok }
  profiles: { default: [m] }
routes:
  - name: ai
    ai: {}
",
        );
        for path in ["ai.providers[0].name", "ai.models[0].name"] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(path) && e.contains("response header")),
                "{errors:?}"
            );
        }
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn profile_and_rule_names_must_fit_a_response_header() {
        let errors = errors_of(
            "
listeners:
  - { name: http, address: \"127.0.0.1:8080\" }
ai:
  providers:
    - { name: ok, type: mock }
  models:
    - { name: m, provider: ok }
  profiles: { default: [m], \"b\\x7fad\": [m] }
  rules:
    - { name: \"long\\rprompt\", profile: default, prompt_tokens_over: 100 }
routes:
  - name: ai
    ai: {}
",
        );
        for path in ["ai.profiles.b\u{7f}ad", "ai.rules[0].name"] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(path) && e.contains("response header")),
                "{errors:?}"
            );
        }
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
