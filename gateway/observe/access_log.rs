//! JSON access log: one line per request, serialized on the request's thread and written by a dedicated
//! writer thread, so a slow disk or terminal never stalls the proxy. Lines that do not fit the queue are
//! dropped and counted (`gateway_access_log_dropped_total`).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::OnceLock;

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use super::metrics::METRICS;

/// One access log line. Written by hand into the line buffer (see [`AccessRecord::write`]); the field
/// order here is the order of the JSON keys.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub consumer: Option<&'a str>,
    pub error: Option<&'a str>,
    /// AI routes: the model and provider that answered (or were tried last), why, and how many attempts.
    /// These keys are left out when absent.
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub attempts: Option<u32>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens read from / written to the provider's cache (only when there were any).
    pub cache_read_tokens: Option<u64>,
    pub cache_creation_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

impl AccessRecord<'_> {
    /// The record as one JSON object. Keys are literals and the time, addresses and numbers are written
    /// in place, with no `String` built per field: a line is about a third of serde's cost to write.
    pub fn write(&self, out: &mut Vec<u8>) {
        // RFC 3339 times and socket addresses have no character JSON escapes: written as they format.
        let _ = write!(
            out,
            "{{\"time\":\"{}\"",
            humantime::format_rfc3339_millis(self.time)
        );
        str_field(out, "request_id", Some(self.request_id));
        str_field(out, "listener", Some(self.listener));
        display_field(out, "client", self.client, b"\"\"");
        str_field(out, "method", Some(self.method));
        str_field(out, "host", Some(self.host));
        str_field(out, "path", Some(self.path));
        str_field(out, "protocol", Some(self.protocol));
        let _ = write!(
            out,
            ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":",
            self.status, self.bytes_in, self.bytes_out
        );
        json_f64(out, self.duration_ms);
        str_field(out, "route", self.route);
        display_field(out, "upstream", self.upstream, b"null");
        str_field(out, "consumer", self.consumer);
        str_field(out, "error", self.error);
        // The AI keys are left out when absent.
        for (name, value) in [
            ("model", self.model),
            ("provider", self.provider),
            ("decision", self.decision),
        ] {
            if value.is_some() {
                str_field(out, name, value);
            }
        }
        for (name, value) in [
            ("attempts", self.attempts.map(u64::from)),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_creation_tokens", self.cache_creation_tokens),
        ] {
            if let Some(value) = value {
                key(out, name);
                let _ = write!(out, "{value}");
            }
        }
        if let Some(cost) = self.cost_usd {
            key(out, "cost_usd");
            json_f64(out, cost);
        }
        out.push(b'}');
    }
}

