//! A borrowed look at an OpenAI-style answer, a whole body or one stream event: its completion texts and
//! its usage, read without building a `serde_json::Value` tree (strings without escapes are not even
//! copied). Bodies of another shape (content parts instead of a string, a usage count as a string, a
//! repeated key) fail to parse here, and callers take the general `Value` path for them.

use std::borrow::Cow;

use serde::de::value::MapAccessDeserializer;
use serde::de::IgnoredAny;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::usage::Usage;

#[derive(Debug, Deserialize)]
pub struct AnswerView<'a> {
    #[serde(default, borrow)]
    pub choices: Vec<ChoiceView<'a>>,
    #[serde(default)]
    usage: Option<Object<UsageView>>,
}

#[derive(Debug, Deserialize)]
pub struct ChoiceView<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Object<ContentView<'a>>>,
    #[serde(default, borrow)]
    message: Option<Object<ContentView<'a>>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct ContentView<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed")]
    content: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// A struct read only from a JSON object. Serde would also fill one from an array, by position, and then
/// `"delta": []` would read as a delta without text where the general path sees no delta at all.
#[derive(Debug)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        input
            .deserialize_map(Only(std::marker::PhantomData))
            .map(Object)
    }
}

/// An optional string, borrowed from the input unless it has escapes (serde copies an `Option<Cow<str>>`
/// field always; only a `Cow` field itself is borrowed).
fn borrowed<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text>::deserialize(input)?.map(|text| text.0))
}

impl<'a> AnswerView<'a> {
    pub fn parse(json: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(|usage| usage.0.tokens())
    }
}

impl UsageView {
    fn tokens(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

/// The usage of an answer too large to keep whole, from the last bytes of its body: the value of the last
/// `"usage"` key there. Providers put it at the end; inside a string the quotes would be escaped.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = memchr::memmem::rfind(&tail[..end], KEY) {
        end = at;
        if at > 0 && tail[at - 1] == b'\\' {
            continue;
        }
        let Some(value) = tail[at + KEY.len()..].trim_ascii_start().strip_prefix(b":") else {
            continue;
        };
        // One value from the front of the rest; what follows it is not looked at.
        let mut reader = serde_json::Deserializer::from_slice(value);
        if let Ok(usage) = Object::<UsageView>::deserialize(&mut reader) {
            return Some(usage.0.tokens());
        }
    }
    None
}

impl<'a> ChoiceView<'a> {
    /// The choice's index, or its position when the provider leaves it out.
    pub fn index(&self, position: usize) -> usize {
        self.index
            .map_or(position, |i| usize::try_from(i).unwrap_or(usize::MAX))
    }

    /// The choice carries a finish reason: its text ends here.
    pub fn finishing(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// The completion text a stream chunk carries: `delta.content` (or `message.content`) when that object
    /// is there, else `text`.
    pub fn text(&self) -> Option<&str> {
        self.text_slot().map(|text| &**text)
    }

    /// The same text as it was read: borrowed from the input (then it sits there unescaped, between its
    /// quotes) or copied because it had escapes.
    pub fn text_slot(&self) -> Option<&Cow<'a, str>> {
        match self.delta.as_ref().or(self.message.as_ref()) {
            Some(object) => object.0.content.as_ref(),
            None => self.text.as_ref(),
        }
    }

    /// Every completion text of a whole answer: `message.content`, `delta.content` and `text`.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        [&self.message, &self.delta]
            .into_iter()
            .filter_map(|object| object.as_ref()?.0.content.as_deref())
            .chain(self.text.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_texts_and_usage_borrowed() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let view = AnswerView::parse(body).unwrap();
        let choice = &view.choices[0];
        assert_eq!(choice.text(), Some("hi there"));
        assert!(matches!(
            choice.message.as_ref().unwrap().0.content,
            Some(Cow::Borrowed(_))
        ));
        assert!(choice.finishing());
        assert_eq!(choice.index(5), 0);
        assert_eq!(
            view.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2
            })
        );

        let chunk =
            br#"{"choices":[{"delta":{"content":"a \"quoted\" word"},"finish_reason":null}]}"#;
        let view = AnswerView::parse(chunk).unwrap();
        assert_eq!(view.choices[0].text(), Some("a \"quoted\" word"));
        assert!(!view.choices[0].finishing());
        assert_eq!(view.choices[0].index(3), 3);
        assert_eq!(view.usage(), None);

        let legacy = br#"{"choices":[{"text":"done","index":1}]}"#;
        let view = AnswerView::parse(legacy).unwrap();
        assert_eq!(view.choices[0].texts().collect::<Vec<_>>(), ["done"]);
        assert_eq!(view.choices[0].index(0), 1);
    }

    #[test]
    fn usage_is_found_in_the_tail_of_a_large_answer() {
        let tail = br#"3],"index":999}],"note":"\"usage\": {\"prompt_tokens\": 1}","model":"m","usage":{"prompt_tokens":1200,"total_tokens":1200}}"#;
        assert_eq!(
            usage_in_tail(tail),
            Some(Usage {
                prompt_tokens: 1200,
                completion_tokens: 0
            })
        );
        assert_eq!(usage_in_tail(br#"..."usage\": 5, "x": 1}"#), None);
        assert_eq!(usage_in_tail(b"0.1,0.2]}]"), None);
        assert_eq!(usage_in_tail(br#""usage":[],"x":1}"#), None);
    }

    #[test]
    fn other_shapes_are_left_to_the_general_path() {
        for body in [
            &br#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}]}}]}"#[..],
            br#"{"choices":[],"usage":{"prompt_tokens":"9"}}"#,
            br#"{"choices":{"0":{}}}"#,
            br#"{"choices":[],"choices":[]}"#,
            br#"[1,2]"#,
            br#"{"choices":[{"delta":[],"text":"API_KEY=abc"}]}"#,
            br#"{"choices":[],"usage":[]}"#,
        ] {
            assert!(
                AnswerView::parse(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
