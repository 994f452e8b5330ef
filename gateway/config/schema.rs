//! The YAML schema: strict serde structs that mirror `conf/gateway.yaml`. Nothing here is used at run time;
//! `compile.rs` turns these into the runtime model.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, HumanDuration};

/// `server:` process-wide settings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads per listener (default: number of CPUs).
    pub threads: Option<usize>,
    /// Let idle threads steal work queued on busy ones (default `false`: each thread runs its own
    /// connections to completion, as NGINX workers do, which costs less CPU per request).
    pub work_stealing: Option<bool>,
    /// Once the listeners closed, how long in-flight requests get to finish at most (default `10s`); the
    /// process exits as soon as they have.
    pub grace_period: Option<HumanDuration>,
    /// On SIGTERM, how long to keep accepting with `/readyz` answering 503 before the listeners close, so
    /// load balancers take the instance out first (default `0s`).
    pub shutdown_delay: Option<HumanDuration>,
    /// After the grace period, how long runtimes get to stop (default `5s`).
    pub graceful_shutdown_timeout: Option<HumanDuration>,
    /// PID file, also used by `--daemon` (default `/tmp/gateway.pid`).
    pub pid_file: Option<String>,
    /// Socket the old process hands its listeners over for `--upgrade` (default `/tmp/gateway_upgrade.sock`).
    pub upgrade_sock: Option<String>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` and `X-Request-ID` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest request body a route accepts unless it says otherwise (default `10MiB`).
    pub max_body_size: Option<ByteSize>,
    /// Idle upstream connections kept per process (default 128).
    pub upstream_keepalive_pool: Option<usize>,
    /// Where access log lines go.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// How request targets and headers are made canonical before routing.
    #[serde(default)]
    pub normalize: NormalizeSection,
    /// The whole HTTP/1 request head must arrive within this (default `60s`; NGINX's
    /// `client_header_timeout`): a client that drips it byte by byte is answered 408 and closed.
    pub client_header_timeout: Option<HumanDuration>,
    /// Longest wait for each read of a request body (default `60s`; NGINX's `client_body_timeout`); 408.
    pub client_body_timeout: Option<HumanDuration>,
    /// Largest HTTP/1 request head (default `64KiB`); larger gets 431.
    pub max_header_size: Option<ByteSize>,
    /// Most header fields in a request (default 100); more gets 431.
    pub max_headers: Option<usize>,
    /// Concurrent connections one client address may hold (default 512; 0: no cap). Trusted proxies are
    /// exempt. Over it, a connection is answered 429 and closed.
    pub max_connections_per_ip: Option<u32>,
}

/// `server.normalize:` the request normaliser's policies (NGINX's `merge_slashes` and
/// `underscores_in_headers`, Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NormalizeSection {
    /// Merge repeated slashes (`//a` is `/a`) before routing and forwarding (default `true`).
    pub merge_slashes: Option<bool>,
    /// `%2F`, `%5C` and `\` in a path: `reject` with 400 (default) or `keep` them encoded.
    pub escaped_slashes: Option<EscapedSlashesSection>,
    /// Header names with `_`: `drop` (default, as NGINX), `reject` with 400, or `allow`.
    pub underscores_in_headers: Option<UnderscoresSection>,
}

/// `server.normalize.escaped_slashes`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesSection {
    Reject,
    Keep,
}

/// `server.normalize.underscores_in_headers`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoresSection {
    Drop,
    Reject,
    Allow,
}

/// `server.access_log:` one JSON line per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `stdout`, `off`, or a file path (appended to).
    #[serde(default = "default_access_log_target")]
    pub target: String,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            target: default_access_log_target(),
        }
    }
}

fn default_access_log_target() -> String {
    "stdout".to_string()
}

/// `admin:` the loopback listener for `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `ip:port`, e.g. `127.0.0.1:9901`.
    pub address: String,
}

/// `listeners[]:` one socket the gateway accepts connections on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:8443`.
    pub address: String,
    /// Accept HTTP/2 without TLS (prior knowledge) as well as HTTP/1.1 (plain listeners only).
    #[serde(default)]
    pub h2c: bool,
    /// Terminate TLS on this listener.
    pub tls: Option<TlsSection>,
    /// Answer every request on this (plain) listener with a redirect to HTTPS.
    pub redirect_https: Option<RedirectHttpsSection>,
    /// Client addresses allowed or denied on this listener (checked before routing).
    pub ip_rules: Option<IpRulesSection>,
}

