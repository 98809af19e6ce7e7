//! Every way a proxied request can fail, and the one place where a failure becomes a status code
//! and a short plain-text body that says which failure it was.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::backend::ConnectError;
use crate::body::BodyError;
use crate::response::ResponseBody;

#[derive(Debug)]
pub enum ProxyError {
    /// An HTTP/1.1 request without a Host header (RFC 9112 section 3.2 says 400).
    MissingHost,
    /// More than one Host header line (RFC 9112 section 3.2 says 400): two readings of one
    /// request.
    RepeatedHost,
    /// A Host (or `:authority`) that is not `host[:port]`.
    InvalidHost,
    /// An HTTP/2 request whose `:authority` and `host` header disagree.
    AuthorityMismatch,
    /// A request target of the wrong form for its method (RFC 9112 section 3.2): origin-form
    /// must start with `/`, `*` only with OPTIONS, authority-form only with CONNECT.
    BadTarget(&'static str),
    /// CONNECT (a tunnel to anywhere): Gantry is a reverse proxy, not a forward one.
    ConnectNotAllowed,
    /// No router matches the request.
    NoRoute,
    /// The service has no backend that can take the request (none configured, all weight 0).
    NoBackend,
    /// The backend is at its connection limit and has no idle connection.
    ConnectionLimit,
    /// TCP connect did not complete in time.
    ConnectTimeout(Duration),
    /// TCP connect failed (refused, unreachable, reset).
    Connect(io::Error),
    /// The backend took the request but sent no response head in time.
    ResponseTimeout(Duration),
    /// The backend connection failed after the request was handed to it (reset, closed early,
    /// invalid response), or the client's body failed while it was being sent (see
    /// [`BodyError`], found by walking the cause chain).
    Upstream(hyper::Error),
    /// Request framing that could hide a second request (smuggling): 400, connection closed.
    BadFraming(&'static str),
    /// A transfer coding Gantry does not implement: 501, connection closed.
    UnsupportedEncoding,
    /// The request body is larger than the router's limit: 413.
    BodyTooLarge(u64),
    /// The request body was malformed (bad chunk framing): 400, connection closed.
    BadBody,
    /// HTTP/2 to a backend that needs an HTTP/1.1 upgrade (WebSocket over an h2c service).
    UpgradeUnsupported,
    /// Too many requests in flight to the service or to every backend that could take it.
    CircuitOpen,
    /// Every backend failed its health checks and the one tried could not be reached.
    NoHealthyBackend,
    /// An `ip_allow` middleware refused the client address.
    Forbidden,
    /// A `basic_auth` middleware found no valid credentials (challenge for this realm).
    Unauthorized(Arc<str>),
    /// A `rate_limit` middleware: retry after this many seconds.
    RateLimited(u64),
    /// The router names a middleware that no source declares: nothing is let through.
    MissingMiddleware { router: Arc<str>, middleware: Arc<str> },
    /// A `redirect` middleware: this status, to this location.
    Redirect(StatusCode, HeaderValue),
    /// A `forward_auth` middleware's auth service could not be reached, or broke off: 502.
    AuthUnavailable(&'static str),
    /// A `forward_auth` middleware's auth service did not answer in time: 504.
    AuthTimeout(Duration),
    /// A middleware answered the request itself (the auth service's refusal, a CORS
    /// preflight): this response, named for logs and metrics.
    Answered(&'static str, Box<Response<ResponseBody>>),
}

/// The client-body error behind an upstream failure, if that is what it was.
fn body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cause = c.source();
    }
    None
}

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Limit => ProxyError::ConnectionLimit,
            ConnectError::Timeout(d) => ProxyError::ConnectTimeout(d),
            ConnectError::Refused(e) => ProxyError::Connect(e),
            ConnectError::Handshake(e) => ProxyError::Upstream(e),
        }
    }
}

impl ProxyError {
    /// Attributes an upstream failure to its real cause: a failure of the client's own body is a
    /// client error (413, 400), not a bad gateway.
    pub fn from_upstream(e: hyper::Error) -> Self {
        match body_error(&e) {
            Some(BodyError::TooLarge(limit)) => ProxyError::BodyTooLarge(*limit),
            Some(BodyError::Client(_)) => ProxyError::BadBody,
            None => ProxyError::Upstream(e),
        }
    }

