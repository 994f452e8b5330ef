//! Token usage and cost of an AI answer, read from the provider's `usage` object: in a JSON body, or in the
//! last SSE event that carries one (the gateway asks OpenAI-compatible providers for it with
//! `stream_options.include_usage`).

use std::sync::LazyLock;

use memchr::memmem;
use serde_json::Value;

pub use super::answer::Usage;
use super::answer::{usage_in_tail, AnswerView};
use super::sse::{event_data, EventBuffer};

impl Usage {
    fn from_value(value: &Value) -> Option<Usage> {
        let usage = value.get("usage").filter(|u| u.is_object())?;
        let count = |value: &Value| value.as_u64().unwrap_or(0);
        Some(Usage {
            prompt_tokens: count(&usage["prompt_tokens"]),
            completion_tokens: count(&usage["completion_tokens"]),
            cache_read_tokens: count(&usage["prompt_tokens_details"]["cached_tokens"]),
            cache_creation_tokens: count(&usage["cache_creation_input_tokens"]),
        })
    }

    /// The usage of a JSON answer or event, if it carries one.
    pub fn from_json(json: &[u8]) -> Option<Usage> {
        Self::from_read_json(json, AnswerView::parse(json).as_ref())
    }

    /// The same, for JSON already read through the borrowed view (`None` when it could not be): only then
    /// is it parsed again, the general way.
    pub fn from_read_json(json: &[u8], view: Option<&AnswerView>) -> Option<Usage> {
        match view {
            Some(view) => view.usage(),
            None => serde_json::from_slice::<Value>(json)
                .ok()
                .as_ref()
                .and_then(Usage::from_value),
        }
    }

    /// USD, from prices per 1M tokens. Prompt tokens read from or written to the provider's cache are priced
    /// at their own rates (the input price when those are not given); the rest at the input price.
    pub fn cost(&self, prices: &Prices) -> Option<f64> {
        if prices.input.is_none() && prices.output.is_none() {
            return None;
        }
        let per_token = |price: Option<f64>| price.unwrap_or(0.0) / 1_000_000.0;
        let uncached = self.prompt_tokens.saturating_sub(
            self.cache_read_tokens
                .saturating_add(self.cache_creation_tokens),
        );
        Some(
            uncached as f64 * per_token(prices.input)
                + self.cache_read_tokens as f64 * per_token(prices.cache_read.or(prices.input))
                + self.cache_creation_tokens as f64
                    * per_token(prices.cache_write.or(prices.input))
                + self.completion_tokens as f64 * per_token(prices.output),
        )
    }
}

/// A model's prices, USD per 1M tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prices {
    pub input: Option<f64>,
    pub output: Option<f64>,
    /// Prompt tokens read from the provider's cache (default: the input price).
    pub cache_read: Option<f64>,
    /// Prompt tokens written to the provider's cache (default: the input price).
    pub cache_write: Option<f64>,
}

/// Largest plain body kept whole for reading its usage. Past it only the last `TAIL` bytes are kept, and the
/// usage is read from the last `"usage"` key there.
const MAX_BODY: usize = 1024 * 1024;
const TAIL: usize = 16 * 1024;

/// Watches an answer go by: keeps the last usage it carried and, for a stream, whether it came to a proper
/// end.
#[derive(Debug, Default)]
pub struct UsageScanner {
    sse: bool,
    /// A plain body (up to `MAX_BODY`, then its tail).
    pending: Vec<u8>,
    /// The unfinished SSE event.
    events: EventBuffer,
    /// The plain body outgrew `MAX_BODY`: `pending` holds its tail.
    tail_only: bool,
    pub usage: Option<Usage>,
    /// The stream carried its terminal event: `[DONE]`, a choice's `finish_reason`, or an `error`.
    pub ended: bool,
}

/// Whether an SSE event ends an answer: its data is `[DONE]`, or it names a non-null `finish_reason` or an
/// `error`. Only byte probes: no event is parsed for this.
fn ends_stream(event: &[u8]) -> bool {
    if DONE.find(event).is_some() {
        let text = String::from_utf8_lossy(event);
        if event_data(&text).trim() == "[DONE]" {
            return true;
        }
    }
    values_of(event, &FINISH_REASON).any(|value| !value.starts_with(b"null"))
        || values_of(event, &ERROR).next().is_some()
}

/// What follows each `key` of `event` that is a key: a quoted name followed by `:` (the same word as a
/// string value is followed by `,` or `}`).
fn values_of<'e>(
    event: &'e [u8],
    key: &'static memmem::Finder<'static>,
) -> impl Iterator<Item = &'e [u8]> {
    key.find_iter(event).filter_map(move |at| {
        event[at + key.needle().len()..]
            .trim_ascii_start()
            .strip_prefix(b":")
            .map(<[u8]>::trim_ascii_start)
    })
}

