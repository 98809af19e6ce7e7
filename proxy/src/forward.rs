//! The request path: check framing, route, pick, rewrite, send, and hand the response back
//! while streaming (or, after `101 Switching Protocols`, tunnel the bytes both ways).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gantry_config::Scheme;
use gantry_config::routing::{RequestView, normalize_host};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::Proxy;
use crate::backend::{BackendState, InFlight};
use crate::body::{Lease, ResponseBody, UpstreamBody};
use crate::error::{ProxyError, error_response};
use crate::server::ConnInfo;
use crate::snapshot::{PickContext, ServiceRuntime};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// What one scan of the request's header names found.
#[derive(Default)]
struct Framing {
    transfer_encoding: bool,
    content_length: bool,
    upgrade: bool,
}

fn scan(h: &HeaderMap) -> Framing {
    let mut f = Framing::default();
    for name in h.keys() {
        if name == header::TRANSFER_ENCODING {
            f.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            f.content_length = true;
        } else if name == header::UPGRADE {
            f.upgrade = true;
        }
    }
    f
}

impl Proxy {
    /// Serves one client request. Never fails: every error becomes a response here.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: &Arc<ConnInfo>) -> Response<ResponseBody> {
        let start = Instant::now();
        let snap = self.store.load();
        let request_id = match req.headers_mut().entry(&X_REQUEST_ID) {
            header::Entry::Occupied(mut e) => {
                if e.get().is_empty() || e.get().len() > 200 {
                    e.insert(new_request_id());
                }
                e.get().clone()
            }
            header::Entry::Vacant(e) => e.insert(new_request_id()).clone(),
        };
        let framing = scan(req.headers());
        let chunked = if framing.transfer_encoding {
            match transfer_coding(req.headers()) {
                Ok(chunked) => chunked,
                Err(e) => return self.fail(&e, request_id),
            }
        } else {
            false
        };

        // The Host header, or the :authority of an HTTP/2 request (which then becomes the Host
        // header for the backend).
        let (host_value, host_is_header) = match req.headers().get(header::HOST) {
            Some(h) => (Some(h.clone()), true),
            None => (
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                false,
            ),
        };
        if host_value.is_none() && req.version() == Version::HTTP_11 {
            return self.fail(&ProxyError::MissingHost, request_id);
        }
        let host_text = host_value.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let host = normalize_host(host_text);
        let view = RequestView {
            host: &host,
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
            query: req.uri().query(),
        };
        let Some(route) = snap.table.lookup(conn.entrypoint, &view) else {
            self.no_route.inc(404);
            return self.fail(&ProxyError::NoRoute, request_id);
        };
        let (Some(service), Some(route_rt)) = (snap.service(route.service), snap.route(route.id)) else {
            // Cannot happen: a snapshot has the runtime state of every route of its table.
            self.no_route.inc(503);
            return self.fail(&ProxyError::NoBackend, request_id);
        };

        if route.redirect_https && conn.proto == "http" {
            route_rt.no_backend.inc(308);
            return redirect_https(&host, conn.https_port, req.uri(), request_id);
        }
        if framing.content_length
            && let Some(len) = content_length(req.headers())
            && len > route.max_body_bytes
        {
            route_rt.no_backend.inc(413);
            return self.fail(&ProxyError::BodyTooLarge(route.max_body_bytes), request_id);
        }

        // Circuit breaking: a service with too many requests in flight answers at once rather
        // than piling more onto it.
        let limits = service.spec.limits;
        let Some(_service_in_flight) = service.state.try_begin(limits.max_pending_requests) else {
            route_rt.no_backend.inc(503);
            return self.fail(&ProxyError::CircuitOpen, request_id);
        };
        let retries = service.spec.retries;
        service.state.deposit(retries.budget_percent);

