//! A small builder of test configs: sections are values (`serde_json`), not indented YAML text, so a test
//! names what it changes and nothing else, and the file is rendered by the YAML library.
//!
//! ```ignore
//! let yaml = TestConfig::new(&dir, &ports)
//!     .server("client_header_timeout", "1s")
//!     .cluster("web", &[&origin.addr.to_string()])
//!     .proxy_route("web", "/", "web")
//!     .yaml();
//! ```

use serde_json::{json, Map, Value};

use super::{Ports, TestDir};

/// A whole gateway config under construction.
#[derive(Debug, Clone)]
pub struct TestConfig {
    root: Map<String, Value>,
}

impl TestConfig {
    /// `server` (one thread, 1 s grace, pid file, upgrade socket and access log in the test directory),
    /// `admin` on `ports.admin`, and one plain listener `http` on `ports.http`.
    pub fn new(dir: &TestDir, ports: &Ports) -> Self {
        let root = json!({
            "server": {
                "threads": 1,
                "grace_period": "1s",
                "graceful_shutdown_timeout": "1s",
                "pid_file": dir.path("gateway.pid"),
                "upgrade_sock": dir.path("upgrade.sock"),
                "access_log": {"target": dir.path("access.log")},
            },
            "admin": {"address": format!("127.0.0.1:{}", ports.admin)},
            "listeners": [{"name": "http", "address": format!("127.0.0.1:{}", ports.http)}],
        });
        let Value::Object(root) = root else {
            unreachable!("a JSON object")
        };
        TestConfig { root }
    }

    /// The plain listener's only route proxies everything to cluster `web`, whose section is `cluster`.
    pub fn proxying(dir: &TestDir, ports: &Ports, cluster: Value) -> Self {
        TestConfig::new(dir, ports)
            .cluster_with("web", cluster)
            .proxy_route("web", "/", "web")
    }

    /// Set `server.<key>`.
    pub fn server(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.object("server").insert(key.to_string(), value.into());
        self
    }

    /// Set `<key>` on the first listener (e.g. `h2c`, `ip_rules`).
    pub fn listener(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Some(Value::Object(first)) = self.list("listeners").first_mut() {
            first.insert(key.to_string(), value.into());
        }
        self
    }

    /// A cluster of `backends` (`ip:port`), round robin, defaults otherwise.
    pub fn cluster(self, name: &str, backends: &[&str]) -> Self {
        let backends: Vec<Value> = backends.iter().map(|a| json!({"address": a})).collect();
        self.cluster_with(name, json!({ "backends": backends }))
    }

    /// A cluster with its whole section given (`name` is added).
    pub fn cluster_with(mut self, name: &str, mut cluster: Value) -> Self {
        cluster["name"] = json!(name);
        self.list("clusters").push(cluster);
        self
    }

    /// A route proxying requests under `prefix` to `cluster`.
    pub fn proxy_route(self, name: &str, prefix: &str, cluster: &str) -> Self {
        self.route(json!({
            "name": name,
            "match": {"path": {"prefix": prefix}},
            "proxy": {"cluster": cluster},
        }))
    }

    /// A route with its whole section given.
    pub fn route(mut self, route: Value) -> Self {
        self.list("routes").push(route);
        self
    }

    /// A consumer with API keys given by their SHA-256 (`hash_key`).
    pub fn consumer(mut self, name: &str, key_hashes: &[String]) -> Self {
        let keys: Vec<Value> = key_hashes.iter().map(|h| json!({"sha256": h})).collect();
        self.list("consumers")
            .push(json!({"name": name, "api_keys": keys}));
        self
    }

    /// An entry of `limits`.
    pub fn limit(mut self, limit: Value) -> Self {
        self.list("limits").push(limit);
        self
    }

    /// Set a whole top-level section (`ai`, `auth`, ...).
    pub fn section(mut self, name: &str, value: Value) -> Self {
        self.root.insert(name.to_string(), value);
        self
    }

    /// The config as YAML text.
    pub fn yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.root).expect("a JSON tree renders as YAML")
    }

    fn object(&mut self, name: &str) -> &mut Map<String, Value> {
        let entry = self
            .root
            .entry(name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        entry.as_object_mut().expect("made an object above")
    }

    fn list(&mut self, name: &str) -> &mut Vec<Value> {
        let entry = self
            .root
            .entry(name.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entry.is_array() {
            *entry = Value::Array(Vec::new());
        }
        entry.as_array_mut().expect("made an array above")
    }
}
