//! Limits of a client connection below HTTP parsing: each HTTP/1 request head must arrive whole within
//! `client_header_timeout` (NGINX's), however slowly its bytes drip, and stay under a size and a header
//! count (431); and one client address holds at most `max_connections_per_ip` connections. The stream
//! wrapper sees every byte Pingora reads, so a head is timed from its first byte to its blank line;
//! `request_done` (called when a request is logged) says that the next byte begins the next head. (A
//! request answered before its body was read is not followed by another: Pingora closes the connection.)
//!
//! HTTP/2 is passed through untouched (its frames have no such head).
//!
//! On TLS listeners the guard also runs the TLS handshake, after the per-address cap (a client over its cap
//! costs no handshake) and within `client_header_timeout` (a client stalling the handshake is cut off),
//! with the listener's own rustls config (`edge::tls::server_config`, which has session tickets).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::{counter_key, InFlight, InFlightGuard};
use crate::observe::metrics::METRICS;

/// `server.client_*`: the connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// 0: no cap.
    pub max_connections_per_ip: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_connections_per_ip: 512,
        }
    }
}

/// Why a connection was closed before a request could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    HeaderTimeout,
    HeaderTooLarge,
    TooManyHeaders,
}

impl Closed {
    const fn reason(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::HeaderTooLarge => "header_too_large",
            Closed::TooManyHeaders => "too_many_headers",
        }
    }

    const ALL: [Closed; 3] = [
        Closed::HeaderTimeout,
        Closed::HeaderTooLarge,
        Closed::TooManyHeaders,
    ];

    /// The answer written before closing: 408 or 431, in the gateway's JSON error shape.
    fn answer(self) -> &'static [u8] {
        static ANSWERS: LazyLock<[Vec<u8>; 3]> = LazyLock::new(|| {
            [
                closing_answer(
                    408,
                    "Request Timeout",
                    "request_header_timeout",
                    "the request head did not arrive in time",
                    "",
                ),
                closing_answer(
                    431,
                    "Request Header Fields Too Large",
                    "request_header_too_large",
                    "the request head is larger than this gateway reads",
                    "",
                ),
                closing_answer(
                    431,
                    "Request Header Fields Too Large",
                    "too_many_headers",
                    "the request has more header fields than allowed",
                    "",
                ),
            ]
        });
        &ANSWERS[self as usize]
    }
}

/// Reasons a connection is closed before a request, as metric labels.
pub const CLOSED_REASONS: [&str; 6] = [
    Closed::ALL[0].reason(),
    Closed::ALL[1].reason(),
    Closed::ALL[2].reason(),
    "too_many_connections",
    "tls_handshake_failed",
    "tls_handshake_timeout",
];

