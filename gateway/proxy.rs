//! The Pingora `ProxyHttp` implementation of the edge path: the phases only, calling into the layers
//! (`edge/` for routing and client identity, `upstream/` for backend choice, `observe/` for logs/metrics).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, LOCATION};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::ai::relay::{serve as serve_ai, AiOutcome, AiRequest};
use crate::edge::auth::{redacted_path, AuthFailure, Authenticated};
use crate::edge::client::{client_ip, request_id};
use crate::edge::connection::request_done;
use crate::edge::limits::{
    counter_key, now_ns, Decision, InFlight, InFlightGuard, LimitKey, LimitPolicy, Limiter,
};
use crate::edge::mtls::ClientIdentity;
use crate::edge::normalize::{declared_length, normalize_request, Malformed};
use crate::edge::routes::{normalize_host, PathRewrite, Route, RouteAction};
use crate::error::{Dialect, ErrorKind, Rejection};
use crate::observe::access_log::{self, AccessRecord};
use crate::observe::admin::DRAINING;
use crate::observe::metrics::METRICS;
use crate::respond::{self, drain_small_h2_body, Decor};
use crate::runtime::{ListenerSpec, Runtime};
use crate::upstream::cluster::{Cluster, HashOn};
use crate::upstream::peer::{http_peer, PeerTimeouts};

// Names as `&'static str` for Pingora's `insert_header`: given a `HeaderName`, it first copies the name into a
// new buffer for its spelling map; a static string is used as it is. The `HeaderName`s, for lookups, are
// built from the same strings.
const X_REQUEST_ID_NAME: &str = "x-request-id";
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
const X_FORWARDED_HOST_NAME: &str = "x-forwarded-host";
static X_REQUEST_ID: HeaderName = HeaderName::from_static(X_REQUEST_ID_NAME);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(X_FORWARDED_FOR_NAME);
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO_NAME);
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(X_FORWARDED_HOST_NAME);

/// The proxy of one listener.
pub struct EdgeProxy {
    pub listener: ListenerSpec,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub limiter: Arc<Limiter>,
}

/// Why the gateway refused a request before proxying it.
#[derive(Debug, Clone)]
enum Refusal {
    Malformed(Malformed),
    IpDenied,
    Auth(AuthFailure),
    Rate {
        policy: Arc<str>,
        decision: Decision,
    },
    Concurrency {
        policy: Arc<str>,
    },
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::IpDenied => 403,
            Refusal::Auth(failure) => failure.status(),
            Refusal::Rate { .. } | Refusal::Concurrency { .. } => 429,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(malformed) => malformed.code(),
            Refusal::IpDenied => "ip_denied",
            Refusal::Auth(failure) => failure.code(),
            Refusal::Rate { .. } => "rate_limited",
            Refusal::Concurrency { .. } => "concurrency_limited",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Refusal::Malformed(malformed) => malformed.message(),
            Refusal::IpDenied => "requests from this address are not allowed here",
            Refusal::Auth(failure) => failure.message(),
            Refusal::Rate { .. } => "rate limit exceeded; retry after the time in Retry-After",
            Refusal::Concurrency { .. } => "too many requests in flight for this caller",
        }
    }

    /// The answer: status, code, message, and the challenge of a 401 or the wait of a 429.
    fn rejection(&self) -> Rejection {
        let rejection = Rejection::new(self.status(), self.code(), self.message());
        match self {
            Refusal::Auth(failure) if failure.status() == 401 => {
                rejection.with_challenge(failure.challenge())
            }
            Refusal::Rate { decision, .. } => rejection.with_retry_after(decision.retry_after_secs),
            Refusal::Concurrency { .. } => rejection.with_retry_after(1),
            _ => rejection,
        }
    }
}

/// Per-request state, kept across retries.
pub struct RequestCtx {
    start: Instant,
    runtime: Option<Arc<Runtime>>,
    request_id: HeaderValue,
    peer_ip: Option<IpAddr>,
    peer_trusted: bool,
    client_ip: Option<IpAddr>,
    route: Option<Arc<Route>>,
    /// The client's target when the normaliser changed it (what `forward_raw_path` routes send).
    raw_target: Option<http::Uri>,
    backend: Option<usize>,
    upstream: Option<SocketAddr>,
    tried: u64,
    attempts: u32,
    body_bytes: u64,
    deadline: Option<Instant>,
    error: Option<ErrorKind>,
    /// The code of the error or refusal the gateway answered (or the AI path reported), for the access log.
    error_code: Option<&'static str>,
    consumer: Option<Authenticated>,
    /// The tightest rate decision, reported in RateLimit-* headers.
    limit_decision: Option<Decision>,
    /// Concurrency slots held until the request is logged.
    in_flight: Vec<InFlightGuard>,
    /// What the AI path decided and did.
    ai: Option<AiOutcome>,
}

