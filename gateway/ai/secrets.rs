//! Response secret masking: `API_KEY=...`, `PASSWORD: ...`, private key blocks, provider key formats and
//! custom patterns are replaced in completions, both in whole JSON bodies and in SSE streams. In a stream,
//! text that could still be the start of a secret is held back until the next chunk or the end, so a secret
//! split across chunks is caught: an open key block, a keyword or key prefix whose value has not ended yet,
//! and a trailing word that could be the beginning of one (any trailing word when custom patterns exist,
//! since their shape is unknown). Everything else goes on at once, so ordinary tokens are not delayed.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;
use regex::Regex;
use serde_json::{Map, Value};

use super::answer::{AnswerView, Slot};
use super::sse::{event_data, lines, EventBuffer};

/// Patterns and their replacements.
#[derive(Debug, Clone)]
pub struct SecretMasker {
    patterns: Vec<(Regex, String)>,
    /// Custom patterns exist: any trailing word may be the start of one.
    custom: bool,
}

/// From the start of the word holding a trigger: the text a built-in pattern could still need, that is the
/// word, then perhaps `=`/`:` and a value that has not ended (no whitespace, quote, comma or semicolon yet).
static UNFINISHED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^\S*(\s*([=:]\s*["']?[^\s"',;]*)?)?$"#).expect("unfinished pattern compiles")
});

/// How secrets the built-in patterns know begin (lowercase): a trailing word ending with the beginning of one
/// of these is held back.
const SECRET_STARTS: [&str; 21] = [
    "api_key",
    "api-key",
    "apikey",
    "secret",
    "password",
    "passwd",
    "token",
    "sk-",
    "akia",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "aiza",
    "-----begin",
];

/// The first letters of `SECRET_STARTS`.
const SECRET_FIRSTS: [char; 7] = ['a', 's', 'p', 't', 'g', 'x', '-'];

/// Whether `word` ends with the beginning of a secret keyword or key prefix (`MY_SEC`, `s`, `AKI`). Only the
/// last ten bytes can matter (the longest start is ten bytes long); compared case-folded, without allocating.
fn may_begin_secret(word: &str) -> bool {
    let from = (0..=word.len().saturating_sub(10))
        .rev()
        .find(|&i| word.is_char_boundary(i))
        .unwrap_or(0);
    let tail = &word[from..];
    tail.char_indices().any(|(i, c)| {
        // Most positions fail on their first letter, an ASCII one compared as a byte. (Other characters
        // may lowercase to ASCII, as the Kelvin sign does to `k`: they are compared in full.)
        if c.is_ascii() && !SECRET_FIRSTS.contains(&c.to_ascii_lowercase()) {
            return false;
        }
        SECRET_STARTS
            .iter()
            .filter(|start| !c.is_ascii() || start.as_bytes()[0] == c.to_ascii_lowercase() as u8)
            .any(|start| folds_to_prefix(&tail[i..], start))
    })
}

/// Whether `text`, case-folded as the patterns' `(?i)` folds it, is a prefix of `start`. Lowercasing is that
/// folding for the letters of the starts but one: the long s (`ſ`) folds to `s` and lowercases to itself.
fn folds_to_prefix(text: &str, start: &str) -> bool {
    let mut start = start.chars();
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ſ' { 's' } else { c })
        .all(|c| start.next() == Some(c))
}

static TRIGGER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)api[_-]?key|secret|passw|token|sk-|akia|gh[pousr]_|xox[abprs]-|aiza")
        .expect("trigger pattern compiles")
});

/// Where a key block begins; a searcher built once (`str::rfind` builds one for every call).
static KEY_BLOCK: LazyLock<memchr::memmem::FinderRev<'static>> =
    LazyLock::new(|| memchr::memmem::FinderRev::new("-----BEGIN"));

/// Compile the stream masker's own patterns ahead of the first stream (see `ai::warm_up`).
pub fn warm_up() {
    LazyLock::force(&UNFINISHED);
    LazyLock::force(&TRIGGER);
    LazyLock::force(&KEY_BLOCK);
}

impl SecretMasker {
    /// The built-in patterns plus `custom` regexes (replaced by `[REDACTED]`). Key and keyword patterns
    /// start at an ASCII word boundary, so a key glued to text in another script (`키는sk-proj-...`)
    /// is found: to Unicode, `는s` is inside one word.
    pub fn new(custom: Vec<Regex>) -> Self {
        let builtin = [
            (
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
                "[REDACTED PRIVATE KEY]",
            ),
            (
                // A JSON key (`"password": "..."`) as well as an assignment; the value's quotes stay, so
                // masked tool-call arguments are still JSON.
                r#"(?i)(?-u:\b)([A-Z0-9_]*(?:API[_-]?KEY|SECRET|PASSWORD|PASSWD|TOKEN)[A-Z0-9_]*)(["']?\s*[=:]\s*)(["']?)[^\s"',;]+"#,
                "${1}${2}${3}[REDACTED]",
            ),
            (
                r"(?-u:\b)(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})",
                "[REDACTED]",
            ),
        ];
        let mut patterns: Vec<(Regex, String)> = builtin
            .into_iter()
            .map(|(pattern, replacement)| {
                (
                    Regex::new(pattern).expect("built-in pattern compiles"),
                    replacement.to_string(),
                )
            })
            .collect();
        let has_custom = !custom.is_empty();
        patterns.extend(
            custom
                .into_iter()
                .map(|regex| (regex, "[REDACTED]".to_string())),
        );
        SecretMasker {
            patterns,
            custom: has_custom,
        }
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut current = Cow::Borrowed(text);
        for (regex, replacement) in &self.patterns {
            if let Cow::Owned(replaced) = regex.replace_all(&current, replacement.as_str()) {
                current = Cow::Owned(replaced);
            }
        }
        current
    }