/// `listeners[].tls:` certificates chosen by SNI, plus a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate/key pairs; the one marked `default` (else the first) answers unknown or absent SNI.
    pub certificates: Vec<CertificateSection>,
    /// Offer HTTP/2 through ALPN (default true).
    #[serde(default = "default_true")]
    pub h2: bool,
    /// Ask clients for a certificate (mTLS), verified against a CA bundle.
    pub client_auth: Option<ClientAuthSection>,
    /// Stateless session resumption with rotating ticket keys (default true).
    #[serde(default = "default_true")]
    pub session_tickets: bool,
}

/// `listeners[].tls.client_auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSection {
    /// PEM bundle of the CAs that issue client certificates.
    pub ca_file: String,
    /// Refuse the handshake without a valid client certificate (default true); false only asks for one.
    #[serde(default = "default_true")]
    pub required: bool,
}

/// `ip_rules` of a listener or route: CIDRs or addresses; deny wins, and a non-empty allow list admits only its members.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IpRulesSection {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `listeners[].tls.certificates[]:` one PEM certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate answers: exact (`api.example.com`) or wildcard (`*.example.com`).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Answer connections whose SNI matches no certificate (or carry none).
    #[serde(default)]
    pub default: bool,
    /// If the files are missing, generate a self-signed development certificate for `localhost` there.
    #[serde(default)]
    pub self_signed_if_missing: bool,
}

/// `listeners[].redirect_https:` send plain-HTTP clients to the HTTPS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttpsSection {
    /// HTTPS port to put in the Location (omitted when 443).
    #[serde(default = "default_https_port")]
    pub port: u16,
    /// 301, 302, 307 or 308 (default 308, which keeps the method and body).
    #[serde(default = "default_redirect_https_status")]
    pub status: u16,
}

fn default_https_port() -> u16 {
    443
}

fn default_redirect_https_status() -> u16 {
    308
}

fn default_true() -> bool {
    true
}

/// `clusters[]:` a named group of upstream backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Unique name routes refer to.
    pub name: String,
    /// The servers: `host:port` (names are resolved in the background) with optional weights.
    pub backends: Vec<BackendSection>,
    /// `round_robin` (weighted, the default) or `consistent_hash`.
    #[serde(default)]
    pub load_balancing: LoadBalancingSection,
    /// For `consistent_hash`: `client_ip`, `{header: NAME}` or `{cookie: NAME}`.
    pub hash_on: Option<HashOnSection>,
    /// Speak TLS to the backends.
    pub tls: Option<UpstreamTlsSection>,
    /// Active health check run in the background.
    pub health_check: Option<HealthCheckSection>,
    /// Passive ejection of a backend after consecutive failed requests.
    #[serde(default)]
    pub passive_health: PassiveHealthSection,
    /// Extra attempts, on other backends, when connecting fails (default 1).
    pub retries: Option<u32>,
    /// TCP (+TLS) connect timeout (default `3s`).
    pub connect_timeout: Option<HumanDuration>,
    /// Longest wait for each read from the backend, including the response head (default `60s`).
    pub read_timeout: Option<HumanDuration>,
    /// How long an idle pooled connection to a backend is kept (default `60s`).
    pub idle_timeout: Option<HumanDuration>,
    /// How often backend host names are resolved again (default `30s`).
    pub dns_refresh: Option<HumanDuration>,
}

/// `clusters[].backends[]:` one upstream server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// `ip:port` or `host:port`.
    pub address: String,
    /// Relative share of traffic (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `clusters[].load_balancing`.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancingSection {
    /// Smooth weighted round robin (NGINX's default).
    #[default]
    RoundRobin,
    /// Ketama ring: the same key goes to the same backend while it is healthy.
    ConsistentHash,
}

