//! A borrowed look at an OpenAI-style answer, a whole body or one stream event: its completion texts and
//! its usage, read without building a `serde_json::Value` tree (strings without escapes are not even
//! copied). Bodies of another shape (content parts instead of a string, a usage count as a string, a
//! repeated key) fail to parse here, and callers take the general `Value` path for them.

use std::borrow::Cow;

use serde::de::value::MapAccessDeserializer;
use serde::de::IgnoredAny;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Tokens of one answer (read here from a parsed answer, and by `usage` from streams and other shapes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token, cached ones included (OpenAI's meaning).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's cache (`prompt_tokens_details.cached_tokens`).
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's cache (`cache_creation_input_tokens`).
    pub cache_creation_tokens: u64,
}

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
    /// DeepSeek's (and vLLM's) reasoning text.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter's reasoning text.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<Object<ToolCallView<'a>>>>,
    /// The legacy single function call.
    #[serde(default, borrow)]
    function_call: Option<Object<FunctionView<'a>>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallView<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    function: Option<Object<FunctionView<'a>>>,
}

#[derive(Debug, Deserialize)]
struct FunctionView<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed")]
    arguments: Option<Cow<'a, str>>,
}

/// Which text of a choice: each is its own stream of pieces, held back and masked on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `content` (or a legacy completion's `text`).
    Content,
    ReasoningContent,
    Reasoning,
    /// `tool_calls[].function.arguments`, by the call's index (its position when it has none).
    ToolArguments(usize),
    /// `function_call.arguments`.
    FunctionArguments,
}

impl Slot {
    /// Every text other than `content` in a `message` or `delta` object, with its slot.
    pub fn others_in(object: &serde_json::Map<String, serde_json::Value>) -> Vec<Slot> {
        let mut slots = Vec::new();
        for (key, slot) in [
            ("reasoning_content", Slot::ReasoningContent),
            ("reasoning", Slot::Reasoning),
        ] {
            if object.get(key).is_some_and(serde_json::Value::is_string) {
                slots.push(slot);
            }
        }
        if let Some(serde_json::Value::Array(calls)) = object.get("tool_calls") {
            for (position, call) in calls.iter().enumerate() {
                if call["function"]["arguments"].is_string() {
                    slots.push(Slot::ToolArguments(tool_index(call, position)));
                }
            }
        }
        if object
            .get("function_call")
            .is_some_and(|call| call["arguments"].is_string())
        {
            slots.push(Slot::FunctionArguments);
        }
        slots
    }

    /// The text of this slot in a `message` or `delta` object, if it has one.
    pub fn text_in(
        self,
        object: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Option<&mut String> {
        let value = match self {
            Slot::Content => object.get_mut("content")?,
            Slot::ReasoningContent => object.get_mut("reasoning_content")?,
            Slot::Reasoning => object.get_mut("reasoning")?,
            Slot::FunctionArguments => object.get_mut("function_call")?.get_mut("arguments")?,
            Slot::ToolArguments(index) => {
                let calls = object.get_mut("tool_calls")?.as_array_mut()?;
                let position = (0..calls.len()).find(|&p| tool_index(&calls[p], p) == index)?;
                calls[position].get_mut("function")?.get_mut("arguments")?
            }
        };
        match value {
            serde_json::Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// A `delta` that carries `text` in this slot, for text flushed on its own.
    pub fn delta_with(self, text: String) -> serde_json::Value {
        use serde_json::json;
        match self {
            Slot::Content => json!({ "content": text }),
            Slot::ReasoningContent => json!({ "reasoning_content": text }),
            Slot::Reasoning => json!({ "reasoning": text }),
            Slot::ToolArguments(index) => {
                json!({ "tool_calls": [{ "index": index, "function": { "arguments": text } }] })
            }
            Slot::FunctionArguments => json!({ "function_call": { "arguments": text } }),
        }
    }
}

/// A tool call's `index`, or its position when it has none.
fn tool_index(call: &serde_json::Value, position: usize) -> usize {
    call.get("index")
        .and_then(serde_json::Value::as_u64)
        .map_or(position, |i| usize::try_from(i).unwrap_or(usize::MAX))
}

#[derive(Debug, Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Object<PromptDetailsView>>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PromptDetailsView {
    #[serde(default)]
    cached_tokens: Option<u64>,
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

    /// The same for text already known to be UTF-8: its strings are not checked again one by one (a sixth
    /// of the parse of a stream event).
    pub fn parse_text(json: &'a str) -> Option<Self> {
        serde_json::from_str(json).ok()
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
            cache_read_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.0.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: self.cache_creation_input_tokens.unwrap_or(0),
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

    /// The texts other than the completion text a stream chunk carries (reasoning, tool and function call
    /// arguments), with their slots, from `delta` (or `message`). Nothing is allocated.
    pub fn other_texts(&self) -> impl Iterator<Item = (Slot, &str)> {
        let object = self.delta.as_ref().or(self.message.as_ref()).map(|o| &o.0);
        let reasoning = object.into_iter().flat_map(|object| {
            [
                (Slot::ReasoningContent, object.reasoning_content.as_deref()),
                (Slot::Reasoning, object.reasoning.as_deref()),
                (
                    Slot::FunctionArguments,
                    object
                        .function_call
                        .as_ref()
                        .and_then(|f| f.0.arguments.as_deref()),
                ),
            ]
            .into_iter()
            .filter_map(|(slot, text)| Some((slot, text?)))
        });
        let calls = object
            .and_then(|object| object.tool_calls.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(position, call)| {
                let index = call
                    .0
                    .index
                    .map_or(position, |i| usize::try_from(i).unwrap_or(usize::MAX));
                let text = call.0.function.as_ref()?.0.arguments.as_deref()?;
                Some((Slot::ToolArguments(index), text))
            });
        reasoning.chain(calls)
    }

    /// Every text of a whole answer the client receives: `message`/`delta` content, reasoning and call
    /// arguments, and `text`.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        [&self.message, &self.delta]
            .into_iter()
            .flatten()
            .flat_map(|object| {
                let object = &object.0;
                let calls = object
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|call| call.0.function.as_ref()?.0.arguments.as_deref());
                let function = object
                    .function_call
                    .as_ref()
                    .and_then(|f| f.0.arguments.as_deref());
                [
                    object.content.as_deref(),
                    object.reasoning_content.as_deref(),
                    object.reasoning.as_deref(),
                    function,
                ]
                .into_iter()
                .flatten()
                .chain(calls)
            })
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
                completion_tokens: 2,
                ..Usage::default()
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
                completion_tokens: 0,
                ..Usage::default()
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
