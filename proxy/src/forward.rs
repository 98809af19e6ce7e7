//! The request path, one function per phase: admit, route, pick, rewrite, attempt, respond (see
//! [`Proxy::handle`]). The response is handed back while it streams (or, after `101 Switching
//! Protocols`, the bytes are tunnelled both ways).

use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gantry_config::Scheme;
use gantry_config::routing::{RequestView, Route, normalize_host};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::backend::{BackendState, InFlight};
use crate::body::UpstreamBody;
use crate::clock::nanos_since_epoch;
use crate::conn::ConnInfo;
use crate::error::{ProxyError, error_response};
use crate::headers::{Target, client_address, rewrite, strip_hop_by_hop};
use crate::plane::Proxy;
use crate::request_id::new_request_id;
use crate::response::{Lease, ResponseBody};
use crate::service::ServiceInFlight;
use crate::snapshot::{Pick, PickContext, RouteRuntime, ServiceRuntime, Snapshot};
use crate::upstream::{SendError, Template, is_idempotent, send};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// How long a tunnel waits for the client to close its side once the backend has closed.
const TUNNEL_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// What one scan of the request's header names found.
#[derive(Default)]
struct Framing {
    transfer_encoding: bool,
    content_length: bool,
    upgrade: bool,
}

/// The client's `X-Request-Id` when it is usable, else a new one (set on the request as well).
///
/// Marked sensitive, which HTTP/1 ignores: HPACK sends it as a literal never indexed rather than
/// adding each new ID to an HTTP/2 connection's table, where the encoder walked every earlier ID
/// kept there (dozens) to look for a match, for every response: about 2,600 instructions per
/// h2c request (callgrind, `docs/performance.md`).
#[inline]
fn request_id(h: &mut HeaderMap) -> HeaderValue {
    let id = match h.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(mut e) => {
            if e.get().is_empty() || e.get().len() > 200 {
                e.insert(new_request_id());
            }
            e.into_mut()
        }
        header::Entry::Vacant(e) => e.insert(new_request_id()),
    };
    id.set_sensitive(true);
    id.clone()
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

/// What `admit` found in the request's framing and target.
struct Admitted {
    framing: Framing,
    /// The body is chunked (the only transfer coding Gantry passes on).
    chunked: bool,
    /// The host the request names: the Host header, or the authority of an absolute-form
    /// target or of an HTTP/2 request (which then becomes the backend's Host header).
    host: Option<HeaderValue>,
    host_is_header: bool,
}

/// What `route` found: the router, its service and their runtime state in this snapshot, and the
/// host the request named.
struct Routed<'s> {
    route: &'s Route,
    service: &'s Arc<ServiceRuntime>,
    route_rt: &'s RouteRuntime,
    /// The Host header, or an HTTP/2 request's `:authority` (which becomes its Host header).
    host: Option<HeaderValue>,
    host_is_header: bool,
}

/// What `pick` holds for the rest of the request: the service's in-flight slot (the circuit
/// breaker counts it until the response head is back), the first backend, and what the next
/// pick (a retry) needs.
struct Picked {
    _service_in_flight: ServiceInFlight,
    pick: Pick,
    ctx: PickContext,
}

/// What the rewrite phase found about an upgrade (WebSocket): the protocol asked for, and the
/// client side of the upgrade once the backend agrees.
struct Upgrade {
    protocol: Option<HeaderValue>,
    client: Option<hyper::upgrade::OnUpgrade>,
    /// A WebSocket opened over HTTP/2 (RFC 8441): the backend gets an HTTP/1.1 upgrade, the
    /// client a 200 on its CONNECT stream.
    h2_websocket: bool,
    /// A body-less, idempotent request without an upgrade may be sent again.
    replayable: bool,
}

/// A phase that answers the client itself (an error, a redirect) ends the request with it. The
/// answer is large (a whole `Response`) but moved once, to the client: boxing it would allocate
/// on every refused request, so the phases allow `clippy::result_large_err`.
type Phase<T> = Result<T, Response<ResponseBody>>;