/// `clusters[].hash_on`: `client_ip`, `{header: NAME}` or `{cookie: NAME}`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(try_from = "HashOnRaw")]
pub enum HashOnSection {
    /// The client address (after trusted-proxy `X-Forwarded-For` processing).
    ClientIp,
    /// The value of this request header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HashOnRaw {
    Keyword(String),
    Map(HashOnMap),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashOnMap {
    header: Option<String>,
    cookie: Option<String>,
}

impl TryFrom<HashOnRaw> for HashOnSection {
    type Error = String;
    fn try_from(raw: HashOnRaw) -> Result<Self, String> {
        match raw {
            HashOnRaw::Keyword(word) if word == "client_ip" => Ok(HashOnSection::ClientIp),
            HashOnRaw::Map(HashOnMap {
                header: Some(name),
                cookie: None,
            }) => Ok(HashOnSection::Header(name)),
            HashOnRaw::Map(HashOnMap {
                header: None,
                cookie: Some(name),
            }) => Ok(HashOnSection::Cookie(name)),
            _ => Err("write `client_ip`, `{header: NAME}` or `{cookie: NAME}`".to_string()),
        }
    }
}

/// `clusters[].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name sent in SNI and verified against the backend's certificate (default: the backend host).
    pub sni: Option<String>,
    /// PEM bundle of CAs to verify the backend with (default: the system store).
    pub ca_file: Option<String>,
    /// Verify the backend's certificate chain and name (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// `clusters[].health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `http` (default) or `tcp`.
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// HTTP path to GET (default `/`).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Host header for HTTP checks (default: the backend address).
    pub host: Option<String>,
    /// Status codes that count as healthy (default `[200]`).
    #[serde(default = "default_expected_status")]
    pub expected_status: Vec<u16>,
    /// Time between checks (default `5s`).
    pub interval: Option<HumanDuration>,
    /// Connect + response timeout of one check (default `1s`).
    pub timeout: Option<HumanDuration>,
    /// Consecutive passes to mark a backend healthy again (default 1).
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures to mark a backend unhealthy (default 2).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// `clusters[].health_check.type`.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

fn default_health_path() -> String {
    "/".to_string()
}

fn default_expected_status() -> Vec<u16> {
    vec![200]
}

fn default_threshold() -> u32 {
    1
}

fn default_unhealthy_threshold() -> u32 {
    2
}

/// `clusters[].passive_health`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthSection {
    /// Consecutive failures (connect errors, timeouts, 502/503/504) that eject a backend; 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long an ejected backend gets no traffic (default `10s`).
    pub cooldown: Option<HumanDuration>,
}

impl Default for PassiveHealthSection {
    fn default() -> Self {
        PassiveHealthSection {
            consecutive_failures: default_consecutive_failures(),
            cooldown: None,
        }
    }
}

fn default_consecutive_failures() -> u32 {
    3
}

/// `routes[]:` match a request, then do one action with it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// What the request must look like; an empty match takes everything.
    #[serde(rename = "match", default)]
    pub matcher: MatchSection,
    /// Action: forward to a cluster.
    pub proxy: Option<ProxySection>,
    /// Action: answer with a redirect.
    pub redirect: Option<RedirectSection>,
    /// Action: answer with a fixed response.
    pub respond: Option<RespondSection>,
    /// Action: serve the OpenAI-compatible AI API.
    pub ai: Option<AiRouteSection>,
    /// Header changes on the way to the upstream.
    #[serde(default)]
    pub request_headers: HeaderRewriteSection,
    /// Header changes on the way back to the client.
    #[serde(default)]
    pub response_headers: HeaderRewriteSection,
    /// Per-route timeouts (override the cluster's).
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// Largest accepted request body (default `server.max_body_size`); larger gets 413.
    pub max_body_size: Option<ByteSize>,
    /// Who may use the route (anonymous when absent).
    pub auth: Option<RouteAuthSection>,
    /// Names of `limits` policies applied to the route, all of them.
    #[serde(default)]
    pub limits: Vec<String>,
    /// Client addresses allowed or denied on this route.
    pub ip_rules: Option<IpRulesSection>,
}

/// `routes[].auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSection {
    /// Accepted credentials, any of: `api_key`, `jwt`, `mtls`.
    pub methods: Vec<AuthMethodSection>,
    /// Only these consumers may pass (403 otherwise).
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Only consumers in one of these groups may pass (403 otherwise).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `routes[].auth.methods[]`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodSection {
    ApiKey,
    Jwt,
    Mtls,
}

/// `routes[].match`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Host names: exact (`api.example.com`) or wildcard (`*.example.com`); any when empty.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// One of `{exact: /p}`, `{prefix: /p}`, `{regex: '^/p/\d+$'}`.
    pub path: Option<PathMatchSection>,
    /// Methods (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Every listed header must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatchSection>,
}