    /// Whether the client connection must be closed after this answer (its framing can no
    /// longer be trusted, or part of its body is still unread).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::MissingHost
                | ProxyError::RepeatedHost
                | ProxyError::InvalidHost
                | ProxyError::AuthorityMismatch
                | ProxyError::BadTarget(_)
                | ProxyError::BadFraming(_)
                | ProxyError::UnsupportedEncoding
                | ProxyError::BodyTooLarge(_)
                | ProxyError::BadBody
        )
    }

    /// The reason a malformed request was refused before routing (the label of
    /// `gantry_requests_refused_total`), or `None` for every other failure.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            ProxyError::MissingHost
            | ProxyError::RepeatedHost
            | ProxyError::InvalidHost
            | ProxyError::AuthorityMismatch
            | ProxyError::BadTarget(_)
            | ProxyError::ConnectNotAllowed
            | ProxyError::BadFraming(_)
            | ProxyError::UnsupportedEncoding
            | ProxyError::BadBody => Some(self.kind()),
            _ => None,
        }
    }

    /// Failures that say something about the backend (for outlier detection), as opposed to the
    /// client's request or Gantry's own limits.
    pub fn is_backend_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectTimeout(_)
                | ProxyError::Connect(_)
                | ProxyError::ResponseTimeout(_)
                | ProxyError::Upstream(_)
        )
    }

    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::ConnectTimeout(_) | ProxyError::Connect(_))
    }

    /// Whether a body-less idempotent request may be sent again after this failure: the
    /// connection broke before an answer. Not after a timeout, which would double the load on a
    /// backend that is merely slow.
    pub fn is_replay_safe(&self) -> bool {
        match self {
            ProxyError::Upstream(e) => !e.is_timeout(),
            ProxyError::Connect(_) | ProxyError::ConnectionLimit | ProxyError::CircuitOpen => true,
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::CircuitOpen | ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadFraming(_) | ProxyError::BadBody => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpgradeUnsupported => StatusCode::BAD_GATEWAY,
            ProxyError::MissingHost
            | ProxyError::RepeatedHost
            | ProxyError::InvalidHost
            | ProxyError::AuthorityMismatch
            | ProxyError::BadTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout(_) | ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::MissingMiddleware { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Redirect(status, _) => *status,
            ProxyError::AuthUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::AuthTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Answered(_, resp) => resp.status(),
        }
    }

    /// A short machine-friendly name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::CircuitOpen => "circuit_open",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::BadFraming(_) => "bad_framing",
            ProxyError::UnsupportedEncoding => "unsupported_encoding",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::BadBody => "bad_body",
            ProxyError::UpgradeUnsupported => "upgrade_unsupported",
            ProxyError::MissingHost => "missing_host",
            ProxyError::RepeatedHost => "repeated_host",
            ProxyError::InvalidHost => "invalid_host",
            ProxyError::AuthorityMismatch => "authority_mismatch",
            ProxyError::BadTarget(_) => "bad_target",
            ProxyError::ConnectNotAllowed => "connect_not_allowed",
            ProxyError::NoRoute => "no_route",
            ProxyError::NoBackend => "no_backend",
            ProxyError::ConnectionLimit => "connection_limit",
            ProxyError::ConnectTimeout(_) => "connect_timeout",
            ProxyError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => "connect_refused",
            ProxyError::Connect(_) => "connect_failed",
            ProxyError::ResponseTimeout(_) => "response_timeout",
            ProxyError::Upstream(_) => "upstream_failed",
            ProxyError::Forbidden => "forbidden",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::MissingMiddleware { .. } => "missing_middleware",
            ProxyError::Redirect(..) => "redirected",
            ProxyError::AuthUnavailable(_) => "auth_unavailable",
            ProxyError::AuthTimeout(_) => "auth_timeout",
            ProxyError::Answered(kind, _) => kind,
        }
    }

    /// The body a client sees: what happened, in one line, without internal addresses.
    pub fn message(&self) -> String {
        match self {
            ProxyError::CircuitOpen => "503 service unavailable: too many requests in flight\n".into(),
            ProxyError::NoHealthyBackend => "503 service unavailable: no backend could be reached\n".into(),
            ProxyError::BadFraming(what) => format!("400 bad request: {what}\n"),
            ProxyError::UnsupportedEncoding => {
                "501 not implemented: only the chunked transfer coding is supported\n".into()
            }
            ProxyError::BodyTooLarge(limit) => format!("413 payload too large: the limit is {limit} bytes\n"),
            ProxyError::BadBody => "400 bad request: malformed request body\n".into(),
            ProxyError::UpgradeUnsupported => {
                "502 bad gateway: the backend speaks HTTP/2 and cannot take an upgrade\n".into()
            }
            ProxyError::MissingHost => "400 bad request: missing Host header\n".into(),
            ProxyError::RepeatedHost => "400 bad request: more than one Host header\n".into(),
            ProxyError::InvalidHost => "400 bad request: invalid Host\n".into(),
            ProxyError::AuthorityMismatch => {
                "400 bad request: :authority and Host name different hosts\n".into()
            }
            ProxyError::BadTarget(what) => format!("400 bad request: {what}\n"),
            ProxyError::ConnectNotAllowed => "405 method not allowed: CONNECT is not proxied\n".into(),
            ProxyError::NoRoute => "404 not found: no route matches this request\n".into(),
            ProxyError::NoBackend => "503 service unavailable: no backend available\n".into(),
            ProxyError::ConnectionLimit => {
                "503 service unavailable: backend connection limit reached\n".into()
            }
            ProxyError::ConnectTimeout(d) => {
                format!(
                    "504 gateway timeout: connecting to the backend took longer than {}\n",
                    fmt_d(*d)
                )
            }
            ProxyError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "502 bad gateway: backend refused the connection\n".into()
            }
            ProxyError::Connect(_) => "502 bad gateway: could not connect to the backend\n".into(),
            ProxyError::ResponseTimeout(d) => {
                format!(
                    "504 gateway timeout: backend did not answer within {}\n",
                    fmt_d(*d)
                )
            }
            ProxyError::Upstream(e) if e.is_timeout() => "504 gateway timeout: backend timed out\n".into(),
            ProxyError::Upstream(e) if e.is_incomplete_message() || e.is_canceled() => {
                "502 bad gateway: backend closed the connection before answering\n".into()
            }
            ProxyError::Upstream(e) if e.is_parse() => {
                "502 bad gateway: backend sent an invalid response\n".into()
            }
            ProxyError::Upstream(_) => "502 bad gateway: backend connection failed\n".into(),
            ProxyError::Forbidden => "403 forbidden: the client address is not allowed\n".into(),
            ProxyError::Unauthorized(_) => "401 unauthorized: valid credentials are needed\n".into(),
            ProxyError::RateLimited(s) => format!("429 too many requests: retry in {s} s\n"),
            ProxyError::Redirect(status, location) => format!(
                "{} redirect to {}\n",
                status.as_u16(),
                location.to_str().unwrap_or("")
            ),
            ProxyError::AuthUnavailable(why) => format!("502 bad gateway: {why}\n"),
            ProxyError::AuthTimeout(d) => format!(
                "504 gateway timeout: the auth service did not answer within {}\n",
                fmt_d(*d)
            ),
            ProxyError::Answered(_, resp) => format!("{}\n", resp.status()),
            ProxyError::MissingMiddleware { router, middleware } => format!(
                "503 service unavailable: router {router} uses middleware {middleware:?}, which is not declared\n"
            ),
        }
    }
}

