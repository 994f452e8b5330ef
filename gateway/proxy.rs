//! The Pingora `ProxyHttp` implementation of the edge path: the phases only, each a short sequence of calls
//! into the layers (`edge/` for normalising, routing, the caller, auth, limits and forwarding; `upstream/`
//! for the backend choice and its timeouts; `ai/` for AI routes; `respond` for every answer the gateway
//! makes; `observe/` for logs and metrics).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::ai::reply::{AiOutcome, AiRequest};
use crate::ai::serve::serve as serve_ai;
use crate::edge::auth::{redacted_path, AuthFailure};
use crate::edge::client::{ip_octets, Caller};
use crate::edge::connection::request_done;
use crate::edge::forwarding::{
    forwarded_headers, https_redirect, request_host, rewrite_target, route_redirect,
};
use crate::edge::limits::{Admission, LimitRefusal, LimitSubject, Limiter};
use crate::edge::mtls::ClientIdentity;
use crate::edge::normalize::{declared_length, normalize_request, Malformed};
use crate::edge::routes::{normalize_host, Route, RouteAction};
use crate::error::{Dialect, ErrorKind, Rejection};
use crate::observe::access_log::{self, AccessRecord};
use crate::observe::admin::DRAINING;
use crate::observe::metrics::METRICS;
use crate::respond::{self, drain_small_h2_body, Decor};
use crate::runtime::{ListenerSpec, Runtime};
use crate::upstream::cluster::{Attempts, Cluster};
use crate::upstream::peer::{http_peer, PeerTimeouts};

/// A static name for Pingora's `insert_header`, which keeps it as it is (a `HeaderName` would be copied
/// into its spelling map first).
const X_REQUEST_ID_NAME: &str = "x-request-id";

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
    Limit(LimitRefusal),
}

impl Refusal {
    /// The answer: status, code, message, and the challenge of a 401 or the wait of a 429.
    fn rejection(&self) -> Rejection {
        match self {
            Refusal::Malformed(malformed) => {
                Rejection::new(400, malformed.code(), malformed.message())
            }
            Refusal::IpDenied => Rejection::new(
                403,
                "ip_denied",
                "requests from this address are not allowed here",
            ),
            Refusal::Auth(failure) => {
                let rejection = Rejection::new(failure.status(), failure.code(), failure.message());
                if failure.status() == 401 {
                    rejection.with_challenge(failure.challenge())
                } else {
                    rejection
                }
            }
            Refusal::Limit(LimitRefusal::Rate { decision, .. }) => Rejection::new(
                429,
                "rate_limited",
                "rate limit exceeded; retry after the time in Retry-After",
            )
            .with_retry_after(decision.retry_after_secs),
            Refusal::Limit(LimitRefusal::Concurrency { .. }) => Rejection::new(
                429,
                "concurrency_limited",
                "too many requests in flight for this caller",
            )
            .with_retry_after(1),
        }
    }

    /// Count it in its metric.
    fn count(&self, route: &str) {
        match self {
            Refusal::Malformed(malformed) => METRICS
                .malformed
                .with_label_values(&[malformed.code()])
                .inc(),
            Refusal::Limit(
                LimitRefusal::Rate { policy, .. } | LimitRefusal::Concurrency { policy },
            ) => METRICS.limited.with_label_values(&[route, policy]).inc(),
            Refusal::IpDenied => METRICS
                .auth_failures
                .with_label_values(&[route, "ip_denied"])
                .inc(),
            Refusal::Auth(failure) => METRICS
                .auth_failures
                .with_label_values(&[route, failure.code()])
                .inc(),
        }
    }
}

/// Per-request state, kept across retries.
pub struct RequestCtx {
    start: Instant,
    runtime: Option<Arc<Runtime>>,
    caller: Caller,
    route: Option<Arc<Route>>,
    /// The client's target when the normaliser changed it (what `forward_raw_path` routes send).
    raw_target: Option<http::Uri>,
    attempts: Attempts,
    body_bytes: u64,
    deadline: Option<Instant>,
    error: Option<ErrorKind>,
    /// The code of the error or refusal the gateway answered (or the AI path reported), for the access log.
    error_code: Option<&'static str>,
    /// What the route's limits granted (RateLimit-* headers, concurrency slots held until logged).
    admission: Admission,
    /// What the AI path decided and did.
    ai: Option<AiOutcome>,
    /// The format the gateway's own answers take: the route's, or on AI routes the one the path's API
    /// speaks (Anthropic's for `/messages`).
    dialect: Dialect,
}

