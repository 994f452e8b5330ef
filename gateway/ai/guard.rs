//! Request guards: PII detection with per-detector actions (mask, reject, or keep the request on local
//! models), deny patterns, the tool allowlist and system-prompt injection. All patterns are compiled once at
//! config load; every text part of every message is inspected.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::Rejection;

/// What to do when a detector fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiAction {
    Mask,
    Reject,
    RouteLocal,
}

/// An extra check on a regex match (Luhn for card numbers).
pub type Validator = fn(&str) -> bool;

/// One PII detector.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    pub regex: Regex,
    /// Extra check on a match (Luhn for card numbers).
    pub validate: Option<Validator>,
    pub action: PiiAction,
    /// Replacement text, e.g. `[EMAIL]`.
    pub replacement: String,
}

/// Built-in detectors, in the order they run (more specific first).
pub const BUILTIN_DETECTORS: &[&str] = &[
    "api_key",
    "email",
    "kr_rrn",
    "us_ssn",
    "credit_card",
    "ip_address",
    "phone",
];

/// The regex and validator of a built-in detector.
pub fn builtin(name: &str) -> Option<(Regex, Option<Validator>)> {
    static PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
        [
            ("api_key", r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"),
            ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            ("kr_rrn", r"\b\d{6}-[1-8]\d{6}\b"),
            ("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
            ("credit_card", r"\b\d(?:[ -]?\d){12,18}\b"),
            // A dotted quad with its context: a version word before it or more dotted numbers around it are
            // part of the match, so `ip_in_context` can tell `version 1.2.3.4` and `1.2.3.4.5` from an address.
            ("ip_address", r"(?i:\b(?:version|ver|release|build|rev|v)[\s:=]+)?\b(?:\d+\.)*(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b(?:\.\d+)*"),
            // Separators are `-` or `.` (spaces only after a country code or area code in parentheses), so runs of
            // space-separated digit groups such as card numbers are not taken for phone numbers.
            ("phone", r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[.-])\d{3,4}[.-]\d{4}\b"),
        ]
        .into_iter()
        .map(|(name, pattern)| (name, Regex::new(pattern).expect("built-in pattern compiles")))
        .collect()
    });
    let regex = PATTERNS.iter().find(|(n, _)| *n == name)?.1.clone();
    let validate: Option<Validator> = match name {
        "credit_card" => Some(luhn_valid),
        "ip_address" => Some(ip_in_context),
        _ => None,
    };
    Some((regex, validate))
}

/// An IPv4 address is exactly four dotted numbers with no version word before them: `version 1.2.3.4`,
/// `release: 10.0.0.1` and `1.2.3.4.5` are version strings, not addresses.
fn ip_in_context(matched: &str) -> bool {
    matched.as_bytes().first().is_some_and(u8::is_ascii_digit) && matched.split('.').count() == 4
}

/// The Luhn checksum of the digits in `text`.
pub fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// How a system prompt is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMode {
    Prepend,
    Replace,
}

#[derive(Debug, Clone)]
pub struct SystemPrompt {
    pub mode: PromptMode,
    pub text: String,
}

/// What happens to tools outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolViolation {
    Reject,
    Strip,
}

#[derive(Debug, Clone)]
pub struct ToolPolicy {
    pub allow: Vec<String>,
    pub on_violation: ToolViolation,
}

/// The request guards of the AI routes.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    pub detectors: Vec<Detector>,
    pub deny: Vec<Regex>,
    pub tools: Option<ToolPolicy>,
    pub system_prompt: Option<SystemPrompt>,
}

/// What the guards found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuardReport {
    /// Names of the detectors that fired.
    pub detected: Vec<String>,
    /// Some detector asked to keep the request on local models.
    pub local_only: bool,
}

