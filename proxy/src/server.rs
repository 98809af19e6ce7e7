//! Client-facing listeners: accept, TLS (rustls, SNI from the live snapshot, ALPN), protocol
//! detection (HTTP/1.1, HTTP/2 by ALPN or h2c with prior knowledge), connection limits and
//! timeouts, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use gantry_config::{Entrypoint, ListenerLimits, TlsVersion};
use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use prometheus::IntGauge;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, warn};

use crate::conn::{ActiveRequest, Activity, ConnInfo};
use crate::error::ProxyError;
use crate::io::{ClientIo, peek_start, wait_for_more};
use crate::plane::Proxy;
use crate::proxy_protocol;
use crate::shutdown::Shutdown;

/// How a listener behaves: its limits, and TLS if it terminates TLS.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    pub limits: ListenerLimits,
    pub tls: Option<gantry_config::EntrypointTls>,
    /// Where `redirect_https` routers send plain-HTTP clients: the port of the TLS entrypoint
    /// (omitted from the URL when 443).
    pub https_port: Option<u16>,
    /// Peers trusted to set forwarded headers (see `ConnInfo::trusted_peer`).
    pub trusted_ips: Arc<[IpNet]>,
    /// Connections from `trusted_ips` may start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ServerConfig {
    pub fn for_entrypoint(ep: &Entrypoint) -> Self {
        Self {
            limits: ep.limits,
            tls: ep.tls.clone(),
            https_port: None,
            trusted_ips: ep.trusted_ips.clone().into(),
            proxy_protocol: ep.proxy_protocol,
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts connections on `listener` for entrypoint number `entrypoint` until `shutdown` fires,
/// then stops accepting at once (new connections are refused) and waits for open connections to
/// finish; they are told to close as soon as they are idle.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    entrypoint: usize,
    config: ServerConfig,
    shutdown: Shutdown,
) {
    let name = proxy.entrypoint_name(entrypoint).to_string();
    let accepted = proxy.metrics.client_connections.with_label_values(&[&name]);
    let active = proxy
        .metrics
        .client_connections_active
        .with_label_values(&[&name]);
    let tls = match &config.tls {
        Some(t) => match tls_acceptor(&proxy, t) {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(entrypoint = %name, error = %e, "cannot set up TLS; the entrypoint is not served");
                return;
            }
        },
        None => None,
    };
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.limits.max_connections as usize));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    warn!(entrypoint = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(entrypoint = %name, "connection limit reached; closing new connection");
            proxy.metrics.refused_connections.inc();
            drop(stream);
            continue;
        };
        accepted.inc();
        let conn = Conn {
            proxy: proxy.clone(),
            config: config.clone(),
            shutdown: shutdown.clone(),
            active: active.clone(),
            entrypoint,
            tls: tls.clone(),
        };
        tracker.spawn(
            conn.run(stream, peer, permit)
                .instrument(debug_span!("conn", %peer, ep = %name)),
        );
    }
    // Refuse new connections while the open ones drain.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn tls_acceptor(proxy: &Arc<Proxy>, t: &gantry_config::EntrypointTls) -> Result<TlsAcceptor, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SnapshotCerts(proxy.clone())));
    cfg.alpn_protocols = if t.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if proxy.acme.get().is_some_and(|a| a.tls_alpn01) {
        // Only a client that offers nothing else (the CA validating TLS-ALPN-01) gets it.
        cfg.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Picks the certificate from the live snapshot, so that a reloaded certificate serves the next
/// handshake, atomically with the routing table it came with.
struct SnapshotCerts(Arc<Proxy>);

impl std::fmt::Debug for SnapshotCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCerts")
    }
}

impl ResolvesServerCert for SnapshotCerts {
    /// A configured certificate for the name (exact, then wildcard) always wins; then one issued
    /// by ACME; then the configured default, then Gantry's own default. A CA validating
    /// TLS-ALPN-01 gets the challenge certificate, and nothing else does.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.0.snapshot();
        let certs = snapshot.table.certs();
        let found = match self.0.acme.get() {
            None => certs.resolve(hello.server_name()),
            Some(acme) => {
                let name = hello
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                let challenge = hello
                    .alpn()
                    .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
                if challenge {
                    // RFC 8737: the validation handshake offers acme-tls/1 alone.
                    return name.and_then(|n| acme.challenge_cert(&n));
                }
                name.as_deref()
                    .and_then(|n| certs.find(n).or_else(|| acme.issued(n)))
                    .or_else(|| certs.default_cert())
                    .or_else(|| acme.fallback())
            }
        };
        if found.is_none() {
            debug!(sni = ?hello.server_name(), "no certificate for this name");
        }
        found
    }
}