    /// `cut`, moved back to the start of any match that spans it. The hold-back rules each look at one
    /// shape; a cut they choose can fall inside a secret that is already whole (a key block whose END
    /// line ends in `-----`, which could also begin `-----BEGIN`), and each side of such a cut, masked
    /// alone, matches no pattern. The whole match waits instead, to be masked when it goes on.
    fn cut_outside_matches(&self, text: &str, mut cut: usize) -> usize {
        loop {
            // Nothing is held, or everything is: no match can span the cut.
            if cut == 0 || cut >= text.len() {
                return cut;
            }
            let straddling = self
                .patterns
                .iter()
                .flat_map(|(regex, _)| {
                    // Matches come in order; none starting at or after the cut can span it.
                    regex
                        .find_iter(text)
                        .take_while(|found| found.start() < cut)
                })
                .filter(|found| cut < found.end())
                .map(|found| found.start())
                .min();
            match straddling {
                Some(start) => cut = start,
                None => return cut,
            }
        }
    }

    /// Whether masking would change any completion text of a whole answer.
    fn changes(&self, answer: &AnswerView) -> bool {
        answer
            .choices
            .iter()
            .flat_map(|choice| choice.texts())
            .any(|text| matches!(self.mask(text), Cow::Owned(_)))
    }

    /// Mask the completion texts of a whole (non-streamed) response body; `None` when nothing changes.
    pub fn mask_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.mask_read_body(body, AnswerView::parse(body).as_ref())
    }

    /// The same, for a body already read through the borrowed view (`None` when it could not be): the view
    /// says whether anything changes, and only then is the body rewritten.
    pub fn mask_read_body(&self, body: &[u8], answer: Option<&AnswerView>) -> Option<Vec<u8>> {
        if answer.is_some_and(|answer| !self.changes(answer)) {
            return None;
        }
        let mut value: Map<String, Value> = serde_json::from_slice(body).ok()?;
        let mut changed = false;
        for_each_choice_text(&mut value, |text| {
            if let Cow::Owned(masked) = self.mask(text) {
                *text = masked;
                changed = true;
            }
        });
        changed.then(|| serde_json::to_vec(&value).ok()).flatten()
    }
}

/// Every text the client receives in the choices: `message`/`delta` content, reasoning
/// (`reasoning_content`, `reasoning`), tool and function call arguments, and `text`.
fn for_each_choice_text(value: &mut Map<String, Value>, mut f: impl FnMut(&mut String)) {
    let Some(Value::Array(choices)) = value.get_mut("choices") else {
        return;
    };
    for choice in choices {
        for key in ["message", "delta"] {
            let Some(Value::Object(object)) = choice.get_mut(key) else {
                continue;
            };
            let mut slots = Slot::others_in(object);
            slots.push(Slot::Content);
            for slot in slots {
                if let Some(text) = slot.text_in(object) {
                    f(text);
                }
            }
        }
        if let Some(Value::String(text)) = choice.get_mut("text") {
            f(text);
        }
    }
}

/// The completion text of one choice (`delta.content`, `message.content` or `text`); with `create`, a missing
/// `delta.content` is added so held-back text can be flushed into a finishing chunk.
fn choice_text(choice: &mut Value, create: bool) -> Option<&mut String> {
    let key = ["delta", "message"]
        .into_iter()
        .find(|k| choice.get(*k).is_some_and(Value::is_object));
    if let Some(key) = key {
        let object = choice.get_mut(key)?.as_object_mut()?;
        if create && !object.contains_key("content") {
            object.insert("content".into(), Value::String(String::new()));
        }
        if let Some(Value::String(text)) = object.get_mut("content") {
            return Some(text);
        }
        return None;
    }
    match choice.get_mut("text") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// An event of its own for held-back `text` of `slot` of choice `index`.
fn write_flush_event(index: usize, slot: Slot, text: String, out: &mut Vec<u8>) {
    let event = serde_json::json!({"object": "chat.completion.chunk", "choices": [{"index": index, "delta": slot.delta_with(text), "finish_reason": null}]});
    out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
}

/// Where held-back text starts: an unclosed key block, a trigger on the last line whose secret has not ended,
/// or the trailing word when it may begin a secret (always, with custom patterns).
fn holdback_start(text: &str, custom: bool) -> usize {
    let mut start = text.len();
    if let Some(begin) = KEY_BLOCK.rfind(text) {
        if !text[begin..].contains("-----END") || !text[begin..].trim_end().ends_with("-----") {
            start = begin;
        }
    }
    // The last line with text, and the blank lines after it: a separator and its value may sit on the next
    // line (`PASSWORD:\n` then `hunter2`), which the built-in pattern's `\s*` matches too.
    let content_end = text.trim_end().len();
    let line_start = text[..content_end].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    for found in TRIGGER.find_iter(line) {
        let word_start = line[..found.start()]
            .rfind(char::is_whitespace)
            .map_or(0, |i| {
                i + line[i..].chars().next().map_or(1, char::len_utf8)
            });
        if UNFINISHED.is_match(&line[word_start..]) {
            start = start.min(line_start + word_start);
            break;
        }
    }
    let word_start = text.rfind(char::is_whitespace).map_or(0, |i| {
        i + text[i..].chars().next().map_or(1, char::len_utf8)
    });
    if custom || may_begin_secret(&text[word_start..]) {
        start = start.min(word_start);
    }
    start
}

/// What became of one event in the stream masker.
enum Rewrite {
    /// It goes on exactly as it came; nothing was written.
    Unchanged,
    /// Its rewrite was appended to the output.
    Written,
}

/// Masks the content deltas of one SSE stream, event by event.
#[derive(Debug)]
pub struct StreamMasker<'a> {
    masker: &'a SecretMasker,
    /// The unfinished event.
    buffer: EventBuffer,
    /// Held-back text by choice index and slot (a list, not a vector indexed by them: a provider's index of
    /// 10^18 must not make the gateway allocate that much).
    pending: Vec<(usize, Slot, String)>,
}

