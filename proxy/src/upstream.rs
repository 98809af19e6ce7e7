//! One attempt's exchange with a backend: a pooled or new HTTP/1.1 connection, or the shared
//! h2c connection; and what it takes to send a body-less request again.

use std::time::Instant;

use gantry_config::Scheme;
use http::header::HeaderMap;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tracing::debug;

use crate::backend::{BackendState, Upstream};
use crate::body::UpstreamBody;
use crate::conn::ConnInfo;
use crate::error::ProxyError;
use crate::proxy_protocol;
use crate::snapshot::ServiceRuntime;

/// A failed attempt, with the request back when it never left Gantry (so that it can go to
/// another backend as it is).
pub(crate) struct SendError {
    pub(crate) error: ProxyError,
    pub(crate) unsent: Option<Request<UpstreamBody>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        SendError { error, unsent: None }
    }
}

/// Sends the request to the backend. HTTP/1.1: on a pooled connection, or a new one; a pooled
/// connection that turns out to be closed before the request was written is replaced by a fresh
/// one, once; a request that was written is never sent again here. h2c: on the backend's shared
/// HTTP/2 connection.
///
/// A service that sends PROXY headers gets a new connection per request, opened with a header
/// naming this request's client, and never pooled (a pooled connection would name another).
///
/// `start` is the attempt's start: on a pooled connection the response-header timeout runs
/// from it (no second clock read), on a new one from when the connection is up.
///
/// An `async move` block, not an `async fn`, which would keep a second copy of the request in
/// the future (every request's future holds this one).
#[allow(clippy::manual_async_fn)] // no second copy of the arguments
pub(crate) fn send<'a>(
    backend: &'a BackendState,
    service: &'a ServiceRuntime,
    mut req: Request<UpstreamBody>,
    conn: &'a ConnInfo,
    start: Instant,
) -> impl Future<Output = Result<(Response<Incoming>, Option<Upstream>), SendError>> + Send + 'a {
    async move {
        let t = &service.spec.timeouts;
        if backend.key.url.scheme == Scheme::H2c {
            // Boxed: the HTTP/1.1 path's future (which every request's future holds) does not carry
            // the size of this one's.
            return Box::pin(send_h2(backend, service, req)).await;
        }
        let proxy_header = service
            .spec
            .proxy_protocol
            .map(|v| proxy_protocol::header(v, Some((conn.client_addr, conn.local_addr))));
        let mut now = start;
        loop {
            let pooled = match proxy_header {
                None => backend.take_idle(t.idle, &mut now).await,
                Some(_) => None,
            };
            let (mut sender, fresh) = match pooled {
                Some(s) => (s, false),
                None => match backend
                    .connect(
                        t.connect,
                        service.spec.limits.max_connections_per_backend,
                        proxy_header.as_deref(),
                    )
                    .await
                {
                    Ok(s) => {
                        now = Instant::now();
                        (s, true)
                    }
                    Err(error) => {
                        return Err(SendError {
                            error: error.into(),
                            unsent: Some(req),
                        });
                    }
                },
            };
            let answer = match sender.send(req, now, t.response_header) {
                Ok(sending) => sending.await,
                Err(e) => Some(Err(e)),
            };
            match answer {
                None => return Err(ProxyError::ResponseTimeout(t.response_header).into()),
                Some(Ok(resp)) => {
                    sender.reusable = proxy_header.is_none();
                    return Ok((resp, Some(sender)));
                }
                Some(Err(mut e)) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        debug!(backend = %backend.label, "pooled connection was closed; retrying on a new one");
                        req = unsent;
                    }
                    unsent => {
                        return Err(SendError {
                            error: ProxyError::from_upstream(e.into_error()),
                            unsent,
                        });
                    }
                },
            }
        }
    }
}

/// [`send`] to an h2c backend: on its shared HTTP/2 connection.
async fn send_h2(
    backend: &BackendState,
    service: &ServiceRuntime,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<Upstream>), SendError> {
    let t = &service.spec.timeouts;
    let mut sender = match backend.h2_sender(t.connect).await {
        Ok(s) => s,
        Err(error) => {
            return Err(SendError {
                error: error.into(),
                unsent: Some(req),
            });
        }
    };
    match tokio::time::timeout(t.connect, sender.ready()).await {
        Err(_) => {
            return Err(SendError {
                error: ProxyError::ConnectTimeout(t.connect),
                unsent: Some(req),
            });
        }
        Ok(Err(e)) => {
            return Err(SendError {
                error: ProxyError::Upstream(e),
                unsent: Some(req),
            });
        }
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout(t.response_header, sender.send_request(req)).await {
        Err(_) => Err(ProxyError::ResponseTimeout(t.response_header).into()),
        Ok(Err(e)) => Err(ProxyError::from_upstream(e).into()),
        Ok(Ok(resp)) => Ok((resp, None)),
    }
}

/// What it takes to send a body-less request again.
pub(crate) struct Template {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    pub(crate) fn of(req: &Request<UpstreamBody>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    pub(crate) fn rebuild(&self) -> Request<UpstreamBody> {
        let mut r = Request::new(UpstreamBody::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// RFC 9110 section 9.2.2.
pub(crate) fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}