        let pick_ctx = PickContext {
            hash: service.hash_of(req.headers(), conn.client_ip),
            placement: service.place(req.headers(), conn.client_ip),
            now: start,
        };
        let Some(mut pick) = service.pick(&pick_ctx, &[]) else {
            route_rt.no_backend.inc(503);
            let elapsed = start.elapsed().as_secs_f64();
            route_rt.histogram.observe(elapsed);
            service.state.record(503, elapsed);
            return self.fail(&ProxyError::NoBackend, request_id);
        };
        let scheme = service.backends[pick.index].key.url.scheme;
        let upgrade = if framing.upgrade {
            upgrade_protocol(&req)
        } else {
            None
        };
        if upgrade.is_some() && scheme == Scheme::H2c {
            route_rt.no_backend.inc(502);
            return self.fail(&ProxyError::UpgradeUnsupported, request_id);
        }
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        // A request with no body and an idempotent method can be sent again after its connection
        // failed; any other request only when it never left Gantry.
        let replayable = retries.attempts > 0
            && service.backends.len() > 1
            && upgrade.is_none()
            && req.body().is_end_stream()
            && is_idempotent(req.method());

        let (parts, mut body) = req.into_parts();
        let body = if chunked {
            // Read the first chunk before anything reaches a backend: malformed chunk framing
            // is refused here with 400, and the backend never sees the request.
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Err(_)) => {
                    route_rt.no_backend.inc(400);
                    return self.fail(&ProxyError::BadBody, request_id);
                }
                Some(Ok(first)) => UpstreamBody::prefixed(Some(first), body, route.max_body_bytes),
                None => UpstreamBody::prefixed(None, body, route.max_body_bytes),
            }
        } else {
            UpstreamBody::new(body, route.max_body_bytes)
        };
        let strip = if route.strip_prefix {
            match &route.matcher.path {
                Some(gantry_config::PathMatch::Prefix(p)) => Some(p.as_str()),
                _ => None,
            }
        } else {
            None
        };
        let target = Target {
            host: host_value,
            host_is_header,
            strip_prefix: strip,
            scheme,
            upgrade: upgrade.clone(),
        };
        let upstream_req = rewrite(Request::from_parts(parts, body), conn, target);
        let template = replayable.then(|| Template::of(&upstream_req));

        let mut pending = Some(upstream_req);
        let mut tried = [usize::MAX; 11];
        let mut attempts = 0usize;
        let mut only_connect_failures = true;
        let mut client_upgrade = client_upgrade;
        loop {
            let backend_idx = pick.index;
            tried[attempts] = backend_idx;
            attempts += 1;
            let backend = &service.backends[backend_idx];
            let counters = route_rt.counters(&self.metrics, &route.name, service, backend_idx);
            let failure = if backend.in_flight() >= limits.max_pending_requests_per_backend {
                // Busy, not broken: not counted against the backend's health.
                service.state.breaker_backend.inc();
                SendError {
                    error: ProxyError::CircuitOpen,
                    unsent: pending.take(),
                }
            } else {
                let Some(request) = pending
                    .take()
                    .or_else(|| template.as_ref().map(Template::rebuild))
                else {
                    return self.fail(&ProxyError::NoBackend, request_id);
                };
                let in_flight = backend.begin();
                let attempt_start = Instant::now();
                match send(backend, service, request).await {
                    Ok((mut resp, sender)) => {
                        let now = Instant::now();
                        backend.observe_latency(now - attempt_start, now);
                        let status = resp.status().as_u16();
                        counters.inc(status);
                        let elapsed = (now - start).as_secs_f64();
                        route_rt.histogram.observe(elapsed);
                        service.observe_version(backend_idx, status, elapsed);
                        if status >= 500 {
                            self.backend_failed(backend, service);
                        } else {
                            backend.health.record_success();
                        }
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                            && let (Some(client_upgrade), Some(proto)) = (client_upgrade.take(), upgrade)
                        {
                            let backend_upgrade = hyper::upgrade::on(&mut resp);
                            self.tunnel(client_upgrade, backend_upgrade, in_flight, conn.clone());
                            let (mut parts, _) = resp.into_parts();
                            strip_hop_by_hop(&mut parts.headers, false);
                            parts
                                .headers
                                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                            parts.headers.entry(header::UPGRADE).or_insert(proto);
                            parts.headers.entry(X_REQUEST_ID.clone()).or_insert(request_id);
                            return Response::from_parts(parts, ResponseBody::full(Bytes::new()));
                        }
                        let (mut parts, body) = resp.into_parts();
                        strip_hop_by_hop(&mut parts.headers, false);
                        parts.headers.entry(X_REQUEST_ID.clone()).or_insert(request_id);
                        let lease = Lease {
                            in_flight,
                            sender,
                            max_idle: service.spec.limits.max_idle_per_backend as usize,
                        };
                        return Response::from_parts(parts, ResponseBody::upstream(body, lease));
                    }
                    Err(e) => {
                        if e.error.is_backend_fault() {
                            // A failure costs a backend its timeout in the least-request score.
                            let now = Instant::now();
                            backend
                                .observe_latency(service.spec.timeouts.connect.max(now - attempt_start), now);
                            self.backend_failed(backend, service);
                        }
                        e
                    }
                }
            };
            counters.inc(failure.error.status().as_u16());
            only_connect_failures &= failure.error.is_connect_failure();
            debug!(route = %route.name, backend = %backend.label, error = %failure.error, attempts, "attempt failed");
            pending = failure.unsent;
            let can_replay = pending.is_some() || (template.is_some() && failure.error.is_replay_safe());
            let next = if attempts <= retries.attempts as usize
                && can_replay
                && !failure.error.closes_connection()
            {
                service.pick(&pick_ctx, &tried[..attempts])
            } else {
                None
            };
            // A refused connection never reached a backend, so retrying it cannot add load to
            // one: only the attempt count bounds it. Anything else spends the retry budget.
            let free = matches!(&failure.error, ProxyError::Connect(_)) && pending.is_some();
            match next {
                Some(p)
                    if free
                        || service.state.withdraw(
                            crate::backend::nanos_since_epoch(Instant::now()),
                            retries.min_per_second,
                        ) =>
                {
                    pick = p;
                }
                _ => {
                    let elapsed = start.elapsed().as_secs_f64();
                    route_rt.histogram.observe(elapsed);
                    // With every backend unhealthy (panic), or every backend tried unreachable, the
                    // service is down: that is a 503, not one backend's bad answer.
                    let unreachable = only_connect_failures && attempts > 1;
                    let error = if (pick.panic || unreachable) && failure.error.is_connect_failure() {
                        ProxyError::NoHealthyBackend
                    } else {
                        failure.error
                    };
                    service.observe_version(pick.index, error.status().as_u16(), elapsed);
                    return self.fail(&error, request_id);
                }
            }
        }
    }

    /// Counts a failure against a backend; ejects it when it crossed the outlier threshold.
    fn backend_failed(&self, backend: &BackendState, service: &ServiceRuntime) {
        let now = crate::backend::nanos_since_epoch(Instant::now());
        if let Some(time) = backend
            .health
            .record_failure(now, &service.spec.outlier, &service.backends)
        {
            backend.ejections.inc();
            tracing::warn!(
                service = %service.name,
                backend = %backend.label,
                seconds = time.as_secs_f64(),
                "backend ejected by outlier detection"
            );
        }
    }

    pub(crate) fn fail(&self, err: &ProxyError, request_id: HeaderValue) -> Response<ResponseBody> {
        let mut resp = error_response(err);
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        resp
    }

    /// Copies bytes both ways between an upgraded client connection and an upgraded backend
    /// connection until either side closes. The tunnel keeps the request in flight on its backend
    /// and the client connection under the listener's connection limit.
    fn tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        backend: hyper::upgrade::OnUpgrade,
        in_flight: InFlight,
        conn: Arc<ConnInfo>,
    ) {
        self.tunnels.spawn(async move {
            let _held = (in_flight, conn);
            match tokio::try_join!(client, backend) {
                Ok((c, b)) => {
                    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                    match tokio::io::copy_bidirectional(&mut c, &mut b).await {
                        Ok((up, down)) => debug!(up, down, "tunnel closed"),
                        Err(e) => debug!(error = %e, "tunnel ended with an error"),
                    }
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
    }
}

/// `Ok(true)` for a chunked body. Any other transfer coding is refused: a coding applied twice is
/// a smuggling trick (400), anything else is not implemented (501).
fn transfer_coding(h: &HeaderMap) -> Result<bool, ProxyError> {
    let (mut chunked, mut other) = (0, false);
    for v in h.get_all(header::TRANSFER_ENCODING) {
        let text = v
            .to_str()
            .map_err(|_| ProxyError::BadFraming("invalid Transfer-Encoding"))?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    match (chunked, other) {
        (1, false) => Ok(true),
        (0, false) => Err(ProxyError::BadFraming("empty Transfer-Encoding")),
        (c, _) if c > 1 => Err(ProxyError::BadFraming("chunked applied more than once")),
        _ => Err(ProxyError::UnsupportedEncoding),
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The protocol an HTTP/1.1 client asks to switch to (`Upgrade: websocket` with
/// `Connection: upgrade`). `h2c` is never passed on: Gantry speaks HTTP/2 itself.
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let proto = req.headers().get(header::UPGRADE)?;
    if proto.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    let asked = req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
    });
    asked.then(|| proto.clone())
}

fn redirect_https(
    host: &str,
    port: Option<u16>,
    uri: &Uri,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{pq}"),
        _ => format!("https://{host}{pq}"),
    };
    let mut resp = Response::new(ResponseBody::full(Bytes::from(format!(
        "308 permanent redirect: {location}\n"
    ))));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

/// A failed attempt, with the request back when it never left Gantry (so that it can go to
/// another backend as it is).
struct SendError {
    error: ProxyError,
    unsent: Option<Request<UpstreamBody>>,
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
async fn send(
    backend: &BackendState,
    service: &ServiceRuntime,
    mut req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<UpstreamBody>>), SendError> {
    let t = &service.spec.timeouts;
    if backend.key.url.scheme == Scheme::H2c {
        let mut sender = match backend.h2_sender(t.connect).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
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
        return match tokio::time::timeout(t.response_header, sender.send_request(req)).await {
            Err(_) => Err(ProxyError::ResponseTimeout(t.response_header).into()),
            Ok(Err(e)) => Err(ProxyError::from_upstream(e).into()),
            Ok(Ok(resp)) => Ok((resp, None)),
        };
    }
    loop {
        let (mut sender, fresh) = match backend.take_idle(t.idle).await {
            Some(s) => (s, false),
            None => match backend
                .connect(t.connect, service.spec.limits.max_connections_per_backend)
                .await
            {
                Ok(s) => (s, true),
                Err(error) => {
                    return Err(SendError {
                        error,
                        unsent: Some(req),
                    });
                }
            },
        };
        match tokio::time::timeout(t.response_header, sender.try_send_request(req)).await {
            Err(_) => return Err(ProxyError::ResponseTimeout(t.response_header).into()),
            Ok(Ok(resp)) => return Ok((resp, Some(sender))),
            Ok(Err(mut e)) => match e.take_message() {
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

/// What it takes to send a body-less request again.
struct Template {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn of(req: &Request<UpstreamBody>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn rebuild(&self) -> Request<UpstreamBody> {
        let mut r = Request::new(UpstreamBody::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(m: &http::Method) -> bool {
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

/// Where and how a request goes upstream.
struct Target<'a> {
    /// The Host header, or the HTTP/2 :authority.
    host: Option<HeaderValue>,
    host_is_header: bool,
    strip_prefix: Option<&'a str>,
    scheme: Scheme,
    /// The protocol of an upgrade (WebSocket) to pass on.
    upgrade: Option<HeaderValue>,
}

/// Turns a client request into the request for the backend: HTTP/1.1 with an origin-form URI
/// (prefix stripped if asked), or HTTP/2 with the client's host as :authority; hop-by-hop headers
/// removed (but an upgrade passed on); `X-Forwarded-*` set.
fn rewrite(req: Request<UpstreamBody>, conn: &ConnInfo, t: Target<'_>) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    let h2 = t.scheme == Scheme::H2c;
    if h2 {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let pq = match t.strip_prefix {
            Some(p) => origin_form(&parts.uri, Some(p)).to_string(),
            None => pq.to_string(),
        };
        let authority = t
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        parts.uri = format!("http://{authority}{pq}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
    } else {
        if parts.uri.scheme().is_some() || t.strip_prefix.is_some() {
            parts.uri = origin_form(&parts.uri, t.strip_prefix);
        }
        parts.version = Version::HTTP_11;
    }
    let h = &mut parts.headers;
    strip_hop_by_hop(h, true);
    if let Some(host) = t.host {
        if h2 {
            h.remove(header::HOST);
        } else if !t.host_is_header {
            h.insert(header::HOST, host.clone());
        }
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(proto) = t.upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
    }
    append_forwarded_for(h, &conn.client_ip_header);
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.proto));
    if let Some(p) = t.strip_prefix
        && let Ok(v) = HeaderValue::from_str(p)
    {
        h.insert(X_FORWARDED_PREFIX.clone(), v);
    }
    Request::from_parts(parts, body)
}

fn origin_form(uri: &Uri, strip_prefix: Option<&str>) -> Uri {
    let path = uri.path();
    let path = match strip_prefix.and_then(|p| path.strip_prefix(p)) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        Some(rest) => return build_uri(&format!("/{rest}"), uri.query()),
        None => path,
    };
    build_uri(path, uri.query())
}

fn build_uri(path: &str, query: Option<&str>) -> Uri {
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    text.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn append_forwarded_for(h: &mut HeaderMap, client: &HeaderValue) {
    let mut existing = match h.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
            return;
        }
        header::Entry::Occupied(e) => e,
    };
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for v in existing.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(client.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        existing.insert(v);
    }
}

/// Removes the headers that describe one connection, not the message (RFC 9110 section 7.6.1):
/// the fixed list and every header the `Connection` header names. `TE: trailers` is kept, since
/// it is the one value with end-to-end meaning (gRPC needs it). With `expect`, also removes
/// `Expect` (Gantry answers `100 Continue` itself).
///
/// One pass over the names finds what is present, so the common message (no hop-by-hop header,
/// or only `Connection: keep-alive`) costs a scan and one or two removals, not a dozen hashed
/// lookups (which cost 10% of a proxied request).
pub fn strip_hop_by_hop(h: &mut HeaderMap, expect: bool) {
    // At most ten distinct names can qualify; a fixed array avoids an allocation.
    let mut present: [Option<HeaderName>; 10] = Default::default();
    let mut n = 0;
    for name in h.keys() {
        if n < present.len() && (is_hop_by_hop(name.as_str()) || (expect && name == header::EXPECT)) {
            present[n] = Some(name.clone());
            n += 1;
        }
    }
    for slot in present.iter_mut().take(n) {
        let Some(name) = slot.take() else { continue };
        if name == header::CONNECTION {
            let mut named: Vec<HeaderName> = Vec::new();
            for v in h.get_all(header::CONNECTION) {
                for token in v.to_str().unwrap_or("").split(',') {
                    let token = token.trim();
                    // `close` and `keep-alive` are connection options, not header names (and the
                    // Keep-Alive header is removed anyway).
                    if token.is_empty()
                        || token.eq_ignore_ascii_case("close")
                        || token.eq_ignore_ascii_case("keep-alive")
                    {
                        continue;
                    }
                    if let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                        && n != header::TE
                    {
                        named.push(n);
                    }
                }
            }
            for n in named {
                h.remove(n);
            }
        } else if name == header::TE
            && h.get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        h.remove(name);
    }
}

#[inline]
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// 128 random bits as 32 lowercase hex digits.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in fastrand::u128(..).to_le_bytes().into_iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret, te"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        h.append(header::EXPECT, HeaderValue::from_static("100-continue"));
        let mut response = h.clone();
        strip_hop_by_hop(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["te", "x-kept"]);
        strip_hop_by_hop(&mut response, false);
        let mut left: Vec<&str> = response.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["expect", "te", "x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        let client = HeaderValue::from_static("10.1.1.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &client);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, &client);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.1.1");
    }

    #[test]
    fn prefix_stripping_keeps_a_rooted_path_and_the_query() {
        let u: Uri = "/api/users?x=1".parse().unwrap();
        assert_eq!(origin_form(&u, Some("/api")), "/users?x=1");
        assert_eq!(origin_form(&"/api".parse().unwrap(), Some("/api")), "/");
        assert_eq!(origin_form(&"/apix".parse().unwrap(), Some("/api")), "/x");
        assert_eq!(origin_form(&"http://h/a?b".parse().unwrap(), None), "/a?b");
    }

    #[test]
    fn request_ids_are_32_hex_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