struct Conn {
    proxy: Arc<Proxy>,
    config: Arc<ServerConfig>,
    shutdown: Shutdown,
    active: IntGauge,
    entrypoint: usize,
    tls: Option<TlsAcceptor>,
}

impl Conn {
    /// Serves one client connection to its end. Written as a function returning an `async move`
    /// block rather than an `async fn`: an `async fn` keeps a second copy of its arguments in the
    /// future, and this future is what every idle connection's task holds.
    #[allow(clippy::manual_async_fn)] // no second copy of the arguments
    fn run(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let _ = stream.set_nodelay(true);
            self.active.inc();
            // In a block: what it borrows would otherwise keep a place in the future for the
            // connection's whole life.
            let info = {
                let mut client_ip = canonical_ip(peer.ip());
                let mut client_addr = peer;
                let local_addr = stream.local_addr().unwrap_or(peer);
                if self.config.proxy_protocol {
                    let trusted = self.config.trusted_ips.iter().any(|n| n.contains(&client_ip));
                    let limit = self.config.limits.header_read_timeout;
                    let read = proxy_protocol::read(&mut stream, trusted, limit);
                    match self.unless_shutdown(read).await {
                        Some(Ok(proxy_protocol::Header::Client(Some(client)))) => {
                            client_ip = canonical_ip(client.ip());
                            client_addr = client;
                        }
                        Some(Ok(_)) => {}
                        // A bad header, or the shutdown came first: the connection ends here.
                        ended => {
                            if let Some(Err(why)) = ended {
                                let reason = why.reason();
                                self.proxy
                                    .metrics
                                    .refused_requests
                                    .with_label_values(&[reason])
                                    .inc();
                                debug!(%peer, reason, "connection closed at its PROXY header");
                            }
                            self.active.dec();
                            return;
                        }
                    }
                }
                Arc::new(ConnInfo {
                    entrypoint: self.entrypoint,
                    client_ip,
                    client_addr,
                    local_addr,
                    client_ip_header: HeaderValue::from_str(&client_ip.to_string())
                        .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
                    proto: if self.tls.is_some() { "https" } else { "http" },
                    trusted_peer: self.config.trusted_ips.iter().any(|n| n.contains(&client_ip)),
                    trusted_ips: self.config.trusted_ips.clone(),
                    https_port: self.config.https_port,
                    tls: Default::default(),
                    _permit: permit,
                })
            };
            let limit = self.config.limits.header_read_timeout;
            match &self.tls {
                // Boxed: a plain connection's task does not carry the TLS path's size.
                Some(acceptor) => Box::pin(self.serve_tls(acceptor, stream, info)).await,
                None => match self.unless_shutdown(detect_h2(&stream, limit)).await {
                    None | Some(Detected::Closed) => {}
                    Some(Detected::H2) => Box::pin(self.serve_h2(stream, info)).await,
                    Some(Detected::Http1) => self.serve_h1(stream, info).await,
                },
            }
            self.active.dec();
        }
    }

    /// A connection's first steps (its PROXY header, the protocol's first bytes, the TLS
    /// handshake), unless the shutdown starts first: a connection that has not sent a request by
    /// then is closed at once, as an idle keep-alive one is, instead of holding the drain until
    /// its header timeout. `None` when the shutdown came first.
    ///
    /// Boxed, and freed once the step is done: inline, the step and the shutdown's wait would
    /// stay in the size of the connection's task (or of its TLS future) for as long as the
    /// connection lives, about 600 bytes more per idle HTTP/2 client (`benches/idle-bench.sh`).
    fn unless_shutdown<'a, F: Future + 'a>(
        &'a self,
        step: F,
    ) -> Pin<Box<impl Future<Output = Option<F::Output>> + 'a>> {
        Box::pin(async move {
            tokio::select! {
                biased;
                out = step => Some(out),
                () = self.shutdown.cancelled() => {
                    debug!("closing a connection that had not sent a request at shutdown");
                    None
                }
            }
        })
    }

    /// The TLS handshake, then HTTP/2 or HTTP/1 as ALPN says.
    async fn serve_tls(&self, acceptor: &TlsAcceptor, stream: TcpStream, info: Arc<ConnInfo>) {
        let limit = self.config.limits.header_read_timeout;
        let Some(handshake) = self
            .unless_shutdown(tokio::time::timeout(limit, acceptor.accept(stream)))
            .await
        else {
            return;
        };
        match handshake {
            Ok(Ok(tls)) => {
                let session = tls.get_ref().1;
                if session.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                    // A TLS-ALPN-01 validation: the handshake was the answer.
                    return;
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                let version = match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLS",
                };
                let _ = info.tls.set((version, session.server_name().map(Arc::from)));
                if h2 {
                    self.serve_h2(tls, info).await;
                } else {
                    self.serve_h1(tls, info).await;
                }
            }
            Ok(Err(e)) => {
                self.proxy.metrics.tls_handshake_errors.inc();
                debug!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.proxy.metrics.tls_handshake_errors.inc();
                debug!("TLS handshake timed out");
            }
        }
    }

    /// Serves an HTTP/2 connection to its end.
    ///
    /// The connection is made before the `async move` block, which then holds it and nothing of
    /// what it was made from: a captured `io` or `info` would keep its place in the future for
    /// the connection's whole life (and the builder is a temporary).
    fn serve_h2<S>(&self, io: S, info: Arc<ConnInfo>) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let service = service(self.proxy.clone(), info, activity.clone());
        let mut conn = h2_builder(&self.config.limits).serve_connection(TokioIo::new(io), service);
        async move {
            let timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(timer);
            let cancelled = self.shutdown.cancelled();
            tokio::pin!(cancelled);
            self.drive(Pin::new(&mut conn), &activity, 0, false, timer, cancelled)
                .await;
        }
    }

    /// Serves an HTTP/1 connection to its end. A plain one that goes idle between requests
    /// holds nothing but its socket: told to by `drive`, hyper gives the socket back
    /// (`release_when_idle`, third_party/hyper/GANTRY.md), the task waits for the next bytes, and
    /// a new hyper connection serves them.
    ///
    /// An `async move` block, not an `async fn`: no second copy of `io` in the future.
    #[allow(clippy::manual_async_fn)] // no second copy of the arguments
    fn serve_h1<S>(&self, mut io: S, info: Arc<ConnInfo>) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Idle + Unpin + Send + Sync + 'static,
    {
        async move {
            let activity = Arc::new(Activity::default());
            let mut service = service(self.proxy.clone(), info, activity.clone());
            let mut since = 0;
            let timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(timer);
            let cancelled = self.shutdown.cancelled();
            tokio::pin!(cancelled);
            loop {
                let client = ClientIo::new(io, activity.clone());
                // Boxed, and so is the watch over it: while the connection is idle its task holds
                // none of this (nor the builder, made again per connection: it is a few stores).
                let mut conn = Box::new(
                    h1_builder(&self.config.limits)
                        .serve_connection(TokioIo::new(client), service)
                        .with_upgrades(),
                );
                Box::pin(self.drive(
                    Pin::new(&mut *conn),
                    &activity,
                    since,
                    true,
                    timer.as_mut(),
                    cancelled.as_mut(),
                ))
                .await;
                // Released only with nothing read ahead. Its (empty) read buffer still has its
                // capacity: `parts` goes at the end of this block, not after the idle wait.
                let (client, handler) = {
                    let Some(parts) = conn.take_released() else {
                        return;
                    };
                    debug_assert!(parts.read_buf.is_empty());
                    (parts.io, parts.service)
                };
                drop(conn);
                (io, service) = (client.into_inner().into_inner(), handler);
                since = activity.started.load(Ordering::Relaxed);
                if !self.idle(&io, timer.as_mut(), cancelled.as_mut()).await {
                    return;
                }
            }
        }
    }

    /// A keep-alive connection between requests, holding nothing but its socket (nginx keeps
    /// about as little): true when the client's next bytes have arrived; false to close it,
    /// after the idle timeout or on shutdown.
    async fn idle<S: Idle>(
        &self,
        io: &S,
        mut timer: Pin<&mut tokio::time::Sleep>,
        mut cancelled: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> bool {
        timer
            .as_mut()
            .reset(Instant::now() + self.config.limits.idle_timeout);
        // Readiness by poll, not by `readable()`, whose future (a waiter in the socket's list)
        // every idle task would hold.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = io.poll_idle(cx) {
                return Poll::Ready(r.is_ok());
            }
            if timer.as_mut().poll(cx).is_ready() {
                debug!("closing idle connection");
                return Poll::Ready(false);
            }
            cancelled.as_mut().poll(cx).map(|()| false)
        })
        .await
    }

    /// Runs a connection to its end, closing it when it has been idle too long (or never sent a
    /// complete request head) or when the client stopped taking a response (send timeout), and
    /// asking it to finish gracefully on shutdown.
    ///
    /// `since`: the requests the connection had started before (it was idle and its next bytes
    /// have arrived): the header timeout applies until one more has.
    ///
    /// `release`: a connection found at a look (every [`RELEASE_LOOK`]) with no request in
    /// flight and none started since the look before is told to give its socket back when idle
    /// (it then ends, and the caller holds the bare socket). Not after every request: a busy
    /// keep-alive client's next request usually follows within microseconds, and setting
    /// hyper's connection up again per request cost 18% more instructions (callgrind). Nor at a
    /// look that merely falls between two requests of a busy client.
    ///
    /// `timer` and `cancelled` are the connection's own, made once: an HTTP/1 connection is
    /// driven again after each idle pause, and setting up a timer and a shutdown waiter per
    /// request costs more than resetting them.
    ///
    /// An `async move` block, not an `async fn`: no second copy of the arguments in the future
    /// that every connection's task holds.
    #[allow(clippy::manual_async_fn)] // no second copy of the arguments
    fn drive<'a, C: Graceful + Send>(
        &'a self,
        mut conn: Pin<&'a mut C>,
        activity: &'a Activity,
        since: u64,
        release: bool,
        mut timer: Pin<&'a mut tokio::time::Sleep>,
        mut cancelled: Pin<&'a mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> impl Future<Output = ()> + Send + 'a {
        async move {
            // (No `limits` local: it would keep a place in the future; `self` is there anyway.)
            let connected = Instant::now();
            // What the last look saw. `idle_armed`: the connection was idle then, so idle now with
            // no request started in between means a whole idle period (true at first: a connection
            // with no request head by the header timeout is closed).
            let mut last_started = since;
            let mut idle_armed = true;
            let mut last_progress = 0u64;
            let mut last_handed = 0u64;
            // The first look comes at whichever is sooner; until a request head has arrived the
            // header timeout applies, afterwards the idle and send timeouts.
            let mut look_at = {
                let limits = &self.config.limits;
                connected
                    + limits
                        .header_read_timeout
                        .min(limits.idle_timeout)
                        .min(limits.send_timeout)
            };
            let mut release_at = release.then(|| connected + RELEASE_LOOK);
            // The requests started by the last release look: a connection is released when a
            // look finds it with none in flight and none started since the look before.
            let mut release_seen = since;
            timer
                .as_mut()
                .reset(release_at.map_or(look_at, |r| r.min(look_at)));
            let mut closing = false;
            loop {
                match watch(
                    conn.as_mut(),
                    timer.as_mut(),
                    cancelled.as_mut(),
                    &self.shutdown,
                    closing,
                )
                .await
                {
                    Event::Done(res) => {
                        if let Err(e) = res {
                            debug!(error = %e, "client connection ended with an error");
                        }
                        return;
                    }
                    Event::Timer => {
                        let started = activity.started.load(Ordering::Relaxed);
                        let finished = activity.finished.load(Ordering::Relaxed);
                        let now = Instant::now();
                        if let Some(at) = release_at
                            && now >= at
                            && !closing
                        {
                            if started == finished && started == release_seen {
                                conn.as_mut().release();
                                release_at = None;
                            } else {
                                release_seen = started;
                                release_at = Some(now + RELEASE_LOOK);
                            }
                        }
                        if now < look_at {
                            timer
                                .as_mut()
                                .reset(release_at.map_or(look_at, |r| r.min(look_at)));
                            continue;
                        }
                        let next = if closing {
                            return; // the grace period after a close request has run out
                        } else if started == since
                            && connected.elapsed() < self.config.limits.header_read_timeout
                        {
                            // No request head yet; still in time. Looking again within a send
                            // timeout catches a first request that stalls before the header timeout.
                            (connected + self.config.limits.header_read_timeout)
                                .min(Instant::now() + self.config.limits.send_timeout)
                        } else if started == finished {
                            if idle_armed && started == last_started {
                                debug!(requests = started, "closing idle connection");
                                conn.as_mut().graceful();
                                closing = true;
                                Instant::now() + Duration::from_secs(1)
                            } else {
                                idle_armed = true;
                                last_started = started;
                                Instant::now() + self.config.limits.idle_timeout
                            }
                        } else {
                            // Busy. Stalled if a response handed over before the last look is
                            // still waiting on the client and the client took nothing since.
                            let (progress, handed) = (activity.progress(), activity.handed());
                            if !idle_armed
                                && activity.waiting_on_client()
                                && progress == last_progress
                                && handed == last_handed
                            {
                                debug!(
                                    requests = started,
                                    "closing a connection whose client stopped taking its response"
                                );
                                self.proxy.metrics.send_timeouts.inc();
                                return; // dropping the connection closes it; a graceful close would wait on the client
                            }
                            idle_armed = false;
                            (last_progress, last_handed) = (progress, handed);
                            Instant::now() + self.config.limits.send_timeout
                        };
                        look_at = next;
                        timer.as_mut().reset(release_at.map_or(next, |r| r.min(next)));
                    }
                    Event::Shutdown => {
                        conn.as_mut().graceful();
                        closing = true;
                        release_at = None;
                        // In-flight requests get the whole drain deadline (enforced by the caller).
                        look_at = Instant::now() + Duration::from_secs(3600);
                        timer.as_mut().reset(look_at);
                    }
                }
            }
        }
    }
}

