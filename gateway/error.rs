//! The gateway's own error responses: one kind per failure, mapped in one place to a status, a stable
//! code and a JSON body (`{"error":{"status","code","message","request_id"}}`).

use std::fmt::Write;

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

/// A JSON error body; `code` and `message` are the gateway's own static texts, never request data.
pub fn json_error(status: u16, code: &str, message: &str, request_id: &str) -> bytes::Bytes {
    let mut body = String::with_capacity(160);
    let _ = write!(
        body,
        r#"{{"error":{{"status":{status},"code":"{code}","message":"{message}","request_id":{}}}}}"#,
        serde_json::Value::String(request_id.to_string())
    );
    body.push('\n');
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
