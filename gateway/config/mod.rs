//! Configuration: read the YAML file, substitute `${ENV}` references, parse every section strictly and
//! collect every error with its YAML path. `compile` then builds the runtime model from the parsed file.

mod ai;
mod cluster;
pub mod compile;
mod context;
pub mod schema;
mod security;
pub mod units;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use schema::*;

/// One problem in the configuration, located by its YAML path (`routes[2].match.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one pass over the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The file as written, parsed into the schema.
#[derive(Debug, Default)]
pub struct GatewayConfig {
    pub server: ServerSection,
    pub admin: Option<AdminSection>,
    pub listeners: Vec<ListenerSection>,
    pub clusters: Vec<ClusterSection>,
    pub routes: Vec<RouteSection>,
    pub consumers: Vec<ConsumerSection>,
    pub auth: AuthSection,
    pub limits: Vec<LimitSection>,
    pub ai: AiSection,
    /// `(YAML path, variable)` of each `${NAME:-default}` whose variable was unset, so that a warning
    /// about an empty value can name the variable to set.
    pub defaulted_env: Vec<(String, String)>,
}

impl GatewayConfig {
    /// The environment variables that were unset where the value at `path` was written.
    pub fn unset_variables_at(&self, path: &str) -> Vec<&str> {
        self.defaulted_env
            .iter()
            .filter(|(at, _)| at == path)
            .map(|(_, name)| name.as_str())
            .collect()
    }
}

const SECTIONS: &str =
    "`server`, `admin`, `listeners`, `clusters`, `routes`, `consumers`, `auth`, `limits`, `ai`";

/// The one way a config file becomes what serves: read and parse it, then (to serve) generate missing
/// development certificates, compile (`previous` lends live backend state to unchanged backends), and warm
/// up what the first request would otherwise build. `gateway validate` and `upgrade` build with
/// `Mode::Validate`, which binds, writes and warms nothing.
pub fn build(
    path: &Path,
    mode: compile::Mode,
    previous: Option<&crate::runtime::Runtime>,
) -> Result<crate::runtime::Compiled, ConfigErrors> {
    let config = load_file(path)?;
    if mode == compile::Mode::Run {
        ensure_dev_certificates(&config);
    }
    let compiled = compile::compile(&config, mode, previous)?;
    if mode == compile::Mode::Run {
        crate::ai::warm_up(&compiled.runtime.ai);
    }
    Ok(compiled)
}

/// For certificates marked `self_signed_if_missing` whose files are absent, generate a dev certificate.
fn ensure_dev_certificates(config: &GatewayConfig) {
    for listener in &config.listeners {
        let Some(tls) = &listener.tls else { continue };
        for cert in tls.certificates.iter().filter(|c| c.self_signed_if_missing) {
            let (cert_path, key_path) = (Path::new(&cert.cert), Path::new(&cert.key));
            if cert_path.exists() && key_path.exists() {
                continue;
            }
            match crate::edge::tls::generate_dev_certificate(cert_path, key_path) {
                Ok(()) => log::warn!(
                    "listener {}: {} was missing, so a SELF-SIGNED DEVELOPMENT certificate for localhost was \
                     generated there. Clients will not trust it. Use real certificates in production (see certs/README.md).",
                    listener.name,
                    cert.cert
                ),
                Err(e) => log::error!("listener {}: cannot generate a development certificate: {e}", listener.name),
            }
        }
    }
}

/// Read and parse a config file; every error found is returned at once.
pub fn load_file(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )])
    })?;
    parse_str(&text)
}