enum Event {
    Done(hyper::Result<()>),
    Timer,
    Shutdown,
}

/// Polls the connection, and reports the timer or shutdown when they fire.
///
/// A connection task wakes several times per request, almost always for the connection. The
/// timer and the shutdown future are polled once to register this task's waker (it stays valid
/// for the task's life, and `Sleep::reset` keeps it); on later wakes one atomic load each tells
/// whether they fired. Polling them on every wake, as `select!` does, cost about 2.5% of a
/// proxied request.
///
/// A function returning the `poll_fn`, not an `async fn`: no second copy of the arguments.
fn watch<'a, C: Graceful + Send>(
    mut conn: Pin<&'a mut C>,
    mut timer: Pin<&'a mut tokio::time::Sleep>,
    mut cancelled: Pin<&'a mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    shutdown: &'a Shutdown,
    closing: bool,
) -> impl Future<Output = Event> + Send + 'a {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if !registered {
            // Registered before the connection is polled: `Sleep` registers nothing when the
            // task's cooperative budget is spent (it asks to be polled again instead), and
            // polling the connection spends it. A poll that found no budget left is repeated.
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if !closing && cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            registered = tokio::task::coop::has_budget_remaining();
        }
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(Event::Done(res));
        }
        if registered {
            if timer.is_elapsed() {
                return Poll::Ready(Event::Timer);
            }
            if !closing && shutdown.is_triggered() {
                return Poll::Ready(Event::Shutdown);
            }
        }
        Poll::Pending
    })
}

