//! Server-sent events as providers stream them: where an event ends and what its data is. Lines end with
//! `\n`, `\r\n` or `\r`, as the SSE spec allows, and an empty line ends an event.

use std::borrow::Cow;

/// The characters that end a line (`\r\n` splits into a line and an empty piece, which no field matches).
pub const LINE_ENDS: [char; 2] = ['\n', '\r'];

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
pub fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(offset) = buffer[from..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
    {
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

/// The event's data: its `data:` lines joined with `\n`, borrowed from the event when there is one.
pub fn event_data(event: &str) -> Cow<'_, str> {
    let mut lines = event
        .split(LINE_ENDS)
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
    fn data_lines_are_joined() {
        assert!(matches!(event_data("id: 1\ndata: {}"), Cow::Borrowed("{}")));
        assert_eq!(event_data("data: [1,\r\ndata:2]"), "[1,\n2]");
        assert_eq!(event_data("event: ping"), "");
    }
}
