//! Route table: match a request by host, path, method and headers, most specific route first.
//!
//! Precedence (the first key that differs decides):
//! 1. host: exact name > wildcard (longer suffix first) > any host;
//! 2. path: exact > prefix (longer first) > regex > no path condition;
//! 3. a method condition > none;
//! 4. more header conditions > fewer;
//! 5. order in the file.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use super::auth::RouteAuth;
use super::headers::HeaderEdits;
use super::ip_rules::IpRules;
use super::limits::LimitPolicy;
use crate::ai::routing::AiPolicy;
use crate::error::Dialect;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::cluster::Cluster;

/// How the request path must look.
#[derive(Debug, Clone)]
pub enum PathMatcher {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Any => true,
            PathMatcher::Exact(exact) => path == exact,
            PathMatcher::Prefix(prefix) => prefix_matches(prefix, path),
            PathMatcher::Regex(regex) => regex.is_match(path),
        }
    }

    /// (kind rank, length) — bigger is more specific.
    fn specificity(&self) -> (u8, usize) {
        match self {
            PathMatcher::Exact(p) => (3, p.len()),
            PathMatcher::Prefix(p) => (2, p.len()),
            PathMatcher::Regex(_) => (1, 0),
            PathMatcher::Any => (0, 0),
        }
    }
}

/// Prefixes match whole path segments: `/api` matches `/api` and `/api/x`, not `/apiary`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// A header condition.
#[derive(Debug, Clone)]
pub enum HeaderCondition {
    Present,
    Exact(HeaderValue),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub condition: HeaderCondition,
}

impl HeaderMatcher {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        match &self.condition {
            HeaderCondition::Present => values.peek().is_some(),
            HeaderCondition::Exact(expected) => values.any(|v| v == expected),
            HeaderCondition::Regex(regex) => {
                values.any(|v| v.to_str().is_ok_and(|s| regex.is_match(s)))
            }
        }
    }
}

/// How the path is changed before forwarding.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Forward the normalised path.
    Keep,
    /// Forward the client's target as it came (`proxy.forward_raw_path`).
    Raw,
    /// Replace the matched prefix with this (empty for strip_prefix).
    ReplacePrefix {
        prefix: String,
        with: String,
    },
    ReplaceWhole(String),
    Regex {
        regex: Regex,
        replacement: String,
    },
}

impl PathRewrite {
    /// The new path for `path`, or None to keep it.
    pub fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRewrite::Keep | PathRewrite::Raw => None,
            PathRewrite::ReplacePrefix { prefix, with } => {
                let rest = path.strip_prefix(prefix.as_str())?;
                let mut out = String::with_capacity(with.len() + rest.len() + 1);
                out.push_str(with);
                if !out.ends_with('/') && !rest.starts_with('/') {
                    out.push('/');
                }
                if out.ends_with('/') && rest.starts_with('/') {
                    out.push_str(&rest[1..]);
                } else {
                    out.push_str(rest);
                }
                Some(out)
            }
            PathRewrite::ReplaceWhole(with) => Some(with.clone()),
            PathRewrite::Regex { regex, replacement } => {
                Some(regex.replace(path, replacement.as_str()).into_owned())
            }
        }
    }
}

/// Header edits applied in order: remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct HeaderRewrite {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Apply the edits in order: remove, set, add.
    pub fn apply(&self, head: &mut impl HeaderEdits) -> pingora::Result<()> {
        self.remove.iter().for_each(|name| head.remove(name));
        for (name, value) in &self.set {
            head.set(name, value)?;
        }
        for (name, value) in &self.add {
            head.add(name, value)?;
        }
        Ok(())
    }
}

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    Proxy {
        cluster: Arc<Cluster>,
        rewrite: PathRewrite,
        /// Idempotent requests that time out waiting for their answer are retried on another backend.
        retry_on_timeout: bool,
    },
    Redirect {
        to: String,
        status: u16,
    },
    Respond {
        status: u16,
        body: Bytes,
        content_type: HeaderValue,
    },
    /// The OpenAI-compatible AI API, with the route's model/profile restrictions.
    Ai(AiPolicy),
}

