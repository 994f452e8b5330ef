//! OpenAI wire-format pieces the gateway produces itself: the error object
//! `{"error":{"message","type","param","code"}}` with its status, and the endpoint a path names.

use bytes::Bytes;
use serde_json::json;

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

/// An error answered in OpenAI's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl OpenAiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        OpenAiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn invalid_json(detail: &str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            "invalid_json",
            format!("the request body is not valid JSON: {detail}"),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("the model `{model}` does not exist or is not available here"),
        )
        .with_param("model")
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn body(&self) -> Bytes {
        let value = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Bytes::from(body)
    }

    /// The same error as one SSE event, for failures after a stream has started.
    pub fn sse_event(&self) -> Bytes {
        let value = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        Bytes::from(format!("data: {value}\n\n"))
    }
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
        let body = OpenAiError::model_not_found("gpt-9").body();
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