/// An answer the guard writes itself before closing a connection: a head and the gateway's JSON error
/// body, with its real length (no request id: there is no request yet).
fn closing_answer(status: u16, reason: &str, code: &str, message: &str, extra: &str) -> Vec<u8> {
    let body = crate::error::json_error(status, code, message, "");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

// Phases, kept in an atomic so that `request_done` can move it from a shared reference.
/// Between requests: the next byte starts a head (Pingora's keep-alive timeout bounds the wait).
const IDLE: u8 = 0;
/// Inside a request head.
const HEAD: u8 = 1;
/// The head is whole: the body and the answer, under Pingora's per-read timeouts.
const BODY: u8 = 2;
/// HTTP/2, or a connection already answered and closed: nothing is enforced.
const PASS: u8 = 3;

/// A client connection's stream, timing and measuring each HTTP/1 request head.
#[derive(Debug)]
pub struct GuardedStream {
    inner: pingora::protocols::Stream,
    limits: ClientLimits,
    phase: AtomicU8,
    /// When the head being read began.
    head_started: Instant,
    /// The head timer, made the first time a head has to wait for more bytes.
    deadline: Option<Pin<Box<Sleep>>>,
    head_bytes: usize,
    head_lines: usize,
    /// The last bytes of the head so far, to find its blank line across reads.
    tail: [u8; 3],
    /// Answered and closed: every further read is an EOF.
    closed: bool,
    /// Holds the client address's connection slot.
    _slot: Option<InFlightGuard>,
}

impl GuardedStream {
    fn new(
        inner: pingora::protocols::Stream,
        limits: ClientLimits,
        slot: Option<InFlightGuard>,
    ) -> Self {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        GuardedStream {
            inner,
            limits,
            phase: AtomicU8::new(if h2 { PASS } else { IDLE }),
            head_started: Instant::now(),
            deadline: None,
            head_bytes: 0,
            head_lines: 0,
            tail: [0; 3],
            closed: false,
            _slot: slot,
        }
    }

    /// A request was answered: the next byte read begins the next head.
    pub fn request_done(&self) {
        if self.phase.load(Ordering::Relaxed) != PASS {
            self.phase.store(IDLE, Ordering::Relaxed);
        }
    }

    /// Scan `bytes` of a head; `Ok(true)` when the head ended in them. Only line feeds are looked at
    /// (with memchr), so a head costs a few instructions per line, not per byte.
    fn scan_head(&mut self, bytes: &[u8]) -> Result<bool, Closed> {
        // The byte before position `i`, across reads: `tail` holds the last three of the previous ones.
        let before = |i: usize, back: usize| -> u8 {
            if i >= back {
                bytes[i - back]
            } else {
                self.tail[3 - (back - i)]
            }
        };
        for newline in memchr::memchr_iter(b'\n', bytes) {
            if self.head_bytes + newline + 1 > self.limits.max_header_size {
                return Err(Closed::HeaderTooLarge);
            }
            // A blank line ends the head: `\r\n\r\n` or a bare `\n\n` (which Pingora's parser accepts).
            let previous = before(newline, 1);
            if previous == b'\n' || (previous == b'\r' && before(newline, 2) == b'\n') {
                return Ok(true);
            }
            self.head_lines += 1;
            // The request line is not a header field.
            if self.head_lines > self.limits.max_headers + 1 {
                return Err(Closed::TooManyHeaders);
            }
        }
        self.head_bytes += bytes.len();
        if self.head_bytes > self.limits.max_header_size {
            return Err(Closed::HeaderTooLarge);
        }
        for &byte in &bytes[bytes.len().saturating_sub(3)..] {
            self.tail = [self.tail[1], self.tail[2], byte];
        }
        Ok(false)
    }

    /// Account for `bytes` just read.
    fn observe(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        let mut phase = self.phase.load(Ordering::Relaxed);
        if phase == IDLE {
            if bytes.starts_with(b"PRI ") {
                // h2c with prior knowledge.
                self.phase.store(PASS, Ordering::Relaxed);
                return Ok(());
            }
            phase = HEAD;
            self.phase.store(HEAD, Ordering::Relaxed);
            self.head_bytes = 0;
            self.head_lines = 0;
            self.tail = [0; 3];
            self.head_started = Instant::now();
        }
        if phase == HEAD && self.scan_head(bytes)? {
            self.phase.store(BODY, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The timer of the head being read, set to end `header_timeout` after its first byte. Only a head
    /// that did not come whole in one read needs one; the timer is made once and reset for later heads.
    fn head_deadline(&mut self) -> Pin<&mut Sleep> {
        let end = self.head_started + self.limits.header_timeout;
        match &mut self.deadline {
            Some(deadline) => {
                if deadline.deadline() != end {
                    deadline.as_mut().reset(end);
                }
            }
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(end))),
        }
        self.deadline
            .as_mut()
            .expect("the timer was just set")
            .as_mut()
    }

    /// Answer (best effort: whatever the socket takes now) and close: the read ends as at EOF, so Pingora
    /// drops the connection without a request.
    fn close_with(&mut self, why: Closed, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let answer = why.answer();
        if let Poll::Ready(Ok(_)) = Pin::new(&mut self.inner).poll_write(cx, answer) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        count_closed(why.reason());
        log::debug!("client connection closed: {}", why.reason());
        self.phase.store(PASS, Ordering::Relaxed);
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match this.observe(read) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => {
                        // Pingora must not parse what was read: the read ends as at EOF.
                        buf.set_filled(before);
                        this.close_with(why, cx)
                    }
                }
            }
            Poll::Pending if this.phase.load(Ordering::Relaxed) == HEAD => {
                match this.head_deadline().poll(cx) {
                    Poll::Ready(()) => this.close_with(Closed::HeaderTimeout, cx),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Client connections open now, on every listener (from accept to close, the TLS handshake included).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Client connections open now: the drain is over when this reaches zero.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Acquire)
}

/// Holds one count in `OPEN` for the life of a connection.
struct Open;

impl Open {
    fn count() -> Open {
        OPEN.fetch_add(1, Ordering::AcqRel);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long, once the listeners stop accepting, keep-alive connections waiting for their next request are
/// left open. A request that arrives meanwhile is served and answered with `Connection: close` (Pingora
/// ends keep-alive once shutdown began; HTTP/2 gets GOAWAY), so a busy client leaves politely and loses
/// nothing; a connection idle this long is closed (Pingora's cleanup aborts those reads).
pub const IDLE_DRAIN: Duration = Duration::from_secs(1);

/// Connections open per client address, process-wide: the in-flight counter the rate limits use.
static OPEN_BY_IP: LazyLock<Arc<InFlight>> = LazyLock::new(|| Arc::new(InFlight::default()));

/// A slot for `ip` in the connection count, unless it holds `max` connections already.
fn acquire_connection(ip: IpAddr, max: u32) -> Option<InFlightGuard> {
    let key = match ip {
        IpAddr::V4(v4) => counter_key(0, &v4.octets()),
        IpAddr::V6(v6) => counter_key(0, &v6.octets()),
    };
    InFlight::try_acquire(&OPEN_BY_IP, key, max)
}

/// Where the connection limits come from (the live config), and which addresses they spare.
pub trait ConnectionPolicy: Send + Sync + 'static {
    fn limits(&self) -> ClientLimits;
    /// Trusted proxies carry many clients' connections: the per-address cap does not apply to them.
    fn exempt(&self, ip: IpAddr) -> bool;
}

/// The TLS handshake of a listener: Pingora's acceptor (its handshake, digest and ALPN) over our rustls
/// config, which Pingora's `TlsSettings` cannot express (session ticket keys).
pub struct TlsHandshake {
    acceptor: pingora::listeners::tls::Acceptor,
    /// mTLS: attach the verified client's identity to the connection (`edge::mtls`).
    client_identity: bool,
}

impl TlsHandshake {
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        resolver: Arc<super::tls::SniResolver>,
        client_identity: bool,
    ) -> Result<Self, String> {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
            .map_err(|e| format!("TLS settings: {e}"))?;
        // Pingora's build needs a certificate source; the acceptor's config is replaced right after.
        settings.set_cert_resolver(resolver);
        let mut acceptor = settings.build();
        acceptor.acceptor = pingora::tls::TlsAcceptor::from(config);
        Ok(TlsHandshake {
            acceptor,
            client_identity,
        })
    }

    /// The handshake over an accepted TCP stream (the concrete type Pingora's TCP listeners hand out).
    async fn accept(
        &self,
        stream: pingora::protocols::Stream,
    ) -> pingora::Result<pingora::protocols::tls::TlsStream<L4Stream>> {
        use pingora::protocols::tls::server;
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "a TLS listener handed over a stream that is not TCP",
            );
        };
        if self.client_identity {
            server::handshake_with_callback(&self.acceptor, *tcp, &super::mtls::IdentityCallback)
                .await
        } else {
            server::handshake(&self.acceptor, *tcp).await
        }
    }
}