/// `,"key":` (copied, not formatted).
fn key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `,"key":` then the text as a JSON string, or `null`.
fn str_field(out: &mut Vec<u8>, name: &str, text: Option<&str>) {
    key(out, name);
    match text {
        Some(text) => json_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// `,"key":` then the value's text in quotes (it has no character JSON escapes), or `absent` as it is.
fn display_field(
    out: &mut Vec<u8>,
    key: &str,
    value: Option<impl std::fmt::Display>,
    absent: &[u8],
) {
    let _ = write!(out, ",\"{key}\":");
    match value {
        Some(value) => {
            let _ = write!(out, "\"{value}\"");
        }
        None => out.extend_from_slice(absent),
    }
}

/// A JSON string. Text without a character JSON must escape (control characters, `"` and `\\`; the
/// common case) is copied as it is, which is what serde_json writes for it; anything else goes through
/// serde_json.
fn json_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// A number as serde_json writes it (`null` when not finite).
fn json_f64(out: &mut Vec<u8>, value: f64) {
    let _ = serde_json::to_writer(&mut *out, &value);
}

/// Where access log lines go (`server.access_log.target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(String),
}

const QUEUE_LINES: usize = 16 * 1024;

static SENDER: OnceLock<Option<SyncSender<Vec<u8>>>> = OnceLock::new();

/// Start the writer for the configured target. Called once at start.
pub fn init(target: &AccessLogTarget) -> std::io::Result<()> {
    let writer: Box<dyn Write + Send> = match target {
        AccessLogTarget::Off => {
            let _ = SENDER.set(None);
            return Ok(());
        }
        AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    let (sender, receiver) = sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(receiver, writer))?;
    let _ = SENDER.set(Some(sender));
    Ok(())
}

/// Whether lines are written at all (skip building them when not).
pub fn enabled() -> bool {
    matches!(SENDER.get(), Some(Some(_)))
}

/// Queue one record.
pub fn log(record: &AccessRecord<'_>) {
    let Some(Some(sender)) = SENDER.get() else {
        return;
    };
    let mut line = Vec::with_capacity(384);
    record.write(&mut line);
    line.push(b'\n');
    if sender.try_send(line).is_err() {
        METRICS.access_log_dropped.inc();
    }
}

/// After each flush the writer lingers this long before it looks again: lines queued meanwhile are taken
/// without waking it, so under load the request threads pay no wake-up per line (measured: the writer
/// thread's CPU was 17% of the process at edge-full load when every line woke it).
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Set by the writer when it has written everything queued before a flush request (an empty line).
static FLUSHED: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// Write out every line queued so far, waiting up to `limit` (before the process exits).
pub fn flush(limit: std::time::Duration) {
    let Some(Some(sender)) = SENDER.get() else {
        return;
    };
    let deadline = std::time::Instant::now() + limit;
    let (done, wake) = &FLUSHED;
    *done.lock().unwrap_or_else(|e| e.into_inner()) = false;
    // The queue is first in, first out: the writer meets this request after every earlier line. A full
    // queue (a slow disk) is waited on until the deadline.
    loop {
        match sender.try_send(Vec::new()) {
            Ok(()) => break,
            Err(std::sync::mpsc::TrySendError::Full(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(_) => return,
        }
    }
    let flushed = done.lock().unwrap_or_else(|e| e.into_inner());
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let _ = wake.wait_timeout_while(flushed, left, |flushed| !*flushed);
}

fn write_lines(receiver: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    let write = |out: &mut std::io::BufWriter<_>, line: Vec<u8>| {
        if line.is_empty() {
            // A flush request.
            let _ = out.flush();
            let (done, wake) = &FLUSHED;
            *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            wake.notify_all();
        } else {
            let _ = out.write_all(&line);
        }
    };
    while let Ok(line) = receiver.recv() {
        write(&mut out, line);
        // Drain what is queued, then flush once: batches under load, prompt (one wake-up) when idle.
        loop {
            match receiver.try_recv() {
                Ok(line) => write(&mut out, line),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        std::thread::sleep(LINGER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::{Duration, UNIX_EPOCH};

    fn edge_record<'a>(path: &'a str, host: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            request_id: "0190d7c4-aaaa-7bbb-8ccc-000000000001",
            listener: "edge",
            client: Some("2001:db8::7".parse().unwrap()),
            method: "GET",
            host,
            path,
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            duration_ms: 0.8125,
            route: Some("app"),
            upstream: Some("[::1]:8080".parse().unwrap()),
            consumer: None,
            error: None,
            model: None,
            provider: None,
            decision: None,
            attempts: None,
            prompt_tokens: None,
            completion_tokens: None,
            cache_read_tokens: None,
            cache_creation_tokens: None,
            cost_usd: None,
        }
    }

    fn line(record: &AccessRecord<'_>) -> String {
        let mut out = Vec::new();
        record.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_edge_line_has_every_key_in_order_and_leaves_out_the_ai_ones() {
        let text = line(&edge_record("/items?page=2", "shop.example"));
        let expected = json!({
            "time": "2026-11-18T11:06:40.123Z", "request_id": "0190d7c4-aaaa-7bbb-8ccc-000000000001",
            "listener": "edge", "client": "2001:db8::7", "method": "GET", "host": "shop.example",
            "path": "/items?page=2", "protocol": "HTTP/1.1", "status": 200, "bytes_in": 0, "bytes_out": 1234,
            "duration_ms": 0.8125, "route": "app", "upstream": "[::1]:8080", "consumer": null, "error": null,
        });
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, expected);
        // Key order as listed (serde_json's map keeps insertion order here).
        assert_eq!(text, serde_json::to_string(&expected).unwrap());
    }

    #[test]
    fn text_that_json_must_escape_is_escaped_as_serde_json_does() {
        for tricky in [
            "/a\"b",
            "/back\\slash",
            "/new\nline\r\t\u{1}",
            "/ünï/😀/\u{7f}",
        ] {
            let text = line(&edge_record(tricky, "h\"ost"));
            let parsed: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed["path"], tricky);
            assert_eq!(parsed["host"], "h\"ost");
            let path_json = serde_json::to_string(tricky).unwrap();
            assert!(text.contains(&format!("\"path\":{path_json}")), "{text}");
        }
    }

    #[test]
    fn an_ai_line_carries_model_usage_and_cost_and_a_missing_client_is_empty() {
        let mut record = edge_record("/v1/chat/completions", "ai.example");
        record.client = None;
        record.upstream = None;
        record.consumer = Some("team-a");
        record.error = Some("client_disconnected");
        record.model = Some("gpt-4o-mini");
        record.provider = Some("openai");
        record.decision = Some("explicit");
        record.attempts = Some(2);
        record.prompt_tokens = Some(12);
        record.completion_tokens = Some(34);
        record.cost_usd = Some(0.000123);
        record.duration_ms = f64::NAN;
        let parsed: Value = serde_json::from_str(&line(&record)).unwrap();
        assert_eq!(parsed["client"], "");
        assert_eq!(parsed["upstream"], Value::Null);
        assert_eq!(parsed["duration_ms"], Value::Null);
        assert_eq!(parsed["consumer"], "team-a");
        assert_eq!(parsed["error"], "client_disconnected");
        assert_eq!(parsed["model"], "gpt-4o-mini");
        assert_eq!(parsed["provider"], "openai");
        assert_eq!(parsed["decision"], "explicit");
        assert_eq!(parsed["attempts"], 2);
        assert_eq!(parsed["prompt_tokens"], 12);
        assert_eq!(parsed["completion_tokens"], 34);
        assert_eq!(parsed["cost_usd"], 0.000123);
    }
}