/// Timeouts that override the cluster's.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteTimeouts {
    pub connect: Option<std::time::Duration>,
    pub read: Option<std::time::Duration>,
    pub total: Option<std::time::Duration>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub path: PathMatcher,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatcher>,
    pub action: RouteAction,
    pub request_headers: HeaderRewrite,
    pub response_headers: HeaderRewrite,
    pub timeouts: RouteTimeouts,
    pub max_body_size: u64,
    pub auth: Option<RouteAuth>,
    pub limits: Vec<Arc<LimitPolicy>>,
    pub ip_rules: Option<IpRules>,
    pub metrics: RouteMetrics,
    /// The format of the gateway's own errors on this route (OpenAI's on AI routes).
    pub dialect: Dialect,
}

impl Route {
    fn matches_rest(&self, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.path.matches(path)
            && self.headers.iter().all(|h| h.matches(headers))
    }

    fn rank(&self) -> (u8, usize, bool, usize) {
        let (kind, len) = self.path.specificity();
        (kind, len, !self.methods.is_empty(), self.headers.len())
    }
}

/// All routes, indexed by host for fast lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub routes: Vec<Arc<Route>>,
    exact_hosts: HashMap<String, Vec<usize>>,
    /// (suffix including the leading dot, route indices), longer suffixes first.
    wildcard_hosts: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut table = RouteTable {
            routes,
            ..Default::default()
        };
        let mut wildcards: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, route) in table.routes.iter().enumerate() {
            if route.hosts.is_empty() {
                table.any_host.push(index);
            }
            for host in &route.hosts {
                match host.strip_prefix('*') {
                    Some(suffix) => wildcards.entry(suffix.to_string()).or_default().push(index),
                    None => table
                        .exact_hosts
                        .entry(host.clone())
                        .or_default()
                        .push(index),
                }
            }
        }
        let routes = &table.routes;
        let order = |list: &mut Vec<usize>| {
            // Stable sort keeps file order among equals.
            list.sort_by(|&a, &b| routes[b].rank().cmp(&routes[a].rank()));
            list.dedup();
        };
        table.exact_hosts.values_mut().for_each(order);
        order(&mut table.any_host);
        let mut wildcards: Vec<(String, Vec<usize>)> = wildcards.into_iter().collect();
        wildcards.iter_mut().for_each(|(_, list)| order(list));
        wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table.wildcard_hosts = wildcards;
        table
    }

    /// The most specific route for this request. `host` must be lowercase without port.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        let pick = |list: &[usize]| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|route| route.matches_rest(path, method, headers))
        };
        if let Some(route) = self.exact_hosts.get(host).and_then(|list| pick(list)) {
            return Some(route);
        }
        for (suffix, list) in &self.wildcard_hosts {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(route) = pick(list) {
                    return Some(route);
                }
            }
        }
        pick(&self.any_host)
    }
}

