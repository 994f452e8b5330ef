//! Ingress dialects: the APIs clients speak to AI routes. OpenAI's (chat completions, completions,
//! embeddings, models) is the common form itself; Anthropic's Messages API (`/v1/messages`,
//! `/v1/messages/count_tokens`) is parsed into it, and its answers, stream events and errors are rendered
//! back in Anthropic's format. Any dialect works with any provider: the provider adapters translate the
//! other side (`ai::provider`).

pub mod anthropic;
pub mod openai;

use serde_json::{Map, Value};

use crate::error::{Dialect, Rejection};
use openai::Endpoint;

/// What a request on an AI route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An OpenAI endpoint.
    OpenAi(Endpoint),
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
}

impl Operation {
    /// From the request path (under any prefix).
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        match of_path(path) {
            Dialect::Anthropic if path.ends_with("/messages") => Some(Operation::Messages),
            Dialect::Anthropic => Some(Operation::CountTokens),
            _ => Endpoint::from_path(path).map(Operation::OpenAi),
        }
    }

    /// The dialect errors and answers are written in.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::OpenAi(_) => Dialect::OpenAi,
            Operation::Messages | Operation::CountTokens => Dialect::Anthropic,
        }
    }

    /// The endpoint of the common form it is served as.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Operation::OpenAi(endpoint) => endpoint,
            Operation::Messages | Operation::CountTokens => Endpoint::ChatCompletions,
        }
    }

    /// Parse and check the body into the common form.
    pub fn parse(self, raw: &[u8]) -> Result<Map<String, Value>, Rejection> {
        match self {
            Operation::OpenAi(endpoint) => {
                let body: Map<String, Value> = serde_json::from_slice(raw)
                    .map_err(|e| openai::invalid_json(&e.to_string()))?;
                openai::check_request_shape(endpoint, &body)?;
                Ok(body)
            }
            Operation::Messages | Operation::CountTokens => {
                anthropic::parse_request(raw, self == Operation::CountTokens)
            }
        }
    }
}

/// The dialect of a request on an AI route, from its path: Anthropic's for its Messages endpoints, OpenAI's
/// for the rest (the refusals before the AI path — auth, limits — use it too).
pub fn of_path(path: &str) -> Dialect {
    let path = path.trim_end_matches('/');
    // OpenAI's Assistants API has messages too (`/threads/{id}/messages`): not Anthropic's.
    if (path.ends_with("/messages") || path.ends_with("/messages/count_tokens"))
        && !path.contains("/threads/")
    {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_read_from_paths() {
        assert_eq!(
            Operation::from_path("/v1/messages"),
            Some(Operation::Messages)
        );
        assert_eq!(
            Operation::from_path("/anthropic/v1/messages/"),
            Some(Operation::Messages)
        );
        assert_eq!(
            Operation::from_path("/v1/messages/count_tokens"),
            Some(Operation::CountTokens)
        );
        assert_eq!(
            Operation::from_path("/v1/chat/completions"),
            Some(Operation::OpenAi(Endpoint::ChatCompletions))
        );
        assert_eq!(Operation::from_path("/v1/threads/t1/messages"), None);
        assert_eq!(of_path("/v1/threads/t1/messages"), Dialect::OpenAi);
        assert_eq!(Operation::from_path("/v1/messages/batches"), None);
    }
}