impl RequestCtx {
    /// What every answer to this request carries.
    fn decor(&self) -> Decor<'_> {
        let route = self.route.as_deref();
        Decor {
            request_id: &self.request_id,
            limit: self.limit_decision.as_ref(),
            response_headers: route.map(|r| &r.response_headers),
            dialect: route.map_or(Dialect::Gateway, |r| r.dialect),
        }
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.route.as_deref()?.action {
            RouteAction::Proxy { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
}

/// The request's authority: the Host header, or the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

impl EdgeProxy {
    /// Answer from the gateway itself (through the one writer, `respond`).
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
        extra: &[(&HeaderName, &HeaderValue)],
        body: Bytes,
    ) -> Result<()> {
        // Not for a client that stopped sending its body: waiting for it is what failed.
        if ctx.error != Some(ErrorKind::RequestTimeout) {
            drain_small_h2_body(session).await;
        }
        respond::answer(session, &ctx.decor(), status, extra, body).await
    }

    /// Refuse: count it, note its code, answer it in the route's dialect.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<()> {
        let route = ctx.route.as_deref().map_or("_unmatched", |r| &*r.name);
        match &refusal {
            Refusal::Malformed(malformed) => METRICS
                .malformed
                .with_label_values(&[malformed.code()])
                .inc(),
            Refusal::Rate { policy, .. } | Refusal::Concurrency { policy } => {
                METRICS.limited.with_label_values(&[route, policy]).inc()
            }
            other => METRICS
                .auth_failures
                .with_label_values(&[route, other.code()])
                .inc(),
        }
        if let Refusal::Rate { decision, .. } = &refusal {
            ctx.limit_decision = Some(*decision);
        }
        self.reject(session, ctx, &refusal.rejection()).await
    }

    /// Answer a rejection through the one writer; its code goes to the access log.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: &Rejection,
    ) -> Result<()> {
        ctx.error_code = Some(rejection.code);
        if ctx.error != Some(ErrorKind::RequestTimeout) {
            drain_small_h2_body(session).await;
        }
        respond::reject(session, &ctx.decor(), rejection).await
    }

    /// Take a token from every rate policy of the route and a slot from every concurrency policy.
    fn apply_limits(
        &self,
        route: &Route,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> std::result::Result<(), Refusal> {
        let now = now_ns();
        let mut tightest: Option<Decision> = None;
        for policy in &route.limits {
            let key = limit_key(policy, ctx, route, req);
            if let Some(max) = policy.max_in_flight {
                match InFlight::try_acquire(&self.limiter.in_flight, key, max) {
                    Some(guard) => ctx.in_flight.push(guard),
                    None => {
                        return Err(Refusal::Concurrency {
                            policy: policy.name.clone(),
                        })
                    }
                }
            }
            if let Some(rate) = &policy.rate {
                let decision = self.limiter.rates.acquire(key, rate, now);
                if !decision.allowed {
                    return Err(Refusal::Rate {
                        policy: policy.name.clone(),
                        decision,
                    });
                }
                if tightest.is_none_or(|t| decision.remaining < t.remaining) {
                    tightest = Some(decision);
                }
            }
        }
        ctx.limit_decision = tightest;
        Ok(())
    }

    async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kind: ErrorKind,
    ) -> Result<()> {
        ctx.error = Some(kind);
        self.reject(session, ctx, &Rejection::from(kind)).await
    }
}