/// Parse config text (already read from a file).
pub fn parse_str(text: &str) -> Result<GatewayConfig, ConfigErrors> {
    let mut document: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("not valid YAML: {e}"))]))?;
    let mut errors = Vec::new();
    let mut defaulted_env = Vec::new();
    interpolate_env(
        &mut document,
        &mut String::new(),
        &mut errors,
        &mut defaulted_env,
    );
    let mut config = GatewayConfig {
        defaulted_env,
        ..GatewayConfig::default()
    };
    let Value::Mapping(top) = document else {
        return Err(ConfigErrors(vec![ConfigError::new(
            "",
            format!("the file must be a mapping with the sections {SECTIONS}"),
        )]));
    };
    for (key, value) in top {
        let Some(name) = key.as_str() else {
            errors.push(ConfigError::new(
                "",
                format!("section names must be strings, got {key:?}"),
            ));
            continue;
        };
        match name {
            "server" => {
                if let Some(server) = parse_item(value, "server", &mut errors) {
                    config.server = server;
                }
            }
            "admin" => config.admin = parse_item(value, "admin", &mut errors),
            "listeners" => config.listeners = parse_list(value, "listeners", &mut errors),
            "clusters" => config.clusters = parse_list(value, "clusters", &mut errors),
            "routes" => config.routes = parse_list(value, "routes", &mut errors),
            "consumers" => config.consumers = parse_list(value, "consumers", &mut errors),
            "limits" => config.limits = parse_list(value, "limits", &mut errors),
            "ai" => {
                if let Some(ai) = parse_item(value, "ai", &mut errors) {
                    config.ai = ai;
                }
            }
            "auth" => {
                if let Some(auth) = parse_item(value, "auth", &mut errors) {
                    config.auth = auth;
                }
            }
            other => errors.push(ConfigError::new(
                other,
                format!("unknown section; expected one of {SECTIONS}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Deserialize one value, reporting the path of every offending field inside it: serde stops at the first
/// error, so the offending field is taken out and the value parsed again, until it parses or an error
/// cannot be taken out (a missing field, a bad value at the top).
fn parse_item<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut value = value;
    let mut removed: Vec<String> = Vec::new();
    // Bounded: each round takes one field out.
    for _ in 0..64 {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(item) => return removed.is_empty().then_some(item),
            Err(error) => error,
        };
        let message = error.inner().to_string();
        // A required field that was taken out for its bad value is not missing as well.
        let consequence = removed
            .iter()
            .any(|name| message == format!("missing field `{name}`"));
        if !consequence {
            let inner = error.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errors.push(ConfigError::new(full, message));
        }
        match take_out(&mut value, error.path()) {
            Some(name) if !consequence => removed.push(name),
            _ => return None,
        }
    }
    None
}

/// Remove the map entry at `path` from `value`; its key, or `None` when the path names no map entry.
fn take_out(value: &mut Value, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let (last, parents) = segments.split_last()?;
    let mut node = value;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Mapping(map)) => map.get_mut(key.as_str())?,
            (Segment::Seq { index }, Value::Sequence(items)) => items.get_mut(*index)?,
            (Segment::Enum { .. }, node) => node,
            _ => return None,
        };
    }
    match (last, node) {
        (Segment::Map { key }, Value::Mapping(map)) => {
            map.remove(key.as_str())?;
            Some(key.clone())
        }
        _ => None,
    }
}

/// Deserialize a list item by item so that every bad item is reported, not just the first.
fn parse_list<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    match value {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| parse_item(item, &format!("{path}[{i}]"), errors))
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be a list (`- name: ...` items)",
            ));
            Vec::new()
        }
    }
}

/// Replace `${NAME}` and `${NAME:-default}` in every string scalar with the environment's value; note in
/// `defaulted` the path and name of each variable that was unset and took its default.
fn interpolate_env(
    value: &mut Value,
    path: &mut String,
    errors: &mut Vec<ConfigError>,
    defaulted: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(text) if text.contains("${") => {
            let lookup = |name: &str| {
                let found = std::env::var(name).ok();
                if found.is_none() {
                    defaulted.push((path.clone(), name.to_string()));
                }
                found
            };
            match substitute_env(text, lookup) {
                Ok(replaced) => *text = replaced,
                Err(message) => errors.push(ConfigError::new(path.clone(), message)),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_env(item, path, errors, defaulted);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.as_str().unwrap_or("?"));
                interpolate_env(item, path, errors, defaulted);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => interpolate_env(&mut tagged.value, path, errors, defaulted),
        _ => {}
    }
}