impl Proxy {
    /// Serves one client request. Never fails: every error becomes a response here.
    ///
    /// The phases, in order; each one may answer the client itself and end the request:
    /// - **admit**: framing that could hide a second request is refused (400/501);
    /// - **route**: the router for the host and request (404), HTTPS redirect (308), body
    ///   limit (413);
    /// - **pick**: the service's circuit breaker (503), the backend by policy, canary version
    ///   and health (503);
    /// - **rewrite**: upgrade, body and headers as the backend gets them (400, 502);
    /// - **attempt**: send, retry within attempts and budget (502/503/504);
    /// - **respond**: the backend's answer streamed back, or a tunnel after `101`.
    ///
    /// The two phases that wait (reading a chunked body's first chunk, and the attempts) are
    /// written inline rather than as `async fn`s of their own: a nested future moves the request
    /// and its state into itself, which cost ~1,000 instructions per request (3%, callgrind).
    /// Answers a request. With the access log on, `line` is its line: what the request's way
    /// through teaches (router, backend, attempts...) goes into it.
    ///
    /// An `async move` block rather than an `async fn`, which would hold a second copy of the
    /// request in its future: every request's future is moved whole into hyper's connection
    /// (a `memcpy` of its size, callgrind).
    #[allow(clippy::manual_async_fn)] // no second copy of the arguments
    pub fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        mut line: Option<&mut crate::access_log::Line>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        async move {
            let start = Instant::now();
            let snap = self.store.load();
            let request_id = request_id(req.headers_mut());
            if let Some(l) = line.as_deref_mut() {
                l.request_id(&request_id);
            }
            let mut admitted = match self.admit(&req, &request_id) {
                Ok(a) => a,
                Err(resp) => return resp,
            };
            // ACME HTTP-01 challenges, before any routing, redirect or middleware.
            if let Some(acme) = self.acme.get()
                && acme.http01
                && conn.proto == "http"
                && req.uri().path().starts_with(crate::acme::CHALLENGE_PREFIX)
            {
                return acme.answer(req.uri().path());
            }
            let r = match self.route(&snap, &req, conn, &mut admitted, &request_id) {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            // The client: the peer, or with a trusted peer the address it reports.
            // Answers from here on may get an error page (the router's `errors` middleware).
            let pages_host = r
                .route_rt
                .chain
                .as_ref()
                .filter(|c| c.has_error_pages())
                .map(|_| r.host.clone());
            let chain = r.route_rt.chain.as_ref();
            // What the access log line needs of the request's way through (only when it is on).
            let mut trail = line.map(|line| {
                let t = line.trail();
                t.router = Some(r.route.name.clone());
                t.service = Some(r.service.name.clone());
                t.skip = !r.route.access_log;
                t.spans = self.access_log.get().is_some_and(|l| l.spans());
                t
            });
            let resp = 'answer: {
                let client_ip = if conn.trusted_peer {
                    client_address(req.headers(), conn)
                } else {
                    conn.client_ip
                };
                // The router's middlewares (boxed: a router without them keeps a small future).
                let mut plan = crate::middleware::Plan::default();
                if let Some(chain) = &r.route_rt.chain {
                    let (mut parts, body) = req.into_parts();
                    let line = crate::middleware::RequestLine {
                        scheme: conn.proto,
                        host: r.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
                        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                        method: &parts.method,
                    };
                    let verdict =
                        Box::pin(chain.request(&r.route.name, &mut parts.headers, client_ip, line)).await;
                    req = Request::from_parts(parts, body);
                    match verdict {
                        Ok(p) => plan = p,
                        Err((middleware, e)) => {
                            self.metrics
                                .middleware_refusals
                                .with_label_values(&[&r.route.name, &middleware, e.kind()])
                                .inc();
                            r.route_rt.no_backend.inc(e.status().as_u16());
                            if let ProxyError::Answered(_, resp) = e {
                                // The middleware's own answer (an auth service's, a preflight's),
                                // as it is: no error page over it.
                                let mut resp = *resp;
                                resp.headers_mut()
                                    .entry(X_REQUEST_ID.clone())
                                    .or_insert(request_id);
                                return resp;
                            }
                            break 'answer self.fail(&e, request_id);
                        }
                    }
                }
                let Picked {
                    _service_in_flight,
                    mut pick,
                    ctx,
                } = match self.pick(&r, &req, client_ip, start, &request_id) {
                    Ok(p) => p,
                    Err(resp) => break 'answer resp,
                };

                // Rewrite.
                let (route, service, route_rt) = (r.route, r.service, r.route_rt);
                let upgrade = match self.upgrade(&r, pick.index, &mut req, &admitted, &request_id) {
                    Ok(u) => u,
                    Err(resp) => break 'answer resp,
                };
                let (parts, mut body) = req.into_parts();
                // A middleware or the body's first chunk was waited for (see the attempt).
                let waited = route_rt.chain.is_some() || admitted.chunked;
                let body = if admitted.chunked {
                    // Read the first chunk before anything reaches a backend: malformed chunk framing
                    // is refused here with 400, and the backend never sees the request.
                    match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Err(_)) => {
                            route_rt.no_backend.inc(400);
                            break 'answer self.fail(&ProxyError::BadBody, request_id);
                        }
                        Some(Ok(first)) => UpstreamBody::prefixed(Some(first), body, route.max_body_bytes),
                        None => UpstreamBody::prefixed(None, body, route.max_body_bytes),
                    }
                } else {
                    UpstreamBody::new(body, route.max_body_bytes)
                };
                let body = match &mut trail {
                    Some(t) if body.is_end_stream() => {
                        t.received = crate::access_log::Received::Nothing;
                        body
                    }
                    Some(t) => {
                        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
                        t.received = crate::access_log::Received::Counted(counter.clone());
                        body.counted(counter)
                    }
                    None => body,
                };
                let mut request =
                    self.rewrite(&r, pick.index, Request::from_parts(parts, body), conn, &upgrade);
                if r.service.mirror.is_some() && upgrade.protocol.is_none() {
                    request = r.service.mirror(pick.index, request, conn);
                }
                // The template is taken from `pending`, not from `request`: a borrowed local
                // keeps its place in the future to the end of its scope (beside `pending`).
                let mut pending = Some(request);
                let template = match &pending {
                    Some(request) if upgrade.replayable => Some(Template::of(request)),
                    _ => None,
                };
                let Upgrade {
                    protocol: upgrade,
                    client: mut client_upgrade,
                    h2_websocket,
                    ..
                } = upgrade;