fn fmt_d(d: Duration) -> String {
    gantry_config::duration::format(d)
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Connect(e) => write!(f, "{}: {e}", self.kind()),
            ProxyError::Upstream(e) => write!(f, "{}: {e}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

impl std::error::Error for ProxyError {}

/// The response for a failed request.
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(err.message())));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if err.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    match err {
        ProxyError::Unauthorized(realm) => {
            if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        ProxyError::RateLimited(secs) => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        ProxyError::Redirect(_, location) => {
            resp.headers_mut().insert(header::LOCATION, location.clone());
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_its_status_and_says_which() {
        let refused = ProxyError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        let cases = [
            (ProxyError::NoRoute, 404, "no route"),
            (ProxyError::NoBackend, 503, "no backend available"),
            (ProxyError::ConnectionLimit, 503, "connection limit"),
            (refused, 502, "refused"),
            (
                ProxyError::ConnectTimeout(Duration::from_secs(5)),
                504,
                "connecting to the backend took longer than 5s",
            ),
            (
                ProxyError::ResponseTimeout(Duration::from_millis(1500)),
                504,
                "did not answer within 1500ms",
            ),
            (ProxyError::MissingHost, 400, "missing Host"),
        ];
        for (err, status, text) in cases {
            let resp = error_response(&err);
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert!(err.message().contains(text), "{:?} lacks {text:?}", err.message());
            assert!(err.message().starts_with(&status.to_string()));
        }
    }
}