/// `routes[].match.path`: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Deserialize, Clone)]
#[serde(try_from = "PathMatchRaw")]
pub enum PathMatchSection {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatchRaw {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

impl TryFrom<PathMatchRaw> for PathMatchSection {
    type Error = &'static str;
    fn try_from(raw: PathMatchRaw) -> Result<Self, Self::Error> {
        match (raw.exact, raw.prefix, raw.regex) {
            (Some(p), None, None) => Ok(PathMatchSection::Exact(p)),
            (None, Some(p), None) => Ok(PathMatchSection::Prefix(p)),
            (None, None, Some(r)) => Ok(PathMatchSection::Regex(r)),
            _ => Err("give exactly one of `exact`, `prefix` or `regex`"),
        }
    }
}

/// `routes[].match.headers[]`: give `value` (exact) or `regex`, or neither to require presence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSection {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

/// `routes[].proxy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Name of the cluster to forward to.
    pub cluster: String,
    /// Remove the matched path prefix before forwarding (prefix routes).
    #[serde(default)]
    pub strip_prefix: bool,
    /// New path: replaces the matched prefix (prefix routes), the whole path (exact routes), or is a
    /// replacement with `$1` captures (regex routes).
    pub rewrite: Option<String>,
    /// Send the client's target as it came instead of the normalised one (unsafe: the backend may
    /// resolve `..` or `%2e%2e` to a path the route did not match). Routing still uses the normalised
    /// path. Not with `strip_prefix` or `rewrite`.
    #[serde(default)]
    pub forward_raw_path: bool,
    /// Idempotent requests whose backend times out before answering go to another backend (NGINX's
    /// `proxy_next_upstream timeout`; default `true`), within the cluster's `retries`.
    pub retry_on_timeout: Option<bool>,
}

/// `routes[].redirect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// Location; `{host}` and `{uri}` (path and query) are substituted.
    pub to: String,
    /// 301, 302, 303, 307 or 308 (default 302).
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// `routes[].respond`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    /// Status code (default 200).
    #[serde(default = "default_respond_status")]
    pub status: u16,
    /// Body text (default empty).
    #[serde(default)]
    pub body: String,
    /// Content-Type (default `text/plain; charset=utf-8`).
    pub content_type: Option<String>,
}

fn default_respond_status() -> u16 {
    200
}

/// `routes[].request_headers` / `routes[].response_headers`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewriteSection {
    /// Appended (keeps existing values).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replaces any existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `routes[].timeouts`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// TCP (+TLS) connect.
    pub connect: Option<HumanDuration>,
    /// Each read from the upstream, including the wait for the response head.
    pub read: Option<HumanDuration>,
    /// The whole upstream exchange, from connect to the last body byte.
    pub total: Option<HumanDuration>,
}

/// `consumers[]`: a caller the gateway knows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    /// Unique name; forwarded upstream and logged.
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys, stored as hashes only.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySection>,
    /// Client-certificate identities (subject CN, a SAN, or the full subject) that are this consumer.
    #[serde(default)]
    pub mtls_identities: Vec<String>,
    /// What this consumer may use on AI routes (on top of the route's own restrictions).
    #[serde(default)]
    pub ai: ConsumerAiSection,
}

/// `consumers[].ai`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumerAiSection {
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub allowed_profiles: Vec<String>,
}

/// `consumers[].api_keys[]`: `{sha256: HEX}` (from `gateway hash-key`), or `{env: NAME}` to hash the key held in
/// that environment variable at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    pub sha256: Option<String>,
    pub env: Option<String>,
    /// With `env`: when the variable is unset or empty, generate a random key at start and print it once.
    #[serde(default)]
    pub generate_if_unset: bool,
}

/// `auth:` how credentials are presented and verified.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub api_key: ApiKeyLookupSection,
    /// JWT issuers, each with pinned algorithms and keys.
    #[serde(default)]
    pub jwt_issuers: Vec<JwtIssuerSection>,
    /// Headers that carry the identity upstream.
    #[serde(default)]
    pub forward: ForwardIdentitySection,
}