/// What a connection's request handler gives hyper.
type Answer = Result<http::Response<crate::response::ResponseBody>, Infallible>;

/// A connection's request handler: counts the requests, refuses one whose head carried both
/// framing headers, writes the access log line when the log is on.
///
/// Each request's future (about 4 KB) is boxed where it is made: hyper would otherwise move it
/// whole into its connection (HTTP/1) or its stream task (HTTP/2), a `memcpy` of its size. The
/// allocation costs less than the copy: 29,404 -> 29,079 instructions per HTTP/1.1 request and
/// 50,567 -> 49,437 per h2c request (callgrind), and a busy HTTP/1 connection no longer keeps a
/// 4 KB slot for it.
fn service(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    act: Arc<Activity>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::response::ResponseBody>,
    Error = Infallible,
    Future = Pin<Box<impl Future<Output = Answer> + Send + 'static>>,
> + Send
+ 'static {
    service_fn(move |req| {
        let proxy = proxy.clone();
        let info = info.clone();
        let act = act.clone();
        act.started.fetch_add(1, Ordering::Relaxed);
        // Both framing headers (hyper marks the request: third_party/hyper/GANTRY.md).
        let smuggling = req.extensions().get::<hyper::ext::AmbiguousFraming>().is_some();
        Box::pin(async move {
            let mut resp = if smuggling {
                proxy.fail(
                    &ProxyError::BadFraming("both Content-Length and Transfer-Encoding"),
                    crate::request_id::new_request_id(),
                )
            } else {
                match proxy.access_log.get() {
                    None => proxy.handle(req, &info, None).await,
                    Some(log) => {
                        let mut req = req;
                        let mut line = log.begin(&mut req, &info);
                        let mut resp = proxy.handle(req, &info, Some(&mut line)).await;
                        log.attach(line, &mut resp);
                        resp
                    }
                }
            };
            resp.body_mut().set_active(ActiveRequest::new(act));
            Answer::Ok(resp)
        })
    })
}

