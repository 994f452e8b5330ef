//! The admin listener: `/healthz` (process alive), `/readyz` (config loaded and listeners serving; 503 while
//! draining or shutting down) and `/metrics` (Prometheus text). Meant for loopback or a private network only.
//!
//! It is served by its own accept loop, not a Pingora listening service, so that it keeps answering while
//! the proxy listeners drain after SIGTERM (load balancers read the 503 then). Its socket is bound with
//! `SO_REUSEPORT`, so a new process of an upgrade binds the same port while the old one still holds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::metrics::{render, METRICS};

/// Set once Pingora runs every service; cleared when shutdown begins.
pub static READY: AtomicBool = AtomicBool::new(false);

/// Set on SIGTERM: `/readyz` answers 503 `draining`, HTTP/1 answers close their connections, and the admin
/// listener keeps answering until the process exits.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// The admin endpoints; `listeners` maps listener names to their ports for the connection gauge.
pub struct AdminApp {
    pub listeners: Vec<(String, u16)>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = match path {
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if DRAINING.load(Ordering::Relaxed) => {
                (503, "text/plain", b"draining\n".to_vec())
            }
            "/readyz" if READY.load(Ordering::Relaxed) => (200, "text/plain", b"ready\n".to_vec()),
            "/readyz" => (503, "text/plain", b"not ready\n".to_vec()),
            "/metrics" => {
                self.update_connection_gauges();
                (200, "text/plain; version=0.0.4", render())
            }
            _ => (
                404,
                "text/plain",
                b"not found; try /healthz, /readyz or /metrics\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}

impl AdminApp {
    /// Count established client connections per listener port from the kernel's socket tables.
    fn update_connection_gauges(&self) {
        let counts = established_by_local_port();
        for (name, port) in &self.listeners {
            let open = counts.get(port).copied().unwrap_or(0);
            METRICS
                .open_connections
                .with_label_values(&[name])
                .set(open);
        }
    }
}

/// The admin listener's accept loop (a background service).
pub struct AdminService {
    pub app: Arc<AdminApp>,
    pub address: SocketAddr,
}

/// Bind `address` shared (`SO_REUSEPORT`); while another process holds it without sharing (an older
/// gateway during an upgrade), retry for up to 30 s.
async fn bind_shared(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let bind = || {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(address)?;
        socket.listen(128)
    };
    let started = tokio::time::Instant::now();
    loop {
        match bind() {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < Duration::from_secs(30) =>
            {
                if started.elapsed() < Duration::from_millis(300) {
                    log::warn!("admin address {address} is in use; retrying until it is free");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match bind_shared(self.address).await {
            Ok(listener) => listener,
            Err(e) => {
                log::error!(
                    "cannot listen on the admin address {}: {e} (after an upgrade from a gateway that \
                     handed its admin socket over, restart to get the admin endpoints back)",
                    self.address
                );
                return;
            }
        };
        // Admin connections are not cut by the shutdown: they end with the process.
        let (_never_sent, never) = tokio::sync::watch::channel(false);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let (app, never) = (self.app.clone(), never.clone());
                        tokio::spawn(async move {
                            let stream: pingora::protocols::Stream =
                                Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                            pingora::apps::ServerApp::process_new(&app, stream, &never).await;
                        });
                    }
                    Err(e) => {
                        log::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                changed = shutdown.changed(), if !shutting_down => {
                    // An upgrade (the new process answers on this port now) or a fast stop: close. A
                    // SIGTERM drain: keep answering `/readyz` 503 until the process exits.
                    if changed.is_err() {
                        return;
                    }
                    if *shutdown.borrow() {
                        if !DRAINING.load(Ordering::Relaxed) {
                            return;
                        }
                        shutting_down = true;
                    }
                }
            }
        }
    }
}

/// ESTABLISHED sockets per local port, from /proc/net/tcp and tcp6 (Linux).
fn established_by_local_port() -> HashMap<u16, i64> {
    let mut counts = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            // State 01 is ESTABLISHED; the local address ends in `:PORT` in hex.
            if state != "01" {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                *counts.entry(port).or_insert(0) += 1;
            }
        }
    }
    counts
}