/// A server application whose client connections get these limits (and, on TLS listeners, the TLS
/// handshake) before it sees them.
pub struct Guarded<A, P> {
    pub app: Arc<A>,
    pub policy: P,
    pub tls: Option<TlsHandshake>,
}

/// Count a connection closed before a request.
fn count_closed(reason: &str) {
    METRICS
        .connections_closed
        .with_label_values(&[reason])
        .inc();
}

/// Answer a connection over its address's cap, then drop it.
static TOO_MANY_CONNECTIONS: LazyLock<Vec<u8>> = LazyLock::new(|| {
    closing_answer(
        429,
        "Too Many Requests",
        "too_many_connections",
        "this address has too many open connections",
        "Retry-After: 1\r\n",
    )
});

#[async_trait]
impl<A, P> pingora::apps::ServerApp for Guarded<A, P>
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
    P: ConnectionPolicy,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let _open = Open::count();
        let limits = self.policy.limits();
        let ip = stream
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let slot = match ip {
            Some(ip) if limits.max_connections_per_ip > 0 && !self.policy.exempt(ip) => {
                match acquire_connection(ip, limits.max_connections_per_ip) {
                    Some(slot) => Some(slot),
                    None => {
                        count_closed("too_many_connections");
                        log::debug!("{ip}: over max_connections_per_ip; connection refused");
                        // Plain HTTP clients read this; a TLS client (before its handshake, which is
                        // not spent on it) and an h2c one see the connection close.
                        if self.tls.is_none() {
                            use tokio::io::AsyncWriteExt;
                            let _ = stream.write_all(&TOO_MANY_CONNECTIONS).await;
                            let _ = stream.flush().await;
                        }
                        stream.shutdown().await;
                        return None;
                    }
                }
            }
            _ => None,
        };
        let stream: pingora::protocols::Stream = match &self.tls {
            None => stream,
            Some(tls) => {
                match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await {
                    Ok(Ok(tls_stream)) => Box::new(tls_stream),
                    Ok(Err(e)) => {
                        // Scanners and clients that distrust the certificate: not an error of ours.
                        count_closed("tls_handshake_failed");
                        log::debug!("TLS handshake failed from {ip:?}: {e}");
                        return None;
                    }
                    Err(_) => {
                        count_closed("tls_handshake_timeout");
                        log::debug!("TLS handshake from {ip:?} did not finish in time");
                        return None;
                    }
                }
            }
        };
        let guarded: pingora::protocols::Stream =
            Box::new(GuardedStream::new(stream, limits, slot));
        pingora::apps::ServerApp::process_new(&self.app, guarded, shutdown).await
    }

    /// The listener stopped accepting: drain its keep-alive connections politely (`IDLE_DRAIN`), then let
    /// the application cut the ones still idle.
    async fn cleanup(&self) {
        let deadline = tokio::time::Instant::now() + IDLE_DRAIN;
        while open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.app.cleanup().await
    }
}