/// Apply `f` to every text of the request: message contents (strings and text parts) and `prompt`.
fn for_each_text(body: &mut Map<String, Value>, mut f: impl FnMut(&mut String)) {
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for message in messages {
            match message.get_mut("content") {
                Some(Value::String(text)) => f(text),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(Value::String(text)) = part.get_mut("text") {
                            f(text);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    match body.get_mut("prompt") {
        Some(Value::String(text)) => f(text),
        Some(Value::Array(items)) => items.iter_mut().for_each(|item| {
            if let Value::String(text) = item {
                f(text)
            }
        }),
        _ => {}
    }
}

impl Guards {
    /// Run every guard on a request body, masking in place; an `Err` refuses the request.
    pub fn inspect(&self, body: &mut Map<String, Value>) -> Result<GuardReport, Rejection> {
        let mut report = GuardReport::default();
        if !self.deny.is_empty() {
            let mut denied = false;
            for_each_text(body, |text| {
                denied |= self.deny.iter().any(|d| d.is_match(text))
            });
            if denied {
                return Err(Rejection::typed(
                    400,
                    "invalid_request_error",
                    "prompt_denied",
                    "the prompt matches a pattern this gateway refuses",
                ));
            }
        }
        let mut rejected: Option<String> = None;
        for_each_text(body, |text| {
            for detector in &self.detectors {
                let found = detector
                    .regex
                    .find_iter(text)
                    .any(|m| detector.validate.is_none_or(|v| v(m.as_str())));
                if !found {
                    continue;
                }
                if !report.detected.contains(&detector.name) {
                    report.detected.push(detector.name.clone());
                }
                match detector.action {
                    PiiAction::Reject => rejected = Some(detector.name.clone()),
                    PiiAction::RouteLocal => report.local_only = true,
                    PiiAction::Mask => {
                        let masked = detector.regex.replace_all(text, |caps: &regex::Captures| {
                            let matched = &caps[0];
                            if detector.validate.is_none_or(|v| v(matched)) {
                                detector.replacement.clone()
                            } else {
                                matched.to_string()
                            }
                        });
                        if let std::borrow::Cow::Owned(masked) = masked {
                            *text = masked;
                        }
                    }
                }
            }
        });
        if let Some(name) = rejected {
            return Err(Rejection::typed(
                400,
                "invalid_request_error",
                "pii_rejected",
                format!(
                    "the request contains data of a kind this gateway refuses to forward ({name})"
                ),
            ));
        }
        if let Some(policy) = &self.tools {
            self.check_tools(body, policy)?;
        }
        Ok(report)
    }

    fn check_tools(
        &self,
        body: &mut Map<String, Value>,
        policy: &ToolPolicy,
    ) -> Result<(), Rejection> {
        let Some(Value::Array(tools)) = body.get_mut("tools") else {
            return Ok(());
        };
        let name_of = |tool: &Value| {
            tool.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let outside: Vec<String> = tools
            .iter()
            .filter_map(name_of)
            .filter(|n| !policy.allow.contains(n))
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        match policy.on_violation {
            ToolViolation::Reject => Err(Rejection::typed(
                403,
                "permission_error",
                "tool_not_allowed",
                format!("tools not allowed here: {}", outside.join(", ")),
            )
            .with_param("tools")),
            ToolViolation::Strip => {
                tools.retain(|tool| name_of(tool).is_some_and(|n| policy.allow.contains(&n)));
                if tools.is_empty() {
                    body.remove("tools");
                    body.remove("tool_choice");
                }
                Ok(())
            }
        }
    }
}

/// Prepend a system message, or replace the client's system messages with it.
pub fn apply_system_prompt(body: &mut Map<String, Value>, prompt: &SystemPrompt) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return;
    };
    if prompt.mode == PromptMode::Replace {
        messages.retain(|m| {
            !matches!(
                m.get("role").and_then(Value::as_str),
                Some("system") | Some("developer")
            )
        });
    }
    let mut system = Map::new();
    system.insert("role".into(), "system".into());
    system.insert("content".into(), Value::String(prompt.text.clone()));
    messages.insert(0, Value::Object(system));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(name: &str, action: PiiAction) -> Detector {
        let (regex, validate) = builtin(name).unwrap();
        Detector {
            name: name.into(),
            regex,
            validate,
            action,
            replacement: format!("[{}]", name.to_uppercase()),
        }
    }

    fn guards(action: PiiAction) -> Guards {
        Guards {
            detectors: BUILTIN_DETECTORS
                .iter()
                .map(|n| detector(n, action))
                .collect(),
            ..Guards::default()
        }
    }

    #[test]
    fn each_detector_masks_what_it_should_and_only_that() {
        let cases = [
            (
                "mail me at jane.doe@example.co.uk please",
                "mail me at [EMAIL] please",
            ),
            ("call +1 415-555-0132 now", "call [PHONE] now"),
            ("ssn 123-45-6789.", "ssn [US_SSN]."),
            ("rrn 900101-1234567", "rrn [KR_RRN]"),
            ("card 4111 1111 1111 1111 ok", "card [CREDIT_CARD] ok"),
            (
                "card 4111 1111 1111 1112 not luhn",
                "card 4111 1111 1111 1112 not luhn",
            ),
            ("host 192.168.10.254 down", "host [IP_ADDRESS] down"),
            ("ip: 10.0.0.1.", "ip: [IP_ADDRESS]."),
            (
                "upgrade to version 1.2.3.4 now",
                "upgrade to version 1.2.3.4 now",
            ),
            ("Release: 10.0.0.1 is out", "Release: 10.0.0.1 is out"),
            (
                "build v 4.3.2.1 and 1.2.3.4.5",
                "build v 4.3.2.1 and 1.2.3.4.5",
            ),
            // Fixtures that look like keys are assembled so the source never holds one whole.
            (
                concat!("key sk-", "abcdefghijklmnopqrstuvwxyz123456"),
                "key [API_KEY]",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]"),
            (
                "version 1.2.3 and 2024-01-01",
                "version 1.2.3 and 2024-01-01",
            ),
        ];
        let guards = guards(PiiAction::Mask);
        for (input, expected) in cases {
            let mut body: Map<String, Value> = serde_json::from_value(
                serde_json::json!({"messages": [{"role": "user", "content": input}]}),
            )
            .unwrap();
            guards.inspect(&mut body).unwrap();
            assert_eq!(body["messages"][0]["content"], expected, "{input}");
        }
    }

    #[test]
    fn luhn_is_checked() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("5500 0000 0000 0004"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("1234"));
    }

    #[test]
    fn reject_route_local_tools_and_system_prompt() {
        let mut body: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "system", "content": "be rude"}, {"role": "user", "content": [{"type": "text", "text": "me@x.io"}]}],
            "tools": [{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"name": "rm_rf"}}]
        }))
        .unwrap();
        assert_eq!(
            guards(PiiAction::Reject)
                .inspect(&mut body.clone())
                .unwrap_err()
                .code,
            "pii_rejected"
        );
        let report = guards(PiiAction::RouteLocal)
            .inspect(&mut body.clone())
            .unwrap();
        assert!(report.local_only);
        assert_eq!(report.detected, ["email"]);
        let mut strict = Guards {
            tools: Some(ToolPolicy {
                allow: vec!["ok".into()],
                on_violation: ToolViolation::Reject,
            }),
            ..Guards::default()
        };
        assert_eq!(
            strict.inspect(&mut body.clone()).unwrap_err().code,
            "tool_not_allowed"
        );
        strict.tools = Some(ToolPolicy {
            allow: vec!["ok".into()],
            on_violation: ToolViolation::Strip,
        });
        strict.inspect(&mut body).unwrap();
        apply_system_prompt(
            &mut body,
            &SystemPrompt {
                mode: PromptMode::Replace,
                text: "be kind".into(),
            },
        );
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(body["messages"][0]["content"], "be kind");
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    }
}