/// The request's host, lowercased, without port or trailing dot. Borrows when already normal.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.split_once(']')
            .map_or(raw, |(v6, _)| &raw[..v6.len() + 1])
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        hosts: &[&str],
        path: PathMatcher,
        methods: &[&str],
        headers: usize,
    ) -> Arc<Route> {
        Arc::new(Route {
            name: Arc::from(name),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path,
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            headers: (0..headers)
                .map(|i| HeaderMatcher {
                    name: HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                    condition: HeaderCondition::Present,
                })
                .collect(),
            action: RouteAction::Respond {
                status: 200,
                body: Bytes::new(),
                content_type: HeaderValue::from_static("text/plain"),
            },
            dialect: Dialect::Gateway,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
            timeouts: RouteTimeouts::default(),
            max_body_size: 1024,
            auth: None,
            limits: Vec::new(),
            ip_rules: None,
            metrics: RouteMetrics::detached(),
        })
    }

    #[test]
    fn most_specific_route_wins() {
        let table = RouteTable::new(vec![
            route("catch-all", &[], PathMatcher::Any, &[], 0),
            route(
                "any-prefix",
                &[],
                PathMatcher::Prefix("/api".into()),
                &[],
                0,
            ),
            route("wild", &["*.example.com"], PathMatcher::Any, &[], 0),
            route(
                "wild-deeper",
                &["*.eu.example.com"],
                PathMatcher::Any,
                &[],
                0,
            ),
            route(
                "exact-host",
                &["api.example.com"],
                PathMatcher::Prefix("/".into()),
                &[],
                0,
            ),
            route(
                "exact-host-long",
                &["api.example.com"],
                PathMatcher::Prefix("/v1/".into()),
                &[],
                0,
            ),
            route(
                "exact-path",
                &["api.example.com"],
                PathMatcher::Exact("/v1/users".into()),
                &[],
                0,
            ),
            route(
                "regex",
                &["api.example.com"],
                PathMatcher::Regex(Regex::new("^/v1/items/[0-9]+$").unwrap()),
                &[],
                0,
            ),
            route(
                "post-only",
                &["api.example.com"],
                PathMatcher::Prefix("/v1/".into()),
                &["POST"],
                0,
            ),
            route(
                "with-header",
                &["api.example.com"],
                PathMatcher::Prefix("/v1/".into()),
                &["POST"],
                1,
            ),
        ]);
        let none = HeaderMap::new();
        let mut with_header = HeaderMap::new();
        with_header.insert("x-h0", HeaderValue::from_static("1"));
        let cases: &[(&str, &str, &str, &HeaderMap, Option<&str>)] = &[
            (
                "api.example.com",
                "/v1/users",
                "GET",
                &none,
                Some("exact-path"),
            ),
            (
                "api.example.com",
                "/v1/other",
                "GET",
                &none,
                Some("exact-host-long"),
            ),
            (
                "api.example.com",
                "/v1/other",
                "POST",
                &none,
                Some("post-only"),
            ),
            (
                "api.example.com",
                "/v1/other",
                "POST",
                &with_header,
                Some("with-header"),
            ),
            (
                "api.example.com",
                "/v1/items/42",
                "GET",
                &none,
                Some("exact-host-long"),
            ),
            ("api.example.com", "/v2", "GET", &none, Some("exact-host")),
            ("www.example.com", "/api", "GET", &none, Some("wild")),
            ("a.eu.example.com", "/", "GET", &none, Some("wild-deeper")),
            ("example.com", "/api/x", "GET", &none, Some("any-prefix")),
            ("other.org", "/", "GET", &none, Some("catch-all")),
        ];
        for (host, path, method, headers, expected) in cases {
            let found = table
                .find(host, path, &method.parse().unwrap(), headers)
                .map(|r| &*r.name);
            assert_eq!(found, *expected, "{method} {host}{path}");
        }
    }

    #[test]
    fn regex_beats_no_path_but_loses_to_prefix() {
        let table = RouteTable::new(vec![
            route("any", &[], PathMatcher::Any, &[], 0),
            route(
                "regex",
                &[],
                PathMatcher::Regex(Regex::new("^/items/[0-9]+$").unwrap()),
                &[],
                0,
            ),
        ]);
        let found = table
            .find("h", "/items/7", &Method::GET, &HeaderMap::new())
            .unwrap();
        assert_eq!(&*found.name, "regex");
    }

    #[test]
    fn rewrites_paths() {
        let strip = PathRewrite::ReplacePrefix {
            prefix: "/api".into(),
            with: String::new(),
        };
        assert_eq!(strip.apply("/api/users?x=1").as_deref(), Some("/users?x=1"));
        assert_eq!(strip.apply("/api").as_deref(), Some("/"));
        let swap = PathRewrite::ReplacePrefix {
            prefix: "/old/".into(),
            with: "/new/".into(),
        };
        assert_eq!(swap.apply("/old/a").as_deref(), Some("/new/a"));
        let regex = PathRewrite::Regex {
            regex: Regex::new("^/u/([0-9]+)$").unwrap(),
            replacement: "/users/$1".into(),
        };
        assert_eq!(regex.apply("/u/12").as_deref(), Some("/users/12"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}
