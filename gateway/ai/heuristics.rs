//! Heuristic rules for `model: "auto"`: evaluated in order, the first that matches names the profile.
//! Signals are cheap to read from the parsed request: an estimated prompt size, keyword regexes over the
//! message texts, tools, images, detected PII, and request headers.

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde_json::{Map, Value};

/// What a rule looks at.
#[derive(Debug, Clone)]
pub enum Condition {
    PromptTokensOver(usize),
    Keywords(Regex),
    HasTools,
    HasImages,
    PiiDetected,
    Header(HeaderName, HeaderValue),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    pub profile: String,
}

/// Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar): a word boundary
/// means nothing there, so their words match anywhere.
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF
        | 0x0E00..=0x0EFF | 0x1780..=0x17FF | 0x1000..=0x109F)
}

/// Hangul syllables and jamo: words are spaced, but particles attach to their end (`증명을`), so only the
/// start of a Korean word is a boundary.
fn hangul(c: char) -> bool {
    matches!(c as u32, 0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F)
}

/// One case-insensitive regex for `words`: each a whole word (or phrase, its spaces matching any run of
/// white space) where its script separates words, so `prove` is not found in `improve` or `approve`, while
/// `证明` is found inside a Chinese sentence and `증명` before a Korean particle.
pub fn words_regex(words: &[String]) -> Result<Regex, String> {
    let mut alternatives = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let word = word.trim();
        let (Some(first), Some(last)) = (word.chars().next(), word.chars().next_back()) else {
            return Err(format!("words[{i}] is empty"));
        };
        let mut pattern = String::new();
        if first.is_alphanumeric() && !unspaced(first) {
            pattern.push_str(r"\b");
        }
        let parts: Vec<String> = word.split_whitespace().map(regex::escape).collect();
        pattern.push_str(&parts.join(r"\s+"));
        if last.is_alphanumeric() && !unspaced(last) && !hangul(last) {
            pattern.push_str(r"\b");
        }
        alternatives.push(pattern);
    }
    Regex::new(&format!("(?i)(?:{})", alternatives.join("|"))).map_err(|e| e.to_string())
}

/// Every text of the request: message contents (strings and text parts) and `prompt`.
pub fn texts(body: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let from_messages = messages.flat_map(|m| {
        let (single, parts) = match m.get("content") {
            Some(Value::String(text)) => (Some(text.as_str()), None),
            Some(Value::Array(parts)) => (
                None,
                Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str)),
                ),
            ),
            _ => (None, None),
        };
        single.into_iter().chain(parts.into_iter().flatten())
    });
    from_messages.chain(body.get("prompt").and_then(Value::as_str))
}

/// Prompt tokens, estimated at four bytes a token over every text.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> usize {
    texts(body).map(str::len).sum::<usize>().div_ceil(4)
}

fn has_images(body: &Map<String, Value>) -> bool {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| {
            m.get("content")
                .and_then(Value::as_array)
                .is_some_and(|parts| {
                    parts.iter().any(|p| {
                        matches!(
                            p.get("type").and_then(Value::as_str),
                            Some("image_url") | Some("input_image")
                        )
                    })
                })
        })
}

/// The first rule that matches, if any.
pub fn choose<'a>(
    rules: &'a [Rule],
    body: &Map<String, Value>,
    headers: &HeaderMap,
    pii_detected: bool,
) -> Option<&'a Rule> {
    rules.iter().find(|rule| match &rule.condition {
        Condition::PromptTokensOver(limit) => estimate_prompt_tokens(body) > *limit,
        Condition::Keywords(regex) => texts(body).any(|t| regex.is_match(t)),
        Condition::HasTools => body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        Condition::HasImages => has_images(body),
        Condition::PiiDetected => pii_detected,
        Condition::Header(name, value) => headers.get(name) == Some(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<Rule> {
        let rule = |name: &str, condition, profile: &str| Rule {
            name: name.into(),
            condition,
            profile: profile.into(),
        };
        vec![
            rule("long", Condition::PromptTokensOver(100), "longform"),
            rule(
                "keywords",
                Condition::Keywords(Regex::new("(?i)explain why|step by step").unwrap()),
                "reasoning",
            ),
            rule("tools", Condition::HasTools, "tools"),
            rule("images", Condition::HasImages, "vision"),
            rule("pii", Condition::PiiDetected, "confidential"),
            rule(
                "background",
                Condition::Header(
                    HeaderName::from_static("x-gateway-priority"),
                    HeaderValue::from_static("background"),
                ),
                "cheap",
            ),
        ]
    }

    fn pick(body: serde_json::Value, headers: &HeaderMap, pii: bool) -> Option<String> {
        let body: Map<String, Value> = serde_json::from_value(body).unwrap();
        choose(&rules(), &body, headers, pii).map(|r| r.name.clone())
    }

    #[test]
    fn rules_match_in_order() {
        let none = HeaderMap::new();
        let user =
            |text: &str| serde_json::json!({"messages": [{"role": "user", "content": text}]});
        assert_eq!(
            pick(user(&"x".repeat(500)), &none, false).as_deref(),
            Some("long")
        );
        assert_eq!(
            pick(user("Explain why the sky is blue"), &none, false).as_deref(),
            Some("keywords")
        );
        let tools = serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]});
        assert_eq!(pick(tools, &none, false).as_deref(), Some("tools"));
        let image = serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]});
        assert_eq!(pick(image, &none, false).as_deref(), Some("images"));
        assert_eq!(pick(user("hi"), &none, true).as_deref(), Some("pii"));
        let mut background = HeaderMap::new();
        background.insert("x-gateway-priority", HeaderValue::from_static("background"));
        assert_eq!(
            pick(user("hi"), &background, false).as_deref(),
            Some("background")
        );
        assert_eq!(pick(user("hi"), &none, false), None);
    }

    #[test]
    fn words_match_whole_words_where_the_script_has_them() {
        let words = [
            "explain why",
            "step by step",
            "prove",
            "증명",
            "证明",
            "説明して",
        ]
        .map(String::from);
        let regex = words_regex(&words).unwrap();
        for text in [
            "Please PROVE it.",
            "explain   why the sky is blue",
            "go step by\nstep",
            "이 정리를 증명을 해줘",
            "请证明这个定理",
            "これを説明してください",
        ] {
            assert!(regex.is_match(text), "{text}");
        }
        for text in [
            "improve this",
            "we approve",
            "proven results",
            "explain whyever",
            "프로증명",
        ] {
            assert!(!regex.is_match(text), "{text}");
        }
        assert!(words_regex(&["  ".to_string()]).is_err());
    }
}
