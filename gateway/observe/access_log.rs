//! JSON access log: one line per request, serialized on the request's thread and written by a dedicated
//! writer thread, so a slow disk or terminal never stalls the proxy. Lines that do not fit the queue are
//! dropped and counted (`gateway_access_log_dropped_total`).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::OnceLock;

use serde::Serialize;

use super::metrics::METRICS;
use crate::runtime::AccessLogTarget;

/// One access log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub time: &'a str,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub error: Option<&'a str>,
    /// AI routes: the model and provider that answered (or were tried last), why, and how many attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
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
    if serde_json::to_writer(&mut line, record).is_err() {
        return;
    }
    line.push(b'\n');
    if sender.try_send(line).is_err() {
        METRICS.access_log_dropped.inc();
    }
}

/// After each flush the writer lingers this long before it looks again: lines queued meanwhile are taken
/// without waking it, so under load the request threads pay no wake-up per line (measured: the writer
/// thread's CPU was 17% of the process at edge-full load when every line woke it).
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

fn write_lines(receiver: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    while let Ok(line) = receiver.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued, then flush once: batches under load, prompt (one wake-up) when idle.
        loop {
            match receiver.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                }
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