                // Attempt: the picked backend and, when an attempt fails and the request can go again,
                // another one, within the route's attempts and the service's retry budget.
                let limits = service.spec.limits;
                let retries = service.spec.retries;
                let mut tried = [usize::MAX; 11];
                let mut attempts = 0usize;
                let mut only_connect_failures = true;
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
                            break 'answer self.fail(&ProxyError::NoBackend, request_id);
                        };
                        if let Some(t) = &mut trail {
                            t.backend = Some(backend.label.clone());
                            t.version = service.spec.backends[backend_idx]
                                .version
                                .as_deref()
                                .map(Arc::from);
                            t.attempts = attempts as u32;
                        }
                        let in_flight = backend.begin();
                        // The first attempt starts with the request (a clock read less per
                        // request; routing and picking take microseconds), unless the request
                        // waited for a middleware or for its body's first chunk: the backend's
                        // latency and response-header timeout run from the attempt.
                        let attempt_start = if attempts == 1 && !waited {
                            start
                        } else {
                            Instant::now()
                        };
                        let sent = send(backend, service, request, conn, attempt_start).await;
                        if let Some(t) = &mut trail
                            && t.spans
                        {
                            let status = match &sent {
                                Ok((resp, _)) => resp.status().as_u16(),
                                Err(e) => e.error.status().as_u16(),
                            };
                            t.tried.push(crate::access_log::Tried {
                                backend: backend.label.clone(),
                                start: attempt_start - start,
                                end: start.elapsed(),
                                status,
                            });
                        }
                        match sent {
                            Ok((mut resp, sender)) => {
                                if let Some(cookie) = service.sticky_cookie(backend_idx, ctx.sticky) {
                                    resp.headers_mut().append(header::SET_COOKIE, cookie.clone());
                                }
                                let now = Instant::now();
                                let since_start = now - start;
                                if let Some(t) = &mut trail {
                                    t.upstream = Some(since_start);
                                }
                                backend.observe_latency(now - attempt_start, now);
                                let status = resp.status().as_u16();
                                counters.inc(status);
                                let elapsed = since_start.as_secs_f64();
                                route_rt.histogram.observe(elapsed);
                                service.observe_version(backend_idx, status, elapsed);
                                if status >= 500 {
                                    self.backend_failed(backend, service);
                                } else {
                                    backend.health.record_success();
                                }
                                let upgraded = match (client_upgrade.take(), upgrade) {
                                    (Some(c), Some(proto)) if status == 101 => Some((c, proto, h2_websocket)),
                                    _ => None,
                                };
                                let lease = Lease {
                                    in_flight,
                                    sender,
                                    max_idle: limits.max_idle_per_backend as usize,
                                };
                                break 'answer self.respond(
                                    resp,
                                    lease,
                                    upgraded,
                                    conn,
                                    request_id,
                                    route_rt.chain.as_ref().map(|c| (c, plan)),
                                );
                            }
                            Err(e) => {
                                if e.error.is_backend_fault() {
                                    // A failure costs a backend its timeout in the least-request score.
                                    let now = Instant::now();
                                    backend.observe_latency(
                                        service.spec.timeouts.connect.max(now - attempt_start),
                                        now,
                                    );
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
                    let can_replay =
                        pending.is_some() || (template.is_some() && failure.error.is_replay_safe());
                    let next = if attempts <= retries.attempts as usize
                        && can_replay
                        && !failure.error.closes_connection()
                    {
                        service.pick(&ctx, &tried[..attempts])
                    } else {
                        None
                    };
                    // A refused connection never reached a backend, so retrying it cannot add load to
                    // one: only the attempt count bounds it. Anything else spends the retry budget.
                    let free = matches!(&failure.error, ProxyError::Connect(_)) && pending.is_some();
                    match next {
                        Some(p)
                            if free
                                || service
                                    .state
                                    .withdraw(nanos_since_epoch(Instant::now()), retries.min_per_second) =>
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
                            break 'answer self.fail(&error, request_id);
                        }
                    }
                }
            };
            if let (Some(host), Some(chain)) = (&pages_host, chain)
                && let Some(pages) = chain.error_pages(resp.status().as_u16())
            {
                return Box::pin(crate::error_pages::render(
                    pages,
                    resp,
                    &snap,
                    host.as_ref(),
                    conn,
                ))
                .await;
            }
            resp
        }
    }

    /// Admit: refuses framing that could be read two ways (RFC 9112 section 6.1).
    #[inline]
    #[allow(clippy::result_large_err)]
    fn admit(&self, req: &Request<Incoming>, request_id: &HeaderValue) -> Phase<Admitted> {
        let framing = scan(req.headers());
        let chunked = if framing.transfer_encoding {
            transfer_coding(req.headers()).map_err(|e| self.fail(&e, request_id.clone()))?
        } else {
            false
        };
        let (host, host_is_header) = request_host(req).map_err(|e| self.fail(&e, request_id.clone()))?;
        Ok(Admitted {
            framing,
            chunked,
            host,
            host_is_header,
        })
    }

    /// Route: the router for the request in this snapshot, then what the router itself answers
    /// (an HTTPS redirect, a body over its limit).
    #[inline]
    #[allow(clippy::result_large_err)]
    fn route<'s>(
        &self,
        snap: &'s Snapshot,
        req: &Request<Incoming>,
        conn: &ConnInfo,
        admitted: &mut Admitted,
        request_id: &HeaderValue,
    ) -> Phase<Routed<'s>> {
        let (host_value, host_is_header) = (admitted.host.take(), admitted.host_is_header);
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
            return Err(self.fail(&ProxyError::NoRoute, request_id.clone()));
        };
        let (Some(service), Some(route_rt)) = (snap.service(route.service), snap.route(route.id)) else {
            // Cannot happen: a snapshot has the runtime state of every route of its table.
            self.no_route.inc(503);
            return Err(self.fail(&ProxyError::NoBackend, request_id.clone()));
        };
        if route.redirect_https && conn.proto == "http" {
            route_rt.no_backend.inc(308);
            return Err(self.fail(
                &redirect_https(&host, conn.https_port, req.uri()),
                request_id.clone(),
            ));
        }
        if admitted.framing.content_length
            && let Some(len) = content_length(req.headers())
            && len > route.max_body_bytes
        {
            route_rt.no_backend.inc(413);
            return Err(self.fail(
                &ProxyError::BodyTooLarge(route.max_body_bytes),
                request_id.clone(),
            ));
        }
        Ok(Routed {
            route,
            service,
            route_rt,
            host: host_value,
            host_is_header,
        })
    }

    /// Pick: the service's circuit breaker, then the first backend (policy, canary placement,
    /// health).
    #[inline]
    #[allow(clippy::result_large_err)]
    fn pick(
        &self,
        r: &Routed<'_>,
        req: &Request<Incoming>,
        client_ip: IpAddr,
        start: Instant,
        request_id: &HeaderValue,
    ) -> Phase<Picked> {
        let service = r.service;
        // Circuit breaking: a service with too many requests in flight answers at once rather
        // than piling more onto it.
        let Some(service_in_flight) = service.state.try_begin(service.spec.limits.max_pending_requests)
        else {
            r.route_rt.no_backend.inc(503);
            return Err(self.fail(&ProxyError::CircuitOpen, request_id.clone()));
        };
        service.state.deposit(service.spec.retries.budget_percent);
        let ctx = PickContext {
            hash: service.hash_of(req.headers(), client_ip),
            sticky: service.sticky_backend(req.headers()),
            placement: service.place(req.headers(), client_ip),
            now: start,
        };
        let Some(pick) = service.pick(&ctx, &[]) else {
            r.route_rt.no_backend.inc(503);
            let elapsed = start.elapsed().as_secs_f64();
            r.route_rt.histogram.observe(elapsed);
            service.state.record(503, elapsed);
            return Err(self.fail(&ProxyError::NoBackend, request_id.clone()));
        };
        Ok(Picked {
            _service_in_flight: service_in_flight,
            pick,
            ctx,
        })
    }

    /// Rewrite, first half: whether the request asks for an upgrade the backend can take, and
    /// whether it could be sent again.
    #[inline]
    #[allow(clippy::result_large_err)]
    fn upgrade(
        &self,
        r: &Routed<'_>,
        backend: usize,
        req: &mut Request<Incoming>,
        admitted: &Admitted,
        request_id: &HeaderValue,
    ) -> Phase<Upgrade> {
        let service = r.service;
        let h2_websocket = match extended_connect(req) {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => true,
            Some(_) => {
                return Err(self.fail(
                    &ProxyError::BadTarget("extended CONNECT is only for websocket"),
                    request_id.clone(),
                ));
            }
            None => false,
        };
        let protocol = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else if admitted.framing.upgrade {
            upgrade_protocol(req)
        } else {
            None
        };
        if protocol.is_some() && service.backends[backend].key.url.scheme == Scheme::H2c {
            r.route_rt.no_backend.inc(502);
            return Err(self.fail(&ProxyError::UpgradeUnsupported, request_id.clone()));
        }
        let client = protocol.as_ref().map(|_| hyper::upgrade::on(&mut *req));
        // A request with no body and an idempotent method can be sent again after its connection
        // failed; any other request only when it never left Gantry.
        let replayable = service.spec.retries.attempts > 0
            && service.backends.len() > 1
            && protocol.is_none()
            && req.body().is_end_stream()
            && is_idempotent(req.method());
        Ok(Upgrade {
            protocol,
            client,
            h2_websocket,
            replayable,
        })
    }

    /// Rewrite, second half: target, Host and forwarded headers as the backend gets them.
    #[inline]
    fn rewrite(
        &self,
        r: &Routed<'_>,
        backend: usize,
        mut req: Request<UpstreamBody>,
        conn: &ConnInfo,
        upgrade: &Upgrade,
    ) -> Request<UpstreamBody> {
        let route = r.route;
        if upgrade.h2_websocket {
            // The HTTP/1.1 handshake the backend expects (RFC 6455 section 4.1): a GET with a
            // fresh key; the client's version, protocols and extensions pass on as they are.
            *req.method_mut() = Method::GET;
            let h = req.headers_mut();
            h.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
            h.entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
        let strip = if route.strip_prefix {
            match &route.matcher.path {
                Some(gantry_config::PathMatch::Prefix(p)) => Some(p.as_str()),
                _ => None,
            }
        } else {
            None
        };
        let target = Target {
            host: r.host.clone(),
            host_is_header: r.host_is_header,
            strip_prefix: strip,
            scheme: r.service.backends[backend].key.url.scheme,
            upgrade: upgrade.protocol.clone(),
        };
        rewrite(req, conn, target)
    }

    /// Respond: the backend's answer as the client gets it, its body streamed under the lease;
    /// after `101 Switching Protocols`, a tunnel between the two upgraded connections.
    #[inline]
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        lease: Lease,
        upgraded: Option<(hyper::upgrade::OnUpgrade, HeaderValue, bool)>,
        conn: &Arc<ConnInfo>,
        request_id: HeaderValue,
        chain: Option<(&crate::middleware::Chain, crate::middleware::Plan)>,
    ) -> Response<ResponseBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some((client_upgrade, proto, h2)) = upgraded
        {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            // hyper hands the backend's socket over when its connection future ends, which
            // nothing of this exchange will poll any more.
            let Lease {
                in_flight, sender, ..
            } = lease;
            if let Some(up) = sender {
                up.detach();
            }
            let slot = self
                .access_log
                .get()
                .map(|_| crate::access_log::TunnelSlot::default());
            self.tunnel(
                client_upgrade,
                backend_upgrade,
                in_flight,
                conn.clone(),
                slot.clone(),
            );
            let (mut parts, _) = resp.into_parts();
            if let Some(s) = slot {
                parts.extensions.insert(s);
            }
            strip_hop_by_hop(&mut parts.headers, false);
            if h2 {
                // RFC 8441: the CONNECT stream is the tunnel once answered 200; the key and
                // its accept value were between Gantry and the backend.
                parts.status = StatusCode::OK;
                parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
                parts.headers.entry(X_REQUEST_ID.clone()).or_insert(request_id);
                return Response::from_parts(parts, ResponseBody::empty());
            }
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.entry(header::UPGRADE).or_insert(proto);
            parts.headers.entry(X_REQUEST_ID.clone()).or_insert(request_id);
            return Response::from_parts(parts, ResponseBody::full(Bytes::new()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let mut body = ResponseBody::upstream(body, lease);
        if let Some((chain, plan)) = chain {
            body = chain.response(&mut parts, body, plan);
        }
        parts.headers.entry(X_REQUEST_ID.clone()).or_insert(request_id);
        Response::from_parts(parts, body)
    }

    /// Counts a failure against a backend; ejects it when it crossed the outlier threshold.
    fn backend_failed(&self, backend: &BackendState, service: &ServiceRuntime) {
        let now = nanos_since_epoch(Instant::now());
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
        if let Some(reason) = err.refusal() {
            self.metrics.refused_requests.with_label_values(&[reason]).inc();
        }
        let mut resp = error_response(err);
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        if self.access_log.get().is_some() {
            resp.extensions_mut()
                .insert(crate::access_log::Failure(err.kind()));
        }
        resp
    }

    /// Copies bytes both ways between an upgraded client connection and an upgraded backend
    /// connection. The tunnel keeps the request in flight on its backend and the client
    /// connection under the listener's connection limit.
    ///
    /// It ends when both sides have closed, or soon after the backend has: a WebSocket whose
    /// server closed its connection is over, and a client that keeps its side open (an HTTP/2
    /// stream it never ends) must not hold the backend's slot, and shutdown, until it goes.
    fn tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        backend: hyper::upgrade::OnUpgrade,
        in_flight: InFlight,
        conn: Arc<ConnInfo>,
        slot: Option<crate::access_log::TunnelSlot>,
    ) {
        self.tunnels.spawn(async move {
            let _held = (in_flight, conn);
            match tokio::try_join!(client, backend) {
                Ok((c, b)) => {
                    use tokio::io::AsyncWriteExt;
                    let (mut client_rx, mut client_tx) = tokio::io::split(TokioIo::new(c));
                    let (mut backend_rx, mut backend_tx) = tokio::io::split(TokioIo::new(b));
                    let up = async {
                        let n = tokio::io::copy(&mut client_rx, &mut backend_tx).await;
                        let _ = backend_tx.shutdown().await;
                        n
                    };
                    let down = async {
                        let n = tokio::io::copy(&mut backend_rx, &mut client_tx).await;
                        let _ = client_tx.shutdown().await;
                        n
                    };
                    tokio::pin!(up, down);
                    let (up, down) = tokio::select! {
                        down = &mut down => {
                            // The backend is done: the client gets a moment to finish its side.
                            let up = tokio::time::timeout(TUNNEL_LINGER, &mut up).await;
                            (up.unwrap_or(Ok(0)), down)
                        }
                        up = &mut up => (up, down.await),
                    };
                    if let Some(s) = &slot {
                        s.ended(*up.as_ref().unwrap_or(&0), *down.as_ref().unwrap_or(&0));
                    }
                    match (up, down) {
                        (Ok(up), Ok(down)) => debug!(up, down, "tunnel closed"),
                        (Err(e), _) | (_, Err(e)) => debug!(error = %e, "tunnel ended with an error"),
                    }
                }
                Err(e) => {
                    if let Some(s) = &slot {
                        s.ended(0, 0);
                    }
                    debug!(error = %e, "upgrade failed")
                }
            }
        });
    }
}