/// `auth.api_key`: besides `Authorization: Bearer KEY`, where keys may be presented.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyLookupSection {
    /// Request headers holding the key (default `[x-api-key]`).
    #[serde(default = "default_api_key_headers")]
    pub headers: Vec<String>,
    /// Query parameter holding the key (none by default; keys in URLs end up in logs elsewhere).
    pub query_param: Option<String>,
}

impl Default for ApiKeyLookupSection {
    fn default() -> Self {
        ApiKeyLookupSection {
            headers: default_api_key_headers(),
            query_param: None,
        }
    }
}

fn default_api_key_headers() -> Vec<String> {
    vec!["x-api-key".to_string()]
}

/// `auth.forward`: identity headers sent upstream (client-sent copies are always removed).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardIdentitySection {
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    #[serde(default = "default_groups_header")]
    pub groups_header: String,
}

impl Default for ForwardIdentitySection {
    fn default() -> Self {
        ForwardIdentitySection {
            consumer_header: default_consumer_header(),
            groups_header: default_groups_header(),
        }
    }
}

fn default_consumer_header() -> String {
    "x-consumer-id".to_string()
}

fn default_groups_header() -> String {
    "x-consumer-groups".to_string()
}

/// `auth.jwt_issuers[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerSection {
    pub name: String,
    /// Required `iss` claim; also picks this issuer for tokens that carry it.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must be present) when given.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Pinned algorithms, e.g. `[RS256]`; a token with any other `alg` is rejected.
    pub algorithms: Vec<String>,
    /// HMAC secret (HS*), normally `${ENV}`.
    pub secret: Option<String>,
    /// File holding the HMAC secret.
    pub secret_file: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_files: Vec<String>,
    /// JWKS document on disk.
    pub jwks_file: Option<String>,
    /// JWKS URL fetched in the background (`http://` or `https://`).
    pub jwks_url: Option<String>,
    /// How long a fetched JWKS is used before it is fetched again (default `10m`).
    pub jwks_cache_ttl: Option<HumanDuration>,
    /// Least time between refetches caused by an unknown `kid` (default `30s`).
    pub jwks_min_refetch: Option<HumanDuration>,
    /// Clock skew allowed on `exp` and `nbf` (default `30s`).
    pub leeway: Option<HumanDuration>,
    /// Claim naming the consumer (default `sub`).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
}

fn default_consumer_claim() -> String {
    "sub".to_string()
}

/// `limits[]`: a named rate or concurrency policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    pub name: String,
    /// `N/second`, `N/minute`, `N/hour` or `N/day` (also `N/s`, `N/m`, `N/h`, `N/d`).
    pub rate: Option<String>,
    /// Requests allowed at once before the rate applies (default: N of the rate).
    pub burst: Option<u32>,
    /// Concurrent requests in flight per key.
    pub max_in_flight: Option<u32>,
    /// What the limit is counted by: `consumer` (default; anonymous requests count by client IP), `client_ip`,
    /// `route`, or `{header: NAME}`.
    #[serde(default)]
    pub key: LimitKeySection,
}

/// `limits[].key`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(try_from = "LimitKeyRaw")]
pub enum LimitKeySection {
    #[default]
    Consumer,
    ClientIp,
    Route,
    Header(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LimitKeyRaw {
    Keyword(String),
    Header { header: String },
}

impl TryFrom<LimitKeyRaw> for LimitKeySection {
    type Error = String;
    fn try_from(raw: LimitKeyRaw) -> Result<Self, String> {
        match raw {
            LimitKeyRaw::Keyword(word) => match word.as_str() {
                "consumer" => Ok(LimitKeySection::Consumer),
                "client_ip" => Ok(LimitKeySection::ClientIp),
                "route" => Ok(LimitKeySection::Route),
                other => Err(format!(
                    "`{other}`: write `consumer`, `client_ip`, `route` or `{{header: NAME}}`"
                )),
            },
            LimitKeyRaw::Header { header } => Ok(LimitKeySection::Header(header)),
        }
    }
}

/// `ai:` providers, the model catalog and how models are chosen.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AiSection {
    /// Largest request body on AI routes (default `10MiB`).
    pub max_body_size: Option<ByteSize>,
    /// Largest plain answer the gateway holds whole to mask secrets (default `64MiB`); larger gets 502.
    pub max_answer_size: Option<ByteSize>,
    /// Most candidates tried for one request (default 3).
    pub attempts: Option<u32>,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    /// Other names for catalog models.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Named, ordered candidate lists: the first healthy one answers, the rest are the fallback chain.
    /// Either a list of models, or `{models: [...], system_prompt: {mode, text}}`.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSection>,
    /// Profile used for `model: "auto"` when nothing else decides (default `default`).
    pub auto_profile: Option<String>,
    /// Heuristic rules for `model: "auto"`, evaluated in order; the first match names the profile.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// Request guards of every AI route.
    #[serde(default)]
    pub guards: GuardsSection,
}

/// `ai.profiles.NAME`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ProfileSection {
    Models(Vec<String>),
    Detailed(DetailedProfileSection),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailedProfileSection {
    pub models: Vec<String>,
    /// Used for requests of this profile unless the route sets its own.
    pub system_prompt: Option<SystemPromptSection>,
}

impl ProfileSection {
    pub fn models(&self) -> &[String] {
        match self {
            ProfileSection::Models(models) => models,
            ProfileSection::Detailed(detailed) => &detailed.models,
        }
    }

