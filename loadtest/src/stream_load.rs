//! `stream-load --url URL [--streams 512] [--waves 1] [--header 'Name: value']... [--body JSON]
//! [--stall-ms 500] [--timeout-s 60] [--ramp-ms 0]`: the ai-stream benchmark's client.
//!
//! Opens `streams` streaming chat completions at once (one connection each, HTTP/1.1), or spread evenly
//! over `ramp-ms`, `waves` times in a row, and prints one JSON line: how many streams completed (`[DONE]` seen), failed (status or
//! connection error) and stalled (a gap between content events over `stall-ms`, or no `[DONE]` before
//! the timeout), time to first token from sending the request (p50/p99/max, µs; and p50/p99 for each quarter of
//! the streams in the order they were started), and the gaps between
//! content events (mean/p50/p99/max, µs). Time is taken when an event arrives, not when its bytes do; only
//! events whose delta carries visible text count.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::timeout_at;

struct Options {
    url: String,
    streams: usize,
    waves: usize,
    headers: Vec<(String, String)>,
    body: String,
    stall: Duration,
    timeout: Duration,
    ramp: Duration,
}

#[derive(Default)]
struct StreamResult {
    ok_status: bool,
    done: bool,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
}

fn usage(message: &str) -> ! {
    eprintln!("stream-load: {message}\nusage: stream-load --url URL [--streams N] [--waves N] [--header 'Name: value']... [--body JSON] [--stall-ms N] [--timeout-s N] [--ramp-ms N]");
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        url: String::new(),
        streams: 512,
        waves: 1,
        headers: Vec::new(),
        body: json!({"model": "bench", "stream": true,
            "messages": [{"role": "user", "content": "Stream a long answer to the benchmark, please."}]})
        .to_string(),
        stall: Duration::from_millis(500),
        timeout: Duration::from_secs(60),
        ramp: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag} takes a whole number")))
        };
        match flag.as_str() {
            "--url" => options.url = value.clone(),
            "--streams" => options.streams = number() as usize,
            "--waves" => options.waves = number().max(1) as usize,
            "--stall-ms" => options.stall = Duration::from_millis(number()),
            "--timeout-s" => options.timeout = Duration::from_secs(number()),
            "--ramp-ms" => options.ramp = Duration::from_millis(number()),
            "--body" => options.body = value.clone(),
            "--header" => match value.split_once(':') {
                Some((name, v)) => options
                    .headers
                    .push((name.trim().to_string(), v.trim().to_string())),
                None => usage("--header takes 'Name: value'"),
            },
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.url.is_empty() {
        usage("--url is required");
    }
    options
}

/// `http://host:port/path` into (`host:port`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| usage("only http:// URLs are supported"));
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

/// One stream, given up at `deadline` with what it got so far (a stream cut short counts as stalled).
async fn one_stream(options: &Options, authority: &str, path: &str) -> StreamResult {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut result = StreamResult::default();
    let Ok(Ok(tcp)) = timeout_at(deadline, TcpStream::connect(authority)).await else {
        return result;
    };
    let _ = tcp.set_nodelay(true);
    let Ok(Ok((mut sender, connection))) =
        timeout_at(deadline, http1::handshake(TokioIo::new(tcp))).await
    else {
        return result;
    };
    tokio::spawn(connection);
    let mut request = Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json");
    for (name, value) in &options.headers {
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Full::new(Bytes::from(options.body.clone()))) else {
        return result;
    };
    let sent = Instant::now();
    let Ok(Ok(response)) = timeout_at(deadline, sender.send_request(request)).await else {
        return result;
    };
    result.ok_status = response.status().is_success();
    if !result.ok_status {
        return result;
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    while let Ok(Some(frame)) = timeout_at(deadline, body.frame()).await {
        let Ok(frame) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        pending.extend_from_slice(data);
        // Complete events end with a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if text.contains("[DONE]") {
                result.done = true;
            } else if carries_text(&text) {
                match last {
                    None => result.ttft = Some(now - sent),
                    Some(previous) => result.gaps.push(now - previous),
                }
                last = Some(now);
            }
        }
    }
    result
}

/// Whether an SSE event delivers visible text (`choices[].delta.content` with more than whitespace): events
/// with an empty or blank delta are not tokens.
fn carries_text(event: &str) -> bool {
    let data: String = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
        return false;
    };
    value["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            c["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.trim().is_empty())
        })
    })
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_micros()
}

#[tokio::main]
async fn main() {
    let options = std::sync::Arc::new(parse_options());
    let (authority, path) = split_url(&options.url);
    let started = Instant::now();
    let mut results = Vec::with_capacity(options.streams * options.waves);
    for _ in 0..options.waves {
        let mut tasks = tokio::task::JoinSet::new();
        let wave_start = tokio::time::Instant::now();
        for i in 0..options.streams {
            let options = options.clone();
            let (authority, path) = (authority.clone(), path.clone());
            let start_at = wave_start + options.ramp.mul_f64(i as f64 / options.streams as f64);
            tasks.spawn(async move {
                if !options.ramp.is_zero() {
                    tokio::time::sleep_until(start_at).await;
                }
                (i, one_stream(&options, &authority, &path).await)
            });
        }
        let mut wave: Vec<StreamResult> = (0..options.streams)
            .map(|_| StreamResult::default())
            .collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, result)) = joined {
                wave[i] = result;
            }
        }
        results.extend(wave);
    }
    let wall = started.elapsed();
    let failed = results.iter().filter(|r| !r.ok_status).count();
    let completed = results.iter().filter(|r| r.done).count();
    let stalled = results
        .iter()
        .filter(|r| r.ok_status && (!r.done || r.gaps.iter().any(|g| *g > options.stall)))
        .count();
    let stall_free = results.iter().filter(|r| r.ok_status).count() - stalled;
    let mut ttft: Vec<Duration> = results.iter().filter_map(|r| r.ttft).collect();
    ttft.sort();
    // Time to first token by when the stream started: the first quarter of each wave, the second...
    let by_quarter: Vec<_> = (0..4)
        .map(|quarter| {
            let mut times: Vec<Duration> = results
                .iter()
                .enumerate()
                .filter(|(i, _)| (i % options.streams) * 4 / options.streams == quarter)
                .filter_map(|(_, r)| r.ttft)
                .collect();
            times.sort();
            json!({"p50": percentile(&times, 0.5), "p99": percentile(&times, 0.99)})
        })
        .collect();
    let mut gaps: Vec<Duration> = results
        .iter()
        .flat_map(|r| r.gaps.iter().copied())
        .collect();
    gaps.sort();
    let mean_gap = if gaps.is_empty() {
        0
    } else {
        gaps.iter().map(|g| g.as_micros()).sum::<u128>() / gaps.len() as u128
    };
    let report = json!({
        "streams": results.len(), "completed": completed, "failed": failed, "stalled": stalled, "stall_free": stall_free,
        "ttft_us": {"p50": percentile(&ttft, 0.5), "p99": percentile(&ttft, 0.99), "max": percentile(&ttft, 1.0)},
        "ttft_by_quarter_us": by_quarter,
        "gap_us": {"mean": mean_gap, "p50": percentile(&gaps, 0.5), "p99": percentile(&gaps, 0.99), "max": percentile(&gaps, 1.0)},
        "wall_s": wall.as_secs_f64(),
    });
    println!("{report}");
}
