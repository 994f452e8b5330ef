//! Shared harness for the integration tests: free loopback ports, a test CA issuing certificates, the
//! real gateway binary started on a written config (and stopped on drop), HTTP clients, and
//! `eventually` for asynchronous effects such as health checks.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;

mod config;
#[allow(unused_imports)]
pub use config::TestConfig;

/// A port that was free a moment ago on 127.0.0.1.
///
/// Never the same port twice in one test process: the kernel may hand a port it just gave out (and that was
/// closed again) to the next caller, and then two tests' gateways would race for it — the loser exits while
/// the winner's admin listener answers the loser's readiness check.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Ports of the standard test listeners.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            http: free_port(),
            https: free_port(),
            admin: free_port(),
        }
    }
}

/// A config file and its directory (certificates, logs, pid file live there too).
pub struct TestDir {
    pub dir: TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `server:` and `admin:` sections with per-test pid/upgrade/access-log files, plus `extra`.
    pub fn server_section(&self, ports: &Ports, extra: &str) -> String {
        format!(
            r#"
server:
  threads: 1
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {pid}
  upgrade_sock: {sock}
  access_log: {{ target: {log} }}
{extra}
admin:
  address: 127.0.0.1:{admin}
"#,
            pid = self.path("gateway.pid").display(),
            sock = self.path("upgrade.sock").display(),
            log = self.path("access.log").display(),
            admin = ports.admin,
        )
    }

    /// A whole config with one plain listener on `ports.http`, and the given clusters/routes YAML.
    pub fn plain_config(&self, ports: &Ports, body: &str) -> String {
        self.plain_config_with(ports, "", "", body)
    }

    /// `plain_config` with more `server:` lines (`server_extra`, indented by two spaces) and more keys of
    /// the listener (`listener_extra`, e.g. `, h2c: true`).
    pub fn plain_config_with(
        &self,
        ports: &Ports,
        server_extra: &str,
        listener_extra: &str,
        body: &str,
    ) -> String {
        format!(
            "{}\nlisteners:\n  - {{ name: http, address: \"127.0.0.1:{}\"{listener_extra} }}\n{body}",
            self.server_section(ports, server_extra),
            ports.http
        )
    }

    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.path("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.path("access.log")).unwrap_or_default()
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }
}

/// The gateway binary running on a config in a `TestDir`; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub ports: Ports,
}

impl Gateway {
    /// Write `yaml`, start `gateway run`, wait until `/readyz` answers 200.
    pub async fn start(dir: &TestDir, ports: Ports, yaml: &str) -> Gateway {
        Self::start_with_env(dir, ports, yaml, &[]).await
    }

    /// `start` with extra environment variables for the gateway process.
    pub async fn start_with_env(
        dir: &TestDir,
        ports: Ports,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config = dir.write_config(yaml);
        let log = std::fs::File::create(dir.path("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "-c"])
            .arg(&config)
            .current_dir(dir.dir.path())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gateway binary starts");
        let gateway = Gateway { child, ports };
        let ready = format!("http://127.0.0.1:{}/readyz", ports.admin);
        let client = client();
        let started = eventually(Duration::from_secs(30), || async {
            matches!(client.get(&ready).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(
            started,
            "gateway did not become ready; its log:\n{}",
            dir.gateway_log()
        );
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The clients use rustls with ring, like the gateway.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Run the gateway binary with `args` followed by `-c config`; returns (success, stderr).
pub fn gateway_cli(args: &[&str], config: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A client that reports redirects instead of following them.
pub fn no_redirect_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Plain HTTP client that does not pool connections across tests' expectations.
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// HTTPS client trusting only `ca_pem`, resolving the given names to loopback addresses.
pub fn tls_client(ca_pem: &str, names: &[(&str, SocketAddr)], http1_only: bool) -> reqwest::Client {
    tls_client_with_identity(ca_pem, names, http1_only, None)
}

/// `tls_client` that also presents a client certificate (PEM chain and key files) for mTLS.
pub fn tls_client_with_identity(
    ca_pem: &str,
    names: &[(&str, SocketAddr)],
    http1_only: bool,
    identity: Option<(&Path, &Path)>,
) -> reqwest::Client {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(config);
    for (name, addr) in names {
        builder = builder.resolve(name, *addr);
    }
    builder.build().unwrap()
}

use rustls_pki_types::pem::PemObject;

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issue a server certificate for `names`, written as `<stem>.crt` / `<stem>.key` in `dir`.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        self.issue_with(names, dir, stem, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issue a client certificate (for mTLS) for `names`.
    pub fn issue_client(&self, names: &[&str], dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        self.issue_with(names, dir, stem, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue_with(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// Poll `check` every 50 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET and return (status, body).
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The Prometheus value of a metric line that starts with `prefix` (name and labels), or 0.
pub fn metric_value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `gateway hash-key` on `key`, as an operator would run it.
pub fn hash_key(key: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The text of every `choices[0].delta.content` in a raw SSE body, joined.
pub fn sse_content(raw: &str) -> String {
    raw.split(['\n', '\r'])
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// How many whole responses (head and Content-Length body) `bytes` holds.
pub fn complete_responses(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(bytes) else {
            return count;
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if bytes.len() < head + length {
            return count;
        }
        count += 1;
        bytes = &bytes[head + length..];
    }
}

/// Run a Python SDK script with `args`: the SDKs' virtual environment from `.ci/setup`, or a system Python
/// that has them. Each line it prints is one JSON value. A failing script fails the test, with its stderr.
pub async fn run_sdk_script(script: PathBuf, args: Vec<String>) -> Vec<serde_json::Value> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    let python = if venv.exists() {
        venv.into_os_string()
    } else {
        "python3".into()
    };
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed (run `.ci/setup`, which installs the SDKs into target/sdk-venv):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One mock LLM per native format and an OpenAI-compatible one: `claude` (Anthropic), `gem` (Gemini), `aws`
/// (Bedrock) and `local`.
pub async fn every_kind_of_provider() -> [loadtest::MockLlm; 4] {
    use loadtest::{MockLlm, Speaks};
    [
        MockLlm::start_speaking("claude", Speaks::Anthropic)
            .await
            .unwrap(),
        MockLlm::start_speaking("gem", Speaks::Gemini)
            .await
            .unwrap(),
        MockLlm::start_speaking("aws", Speaks::Bedrock)
            .await
            .unwrap(),
        MockLlm::start("local").await.unwrap(),
    ]
}