    pub fn system_prompt(&self) -> Option<&SystemPromptSection> {
        match self {
            ProfileSection::Models(_) => None,
            ProfileSection::Detailed(detailed) => detailed.system_prompt.as_ref(),
        }
    }
}

/// `ai.rules[]`: a name, a profile, and exactly one condition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: String,
    pub profile: String,
    /// Estimated prompt tokens (4 bytes a token) above this.
    pub prompt_tokens_over: Option<usize>,
    /// A regex matched against every message text, e.g. `(?i)explain why|step by step|prove`.
    pub keywords: Option<String>,
    /// Words or phrases, any of which in a message text matches (case-insensitive, whole words in
    /// scripts that separate words with spaces: `prove` does not match `improve`).
    #[serde(default)]
    pub words: Vec<String>,
    /// The request offers tools.
    pub has_tools: Option<bool>,
    /// A message carries an image.
    pub has_images: Option<bool>,
    /// A PII detector fired.
    pub pii_detected: Option<bool>,
    /// A request header has this value.
    pub header: Option<HeaderEqualsSection>,
}

/// `{name, value}` of a header condition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEqualsSection {
    pub name: String,
    pub value: String,
}

/// `ai.guards`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuardsSection {
    /// Built-in PII detectors and their action: `mask`, `reject` or `route_local`. Detectors: `email`, `phone`,
    /// `us_ssn`, `kr_rrn`, `credit_card` (Luhn-checked), `ip_address`, `api_key`.
    #[serde(default)]
    pub pii: BTreeMap<String, PiiActionSection>,
    /// Your own detectors.
    #[serde(default)]
    pub custom_pii: Vec<CustomPiiSection>,
    /// Prompts matching any of these regexes are refused (400 `prompt_denied`).
    #[serde(default)]
    pub deny_patterns: Vec<String>,
    /// Tool allowlist: request tools outside it are rejected or stripped.
    pub tools: Option<ToolsSection>,
    /// A system prompt for every request (a route's `ai.system_prompt` overrides it).
    pub system_prompt: Option<SystemPromptSection>,
    /// Secrets masked in completions (on by default).
    #[serde(default)]
    pub response_secrets: ResponseSecretsSection,
}

/// `ai.guards.response_secrets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSecretsSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More regexes to mask (replaced by `[REDACTED]`).
    #[serde(default)]
    pub custom: Vec<String>,
}

impl Default for ResponseSecretsSection {
    fn default() -> Self {
        ResponseSecretsSection {
            enabled: true,
            custom: Vec::new(),
        }
    }
}

/// `mask`, `reject` or `route_local`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PiiActionSection {
    Mask,
    Reject,
    RouteLocal,
}

/// `ai.guards.custom_pii[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPiiSection {
    pub name: String,
    pub regex: String,
    pub action: PiiActionSection,
}

/// `ai.guards.tools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    pub allow: Vec<String>,
    /// `reject` (default, 403 `tool_not_allowed`) or `strip`.
    #[serde(default)]
    pub on_violation: ToolViolationSection,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolViolationSection {
    #[default]
    Reject,
    Strip,
}

/// `system_prompt`: `{mode: prepend|replace, text}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPromptSection {
    #[serde(default)]
    pub mode: PromptModeSection,
    pub text: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptModeSection {
    #[default]
    Prepend,
    Replace,
}