/// The host a request names, and whether it is its Host header; refuses the readings that
/// differ (RFC 9112 section 3.2-3.3, RFC 9110 section 7.2): a repeated Host, a target of the
/// wrong form for its method, an HTTP/2 `:authority` and `host` that disagree, a missing Host on
/// HTTP/1.1, a host that is not `host[:port]`. An absolute-form target's authority wins over the
/// Host header, which the backend then gets rewritten to match.
#[inline]
fn request_host(req: &Request<Incoming>) -> Result<(Option<HeaderValue>, bool), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::RepeatedHost);
    }
    if req.method() == Method::CONNECT && extended_connect(req).is_none() {
        return Err(ProxyError::ConnectNotAllowed);
    }
    let uri = req.uri();
    let (host, is_header) = if req.version() == Version::HTTP_2 {
        match (uri.authority(), header) {
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                return Err(ProxyError::AuthorityMismatch);
            }
            (Some(a), _) => (HeaderValue::from_str(a.as_str()).ok(), false),
            (None, h) => (h.cloned(), h.is_some()),
        }
    } else {
        match (uri.scheme(), uri.authority()) {
            (Some(_), Some(a)) => (HeaderValue::from_str(a.as_str()).ok(), false),
            (_, Some(_)) => return Err(ProxyError::BadTarget("authority-form is only for CONNECT")),
            _ => {
                let path = uri.path();
                if path == "*" {
                    if req.method() != Method::OPTIONS {
                        return Err(ProxyError::BadTarget("* is only a target for OPTIONS"));
                    }
                } else if !path.starts_with('/') {
                    return Err(ProxyError::BadTarget("the request target must start with /"));
                }
                if header.is_none() && req.version() == Version::HTTP_11 {
                    return Err(ProxyError::MissingHost);
                }
                (header.cloned(), header.is_some())
            }
        }
    };
    if let Some(h) = &host
        && !valid_host(h.as_bytes())
    {
        return Err(ProxyError::InvalidHost);
    }
    Ok((host, is_header))
}

