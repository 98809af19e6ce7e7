//! The `errors` middleware: a response whose status it covers (the backend's, or Gantry's own
//! 502/503/504) keeps its status and headers but gets its body from a page: a file read with
//! the config, or a GET to another service. A page that cannot be had leaves the response as it
//! was: an error page is a courtesy, never a new failure.

use std::sync::Arc;
use std::time::Instant;

use gantry_config::middleware::{ErrorPage, ErrorPages};
use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::body::UpstreamBody;
use crate::conn::ConnInfo;
use crate::response::{Lease, ResponseBody};
use crate::snapshot::{PickContext, Placement, Snapshot};
use crate::upstream::send;

/// Headers of the original response that describe its old body.
const BODY_HEADERS: [header::HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::TRANSFER_ENCODING,
];

/// `resp` with the page for its status as its body.
pub(crate) async fn render(
    pages: &ErrorPages,
    resp: Response<ResponseBody>,
    snap: &Snapshot,
    host: Option<&HeaderValue>,
    conn: &Arc<ConnInfo>,
) -> Response<ResponseBody> {
    let status = resp.status();
    let (content_type, body) = match &pages.page {
        ErrorPage::File {
            content_type,
            content,
            ..
        } => match HeaderValue::from_str(content_type) {
            Ok(t) => (t, ResponseBody::full(content.clone())),
            Err(_) => return resp,
        },
        ErrorPage::Service { service, path } => {
            let path = path.replace("{status}", status.as_str());
            match fetch(snap, service, &path, host, conn).await {
                Some(page) => page,
                None => return resp,
            }
        }
    };
    let (mut parts, old) = resp.into_parts();
    drop(old);
    for h in &BODY_HEADERS {
        parts.headers.remove(h);
    }
    parts.headers.insert(header::CONTENT_TYPE, content_type);
    Response::from_parts(parts, body)
}

/// A GET for the page from one of the service's backends: its type and streamed body, if it
/// answered 2xx.
async fn fetch(
    snap: &Snapshot,
    service: &str,
    path: &str,
    host: Option<&HeaderValue>,
    conn: &Arc<ConnInfo>,
) -> Option<(HeaderValue, ResponseBody)> {
    let service = snap.service_named(service)?;
    let ctx = PickContext {
        hash: None,
        sticky: None,
        placement: Placement::Weighted,
        now: Instant::now(),
    };
    let pick = service.pick(&ctx, &[])?;
    let backend = &service.backends[pick.index];
    let mut req = Request::new(UpstreamBody::empty());
    *req.uri_mut() = path.parse().ok()?;
    if let Some(h) = host {
        req.headers_mut().insert(header::HOST, h.clone());
    }
    req.headers_mut()
        .insert(header::ACCEPT, HeaderValue::from_static("text/html, */*;q=0.5"));
    let in_flight = backend.begin();
    let (resp, sender) = send(backend, service, req, conn, std::time::Instant::now())
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/html; charset=utf-8"));
    let lease = Lease {
        in_flight,
        sender,
        max_idle: service.spec.limits.max_idle_per_backend as usize,
    };
    Some((content_type, ResponseBody::upstream(resp.into_body(), lease)))
}