impl RequestCtx {
    /// What every answer to this request carries.
    fn decor(&self) -> Decor<'_> {
        let route = self.route.as_deref();
        Decor {
            request_id: &self.caller.request_id,
            limit: self.admission.decision.as_ref(),
            response_headers: route.map(|r| &r.response_headers),
            dialect: self.dialect,
        }
    }

    /// The query parameter that may carry an API key (redacted in logs).
    fn key_param(&self) -> Option<&str> {
        self.runtime
            .as_ref()
            .and_then(|rt| rt.auth.settings.api_key_query.as_deref())
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.route.as_deref()?.action {
            RouteAction::Proxy { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
}

/// Read a small unused HTTP/2 body before the gateway answers (`respond::drain_small_h2_body`), except for a
/// client that stopped sending it: waiting for it is what failed.
async fn drain_before_answering(session: &mut Session, ctx: &RequestCtx) {
    if ctx.error != Some(ErrorKind::RequestTimeout) {
        drain_small_h2_body(session).await;
    }
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
        drain_before_answering(session, ctx).await;
        respond::answer(session, &ctx.decor(), status, extra, body).await
    }

    /// Refuse (counted, answered in the route's dialect); the request is done.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        refusal.count(ctx.route.as_deref().map_or("_unmatched", |r| &*r.name));
        self.reject(session, ctx, &refusal.rejection()).await?;
        Ok(true)
    }

    /// Answer a rejection through the one writer; its code goes to the access log.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: &Rejection,
    ) -> Result<()> {
        ctx.error_code = Some(rejection.code);
        drain_before_answering(session, ctx).await;
        respond::reject(session, &ctx.decor(), rejection).await
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

    /// The route's own checks, in order: its IP rules, authentication, then its limits.
    async fn check_access(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
        route: &Route,
    ) -> std::result::Result<(), Refusal> {
        if let (Some(rules), Some(ip)) = (&route.ip_rules, ctx.caller.ip) {
            if !rules.admits(ip) {
                return Err(Refusal::IpDenied);
            }
        }
        if let Some(auth) = &route.auth {
            let client_cert = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|tls| tls.extension.get::<ClientIdentity>());
            let found = runtime
                .auth
                .authenticate(auth, session.req_header(), client_cert)
                .await
                .map_err(Refusal::Auth)?;
            ctx.caller.consumer = Some(found);
        }
        if !route.limits.is_empty() {
            let subject = LimitSubject {
                consumer: ctx.caller.consumer_name(),
                client_ip: ctx.caller.ip,
                route: &route.name,
                headers: &session.req_header().headers,
            };
            self.limiter
                .admit(&route.limits, &subject, &mut ctx.admission)
                .map_err(Refusal::Limit)?;
        }
        Ok(())
    }

    /// Carry out the route's action; `Ok(false)` lets Pingora proxy the request.
    async fn act(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
        route: &Route,
    ) -> Result<bool> {
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
            }
            RouteAction::Redirect { to, status } => {
                let location = route_redirect(to, session.req_header())?;
                self.respond(
                    session,
                    ctx,
                    *status,
                    &[(&LOCATION, &location)],
                    Bytes::new(),
                )
                .await?;
            }
            RouteAction::Ai(route_policy) => {
                let consumer_policy = ctx
                    .caller
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
                    request_id: &ctx.caller.request_id,
                    decor: ctx.decor(),
                };
                // Boxed: the AI path's state (body, plan, provider session) is several KiB, and inline it
                // would be allocated and copied for every request this filter sees, edge requests included.
                let outcome = Box::pin(serve_ai(session, request)).await?;
                ctx.error_code = outcome.error;
                ctx.ai = Some(outcome);
            }
            RouteAction::Proxy { .. } => {
                if declared_length(session.req_header())
                    .is_some_and(|len| len > route.max_body_size)
                {
                    // The unread body makes the connection unusable for another request.
                    session.set_keepalive(None);
                    self.respond_error(session, ctx, ErrorKind::BodyTooLarge)
                        .await?;
                    return Ok(true);
                }
                ctx.deadline = route.timeouts.total.map(|total| ctx.start + total);
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            runtime: None,
            caller: Caller::unknown(),
            route: None,
            raw_target: None,
            attempts: Attempts::default(),
            body_bytes: 0,
            deadline: None,
            error: None,
            error_code: None,
            admission: Admission::default(),
            ai: None,
            dialect: Dialect::Gateway,
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
        ctx.caller = Caller::identify(
            peer,
            &session.req_header().headers,
            &runtime.trusted_proxies,
        );
        // Each read of the body (HTTP/1; an h2 stream's reads have no per-read timeout in Pingora).
        session.set_read_timeout(Some(runtime.client.body_timeout));
        ctx.runtime = Some(runtime);
        session
            .req_header_mut()
            .insert_header(X_REQUEST_ID_NAME, ctx.caller.request_id.clone())?;
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
                return self
                    .refuse(session, ctx, Refusal::Malformed(malformed))
                    .await;
            }
        }
        if let Some(redirect) = self.listener.redirect_https {
            let location = https_redirect(session.req_header(), redirect.port)?;
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
        let listener_rules = runtime.listener_ip_rules.get(&self.listener.name);
        if listener_rules.is_some_and(|rules| ctx.caller.ip.is_some_and(|ip| !rules.admits(ip))) {
            return self.refuse(session, ctx, Refusal::IpDenied).await;
        }
        let req = session.req_header();
        let host = normalize_host(request_host(req));
        let found = runtime
            .routes
            .find(&host, req.uri.path(), &req.method, &req.headers)
            .cloned();
        let Some(route) = found else {
            self.respond_error(session, ctx, ErrorKind::RouteNotFound)
                .await?;
            return Ok(true);
        };
        ctx.dialect = match route.dialect {
            Dialect::OpenAi => crate::ai::dialect::of_path(req.uri.path()),
            other => other,
        };
        ctx.route = Some(route.clone());
        if let Err(refusal) = self.check_access(session, ctx, &runtime, &route).await {
            return self.refuse(session, ctx, refusal).await;
        }
        self.act(session, ctx, &runtime, &route).await
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
        let mut buf = [0u8; 16];
        let octets = &mut buf;
        let client_ip = ctx.caller.ip;
        let key = cluster.hash_key(&session.req_header().headers, move || {
            client_ip.map(move |ip| ip_octets(ip, octets))
        });
        let Some((index, addr)) = cluster.pick(key, &mut ctx.attempts) else {
            // On a retry with no backend left, the answer is the last attempt's failure.
            ctx.error = Some(if ctx.attempts.count > 1 {
                ctx.error.unwrap_or(ErrorKind::UpstreamConnect)
            } else {
                ErrorKind::NoHealthyUpstream
            });
            return Error::e_explain(ErrorType::HTTPStatus(503), "no available backend");
        };
        // A failure of an earlier attempt is not this one's.
        ctx.error = None;
        let Some(timeouts) = PeerTimeouts::for_attempt(
            route.timeouts.connect,
            route.timeouts.read,
            &cluster.settings.timeouts,
            ctx.deadline,
        ) else {
            ctx.error = Some(ErrorKind::UpstreamTimeout);
            return Error::e_explain(
                ErrorType::ConnectTimedout,
                "total timeout spent before connecting",
            );
        };
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
        if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.attempts.backend) {
            cluster.record_failure(index);
            // Nothing was sent yet, so any method may go to another backend.
            if ctx.attempts.count <= cluster.settings.retries {
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
        let (Some(route), Some(runtime)) = (ctx.route.as_deref(), ctx.runtime.as_deref()) else {
            return Ok(());
        };
        if let RouteAction::Proxy { rewrite, .. } = &route.action {
            rewrite_target(upstream, rewrite, ctx.raw_target.as_ref())?;
        }
        if !upstream.headers.contains_key(HOST) {
            // An HTTP/1.0 client may send no Host; the backend speaks HTTP/1.1 and needs one. As
            // NGINX does, it gets the backend's own address.
            if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.attempts.backend) {
                let address = HeaderValue::from_str(&cluster.backends[index].address)
                    .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "backend address"))?;
                upstream.insert_header(HOST, address)?;
            }
        }
        let tls = self.listener.tls.is_some();
        forwarded_headers(upstream, session.req_header(), &ctx.caller, tls)?;
        runtime.auth.forward_identity(
            route.auth.as_ref(),
            ctx.caller.consumer.as_ref(),
            upstream,
        )?;
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
        if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.attempts.backend) {
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
            if let (Some(cluster), Some(index)) = (ctx.cluster(), ctx.attempts.backend) {
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
            && ctx.attempts.count <= retries;
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
        let key_param = ctx.key_param();
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
        let key_param = ctx.key_param();
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
            request_id: ctx.caller.request_id.to_str().unwrap_or(""),
            listener: &self.listener.name,
            client: ctx.caller.ip,
            method: req.method.as_str(),
            host: request_host(req),
            path: &path,
            protocol,
            status,
            bytes_in: session.as_downstream().body_bytes_read(),
            bytes_out: session.as_downstream().body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route: ctx.route.as_deref().map(|r| &*r.name),
            upstream: ctx.attempts.addr,
            consumer: ctx.caller.consumer_name(),
            error: ctx.error_code.or(ctx.error.map(ErrorKind::code)),
            model: model.map(|m| &*m.name),
            provider: model.map(|m| &*m.provider.name),
            decision: ai.and_then(|a| a.decision.as_deref()),
            attempts: ai.map(|a| a.attempts),
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cache_read_tokens: usage.map(|u| u.cache_read_tokens).filter(|&n| n > 0),
            cache_creation_tokens: usage.map(|u| u.cache_creation_tokens).filter(|&n| n > 0),
            cost_usd: ai.and_then(|a| a.cost),
        });
    }
}