/// `uri-host [":" port]` (RFC 3986): a reg-name or IPv4 address of unreserved, sub-delims and
/// pct-encoded characters, or a bracketed IPv6 literal; an optional port of digits. Empty is
/// valid (a Host for a target without authority).
fn valid_host(h: &[u8]) -> bool {
    /// unreserved, sub-delims and `%` of RFC 3986, as a table: one load per byte.
    static REG_NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                );
            c += 1;
        }
        t
    };
    let (host, port) = if let Some(rest) = h.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], port),
            _ => return false,
        }
    } else {
        match h.iter().position(|&c| c == b':') {
            Some(i) => (&h[..i], &h[i + 1..]),
            None => (h, &b""[..]),
        }
    };
    host.iter().all(|&c| REG_NAME[usize::from(c)]) && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// The `:protocol` of an HTTP/2 extended CONNECT (RFC 8441).
fn extended_connect(req: &Request<Incoming>) -> Option<&hyper::ext::Protocol> {
    if req.method() != Method::CONNECT || req.version() != Version::HTTP_2 {
        return None;
    }
    req.extensions().get::<hyper::ext::Protocol>()
}

/// A WebSocket handshake key: 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    HeaderValue::from_str(&key).unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
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

pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
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

/// A router's `redirect_https`: the `redirect` middleware's scheme redirect, always 308 (the
/// method and body are kept whatever they are).
fn redirect_https(host: &str, port: Option<u16>, uri: &Uri) -> ProxyError {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = crate::middleware::on_scheme("https", host, port.or(Some(443)), pq);
    match HeaderValue::from_str(&location) {
        Ok(v) => ProxyError::Redirect(StatusCode::PERMANENT_REDIRECT, v),
        Err(_) => ProxyError::InvalidHost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_host_and_port() {
        for good in [
            "a.test",
            "A.Test:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:443",
            "",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a.test/x",
            "a test",
            "a.test:80x",
            "a.test:123456",
            "[::1",
            "[zz]",
            "a@b",
            "[::1]x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_host_bytes_are_judged_without_panic(h in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = valid_host(&h);
        }
    }
}
