//! OpenAI wire-format pieces the gateway produces itself: the endpoint a path names, the checks of a
//! request's shape, and the rejections OpenAI's API would answer (written in OpenAI's error format by
//! `crate::error::Rejection`).

use serde_json::{Map, Value};

use crate::error::Rejection;

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// From the request path (`/v1/chat/completions`, ... under any prefix).
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Endpoint::ChatCompletions)
        } else if path.ends_with("/completions") {
            Some(Endpoint::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if path.ends_with("/models") {
            Some(Endpoint::Models)
        } else {
            None
        }
    }

    /// The path under a provider's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }
}

/// The request body is not JSON.
pub fn invalid_json(detail: &str) -> Rejection {
    Rejection::typed(
        400,
        "invalid_request_error",
        "invalid_json",
        format!("the request body is not valid JSON: {detail}"),
    )
}

/// The requested model is not in the catalog, or not allowed to this caller.
pub fn model_not_found(model: &str) -> Rejection {
    Rejection::typed(
        404,
        "invalid_request_error",
        "model_not_found",
        format!("the model `{model}` does not exist or is not available here"),
    )
    .with_param("model")
}

/// The request body is over the AI layer's limit.
pub fn body_too_large(limit: u64) -> Rejection {
    Rejection::typed(
        413,
        "invalid_request_error",
        "request_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// JSON's name for the kind of `value`, as OpenAI's errors write it.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn missing(param: &'static str, name: &str) -> Rejection {
    Rejection::typed(
        400,
        "invalid_request_error",
        "missing_required_parameter",
        format!("Missing required parameter: '{name}'."),
    )
    .with_param(param)
}

fn invalid_type(param: &'static str, name: &str, expected: &str, got: &Value) -> Rejection {
    Rejection::typed(
        400,
        "invalid_request_error",
        "invalid_type",
        format!(
            "Invalid type for '{name}': expected {expected}, but got {} instead.",
            json_kind(got)
        ),
    )
    .with_param(param)
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// OpenAI's rules for the shape of a request, for the fields the gateway and every provider rely on:
/// `messages` a non-empty array of messages with a known role and a string, array (or, for the
/// assistant, null) content; `prompt` and `input` present; `model` a string and `stream` a boolean when
/// given. A request that breaks them gets 400 here instead of travelling to a provider.
pub fn check_request_shape(endpoint: Endpoint, body: &Map<String, Value>) -> Result<(), Rejection> {
    if let Some(model) = body.get("model").filter(|m| !m.is_string()) {
        return Err(invalid_type("model", "model", "a string", model));
    }
    if let Some(stream) = body
        .get("stream")
        .filter(|s| !s.is_boolean() && !s.is_null())
    {
        return Err(invalid_type("stream", "stream", "a boolean", stream));
    }
    match endpoint {
        Endpoint::ChatCompletions => check_messages(body.get("messages")),
        Endpoint::Completions => match body.get("prompt") {
            None | Some(Value::Null) => Err(missing("prompt", "prompt")),
            Some(Value::String(_) | Value::Array(_)) => Ok(()),
            Some(other) => Err(invalid_type(
                "prompt",
                "prompt",
                "a string or an array",
                other,
            )),
        },
        Endpoint::Embeddings => match body.get("input") {
            None | Some(Value::Null) => Err(missing("input", "input")),
            Some(Value::Array(items)) if items.is_empty() => Err(Rejection::typed(
                400,
                "invalid_request_error",
                "empty_array",
                "Invalid 'input': empty array. Expected an array with minimum length 1.",
            )
            .with_param("input")),
            Some(Value::String(_) | Value::Array(_)) => Ok(()),
            Some(other) => Err(invalid_type(
                "input",
                "input",
                "a string or an array",
                other,
            )),
        },
        Endpoint::Models => Ok(()),
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), Rejection> {
    let messages = match messages {
        None | Some(Value::Null) => return Err(missing("messages", "messages")),
        Some(Value::Array(messages)) => messages,
        Some(other) => {
            return Err(invalid_type(
                "messages",
                "messages",
                "an array of objects",
                other,
            ))
        }
    };
    if messages.is_empty() {
        return Err(Rejection::typed(
            400,
            "invalid_request_error",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .with_param("messages"));
    }
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(invalid_type(
                "messages",
                &format!("messages[{i}]"),
                "an object",
                message,
            ));
        };
        let role = match message.get("role") {
            None | Some(Value::Null) => {
                return Err(missing("messages", &format!("messages[{i}].role")))
            }
            Some(Value::String(role)) => role.as_str(),
            Some(other) => {
                return Err(invalid_type(
                    "messages",
                    &format!("messages[{i}].role"),
                    "a string",
                    other,
                ))
            }
        };
        if !ROLES.contains(&role) {
            return Err(Rejection::typed(
                400,
                "invalid_request_error",
                "invalid_value",
                format!(
                    "Invalid value: '{}'. Supported values are: {}.",
                    role.chars().take(40).collect::<String>(),
                    ROLES.map(|r| format!("'{r}'")).join(", ")
                ),
            )
            .with_param("messages"));
        }
        match message.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            // The assistant's turn may be only tool calls.
            None | Some(Value::Null) if role == "assistant" => {}
            None | Some(Value::Null) => {
                return Err(missing("messages", &format!("messages[{i}].content")))
            }
            Some(other) => {
                return Err(invalid_type(
                    "messages",
                    &format!("messages[{i}].content"),
                    "a string or an array of content parts",
                    other,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_from_paths() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/openai/v1/completions"),
            Some(Endpoint::Completions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/embeddings/"),
            Some(Endpoint::Embeddings)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), Some(Endpoint::Models));
        assert_eq!(Endpoint::from_path("/v1/files"), None);
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let body = model_not_found("gpt-9").body(crate::error::Dialect::OpenAi, "id");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert_eq!(value["error"]["code"], "model_not_found");
        assert_eq!(value["error"]["param"], "model");
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-9"));
    }
}