/// Tell a client connection's guard that its request was answered. Nothing for HTTP/2.
pub fn request_done(stream: Option<&pingora::protocols::Stream>) {
    if let Some(guard) = stream.and_then(|s| s.as_any().downcast_ref::<GuardedStream>()) {
        guard.request_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limits: ClientLimits) -> GuardedStream {
        let inner: pingora::protocols::Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        GuardedStream::new(inner, limits, None)
    }

    #[tokio::test]
    async fn the_end_of_a_head_is_found_across_reads_and_limits_apply() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n";
        for cut in 1..head.len() {
            let mut stream = guard(ClientLimits::default());
            stream.observe(&head[..cut]).unwrap();
            assert_eq!(stream.phase.load(Ordering::Relaxed), HEAD, "cut at {cut}");
            stream.observe(&head[cut..]).unwrap();
            assert_eq!(stream.phase.load(Ordering::Relaxed), BODY, "cut at {cut}");
            stream.request_done();
            assert_eq!(stream.phase.load(Ordering::Relaxed), IDLE);
        }
        let mut bare = guard(ClientLimits::default());
        bare.observe(b"GET / HTTP/1.1\nHost: a\n\nbody").unwrap();
        assert_eq!(bare.phase.load(Ordering::Relaxed), BODY);

        let small = ClientLimits {
            max_header_size: 16,
            ..ClientLimits::default()
        };
        assert_eq!(
            guard(small).observe(head).unwrap_err(),
            Closed::HeaderTooLarge
        );
        let few = ClientLimits {
            max_headers: 1,
            ..ClientLimits::default()
        };
        assert_eq!(
            guard(few).observe(head).unwrap_err(),
            Closed::TooManyHeaders
        );
        let mut h2c = guard(ClientLimits::default());
        h2c.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        assert_eq!(h2c.phase.load(Ordering::Relaxed), PASS);
    }
}
