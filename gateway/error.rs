//! The gateway's own error responses. Every refusal and error, edge or AI, becomes one `Rejection`
//! (status, stable code, message, and its challenge or retry headers), written by `respond::reject` in the
//! dialect of the request: the gateway's JSON (`{"error":{"status","code","message","request_id"}}`),
//! OpenAI's (`{"error":{"message","type","param","code"}}`) or Anthropic's
//! (`{"type":"error","error":{"type","message"},"request_id"}`). `ErrorKind` names the failures of proxying.

use std::borrow::Cow;
use std::io::Write;

/// The format a route answers its errors in, fixed when the config compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Edge routes: the gateway's JSON error.
    #[default]
    Gateway,
    /// AI routes: OpenAI's error object, which the OpenAI SDKs read.
    OpenAi,
    /// Anthropic's Messages endpoints on AI routes (`/v1/messages`): what Anthropic's SDKs read.
    Anthropic,
}

/// Anthropic's error type for a status.
fn anthropic_kind(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A refusal or error the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Stable machine-readable code: the error body's `code` and the access log's `error`.
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// The error class OpenAI's format names (`type`); by default derived from the status.
    pub kind: &'static str,
    /// The request parameter at fault (OpenAI's `param`).
    pub param: Option<&'static str>,
    /// `WWW-Authenticate` of a 401.
    pub challenge: Option<&'static str>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// OpenAI's error class for a status.
fn kind_for(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            kind: kind_for(status),
            param: None,
            challenge: None,
            retry_after: None,
        }
    }

    /// With an explicit OpenAI error class.
    pub fn typed(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            kind,
            ..Rejection::new(status, code, message)
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The error body in `dialect`.
    pub fn body(&self, dialect: Dialect, request_id: &str) -> bytes::Bytes {
        match dialect {
            Dialect::Gateway => json_error(self.status, self.code, &self.message, request_id),
            Dialect::OpenAi => {
                let mut body = self.openai_object().to_string().into_bytes();
                body.push(b'\n');
                bytes::Bytes::from(body)
            }
            Dialect::Anthropic => {
                let mut object = self.anthropic_object();
                object["request_id"] = request_id.into();
                let mut body = object.to_string().into_bytes();
                body.push(b'\n');
                bytes::Bytes::from(body)
            }
        }
    }

    /// The error as Anthropic's `error` event, for failures after a Messages stream started.
    pub fn anthropic_event(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!(
            "event: error\ndata: {}\n\n",
            self.anthropic_object()
        ))
    }

    fn anthropic_object(&self) -> serde_json::Value {
        serde_json::json!({"type": "error", "error": {"type": anthropic_kind(self.status), "message": self.message}})
    }

    /// The error as one SSE event of an OpenAI stream, for failures after the stream started.
    pub fn sse_event(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!("data: {}\n\n", self.openai_object()))
    }

    fn openai_object(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<ErrorKind> for Rejection {
    fn from(kind: ErrorKind) -> Self {
        Rejection::new(kind.status(), kind.code(), kind.message())
    }
}

/// Why the gateway answered instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    RouteNotFound,
    BodyTooLarge,
    NoHealthyUpstream,
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamProtocol,
    BadRequest,
    /// The client went away before its answer was complete (NGINX's 499).
    ClientClosed,
    /// The client stopped sending its request body.
    RequestTimeout,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::RouteNotFound => 404,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::NoHealthyUpstream => 503,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::BadRequest => 400,
            ErrorKind::ClientClosed => 499,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Internal => 500,
        }
    }

    /// Stable machine-readable code, also the `error` field of the access log.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::UpstreamConnect => "upstream_connect_failed",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_error",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ClientClosed => "client_closed_request",
            ErrorKind::RequestTimeout => "request_body_timeout",
            ErrorKind::Internal => "internal_error",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::RouteNotFound => "no route matches this request",
            ErrorKind::BodyTooLarge => "request body is larger than this route accepts",
            ErrorKind::NoHealthyUpstream => "no healthy backend is available for this route",
            ErrorKind::UpstreamConnect => "could not connect to a backend",
            ErrorKind::UpstreamTimeout => "the backend did not answer in time",
            ErrorKind::UpstreamProtocol => "the backend failed while answering",
            ErrorKind::BadRequest => "the request could not be read",
            ErrorKind::ClientClosed => {
                "the client closed the connection before the answer was complete"
            }
            ErrorKind::RequestTimeout => "the request body did not arrive in time",
            ErrorKind::Internal => "internal gateway error",
        }
    }

    /// Classify a Pingora error raised while talking to an upstream.
    pub fn from_proxy_error(error: &pingora::Error) -> Self {
        use pingora::ErrorType::*;
        match &error.etype {
            HTTPStatus(413) => ErrorKind::BodyTooLarge,
            HTTPStatus(503) => ErrorKind::NoHealthyUpstream,
            HTTPStatus(code) if *code >= 400 && *code < 500 => ErrorKind::BadRequest,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError
            | ConnectProxyFailure | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
            | HandshakeError => ErrorKind::UpstreamConnect,
            ReadTimedout | WriteTimedout => ErrorKind::UpstreamTimeout,
            _ => match error.esource {
                pingora::ErrorSource::Downstream => ErrorKind::BadRequest,
                pingora::ErrorSource::Upstream => ErrorKind::UpstreamProtocol,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// The JSON error body of a gateway error kind.
pub fn error_body(kind: ErrorKind, request_id: &str) -> bytes::Bytes {
    json_error(kind.status(), kind.code(), kind.message(), request_id)
}

/// The gateway's JSON error body; `code` is one of the gateway's own static codes.
pub fn json_error(status: u16, code: &str, message: &str, request_id: &str) -> bytes::Bytes {
    // Written in place; the strings are escaped by serde_json without copies of them.
    let mut body = Vec::with_capacity(160);
    let _ = write!(
        body,
        r#"{{"error":{{"status":{status},"code":"{code}","message":"#
    );
    let _ = serde_json::to_writer(&mut body, message);
    body.extend_from_slice(br#","request_id":"#);
    let _ = serde_json::to_writer(&mut body, request_id);
    body.extend_from_slice(b"}}\n");
    bytes::Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json() {
        let body = error_body(ErrorKind::NoHealthyUpstream, "id-\"1");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["status"], 503);
        assert_eq!(value["error"]["code"], "no_healthy_upstream");
        assert_eq!(value["error"]["request_id"], "id-\"1");
    }
}