/// A connection that can be asked to finish what it is doing and close.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
    /// Give the socket back as soon as the connection is idle (HTTP/1 only).
    fn release(self: Pin<&mut Self>) {}
}

/// How often an HTTP/1 connection is looked at for idleness (see `drive`'s `release`): an idle
/// one gives its socket back within two looks.
const RELEASE_LOOK: Duration = Duration::from_millis(50);

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
    fn release(self: Pin<&mut Self>) {
        self.release_when_idle();
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A client stream that a connection can hold bare between requests.
trait Idle {
    /// Ready when bytes (or the end) have arrived.
    fn poll_idle(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>>;
}

impl Idle for TcpStream {
    fn poll_idle(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// TLS: released like plain TCP. hyper gives the stream back only after a read found nothing
/// more, but rustls may still hold decrypted bytes (a read takes what fits in hyper's buffer)
/// or the client's close_notify, which a readable socket would not announce: then the next
/// connection starts at once. A partial record waits for the rest of it on the socket.
impl Idle for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_idle(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let (tcp, session) = self.get_ref();
        if !session.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

/// An HTTP/1 connection's settings.
///
/// - half_close: a client that shuts down its write side after the request still gets the
///   response (and hyper stops re-growing its read buffer per request).
/// - writev off: small heads and bodies are copied into one buffer and written with one
///   write(2), cheaper than gathering (measured in shared/PERFORMANCE.md).
/// - max_header_size: a larger request head gets 431 and the connection is closed.
fn h1_builder(limits: &ListenerLimits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .half_close(true)
        .writev(false)
        .max_headers(limits.max_headers as usize)
        .max_header_size(limits.max_header_bytes as usize);
    b
}

/// An HTTP/2 connection's settings. Explicit limits: streams per connection; headers (which
/// also bounds CONTINUATION frames in h2 >= 0.4.4); streams reset before being accepted (rapid
/// reset, CVE-2023-44487) and streams the server had to reset (MadeYouReset, h2 >= 0.4.11).
fn h2_builder(limits: &ListenerLimits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        // WebSocket over HTTP/2 (RFC 8441 extended CONNECT).
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

enum Detected {
    Http1,
    H2,
    Closed,
}

/// Peeks at the first bytes: the HTTP/2 connection preface means h2c with prior knowledge,
/// anything else is HTTP/1.x. Nothing is consumed.
async fn detect_h2(stream: &TcpStream, deadline: Duration) -> Detected {
    let mut buf = [0u8; 24];
    let until = Instant::now() + deadline;
    loop {
        let Some(n) = peek_start(stream, &mut buf, until).await else {
            return Detected::Closed;
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Detected::Http1;
        }
        if n == H2_PREFACE.len() {
            return Detected::H2;
        }
        if wait_for_more(until).await.is_none() {
            return Detected::Closed;
        }
    }
}

/// IPv4 clients on a dual-stack socket show up as `::ffff:a.b.c.d`; use the IPv4 form.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