// Searchers built once, not per event.
static DONE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"[DONE]"));
static FINISH_REASON: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"finish_reason\""));
static ERROR: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));
static USAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

impl UsageScanner {
    /// At the end of a stream: whether it carried its terminal event, counting a last event the provider
    /// closed without its blank line (`data: [DONE]\n`, then the connection closes).
    pub fn ended_at_eof(&mut self) -> bool {
        if !self.ended {
            // A blank line completes the unfinished event, which is then read like any other (its usage
            // too).
            self.observe(b"\n\n");
        }
        self.ended
    }

    pub fn new(sse: bool) -> Self {
        UsageScanner {
            sse,
            ..Default::default()
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        if !self.sse {
            self.tail_only |= self.pending.len() + chunk.len() > MAX_BODY;
            self.pending.extend_from_slice(chunk);
            if self.tail_only && self.pending.len() > TAIL {
                self.pending.drain(..self.pending.len() - TAIL);
            }
            return;
        }
        self.events.read(chunk, |events| {
            let bytes = events.bytes();
            for (event, _) in events {
                let event = &bytes[event];
                self.ended = self.ended || ends_stream(event);
                // Only events that carry usage are parsed. With `stream_options.include_usage` (which the
                // gateway asks for) OpenAI writes `"usage":null` into every other chunk.
                if !values_of(event, &USAGE).any(|value| !value.starts_with(b"null")) {
                    continue;
                }
                let text = String::from_utf8_lossy(event);
                if let Some(found) = Usage::from_json(event_data(&text).as_bytes()) {
                    self.usage = Some(found);
                }
            }
        });
    }

    /// The usage found, once the answer is complete.
    pub fn finish(mut self) -> Option<Usage> {
        if !self.sse && !self.pending.is_empty() {
            self.usage = if self.tail_only {
                usage_in_tail(&self.pending)
            } else {
                Usage::from_json(&self.pending)
            };
        }
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_bodies_and_streams() {
        let mut plain = UsageScanner::new(false);
        plain.observe(br#"{"choices":[],"usage":{"prompt_tokens":10,"#);
        plain.observe(br#""completion_tokens":5,"total_tokens":15}}"#);
        assert_eq!(
            plain.finish(),
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Usage::default()
            })
        );

        let mut stream = UsageScanner::new(true);
        stream.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usa");
        stream.observe(b"ge\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        assert_eq!(
            stream.finish(),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                ..Usage::default()
            })
        );

        // Events framed with CRLF, as some providers send them.
        let mut crlf = UsageScanner::new(true);
        crlf.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\r\n\r\ndata: [DONE]\r\n\r\n");
        assert_eq!(
            crlf.finish(),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 2,
                ..Usage::default()
            })
        );

        // A body larger than is kept whole: its usage is read from the tail.
        let mut large = UsageScanner::new(false);
        large.observe(br#"{"object":"list","data":[{"embedding":["#);
        for _ in 0..40 {
            large.observe(&[b'0'; 32 * 1024]);
        }
        large.observe(br#"]}],"usage":{"prompt_tokens":12,"total_tokens":12}}"#);
        assert_eq!(
            large.finish(),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 0,
                ..Usage::default()
            })
        );

        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
            ..Usage::default()
        };
        let prices = Prices {
            input: Some(0.15),
            output: Some(0.60),
            ..Prices::default()
        };
        let cost = usage.cost(&prices).unwrap();
        assert!((cost - 0.45).abs() < 1e-12, "{cost}");
        assert_eq!(usage.cost(&Prices::default()), None);
        // Cache reads and writes at their own prices (Anthropic's: a tenth and 1.25x of input).
        let cached = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 0,
            cache_read_tokens: 800_000,
            cache_creation_tokens: 100_000,
        };
        let prices = Prices {
            input: Some(3.0),
            output: Some(15.0),
            cache_read: Some(0.3),
            cache_write: Some(3.75),
        };
        let cost = cached.cost(&prices).unwrap();
        assert!((cost - (0.3 + 0.24 + 0.375)).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn a_stream_ends_with_done_a_finish_reason_or_an_error() {
        let cases: [(&[u8], bool); 7] = [
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"error\"}}]}\n\n",
                false,
            ),
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n",
                false,
            ),
            (
                b"data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"stop\"}]}\n\n",
                true,
            ),
            (b"data: [DONE]\n\n", true),
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n",
                false,
            ),
            (b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n", true),
            (b": ping\n\n", false),
        ];
        for (stream, ended) in cases {
            let mut scanner = UsageScanner::new(true);
            scanner.observe(stream);
            assert_eq!(scanner.ended, ended, "{}", String::from_utf8_lossy(stream));
        }
        // The last event without its blank line, then the end of the stream.
        let mut scanner = UsageScanner::new(true);
        scanner.observe(b"data: {\"choices\":[]}\n\ndata: [DONE]\n");
        assert!(!scanner.ended && scanner.ended_at_eof());
    }
}
