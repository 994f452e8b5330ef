//! A strict HTTP/1.1 origin over plain TCP, for request-smuggling tests: it reads what a proxy sends
//! byte by byte, frames each request the way a strict backend would, records every request with the
//! rules it broke (a second framing header, a look-alike header name, a dot-segment in the path,
//! anything unparseable), and answers each with `200` and `x-origin: raw`. A proxy is safe when every
//! request recorded here is clean and their number equals the answers its client got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One request as the origin framed it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head as received (request line and header lines), lossily as text.
    pub head: String,
    pub body: Vec<u8>,
    /// Every rule the request broke; empty for a well-formed request.
    pub violations: Vec<String>,
}

/// A running strict origin; dropping it stops the accept loop.
pub struct RawOrigin {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    _stop: watch::Sender<bool>,
}

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-origin: raw\r\n\r\nok";
const MAX_HEAD: usize = 64 * 1024;

impl RawOrigin {
    /// Start on a free loopback port.
    pub async fn start() -> std::io::Result<RawOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, recorded.clone()));
                        }
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
        Ok(RawOrigin {
            addr,
            requests,
            _stop: stop,
        })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().expect("not poisoned").clone()
    }
}

async fn serve(mut stream: TcpStream, recorded: Arc<Mutex<Vec<RawRequest>>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match read_request(&mut stream, &mut buf).await {
            Read::Request(request) => {
                let clean = request.violations.is_empty();
                recorded.lock().expect("not poisoned").push(request);
                if !clean || stream.write_all(ANSWER).await.is_err() {
                    return;
                }
            }
            Read::Closed => return,
        }
    }
}

enum Read {
    Request(RawRequest),
    Closed,
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn broken(head: &[u8], why: impl Into<String>) -> Read {
    Read::Request(RawRequest {
        head: String::from_utf8_lossy(head).into_owned(),
        body: Vec::new(),
        violations: vec![why.into()],
    })
}

/// Read one request from `buf` (refilled from `stream`), leaving what follows it in `buf`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Read {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return broken(buf, "head larger than 64 KiB");
        }
        if !fill(stream, buf).await {
            // A connection closed between requests, or mid-head when the proxy gave up: no request.
            return Read::Closed;
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let mut violations = Vec::new();
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let strict = httparse::ParserConfig::default();
    match strict.parse_request(&mut request, &head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return broken(&head, "head not parsed whole"),
        Err(e) => return broken(&head, format!("unparseable head: {e}")),
    }
    if request.version != Some(1) {
        violations.push("not HTTP/1.1".to_string());
    }
    let path = request.path.unwrap_or("");
    check_path(path, &mut violations);
    let mut content_length: Vec<&[u8]> = Vec::new();
    let mut transfer_encoding: Vec<&[u8]> = Vec::new();
    let mut hosts = 0;
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if name.contains('_') {
            violations.push(format!("underscore in header name `{}`", header.name));
        }
        if !name.is_ascii() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            violations.push(format!("odd header name `{}`", header.name));
        }
        if header
            .value
            .iter()
            .any(|&b| b == b'\r' || b == b'\n' || b == 0)
        {
            violations.push(format!("CR, LF or NUL in the value of `{}`", header.name));
        }
        match name.as_str() {
            "content-length" => content_length.push(header.value),
            "transfer-encoding" => transfer_encoding.push(header.value),
            "host" => hosts += 1,
            _ => {}
        }
    }
    if hosts != 1 {
        violations.push(format!("{hosts} Host headers"));
    }
    let body = match (content_length.as_slice(), transfer_encoding.as_slice()) {
        ([], []) => Some(Framing::Length(0)),
        ([value], []) => match std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) => Some(Framing::Length(n)),
            None => {
                violations.push(format!(
                    "Content-Length `{}`",
                    String::from_utf8_lossy(value)
                ));
                None
            }
        },
        ([], [b"chunked"]) => Some(Framing::Chunked),
        (lengths, codings) => {
            violations.push(format!(
                "{} Content-Length and {} Transfer-Encoding fields ({:?})",
                lengths.len(),
                codings.len(),
                codings
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
            ));
            None
        }
    };
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let body = match body {
        None => Vec::new(),
        Some(Framing::Length(n)) => {
            while buf.len() < n {
                if !fill(stream, buf).await {
                    return Read::Closed;
                }
            }
            buf.drain(..n).collect()
        }
        Some(Framing::Chunked) => match read_chunked(stream, buf).await {
            Ok(Some(body)) => body,
            Ok(None) => return Read::Closed,
            Err(why) => {
                violations.push(why);
                Vec::new()
            }
        },
    };
    Read::Request(RawRequest {
        head: head_text,
        body,
        violations,
    })
}

enum Framing {
    Length(usize),
    Chunked,
}

/// A path a strict backend and the proxy cannot read differently: absolute, no dot-segments (plain
/// or encoded), no empty segments, no NUL or control bytes, no backslash.
fn check_path(path: &str, violations: &mut Vec<String>) {
    let lower = path.to_ascii_lowercase();
    let only_path = lower.split('?').next().unwrap_or("");
    let dot_segment = only_path
        .split('/')
        .any(|segment| matches!(segment, "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."));
    if !path.starts_with('/')
        || dot_segment
        || only_path.contains("//")
        || only_path.contains('\\')
        || lower.contains("%00")
        || path.bytes().any(|b| b < 0x20 || b == 0x7f)
    {
        violations.push(format!("path `{}`", path.escape_debug()));
    }
}

/// Read a chunked body strictly: hex sizes without extensions or spaces, CRLF after each chunk, no
/// trailers. `Ok(None)` when the connection closed first.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                break pos;
            }
            if buf.len() > 1024 {
                return Err("chunk size line too long".into());
            }
            if !fill(stream, buf).await {
                return Ok(None);
            }
        };
        let line: Vec<u8> = buf.drain(..line_end + 2).collect();
        let size_text = &line[..line_end];
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "chunk size `{}`",
                String::from_utf8_lossy(size_text)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).expect("hex"), 16)
            .map_err(|e| e.to_string())?;
        if size == 0 {
            while buf.len() < 2 {
                if !fill(stream, buf).await {
                    return Ok(None);
                }
            }
            if &buf[..2] != b"\r\n" {
                return Err("trailer fields after the last chunk".into());
            }
            buf.drain(..2);
            return Ok(Some(body));
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return Ok(None);
            }
        }
        body.extend(buf.drain(..size));
        if buf.drain(..2).as_slice() != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
    }
}