impl<'a> StreamMasker<'a> {
    pub fn new(masker: &'a SecretMasker) -> Self {
        StreamMasker {
            masker,
            buffer: EventBuffer::default(),
            pending: Vec::new(),
        }
    }

    /// Feed upstream bytes; returns the (possibly rewritten) complete events to send on. While every event
    /// goes on as it came (most do), nothing is copied: the result is a slice of `chunk`.
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        let mut buffer = std::mem::take(&mut self.buffer);
        let output = buffer.read(chunk, |events| {
            let bytes = events.bytes();
            // Empty until an event is rewritten; then it holds everything sent on so far.
            let mut out = Vec::new();
            let mut copying = false;
            for (range, next) in &mut *events {
                let start = range.start;
                let event = String::from_utf8_lossy(&bytes[range]);
                // An event goes on as its raw bytes only when they are the text that was checked: bytes that
                // are not UTF-8 go on as that text, U+FFFD in their place.
                let raw = matches!(event, Cow::Borrowed(_));
                let written = if raw {
                    matches!(self.rewrite_event(&event, &mut out), Rewrite::Written)
                } else {
                    self.write_event(&event, &mut out);
                    true
                };
                match (written, copying) {
                    (true, false) => {
                        out.splice(0..0, bytes[..start].iter().copied());
                        copying = true;
                    }
                    (false, true) => out.extend_from_slice(&bytes[start..next]),
                    _ => {}
                }
            }
            let consumed = events.consumed();
            match (copying, events.from_chunk()) {
                (true, _) => Bytes::from(out),
                (false, false) => Bytes::copy_from_slice(&bytes[..consumed]),
                (false, true) => chunk.slice(..consumed),
            }
        });
        self.buffer = buffer;
        output
    }

    /// Whatever is still buffered (an unterminated event), masked, at the end of the stream.
    /// Then held-back text, for a stream that ended without `[DONE]` or a finishing chunk.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = self.buffer.take();
        let mut out = Vec::new();
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(&rest).into_owned();
            self.write_event(text.trim_end(), &mut out);
        }
        self.flush_pending(&mut out);
        out
    }

    /// Whether an event goes on exactly as it came: nothing of its choices is held back, and none of its
    /// texts needs masking or holding back. Most events of a stream pass this test, and skip the rewrite.
    fn passes_unchanged(&self, chunk: &AnswerView) -> bool {
        let clean = |text: &str, finishing: bool| {
            (finishing || holdback_start(text, self.masker.custom) == text.len())
                && matches!(self.masker.mask(text), Cow::Borrowed(_))
        };
        chunk.choices.iter().enumerate().all(|(position, choice)| {
            if self.holds(choice.index(position)) {
                return false;
            }
            let finishing = choice.finishing();
            choice.text().is_none_or(|text| clean(text, finishing))
                && choice.other_texts().all(|(_, text)| clean(text, finishing))
        })
    }

    /// Append the event to `out`: its rewrite, or its text as it came.
    fn write_event(&mut self, event: &str, out: &mut Vec<u8>) {
        if let Rewrite::Unchanged = self.rewrite_event(event, out) {
            out.extend_from_slice(event.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
    }

    /// Append the event's rewrite to `out`, or leave `out` alone when the event goes on as it came.
    fn rewrite_event(&mut self, event: &str, out: &mut Vec<u8>) -> Rewrite {
        let data = event_data(event);
        let special = data.is_empty() || data == "[DONE]";
        if let Some(chunk) = AnswerView::parse_text(&data).filter(|_| !special) {
            if self.passes_unchanged(&chunk) {
                return Rewrite::Unchanged;
            }
            if let Cow::Borrowed(data) = data {
                if self.splice(event, data, &chunk, out) {
                    return Rewrite::Written;
                }
            }
        }
        let parsed: Option<Map<String, Value>> = if special {
            None
        } else {
            serde_json::from_str(&data).ok()
        };
        let Some(mut chunk) = parsed else {
            // Held text goes out before the end of the stream.
            let at = out.len();
            if data == "[DONE]" {
                self.flush_pending(out);
            }
            if out.len() == at {
                return Rewrite::Unchanged;
            }
            out.extend_from_slice(event.as_bytes());
            out.extend_from_slice(b"\n\n");
            return Rewrite::Written;
        };
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            for (position, choice) in choices.iter_mut().enumerate() {
                let index = choice
                    .get("index")
                    .and_then(Value::as_u64)
                    .map_or(position, |i| usize::try_from(i).unwrap_or(usize::MAX));
                let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
                let key = ["delta", "message"]
                    .into_iter()
                    .find(|key| choice.get(*key).is_some_and(Value::is_object));
                let object = key
                    .and_then(|key| choice.get_mut(key))
                    .and_then(Value::as_object_mut);
                let others = match object {
                    Some(object) => {
                        let others = Slot::others_in(object);
                        for &slot in &others {
                            if let Some(text) = slot.text_in(object) {
                                *text = self.release(index, slot, text, finishing);
                            }
                        }
                        others
                    }
                    None => Vec::new(),
                };
                // Held text of the texts a finishing chunk does not carry goes out first, each in an event
                // of its own (held content goes out inside the chunk, below). Until then each text holds
                // its own tail, even while another text streams, so a secret is never cut in two.
                if finishing {
                    self.flush_choice(
                        index,
                        |slot| slot != Slot::Content && !others.contains(&slot),
                        out,
                    );
                }
                let create = finishing && self.holds_slot(index, Slot::Content);
                let Some(text) = choice_text(choice, create) else {
                    continue;
                };
                *text = self.release(index, Slot::Content, text, finishing);
            }
        }
        // The event's other fields (`event:`, `id:`, comments) go on as they were, before its data.
        for line in lines(event) {
            if !line.is_empty() && !line.starts_with("data:") {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Rewrite::Written
    }

    /// Rewrite the texts of `chunk` where they stand in the event's one `data` line (`data`, a slice of
    /// `event`), keeping everything else as the provider wrote it: no `Map` built, nothing re-serialised.
    /// Not possible (false, and nothing changed) when a text had escapes, so its place in the line is not
    /// known, or when held text must be flushed into a choice that has no text field to carry it.
    fn splice(&mut self, event: &str, data: &str, chunk: &AnswerView, out: &mut Vec<u8>) -> bool {
        // Only the completion text is spliced; reasoning and call arguments take the general path.
        let spliceable = chunk.choices.iter().enumerate().all(|(position, choice)| {
            let index = choice.index(position);
            let others_held = self
                .pending
                .iter()
                .any(|(i, slot, held)| *i == index && *slot != Slot::Content && !held.is_empty());
            !others_held
                && choice.other_texts().next().is_none()
                && match choice.text_slot() {
                    Some(text) => matches!(text, Cow::Borrowed(_)),
                    None => !(choice.finishing() && self.holds(index)),
                }
        });
        if !spliceable {
            return false;
        }
        let base = data.as_ptr() as usize;
        let data_start = base - event.as_ptr() as usize;
        out.extend_from_slice(&event.as_bytes()[..data_start]);
        let mut cursor = 0;
        for (position, choice) in chunk.choices.iter().enumerate() {
            // Borrowed from `data`, as checked above: where the text stands in it.
            let Some(text) = choice.text() else {
                continue;
            };
            let start = text.as_ptr() as usize - base;
            out.extend_from_slice(&data.as_bytes()[cursor..start]);
            let released = self.release(
                choice.index(position),
                Slot::Content,
                text,
                choice.finishing(),
            );
            // Escaped as JSON; the quotes around it are the provider's.
            let at = out.len();
            if serde_json::to_writer(&mut *out, &released).is_ok() {
                out.remove(at);
                out.pop();
            }
            cursor = start + text.len();
        }
        out.extend_from_slice(&data.as_bytes()[cursor..]);
        out.extend_from_slice(&event.as_bytes()[data_start + data.len()..]);
        out.extend_from_slice(b"\n\n");
        true
    }

    /// Add `text` to what slot `slot` of choice `index` holds and take out, masked, what may go on now:
    /// everything when the choice is finishing, else all but what may still begin a secret.
    fn release(&mut self, index: usize, slot: Slot, text: &str, finishing: bool) -> String {
        let entry = match self
            .pending
            .iter()
            .position(|(i, s, _)| *i == index && *s == slot)
        {
            Some(entry) => entry,
            None => {
                self.pending.push((index, slot, String::new()));
                self.pending.len() - 1
            }
        };
        let held = &mut self.pending[entry].2;
        held.push_str(text);
        let cut = if finishing {
            held.len()
        } else {
            self.masker
                .cut_outside_matches(held, holdback_start(held, self.masker.custom))
        };
        // What goes on keeps the held string's allocation; what stays is usually nothing (no allocation).
        let rest = held[cut..].to_string();
        let mut ready = std::mem::replace(held, rest);
        ready.truncate(cut);
        match self.masker.mask(&ready) {
            Cow::Owned(masked) => masked,
            Cow::Borrowed(_) => ready,
        }
    }

    /// Whether any text of choice `index` is held back.
    fn holds(&self, index: usize) -> bool {
        self.pending
            .iter()
            .any(|(i, _, held)| *i == index && !held.is_empty())
    }

    /// Whether text of slot `slot` of choice `index` is held back.
    fn holds_slot(&self, index: usize, slot: Slot) -> bool {
        self.pending
            .iter()
            .any(|(i, s, held)| *i == index && *s == slot && !held.is_empty())
    }

    /// Emit the held-back text of choice `index` in the slots `which` picks, masked, an event each.
    fn flush_choice(&mut self, index: usize, which: impl Fn(Slot) -> bool, out: &mut Vec<u8>) {
        for (i, slot, held) in &mut self.pending {
            if *i != index || held.is_empty() || !which(*slot) {
                continue;
            }
            let text = self.masker.mask(held).into_owned();
            held.clear();
            write_flush_event(index, *slot, text, out);
        }
    }

    /// Emit held-back text before the stream ends.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        for (index, slot, held) in &mut self.pending {
            if !held.is_empty() {
                let text = self.masker.mask(held).into_owned();
                held.clear();
                write_flush_event(*index, *slot, text, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One chunk through the stream masker, as bytes to compare.
    fn push(stream: &mut StreamMasker, chunk: &[u8]) -> Vec<u8> {
        stream.push(&Bytes::copy_from_slice(chunk)).to_vec()
    }

    fn event(content: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
    }

    fn collected(output: &[u8]) -> String {
        String::from_utf8_lossy(output)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    #[test]
    fn clean_chunks_go_on_without_a_copy() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        let chunk = Bytes::from(format!(
            "{}{}data: {{\"choi",
            event(" hello"),
            event(" world")
        ));
        let out = stream.push(&chunk);
        // The two whole events, as a slice of the chunk itself; the unfinished third waits.
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out, format!("{}{}", event(" hello"), event(" world")));
        let rest = stream.push(&Bytes::from("ces\":[]}\n\n"));
        assert_eq!(rest, "data: {\"choices\":[]}\n\n");
    }

    #[test]
    fn bytes_that_are_not_utf8_go_on_as_replacement_characters() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        let mut chunk = event(" hello").into_bytes();
        chunk.extend_from_slice(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\xffrld\"}}]}\n\n",
        );
        let out = push(&mut stream, &chunk);
        let text = String::from_utf8(out).expect("the output is UTF-8");
        assert_eq!(
            text,
            event(" hello") + "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{fffd}rld\"}}]}\n\n"
        );
    }

    #[test]
    fn clean_events_pass_byte_for_byte_and_dirty_ones_are_rewritten() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        // Provider formatting (spaces, key order, escapes, line ends) survives when nothing is held or masked.
        let clean = "data: {\"id\":\"c1\", \"choices\":[{\"delta\":{\"content\":\" \\\"hi\\\"\\n\"},\"index\":0,\"finish_reason\":null}]}\r\n\r\n";
        let out = push(&mut stream, clean.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), clean);
        // Two events in one chunk and one split over two chunks: each is found once, in order.
        let mut out = push(
            &mut stream,
            format!("{}{}", event(" world"), event(" PASSWORD")).as_bytes(),
        );
        let tail = event(": hunter2 ok");
        let (x, y) = tail.split_at(9);
        out.extend(push(&mut stream, x.as_bytes()));
        out.extend(push(&mut stream, y.as_bytes()));
        out.extend(stream.finish());
        assert_eq!(collected(&out), " world PASSWORD: [REDACTED] ok");
        // Held text is rewritten where it stands (the provider's other fields and spacing stay); a text with
        // escapes, or data split over two lines, takes the general rewrite. The secret is caught either way.
        let mut stream = StreamMasker::new(&masker);
        let mut out = push(
            &mut stream,
            b"data: {\"id\":\"c2\", \"choices\":[{\"delta\":{\"content\":\"my API_KEY\"}}]}\n\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "data: {\"id\":\"c2\", \"choices\":[{\"delta\":{\"content\":\"my \"}}]}\n\n"
        );
        out.extend(push(
            &mut stream,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"=ab\\u0063d \"}}]}\n\n",
        ));
        out.extend(push(
            &mut stream,
            b"data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"PASSWORD=x y\"}}]}\n\n",
        ));
        out.extend(push(&mut stream, b"data: [DONE]\n\n"));
        assert_eq!(
            collected(&out),
            "my API_KEY=[REDACTED] PASSWORD=[REDACTED] y"
        );
        // The plain-body check agrees with the rewrite.
        let body = br#"{"choices":[{"message":{"content":"nothing to hide"}}]}"#;
        assert_eq!(masker.mask_body(body), None);
        let body = br#"{"choices":[{"message":{"content":"API_KEY=abc"}}]}"#;
        let masked = masker.mask_body(body).unwrap();
        assert!(String::from_utf8(masked)
            .unwrap()
            .contains("API_KEY=[REDACTED]"));
    }

    #[test]
    fn a_huge_choice_index_costs_nothing() {
        // A huge index does not make the masker allocate for it.
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        let out = push(
            &mut stream,
            b"data: {\"choices\":[{\"index\":1000000000000,\"delta\":{\"content\":\" sk\"}}]}\n\n",
        );
        assert_eq!(stream.pending.len(), 1);
        // "sk" may begin a key: held back, then flushed at the end.
        assert!(!String::from_utf8_lossy(&out).contains("sk"));
        let tail = String::from_utf8(stream.finish()).unwrap();
        assert!(tail.contains(r#""content":"sk""#), "{tail}");
    }

    #[test]
    fn choices_hold_their_own_text_and_bare_cr_lines_are_read() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        let two = |a: &str, b: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [
                    {"index": 300, "delta": {"content": a}},
                    {"index": 301, "delta": {"content": b}}
                ]})
            )
        };
        let mut out = push(&mut stream, two("my API_KEY", "hello world").as_bytes());
        out.extend(push(&mut stream, two("=hunter2 end", " again").as_bytes()));
        out.extend(stream.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("API_KEYhello"), "{text}");

        // Lines ended by a bare CR, as the SSE spec allows; the event's other fields stay.
        let mut stream = StreamMasker::new(&masker);
        let mut out = push(&mut stream, b"event: delta\rid: 7\rdata: {\"choices\":[{\"delta\":{\"content\":\"API_KEY=abc\\u0064 x\"}}]}\r\r");
        out.extend(stream.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("abcd"), "{text}");
        assert!(text.starts_with("event: delta\nid: 7\ndata: "), "{text}");
        assert!(
            text.contains(r#""content":"API_KEY=[REDACTED] ""#),
            "{text}"
        );
        // The trailing "x" may begin a key (`xoxb-`): held, then flushed at the end.
        assert!(text.contains(r#""content":"x""#), "{text}");
    }

    #[test]
    fn whole_texts_are_masked() {
        let masker = SecretMasker::new(vec![Regex::new("INTERNAL-[0-9]+").unwrap()]);
        let cases = [
            (
                "set API_KEY=abc123def and go",
                "set API_KEY=[REDACTED] and go",
            ),
            ("PASSWORD: hunter2", "PASSWORD: [REDACTED]"),
            ("db_password = 's3cr3t'", "db_password = '[REDACTED]'"),
            (
                r#"{"password": "hunter2"}"#,
                r#"{"password": "[REDACTED]"}"#,
            ),
            // Fixtures that look like keys are assembled so the source never holds one whole.
            (
                concat!("key sk-", "ant-api03-abcdefghijklmnopqrstuv"),
                "key [REDACTED]",
            ),
            (
                concat!(
                    "-----BEGIN RSA ",
                    "PRIVATE KEY-----\nMIIB\n-----END RSA ",
                    "PRIVATE KEY-----"
                ),
                "[REDACTED PRIVATE KEY]",
            ),
            ("ticket INTERNAL-42", "ticket [REDACTED]"),
            ("the token bucket algorithm", "the token bucket algorithm"),
        ];
        for (input, expected) in cases {
            assert_eq!(masker.mask(input), expected, "{input}");
        }
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked_in_the_stream() {
        let masker = SecretMasker::new(vec![]);
        for split in ["API_K", "API_KEY=ab", "API_KEY", "API_KEY=abc123 "] {
            let mut stream = StreamMasker::new(&masker);
            let text = "here: API_KEY=abc123 done";
            let (a, b) = text.split_at(text.find(split).unwrap() + split.len());
            let mut out = push(&mut stream, event(a).as_bytes());
            // Split the second event's bytes too, mid-JSON.
            let second = event(b);
            let (x, y) = second.split_at(second.len() / 2);
            out.extend(push(&mut stream, x.as_bytes()));
            out.extend(push(&mut stream, y.as_bytes()));
            out.extend(push(&mut stream, b"data: [DONE]\n\n"));
            let seen = collected(&out);
            assert_eq!(
                seen, "here: API_KEY=[REDACTED] done",
                "split after {split:?}"
            );
            assert!(!String::from_utf8_lossy(&out).contains("abc123"));
        }
        for split in ["s", "AK", "MY_SEC"] {
            let text = concat!(
                "key ",
                "AKIA",
                "ABCDEFGHIJKLMNOP and ",
                "sk-",
                "proj-abcdefghijklmnopqrstuvwx MY_SECRET=x1 end"
            );
            let at = text.find(split).unwrap() + split.len();
            let mut stream = StreamMasker::new(&masker);
            let mut out = push(&mut stream, event(&text[..at]).as_bytes());
            out.extend(push(&mut stream, event(&text[at..]).as_bytes()));
            out.extend(push(&mut stream, b"data: [DONE]\n\n"));
            assert_eq!(
                collected(&out),
                "key [REDACTED] and [REDACTED] MY_SECRET=[REDACTED] end",
                "split after {split:?}"
            );
        }
        for (a, b) in [("PASSWORD:\n", "hunter2 ok"), ("API_KEY\n", "=abc123 ok")] {
            let mut stream = StreamMasker::new(&masker);
            let mut out = push(&mut stream, event(a).as_bytes());
            out.extend(push(&mut stream, event(b).as_bytes()));
            out.extend(push(&mut stream, b"data: [DONE]\n\n"));
            let seen = collected(&out);
            assert!(seen.contains("[REDACTED]"), "{a:?} + {b:?}: {seen}");
            assert!(
                !seen.contains("hunter2") && !seen.contains("abc123"),
                "{seen}"
            );
        }
        // A stream that ends without [DONE] still gets its held-back word.
        let mut stream = StreamMasker::new(&masker);
        let mut out = push(&mut stream, event("it works").as_bytes());
        out.extend(stream.finish());
        assert_eq!(collected(&out), "it works");
        let mut stream = StreamMasker::new(&masker);
        let mut out = push(&mut stream, event("PASSWORD: ").as_bytes());
        out.extend(push(&mut stream, event("hunter2\nok").as_bytes()));
        out.extend(push(&mut stream, b"data: [DONE]\n\n"));
        assert_eq!(collected(&out), "PASSWORD: [REDACTED]\nok");
    }

    /// Secrets of every built-in kind, and the part of each that must never reach the client.
    fn sample_secrets() -> Vec<(String, &'static str)> {
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
        let mut samples: Vec<(String, &'static str)> = [
            "RSA PRIVATE KEY",
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ]
        .into_iter()
        .map(|kind| {
            (
                format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"),
                "MIIEvQIBADANBgkq",
            )
        })
        .collect();
        samples.extend([
            ("API_KEY=abc123def456".to_string(), "abc123def456"),
            ("PASSWORD: hunter2hunter2".to_string(), "hunter2hunter2"),
            (
                concat!("sk-", "proj-abcdefghijklmnopqrstuvwx0123").to_string(),
                "abcdefghijklmnopqrstuvwx",
            ),
            (
                concat!("AKIA", "ABCDEFGHIJKLMNOP").to_string(),
                "ABCDEFGHIJKLMNOP",
            ),
            (
                concat!("ghp_", "abcdefghijklmnopqrstuvwxyz0123456789AB").to_string(),
                "abcdefghijklmnopqrstuvwxyz0123",
            ),
            (
                concat!("xoxb-", "1234567890-abcdefghij").to_string(),
                "1234567890-abcdefghij",
            ),
            (
                concat!("AIza", "SyA1234567890abcdefghijklmnopqrstuv").to_string(),
                "SyA1234567890abcdefghijklmnopqrstuv",
            ),
        ]);
        samples
    }

    /// Stream `pieces` as one event each, then end the stream with `[DONE]` or without it.
    fn stream_pieces(masker: &SecretMasker, pieces: &[&str], done: bool) -> String {
        let mut stream = StreamMasker::new(masker);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(push(&mut stream, event(piece).as_bytes()));
        }
        if done {
            out.extend(push(&mut stream, b"data: [DONE]\n\n"));
        } else {
            out.extend(stream.finish());
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn char_boundaries(text: &str) -> Vec<usize> {
        (1..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect()
    }

    #[test]
    fn no_built_in_secret_escapes_the_stream_however_it_is_split() {
        let masker = SecretMasker::new(vec![]);
        for (secret, core) in sample_secrets() {
            for (before, after) in [
                ("Here it is:\n", "\nThat is all."),
                ("키는", " 입니다"),
                ("", ""),
            ] {
                let text = format!("{before}{secret}{after}");
                let check = |output: &str, how: &str| {
                    assert!(
                        !output.contains(core),
                        "{core:?} escaped when {how}: {}",
                        collected(output.as_bytes())
                    );
                };
                let cuts = char_boundaries(&text);
                for &i in &cuts {
                    for done in [true, false] {
                        let output = stream_pieces(&masker, &[&text[..i], &text[i..]], done);
                        check(&output, &format!("split at {i} of {text:?}"));
                    }
                    for width in [1, 2, 5, 9] {
                        if let Some(&j) = cuts.iter().find(|&&j| j >= i + width) {
                            let pieces = [&text[..i], &text[i..j], &text[j..]];
                            check(
                                &stream_pieces(&masker, &pieces, true),
                                &format!("split at {i} and {j} of {text:?}"),
                            );
                        }
                    }
                }
                // Token by token, as models stream: pieces of one to four characters.
                for size in 1..=4 {
                    let mut pieces = Vec::new();
                    let mut rest = text.as_str();
                    while !rest.is_empty() {
                        let end = rest.char_indices().nth(size).map_or(rest.len(), |(i, _)| i);
                        pieces.push(&rest[..end]);
                        rest = &rest[end..];
                    }
                    check(
                        &stream_pieces(&masker, &pieces, true),
                        &format!("streamed {size} characters at a time: {text:?}"),
                    );
                }
            }
        }
    }

    /// An event carrying `text` in `slot` of choice 0.
    fn event_in(slot: Slot, text: &str, finish: Option<&str>) -> String {
        let event = serde_json::json!({"choices": [{"index": 0, "delta": slot.delta_with(text.to_string()), "finish_reason": finish}]});
        format!("data: {event}\n\n")
    }

    /// What the client reads in `slot` of choice 0, across the events of `output`.
    fn collected_in(output: &[u8], slot: Slot) -> String {
        String::from_utf8_lossy(output)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|mut v| {
                let delta = v["choices"][0]["delta"].as_object_mut()?;
                slot.text_in(delta).map(|text| text.clone())
            })
            .collect()
    }

    #[test]
    fn reasoning_and_call_arguments_are_masked_however_the_stream_splits_them() {
        let masker = SecretMasker::new(vec![]);
        let slots = [
            Slot::ReasoningContent,
            Slot::Reasoning,
            Slot::ToolArguments(0),
            Slot::ToolArguments(3),
            Slot::FunctionArguments,
        ];
        for (secret, core) in sample_secrets() {
            let text = format!("{{\"note\": \"x\", \"value\": \"{secret}\"}} and more");
            for slot in slots {
                for &i in &char_boundaries(&text) {
                    let mut stream = StreamMasker::new(&masker);
                    let mut out = push(&mut stream, event_in(slot, &text[..i], None).as_bytes());
                    out.extend(push(
                        &mut stream,
                        event_in(slot, &text[i..], None).as_bytes(),
                    ));
                    // The finishing chunk carries no text of this slot: what is held goes out before it.
                    out.extend(push(&mut stream, event("").as_bytes()));
                    out.extend(push(
                        &mut stream,
                        b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    ));
                    let raw = String::from_utf8_lossy(&out).into_owned();
                    assert!(
                        !raw.contains(core),
                        "{slot:?}: {core:?} escaped when split at {i}: {raw}"
                    );
                    let seen = collected_in(&out, slot);
                    assert!(seen.ends_with("\"} and more"), "{slot:?} at {i}: {seen:?}");
                    assert!(seen.contains("REDACTED"), "{slot:?} at {i}: {seen:?}");
                }
            }
        }
    }

    #[test]
    fn content_and_other_texts_are_held_apart() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        let mut out = push(
            &mut stream,
            event_in(Slot::ReasoningContent, "thinking about API_K", None).as_bytes(),
        );
        out.extend(push(&mut stream, event("The answer is 4").as_bytes()));
        out.extend(push(
            &mut stream,
            event_in(Slot::ReasoningContent, "EY=abc123 ok", None).as_bytes(),
        ));
        out.extend(push(&mut stream, b"data: [DONE]\n\n"));
        assert_eq!(
            collected_in(&out, Slot::ReasoningContent),
            "thinking about API_KEY=[REDACTED] ok"
        );
        assert_eq!(collected(&out), "The answer is 4");
    }

    #[test]
    fn whole_answers_mask_reasoning_and_call_arguments() {
        let masker = SecretMasker::new(vec![]);
        let body = serde_json::json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "reasoning_content": concat!("the key is ", "sk-", "proj-abcdefghijklmnopqrstuvwx0123"),
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"password\": \"hunter2hunter2\"}"}}]
        }}]});
        let masked = masker.mask_body(body.to_string().as_bytes()).unwrap();
        let masked = String::from_utf8(masked).unwrap();
        assert!(!masked.contains("abcdefghijklmnop"), "{masked}");
        assert!(!masked.contains("hunter2hunter2"), "{masked}");
        let value: Value = serde_json::from_str(&masked).unwrap();
        let arguments = value["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        // The arguments stay JSON a tool can read.
        let arguments: Value = serde_json::from_str(arguments).unwrap();
        assert_eq!(arguments["password"], "[REDACTED]");
    }

    #[test]
    fn every_secret_start_is_found_by_its_first_letter() {
        for start in SECRET_STARTS {
            assert!(
                SECRET_FIRSTS.contains(&char::from(start.as_bytes()[0])),
                "{start}"
            );
            for cut in 1..=start.len() {
                assert!(
                    may_begin_secret(&format!("x {}", &start[..cut])),
                    "{start} cut at {cut}"
                );
                assert!(
                    may_begin_secret(&start[..cut].to_uppercase()),
                    "{start} cut at {cut}"
                );
            }
        }
        // Letters outside ASCII that the patterns' `(?i)` takes for ASCII ones: the Kelvin sign is `k`
        // (`TO\u{212A}` may begin `token`), the long s is `s`, also as a word's first letter.
        assert!(may_begin_secret("TO\u{212A}"));
        assert!(may_begin_secret("pa\u{17F}"));
        assert!(may_begin_secret("\u{17F}ecr"));
        assert!(!may_begin_secret("hello"));
        assert!(!may_begin_secret("world"));
    }

    #[test]
    fn a_keyword_spelt_with_a_long_s_is_held_until_its_value_is_seen() {
        // `(?i)` reads `paſsword` as `password`; split after the `ſ`, the first half must wait.
        let masker = SecretMasker::new(vec![]);
        let out = stream_pieces(&masker, &["The pa\u{17F}", "sword=hunter2 ok"], true);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(collected(out.as_bytes()).contains("[REDACTED]"), "{out}");
    }

    #[test]
    fn ordinary_tokens_are_not_held_back() {
        let masker = SecretMasker::new(vec![]);
        let mut stream = StreamMasker::new(&masker);
        // Tokens as models send them, with the space in front: words that cannot begin a secret go on at
        // once; a word that may (`token=`, `s` of `secret`) waits for the next token to decide.
        let expected = [
            ("Hello", "Hello"),
            (" world", " world"),
            (",", ","),
            (" the", " the"),
            (" token", " "),
            (" bucket", "token "),
            (" works", "bucket "),
        ];
        for (token, emitted) in expected {
            assert_eq!(
                collected(&push(&mut stream, event(token).as_bytes())),
                emitted,
                "after {token:?}"
            );
        }
        assert_eq!(collected(&push(&mut stream, b"data: [DONE]\n\n")), "works");
        // ...but with custom patterns any trailing word waits for the next chunk.
        let custom = SecretMasker::new(vec![Regex::new("INTERNAL-[0-9]+").unwrap()]);
        let mut stream = StreamMasker::new(&custom);
        assert_eq!(collected(&push(&mut stream, event("Hello").as_bytes())), "");
        assert_eq!(
            collected(&push(&mut stream, event(" world").as_bytes())),
            "Hello "
        );
    }
}
