//! A fast mock HTTP origin (HTTP/1.1 and h2c). Every request is answered according to its query string:
//! `status=NNN` sets the status, `delay_ms=N` waits first, `size=N` returns N bytes of body instead of the
//! default JSON echo of what was received. `GET /health` answers with the status set by
//! `set_health_status` (200 by default); paths given to `set_static` answer a fixed body (e.g. a JWKS).
//! Received requests are recorded for assertions.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::watch;

/// What the origin received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const RECORDED_MAX: usize = 1000;

struct State {
    name: String,
    health_status: AtomicU16,
    served: AtomicUsize,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    record: bool,
    statics: Mutex<std::collections::HashMap<String, (String, Bytes)>>,
}

/// A running mock origin; dropping it (or `stop`) closes the listener and every open connection.
pub struct MockOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl MockOrigin {
    /// Start on a free loopback port.
    pub async fn start(name: &str) -> std::io::Result<MockOrigin> {
        Self::start_on("127.0.0.1:0".parse().expect("static address"), name, true).await
    }

    /// Start on a given address; `record` keeps the last requests for `requests()`.
    pub async fn start_on(
        addr: SocketAddr,
        name: &str,
        record: bool,
    ) -> std::io::Result<MockOrigin> {
        let state = Arc::new(State {
            name: name.to_string(),
            health_status: AtomicU16::new(200),
            served: AtomicUsize::new(0),
            recorded: Mutex::new(VecDeque::new()),
            record,
            statics: Mutex::new(std::collections::HashMap::new()),
        });
        let served = state.clone();
        let crate::server::Served { addr, stop, .. } =
            crate::server::serve(addr, move |req| handle(req, served.clone())).await?;
        Ok(MockOrigin { addr, state, stop })
    }

    /// Requests answered so far (health checks included).
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::Relaxed)
    }

    /// The recorded requests, oldest first (health checks excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .recorded
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Requests that were not health checks.
    pub fn request_count(&self) -> usize {
        self.state.recorded.lock().expect("not poisoned").len()
    }

    /// What `GET /health` answers from now on.
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::Relaxed);
    }

    /// Answer `GET path` with this body from now on.
    pub fn set_static(&self, path: &str, content_type: &str, body: impl Into<Bytes>) {
        let mut statics = self.state.statics.lock().expect("not poisoned");
        statics.insert(path.to_string(), (content_type.to_string(), body.into()));
    }

    /// Close the listener and drop every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for MockOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.served.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/health" {
        let status = state.health_status.load(Ordering::Relaxed);
        return Ok(response(
            status,
            &state.name,
            "text/plain",
            Bytes::from_static(b"health\n"),
        ));
    }
    let fixed = state
        .statics
        .lock()
        .expect("not poisoned")
        .get(parts.uri.path())
        .cloned();
    if let Some((content_type, body)) = fixed {
        let mut reply = response(200, &state.name, "text/plain", body);
        if let Ok(value) = content_type.parse() {
            reply.headers_mut().insert("content-type", value);
        }
        return Ok(reply);
    }
    let query = parts.uri.query().unwrap_or("");
    let status = query_param(query, "status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    if let Some(delay) = query_param(query, "delay_ms").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let uri = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.as_str().to_string());
    let reply = match query_param(query, "size").and_then(|s| s.parse::<usize>().ok()) {
        Some(size) => response(
            status,
            &state.name,
            "text/plain",
            Bytes::from(vec![b'x'; size]),
        ),
        None => {
            let echo = serde_json::json!({
                "origin": state.name,
                "method": parts.method.as_str(),
                "uri": uri,
                "headers": headers.iter().map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "body_len": body.len(),
            });
            response(
                status,
                &state.name,
                "application/json",
                Bytes::from(echo.to_string()),
            )
        }
    };
    if state.record {
        let mut recorded = state.recorded.lock().expect("not poisoned");
        if recorded.len() == RECORDED_MAX {
            recorded.pop_front();
        }
        recorded.push_back(RecordedRequest {
            method: parts.method.to_string(),
            uri,
            headers,
            body,
        });
    }
    Ok(reply)
}

fn response(
    status: u16,
    origin: &str,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-origin", origin)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad status"))))
}