/// The counter of `policy` this request counts against.
fn limit_key(policy: &LimitPolicy, ctx: &RequestCtx, route: &Route, req: &RequestHeader) -> u64 {
    let mut buf = [0u8; 16];
    // Client addresses use another seed so that no name can collide with an address.
    let by_ip = |buf: &mut [u8; 16]| match ctx.client_ip {
        Some(ip) => counter_key(policy.seed ^ 1, ip_bytes(ip, buf)),
        None => counter_key(policy.seed ^ 1, b""),
    };
    match &policy.key {
        LimitKey::Consumer => match &ctx.consumer {
            Some(found) => counter_key(policy.seed, found.consumer.as_bytes()),
            None => by_ip(&mut buf),
        },
        LimitKey::ClientIp => by_ip(&mut buf),
        LimitKey::Route => counter_key(policy.seed, route.name.as_bytes()),
        LimitKey::Header(name) => match req.headers.get(name) {
            Some(value) => counter_key(policy.seed, value.as_bytes()),
            None => by_ip(&mut buf),
        },
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get_all(COOKIE).iter().find_map(|header| {
        header.to_str().ok()?.split(';').find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value.as_bytes())
        })
    })
}

/// Fill `buf` with the address octets and return them.
fn ip_bytes(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            &buf[..]
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            runtime: None,
            request_id: HeaderValue::from_static(""),
            peer_ip: None,
            peer_trusted: false,
            client_ip: None,
            route: None,
            raw_target: None,
            backend: None,
            upstream: None,
            tried: 0,
            attempts: 0,
            body_bytes: 0,
            deadline: None,
            error: None,
            error_code: None,
            consumer: None,
            limit_decision: None,
            in_flight: Vec::new(),
            ai: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.start = Instant::now();
        let runtime = self.runtime.load_full();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        if let Some(peer) = peer {
            ctx.peer_trusted = runtime.trusted_proxies.contains(peer);
            ctx.client_ip = Some(client_ip(
                peer,
                req.headers.get(&X_FORWARDED_FOR),
                &runtime.trusted_proxies,
            ));
        }
        ctx.peer_ip = peer;
        ctx.request_id = request_id(req.headers.get(&X_REQUEST_ID), ctx.peer_trusted);
        // Each read of the body (HTTP/1; an h2 stream's reads have no per-read timeout in Pingora).
        session.set_read_timeout(Some(runtime.client.body_timeout));
        ctx.runtime = Some(runtime);
        session
            .req_header_mut()
            .insert_header(X_REQUEST_ID_NAME, ctx.request_id.clone())?;
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(runtime) = ctx.runtime.clone() else {
            self.respond_error(session, ctx, ErrorKind::Internal)
                .await?;
            return Ok(true);
        };
        if DRAINING.load(Ordering::Relaxed) {
            // SIGTERM: this connection takes no further request (HTTP/1 answers say `Connection: close`).
            session.set_keepalive(None);
        }
        match normalize_request(session.req_header_mut(), &runtime.normalize) {
            Ok(raw_target) => ctx.raw_target = raw_target,
            Err(malformed) => {
                // What follows the head cannot be trusted to be framed the way we read it.
                session.set_keepalive(None);
                self.refuse(session, ctx, Refusal::Malformed(malformed))
                    .await?;
                return Ok(true);
            }
        }
        if let Some(redirect) = self.listener.redirect_https {
            let req = session.req_header();
            let host = normalize_host(request_host(req));
            let port = if redirect.port == 443 {
                String::new()
            } else {
                format!(":{}", redirect.port)
            };
            let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let location = HeaderValue::from_str(&format!("https://{host}{port}{uri}"))
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "redirect location"))?;
            self.respond(
                session,
                ctx,
                redirect.status,
                &[(&LOCATION, &location)],
                Bytes::new(),
            )
            .await?;
            return Ok(true);
        }
        if !runtime.listener_ip_rules.is_empty() {
            let rules = runtime.listener_ip_rules.get(&self.listener.name);
            if rules.is_some_and(|rules| ctx.client_ip.is_some_and(|ip| !rules.admits(ip))) {
                self.refuse(session, ctx, Refusal::IpDenied).await?;
                return Ok(true);
            }
        }
        let found = {
            let req = session.req_header();
            let host = normalize_host(request_host(req));
            runtime
                .routes
                .find(&host, req.uri.path(), &req.method, &req.headers)
                .cloned()
        };
        let Some(route) = found else {
            self.respond_error(session, ctx, ErrorKind::RouteNotFound)
                .await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        if let Some(rules) = &route.ip_rules {
            if ctx.client_ip.is_some_and(|ip| !rules.admits(ip)) {
                self.refuse(session, ctx, Refusal::IpDenied).await?;
                return Ok(true);
            }
        }
        if let Some(auth) = &route.auth {
            let client_cert = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|tls| tls.extension.get::<ClientIdentity>());
            match runtime
                .auth
                .authenticate(auth, session.req_header(), client_cert)
                .await
            {
                Ok(found) => ctx.consumer = Some(found),
                Err(failure) => {
                    self.refuse(session, ctx, Refusal::Auth(failure)).await?;
                    return Ok(true);
                }
            }
        }
        if !route.limits.is_empty() {
            if let Err(refusal) = self.apply_limits(&route, ctx, session.req_header()) {
                self.refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
        }
        let req = session.req_header();
        let declared_length = declared_length(req);
        ctx.route = Some(route.clone());
        match &route.action {
            RouteAction::Respond {
                status,
                body,
                content_type,
            } => {
                self.respond(
                    session,
                    ctx,
                    *status,
                    &[(&CONTENT_TYPE, content_type)],
                    body.clone(),
                )
                .await?;
                Ok(true)
            }
            RouteAction::Ai(route_policy) => {
                let consumer_policy = ctx
                    .consumer
                    .as_ref()
                    .and_then(|c| c.entry.as_ref())
                    .map(|e| &e.ai);
                let narrowed;
                let policy = match consumer_policy {
                    Some(consumer) if !consumer.is_unrestricted() => {
                        narrowed = route_policy.narrowed(consumer);
                        &narrowed
                    }
                    _ => route_policy,
                };
                let request = AiRequest {
                    catalog: &runtime.ai,
                    policy,
                    request_id: &ctx.request_id,
                    decor: ctx.decor(),
                };
                // Boxed: the AI path's state (body, plan, provider session) is several KiB, and inline it
                // would be allocated and copied for every request this filter sees, edge requests included.
                let outcome = Box::pin(serve_ai(session, request)).await?;
                ctx.error_code = outcome.error;
                ctx.ai = Some(outcome);
                Ok(true)
            }
            RouteAction::Redirect { to, status } => {
                let host = normalize_host(request_host(req));
                let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let target = to.replace("{host}", &host).replace("{uri}", uri);
                let location = HeaderValue::from_str(&target).map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "redirect location")
                })?;
                self.respond(
                    session,
                    ctx,
                    *status,
                    &[(&LOCATION, &location)],
                    Bytes::new(),
                )
                .await?;
                Ok(true)
            }
            RouteAction::Proxy { .. } => {
                if declared_length.is_some_and(|len| len > route.max_body_size) {
                    // The unread body makes the connection unusable for another request.
                    session.set_keepalive(None);
                    self.respond_error(session, ctx, ErrorKind::BodyTooLarge)
                        .await?;
                    return Ok(true);
                }
                ctx.deadline = route.timeouts.total.map(|total| ctx.start + total);
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(cluster)) = (ctx.route.clone(), ctx.cluster().cloned()) else {
            return Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer without a proxy route",
            );
        };
        let req = session.req_header();
        let mut buf = [0u8; 16];
        let key = match &cluster.settings.hash_on {
            None => None,
            Some(hash_on) => {
                let from_request = match hash_on {
                    HashOn::ClientIp => None,
                    HashOn::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
                    HashOn::Cookie(name) => cookie_value(req, name),
                };
                // Requests without the key stick by client address instead.
                from_request.or_else(|| ctx.client_ip.map(|ip| ip_bytes(ip, &mut buf)))
            }
        };
        ctx.attempts += 1;
        let picked = cluster.select(key, ctx.tried);
        if ctx.attempts == 1 {
            cluster.note_first_pick(picked.is_some());
        }
        let Some((index, addr)) = picked else {
            // On a retry with no backend left, the answer is the last attempt's failure.
            ctx.error = Some(if ctx.attempts > 1 {
                ctx.error.unwrap_or(ErrorKind::UpstreamConnect)
            } else {
                ErrorKind::NoHealthyUpstream
            });
            return Error::e_explain(ErrorType::HTTPStatus(503), "no available backend");
        };
        if index < 64 {
            ctx.tried |= 1 << index;
        }
        // A failure of an earlier attempt is not this one's.
        ctx.error = None;
        ctx.backend = Some(index);
        ctx.upstream = Some(addr);
        let mut timeouts = PeerTimeouts {
            connect: route
                .timeouts
                .connect
                .unwrap_or(cluster.settings.timeouts.connect),
            read: route
                .timeouts
                .read
                .unwrap_or(cluster.settings.timeouts.read),
            idle: cluster.settings.timeouts.idle,
        };
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ctx.error = Some(ErrorKind::UpstreamTimeout);
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    "total timeout spent before connecting",
                );
            }
            timeouts.connect = timeouts.connect.min(left);
            timeouts.read = timeouts.read.min(left);
        }
        Ok(Box::new(http_peer(
            &cluster,
            &cluster.backends[index],
            addr,
            timeouts,
        )))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.backend) {
            cluster.record_failure(index);
            // Nothing was sent yet, so any method may go to another backend.
            if ctx.attempts <= cluster.settings.retries {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_deref() else {
            return Ok(());
        };
        if let RouteAction::Proxy { rewrite, .. } = &route.action {
            if let (PathRewrite::Raw, Some(raw)) = (rewrite, &ctx.raw_target) {
                upstream.set_uri(raw.clone());
            } else if let Some(mut path) = rewrite.apply(upstream.uri.path()) {
                if let Some(query) = upstream.uri.query() {
                    path.push('?');
                    path.push_str(query);
                }
                let uri = path.parse::<http::Uri>().map_err(|_| {
                    Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "rewritten path is not a valid URI",
                    )
                })?;
                upstream.set_uri(uri);
            }
        }
        if !upstream.headers.contains_key(HOST) {
            // An HTTP/1.0 client may send no Host; the backend speaks HTTP/1.1 and needs one. As
            // NGINX does, it gets the backend's own address.
            if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.backend) {
                let address = HeaderValue::from_str(&cluster.backends[index].address)
                    .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "backend address"))?;
                upstream.insert_header(HOST, address)?;
            }
        }
        let original = session.req_header();
        let trusted = ctx.peer_trusted;
        let peer = ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let forwarded_for = match original
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) if trusted => format!("{existing}, {peer}"),
            _ => peer,
        };
        upstream.insert_header(X_FORWARDED_FOR_NAME, forwarded_for)?;
        if !(trusted && original.headers.contains_key(&X_FORWARDED_PROTO)) {
            let scheme = if self.listener.tls.is_some() {
                "https"
            } else {
                "http"
            };
            upstream.insert_header(X_FORWARDED_PROTO_NAME, scheme)?;
        }
        if !(trusted && original.headers.contains_key(&X_FORWARDED_HOST)) {
            let host = request_host(original).to_string();
            if !host.is_empty() {
                upstream.insert_header(X_FORWARDED_HOST_NAME, host)?;
            }
        }
        if let Some(runtime) = &ctx.runtime {
            let settings = &runtime.auth.settings;
            // Identity headers come only from the gateway, never from the client.
            upstream.remove_header(&settings.consumer_header);
            upstream.remove_header(&settings.groups_header);
            if let Some(auth) = &route.auth {
                if let Some(query) = runtime.auth.strip_credentials(auth, upstream) {
                    let mut target = upstream.uri.path().to_string();
                    if !query.is_empty() {
                        target.push('?');
                        target.push_str(&query);
                    }
                    let uri = target.parse::<http::Uri>().map_err(|_| {
                        Error::explain(ErrorType::InvalidHTTPHeader, "query without the API key")
                    })?;
                    upstream.set_uri(uri);
                }
            }
            if let Some(found) = &ctx.consumer {
                upstream.insert_header(settings.consumer_header.clone(), &*found.consumer)?;
                if let Some(consumer) = found.entry.as_ref().filter(|c| !c.groups_header.is_empty())
                {
                    upstream
                        .insert_header(settings.groups_header.clone(), &consumer.groups_header)?;
                }
            }
        }
        route.request_headers.apply(upstream)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(chunk), Some(route)) = (body.as_ref(), ctx.route.as_deref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > route.max_body_size {
                ctx.error = Some(ErrorKind::BodyTooLarge);
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's limit",
                );
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.backend) {
            match upstream_response.status.as_u16() {
                502..=504 => {
                    cluster.record_failure(index);
                }
                _ => cluster.record_success(index),
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.decor().apply(upstream_response)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx
            .deadline
            .is_some_and(|deadline| Instant::now() > deadline)
        {
            ctx.error = Some(ErrorKind::UpstreamTimeout);
            return Error::e_explain(ErrorType::ReadTimedout, "route total timeout");
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if e.esource == ErrorSource::Upstream {
            if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.backend) {
                cluster.record_failure(index);
            }
        }
        // A stale pooled connection may be retried, and so may a backend that timed out (unless the route
        // says otherwise), but only for idempotent requests, only before anything reached the client,
        // and within the cluster's retry budget.
        e.retry.decide_reuse(client_reused);
        let retry_on_timeout = matches!(
            ctx.route.as_deref().map(|r| &r.action),
            Some(RouteAction::Proxy {
                retry_on_timeout: true,
                ..
            })
        );
        if e.esource == ErrorSource::Upstream && e.etype == ErrorType::ReadTimedout {
            ctx.error = Some(ErrorKind::UpstreamTimeout);
            if retry_on_timeout {
                e.set_retry(true);
            }
        }
        let retries = ctx.cluster().map_or(0, |c| c.settings.retries);
        let retry_allowed = session.req_header().method.is_idempotent()
            && !session.as_downstream().retry_buffer_truncated()
            && session.response_written().is_none()
            && ctx.attempts <= retries;
        if !retry_allowed {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let client_gone = e.esource == ErrorSource::Downstream
            && matches!(
                e.etype,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let kind = if client_gone {
            ErrorKind::ClientClosed
        } else if e.esource == ErrorSource::Downstream && e.etype == ErrorType::ReadTimedout {
            // The client stopped sending its body (`client_body_timeout`).
            ErrorKind::RequestTimeout
        } else {
            ctx.error.unwrap_or_else(|| ErrorKind::from_proxy_error(e))
        };
        ctx.error = Some(kind);
        if session.response_written().is_none() && !client_gone {
            // The request body may be unread: announce the close instead of letting the client find out.
            session.set_keepalive(None);
            if let Err(write_error) = self.respond_error(session, ctx, kind).await {
                log::debug!("could not send the error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: kind.status(),
            can_reuse_downstream: false,
        }
    }

    /// Refusals the gateway explains elsewhere are not logged again as proxy errors: no available backend
    /// (logged once per change of state by the cluster) and clients that left (the access log's 499).
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        matches!(
            ctx.error,
            Some(ErrorKind::NoHealthyUpstream | ErrorKind::ClientClosed)
        )
    }

    /// The request as Pingora's own error logs show it, without credentials in the query.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let key_param = ctx
            .runtime
            .as_ref()
            .and_then(|rt| rt.auth.settings.api_key_query.as_deref());
        format!(
            "{} {}, Host: {}",
            req.method,
            redacted_path(req, key_param),
            request_host(req)
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // The connection's next byte begins the next request head. A body left unread would be read
        // (drained) before it, and taken for that head: such a connection is not kept (Pingora closes it
        // already when its answer came before the body; this makes it so in every case).
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        request_done(session.as_downstream().stream());
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.error.map(ErrorKind::status))
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        match (&ctx.route, &ctx.runtime) {
            (Some(route), _) => route.metrics.observe(status, elapsed.as_secs_f64()),
            (None, Some(runtime)) => runtime
                .unmatched_metrics
                .observe(status, elapsed.as_secs_f64()),
            (None, None) => {}
        }
        if !access_log::enabled() {
            return;
        }
        let req = session.req_header();
        let key_param = ctx
            .runtime
            .as_ref()
            .and_then(|rt| rt.auth.settings.api_key_query.as_deref());
        let path = redacted_path(req, key_param);
        let protocol = if session.as_downstream().is_http2() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let ai = ctx.ai.as_ref();
        let model = ai.and_then(|a| a.model.as_deref());
        let usage = ai.and_then(|a| a.usage);
        access_log::log(&AccessRecord {
            time: SystemTime::now(),
            request_id: ctx.request_id.to_str().unwrap_or(""),
            listener: &self.listener.name,
            client: ctx.client_ip,
            method: req.method.as_str(),
            host: request_host(req),
            path: &path,
            protocol,
            status,
            bytes_in: session.as_downstream().body_bytes_read(),
            bytes_out: session.as_downstream().body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route: ctx.route.as_deref().map(|r| &*r.name),
            upstream: ctx.upstream,
            consumer: ctx.consumer.as_ref().map(|c| &*c.consumer),
            error: ctx.error_code.or(ctx.error.map(ErrorKind::code)),
            model: model.map(|m| &*m.name),
            provider: model.map(|m| &*m.provider.name),
            decision: ai.and_then(|a| a.decision.as_deref()),
            attempts: ai.map(|a| a.attempts),
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cost_usd: ai.and_then(|a| a.cost),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_are_found_across_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; session=abc").unwrap();
        req.append_header("cookie", "other=2").unwrap();
        assert_eq!(cookie_value(&req, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&req, "other"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&req, "sess"), None);
    }
}