/// Expand `${NAME}` / `${NAME:-default}` using `lookup`; an unset variable without default is an error.
pub fn substitute_env(
    text: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{text}`"));
        };
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{reference}}}` is not a valid environment variable reference"
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set; export it or write `${{{name}:-default}}`"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_are_expanded_with_defaults() {
        let lookup = |name: &str| (name == "SET").then(|| "value".to_string());
        assert_eq!(substitute_env("a-${SET}-b", lookup).unwrap(), "a-value-b");
        assert_eq!(
            substitute_env("${UNSET:-fallback}", lookup).unwrap(),
            "fallback"
        );
        assert!(substitute_env("${UNSET}", lookup)
            .unwrap_err()
            .contains("UNSET is not set"));
        assert!(substitute_env("${oops", lookup).is_err());
    }

    #[test]
    fn every_bad_item_is_reported_with_its_path() {
        let text = r#"
routes:
  - name: a
    match: { hots: [x] }
    respond: { status: 200 }
  - name: b
    respond: { status: "many" }
clusters:
  - name: c
    backends: [{ address: "127.0.0.1:1", wieght: 2 }]
bogus: 1
"#;
        let errors = parse_str(text).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"routes[0].match.hots"), "{paths:?}");
        assert!(paths.contains(&"routes[1].respond.status"), "{paths:?}");
        assert!(
            paths.contains(&"clusters[0].backends[0].wieght"),
            "{paths:?}"
        );
        assert!(paths.contains(&"bogus"), "{paths:?}");
        assert!(
            errors[0].message.contains("unknown field `hots`"),
            "{}",
            errors[0].message
        );
    }
}

#[cfg(test)]
mod robustness_tests {
    use super::compile::{compile, Mode};
    use super::*;

    /// Odd documents never panic: each gives errors (or an empty but valid config).
    #[test]
    fn odd_documents_are_errors_not_panics() {
        let documents = [
            "",
            "null",
            "[]",
            "\"just a string\"",
            "42",
            "listeners: 5",
            "listeners: [1, 2, {}]",
            "routes: {a: b}",
            "server: []",
            "server: {threads: -1}",
            "server: {grace_period: 10}",
            "server: {max_body_size: -5}",
            "server: {trusted_proxies: [300.1.1.1]}",
            "listeners: [{name: a, address: '127.0.0.1:99999'}]",
            "clusters: [{name: c, backends: []}]",
            "clusters: [{name: c, backends: [{address: '10.0.0.1:80', weight: 4000000000}]}]",
            "clusters: [{name: c, backends: [{address: '[::1]:0'}]}]",
            "clusters: [{name: c, backends: [{address: ':80'}]}]",
            "clusters: [{name: c, backends: [{address: 'a:1'}], hash_on: {header: 'bad header'}, load_balancing: consistent_hash}]",
            "routes: [{name: r, respond: {status: 1000}}]",
            "routes: [{name: r, respond: {status: 200, content_type: \"a\\nb\"}}]",
            "routes: [{name: r, match: {path: {exact: /a, prefix: /b}}, respond: {}}]",
            "routes: [{name: r, match: {path: {regex: '(((('}}, respond: {}}]",
            "routes: [{name: r, match: {hosts: ['*'], methods: ['G E T']}, respond: {}}]",
            "routes: [{name: r, redirect: {to: \"\\n\"}}]",
            "routes: [{name: r, request_headers: {set: {'bad name': x}}, respond: {}}]",
            "a: &x [*x]",
            "x: ${UNSET_VARIABLE_FOR_TEST}",
            "{{{{",
        ];
        for document in documents {
            if let Ok(config) = parse_str(document) {
                let _ = compile(&config, Mode::Validate, None);
            }
        }
    }
}
