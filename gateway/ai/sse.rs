//! Server-sent events as providers stream them: where an event ends and what its data is. Lines end with
//! `\n`, `\r\n` or `\r`, as the SSE spec allows, and an empty line ends an event.

use std::borrow::Cow;
use std::ops::Range;

/// How a line ends at `at`: `\n`, `\r\n` or `\r` (the SSE spec allows all three).
enum LineEnd {
    Not,
    /// The buffer ends before it can tell (nothing, or a `\r` that may be half of `\r\n`).
    Unknown,
    Len(usize),
}

fn line_end(buffer: &[u8], at: usize) -> LineEnd {
    match buffer.get(at) {
        Some(b'\n') => LineEnd::Len(1),
        Some(b'\r') => match buffer.get(at + 1) {
            Some(b'\n') => LineEnd::Len(2),
            Some(_) => LineEnd::Len(1),
            None => LineEnd::Unknown,
        },
        Some(_) => LineEnd::Not,
        None => LineEnd::Unknown,
    }
}

/// (end of the event text, length of what ends it) of the first complete event: a line end followed by an
/// empty line, in one pass over the line ends.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &buffer[from..]) {
        let at = from + offset;
        let LineEnd::Len(first) = line_end(buffer, at) else {
            return None;
        };
        match line_end(buffer, at + first) {
            LineEnd::Len(second) => return Some((at, first + second)),
            LineEnd::Unknown => return None,
            LineEnd::Not => from = at + first,
        }
    }
    None
}

/// The lines of an event, split at `\n` and `\r` alike (`\r\n` gives a line and an empty piece, which no
/// field matches). By bytes: a `char` pattern would test every character of the event in turn.
pub fn lines(event: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr2(b'\n', b'\r', text.as_bytes()) {
            // Line ends are ASCII, so both sides are whole UTF-8.
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// The event's data: its `data:` lines joined with `\n`, borrowed from the event when there is one.
pub fn event_data(event: &str) -> Cow<'_, str> {
    let mut lines = lines(event)
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start);
    let first = lines.next().unwrap_or_default();
    match lines.next() {
        None => Cow::Borrowed(first),
        Some(second) => Cow::Owned(
            [first, second]
                .into_iter()
                .chain(lines)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    }
}

/// The unfinished event a reader of a stream keeps from one chunk to the next.
#[derive(Debug, Default)]
pub struct EventBuffer {
    rest: Vec<u8>,
}

/// The complete events of one chunk (after what was kept before it): an iterator of (the event's text, where
/// what follows it starts) over [`Events::bytes`].
pub struct Events<'a> {
    bytes: &'a [u8],
    consumed: usize,
    from_chunk: bool,
}

impl<'a> Events<'a> {
    /// What the events are read from: the chunk itself, or what was kept followed by the chunk.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether [`Events::bytes`] is the chunk itself (nothing was kept before it).
    pub fn from_chunk(&self) -> bool {
        self.from_chunk
    }

    /// How much of [`Events::bytes`] the events read so far cover.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl Iterator for Events<'_> {
    type Item = (Range<usize>, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let (end, separator) = find_event_end(&self.bytes[self.consumed..])?;
        let event = self.consumed..self.consumed + end;
        self.consumed += end + separator;
        Some((event, self.consumed))
    }
}

impl EventBuffer {
    /// Read the complete events of `chunk` with `read`, and keep what follows the last one read for the next
    /// chunk. Usually nothing is kept and a chunk holds whole events: they are read from the chunk itself.
    pub fn read<R>(&mut self, chunk: &[u8], read: impl FnOnce(&mut Events<'_>) -> R) -> R {
        let mut kept = std::mem::take(&mut self.rest);
        let from_chunk = kept.is_empty();
        if !from_chunk {
            kept.extend_from_slice(chunk);
        }
        let (result, consumed) = {
            let bytes: &[u8] = if from_chunk { chunk } else { &kept };
            let mut events = Events {
                bytes,
                consumed: 0,
                from_chunk,
            };
            (read(&mut events), events.consumed)
        };
        if from_chunk {
            kept.extend_from_slice(&chunk[consumed..]);
        } else {
            kept.drain(..consumed);
        }
        self.rest = kept;
        result
    }

    /// The data of the complete events of `chunk`, each parsed as JSON (events whose data is not JSON, such
    /// as a comment or `[DONE]`, are skipped): how the adapters read a provider's named or unnamed events.
    pub fn json_events(&mut self, chunk: &[u8]) -> Vec<serde_json::Value> {
        self.read(chunk, |events| {
            let bytes = events.bytes();
            events
                .filter_map(|(event, _)| {
                    let text = String::from_utf8_lossy(&bytes[event]);
                    serde_json::from_str(&event_data(&text)).ok()
                })
                .collect()
        })
    }

    /// What is kept at the end of the stream: an event without its ending.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ends_are_found_for_every_line_end() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y\n\n"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r\n\r\ndata: y"), Some((7, 4)));
        assert_eq!(find_event_end(b"a\nb\r\nc\n"), None);
        assert_eq!(find_event_end(b"a\r\n\n"), Some((1, 3)));
        assert_eq!(find_event_end(b"data: x\r\rdata: y"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r"), None);
        assert_eq!(find_event_end(b"data: x\r\n"), None);
    }

    #[test]
    fn events_split_over_chunks_are_read_once_and_whole() {
        let mut buffer = EventBuffer::default();
        let mut read = |chunk: &[u8]| {
            buffer.read(chunk, |events| {
                let bytes = events.bytes();
                let texts: Vec<String> = events
                    .by_ref()
                    .map(|(event, _)| String::from_utf8_lossy(&bytes[event]).into_owned())
                    .collect();
                (texts, events.from_chunk())
            })
        };
        assert_eq!(
            read(b"data: a\n\ndata: b\r\n\r\ndata: "),
            (vec!["data: a".into(), "data: b".into()], true)
        );
        assert_eq!(read(b"c\r"), (vec![], false));
        assert_eq!(
            read(b"\rdata: d\n\n"),
            (vec!["data: c".into(), "data: d".into()], false)
        );
        assert_eq!(read(b"data: e"), (vec![], true));
        assert_eq!(buffer.take(), b"data: e");
    }

    #[test]
    fn data_lines_are_joined() {
        assert!(matches!(event_data("id: 1\ndata: {}"), Cow::Borrowed("{}")));
        assert_eq!(event_data("data: [1,\r\ndata:2]"), "[1,\n2]");
        assert_eq!(event_data("event: ping"), "");
        assert_eq!(event_data("data: a\rdata: b\n\ndata: c"), "a\nb\nc");
        assert_eq!(
            lines("a\r\nb\rc\n").collect::<Vec<_>>(),
            ["a", "", "b", "c", ""]
        );
        assert_eq!(lines("").collect::<Vec<_>>(), [""]);
    }
}
