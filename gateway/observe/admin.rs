//! The admin listener: `/healthz` (process alive), `/readyz` (config loaded and listeners serving; 503 while
//! shutting down) and `/metrics` (Prometheus text). Meant for loopback or a private network only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::metrics::{render, METRICS};

/// Set once Pingora runs every service; cleared when shutdown begins.
pub static READY: AtomicBool = AtomicBool::new(false);

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