/// `ai.providers[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    /// `openai` (any OpenAI-compatible API), `anthropic` (Messages API), `gemini` (generateContent),
    /// `bedrock` (Converse, signed with AWS credentials from the environment) or `mock` (answers locally).
    #[serde(rename = "type")]
    pub kind: ProviderKindSection,
    /// E.g. `https://api.openai.com/v1`; with `deployments`, their default. `anthropic` and `gemini` default to
    /// their public APIs (`https://api.anthropic.com/v1`, `https://generativelanguage.googleapis.com/v1beta`).
    pub base_url: Option<String>,
    /// Normally `${VAR:-}`: when it ends up empty the provider is disabled with a warning. Omit for local servers
    /// and for `bedrock` (it signs with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`).
    pub api_key: Option<String>,
    /// `bedrock`: the AWS region (signing, and the default base URL `https://bedrock-runtime.<region>.amazonaws.com`).
    pub region: Option<String>,
    /// Extra request headers (values may use `${ENV}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Several endpoints or keys, load-balanced (default: one from `base_url`/`api_key`).
    #[serde(default)]
    pub deployments: Vec<DeploymentSection>,
    /// Active check of each deployment, e.g. `{path: /models, expected_status: [200, 401]}` (path is under the base URL).
    pub health_check: Option<HealthCheckSection>,
    /// Circuit breaker: opens after consecutive failures, half-opens after the cooldown.
    #[serde(default)]
    pub circuit_breaker: PassiveHealthSection,
    #[serde(default)]
    pub timeouts: AiTimeoutsSection,
    /// For `type: mock`.
    #[serde(default)]
    pub mock: MockProviderSection,
}

/// `ai.providers[].type`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKindSection {
    Openai,
    Anthropic,
    Gemini,
    Bedrock,
    Mock,
}

/// `ai.models[].max_tokens_field`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensFieldSection {
    MaxTokens,
    MaxCompletionTokens,
}

/// `ai.providers[].deployments[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `ai.providers[].timeouts`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AiTimeoutsSection {
    /// TCP + TLS connect (default `5s`).
    pub connect: Option<HumanDuration>,
    /// Until the response head, and between streamed chunks (default `60s`).
    pub first_byte: Option<HumanDuration>,
    /// The whole exchange (default `10m`).
    pub total: Option<HumanDuration>,
}

/// `ai.providers[].mock`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MockProviderSection {
    /// Chunks of a streamed answer (default 4).
    pub chunks: Option<usize>,
    /// Pause between streamed chunks (default none).
    pub chunk_delay: Option<HumanDuration>,
}

/// `ai.models[]`: a public model name and where it runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub provider: String,
    /// The provider's id for it (default: `name`).
    pub upstream_model: Option<String>,
    pub context_window: Option<u64>,
    /// `max_tokens` sent to providers that require one (`type: anthropic` and `bedrock`) when the client
    /// gave none (default 4096).
    pub max_tokens: Option<u64>,
    /// `type: openai` providers: the name the output cap goes under. OpenAI's reasoning models refuse
    /// `max_tokens` and take `max_completion_tokens` (default `max_tokens`, as the client sent it).
    pub max_tokens_field: Option<MaxTokensFieldSection>,
    /// USD per 1M input tokens.
    pub input_price: Option<f64>,
    /// USD per 1M output tokens.
    pub output_price: Option<f64>,
    /// USD per 1M prompt tokens read from the provider's prompt cache (default: `input_price`).
    pub cache_read_price: Option<f64>,
    /// USD per 1M prompt tokens written to the provider's prompt cache (default: `input_price`).
    pub cache_write_price: Option<f64>,
    /// Any of `tools`, `vision`, `reasoning`, `long_context`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The data stays in-house (local servers).
    #[serde(default)]
    pub local: bool,
}

/// `routes[].ai`: the OpenAI-compatible endpoint family (`.../chat/completions`, `/embeddings`, `/completions`,
/// `/models`) and Anthropic's Messages API (`.../messages`, `/messages/count_tokens`) under the route's path.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AiRouteSection {
    /// Only these models (or aliases of them) may be used here (default: all).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Only these profiles may be used here (default: all).
    #[serde(default)]
    pub allowed_profiles: Vec<String>,
    /// System prompt for this route (overrides `ai.guards.system_prompt`).
    pub system_prompt: Option<SystemPromptSection>,
}
