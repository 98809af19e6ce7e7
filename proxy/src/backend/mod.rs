//! Per-backend state that outlives routing-table swaps: in-flight count, latency EWMA, the
//! keep-alive pool of upstream connections, and its passive health (`health`). It is keyed by
//! backend identity (service name and URL) in a [`BackendRegistry`]; a new snapshot picks up the
//! existing state of every backend it still has, so a weight change or an unrelated route change
//! resets nothing.
//!
//! This is one module tree on purpose: a backend's health and its state are one knot (ejection
//! weighs a backend against its peers' state, the state carries its health), so `health` and this
//! module use each other. Everything else in the crate depends on the tree one way.

pub mod health;

pub use health::{BackendPhase, Health};

use crate::clock::nanos_since_epoch;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use gantry_config::BackendUrl;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::UpstreamBody;
use crate::metrics::Metrics;

/// How long a latency observation keeps its weight in the least-request score: after this long
/// without a new sample, a slow backend's penalty has decayed by a factor of e, so a backend that
/// recovered gets traffic again even when it got none for a while.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service: Arc<str>,
    pub url: BackendUrl,
}

#[derive(Debug)]
enum Target {
    Addr(SocketAddr),
    Name(String),
}

#[derive(Debug)]
struct Idle {
    sender: Upstream,
    since: Instant,
}

/// A request the connection did not take, or could not send, with the message back when it
/// never left.
type Unsent = hyper::client::conn::TrySendError<http::Request<UpstreamBody>>;

/// An HTTP/1.1 connection to a backend: hyper's handle for sending on it, the connection itself
/// (see [`Driver`]), and the timer its exchanges' response-header timeout runs on. The timer
/// lives as long as the connection and is pushed back per request, which is one atomic
/// compare-and-swap while it is armed: a new timer per request (`tokio::time::timeout`) cost
/// about 700 instructions to register and deregister (callgrind, `docs/performance.md`).
#[derive(Debug)]
pub struct Upstream {
    pub(crate) sender: SendRequest<UpstreamBody>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// `None` once the connection has ended.
    conn: Option<Driver>,
    /// Whether it may serve another request once this one is done (not when it was opened with
    /// a PROXY header naming one client).
    pub(crate) reusable: bool,
}

/// hyper's HTTP/1.1 client connection: the future that writes the requests and reads the
/// responses. It has no task of its own. Whatever waits on the connection moves it on, in its
/// own task: the request's send (`Upstream::send`), the response body as the client's
/// connection reads it (`response::ResponseBody`), a mirrored copy's drain, the pool (a
/// connection taken out before it asked for a request, and the periodic eviction, which lets
/// go of those the backend closed). A task per connection cost two task polls and two
/// hand-overs between tasks per request (`docs/performance.md`). Only an upgrade, which outlives
/// the exchange, gets a task ([`Upstream::detach`]). Dropping it closes the connection.
struct Driver {
    conn: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The backend's count of open connections, decremented when the connection ends.
    open: Arc<AtomicU32>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.conn.as_mut().poll(cx).map(|r| {
            if let Err(e) = r {
                debug!(error = %e, "upstream connection ended with an error");
            }
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

impl Upstream {
    fn new(sender: SendRequest<UpstreamBody>, conn: Driver) -> Self {
        Self {
            sender,
            // Not polled before `send` sets its deadline; this one only makes it.
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            conn: Some(conn),
            reusable: true,
        }
    }

    /// Moves the connection on in the calling task: hyper writes what is queued and reads
    /// what has arrived (readiness is cached, so a connection with nothing to do costs no
    /// system call). Returns false once the connection has ended.
    #[inline]
    pub(crate) fn drive(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let Some(c) = &mut self.conn
            && Pin::new(c).poll(cx).is_ready()
        {
            // Dropping hyper's connection also cancels a request still queued on it, which
            // then comes back to its sender with the message.
            self.conn = None;
        }
        self.conn.is_some()
    }

    /// Polls `body`, a response body of a backend connection, `up` while the exchange holds
    /// it (`None` once it is back in the pool, or for a connection with a task of its own).
    ///
    /// A body known to be complete is not polled again: its connection may be back in the
    /// pool, and nothing would move it on to close the body's channel. Otherwise the connection
    /// is moved on when the body has nothing yet. The body's channel is filled only by the
    /// connection, which only this task moves on, so it is polled without a waker of its own:
    /// a wake-up from it would only poll the task once more. What the task waits for is the
    /// connection's socket.
    pub(crate) fn poll_body(
        up: Option<&mut Upstream>,
        body: &mut hyper::body::Incoming,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        use http_body::Body;
        if body.is_end_stream() {
            return Poll::Ready(None);
        }
        let Some(up) = up else {
            return Pin::new(body).poll_frame(cx);
        };
        let mut quiet = std::task::Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *body).poll_frame(&mut quiet) {
            Poll::Pending => {
                up.drive(cx);
                Pin::new(body).poll_frame(&mut quiet)
            }
            ready => ready,
        }
    }

    /// Gives the connection a task of its own, for what outlives the exchange: after `101
    /// Switching Protocols`, hyper hands the socket over to the upgrade when its connection
    /// future ends.
    pub(crate) fn detach(mut self) {
        if let Some(c) = self.conn.take() {
            tokio::spawn(c);
        }
    }

    /// Queues `req` on the connection (see `SendRequest::try_send_request_queued`): the request
    /// comes back at once when the connection cannot take it; otherwise the future answers
    /// with the response head, or `None` when none arrived within `timeout` of `sent` (the
    /// caller's clock reading from just before: a read less per request). Not an `async fn`:
    /// its future would hold the request (a copy of it per request).
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(
        &mut self,
        req: http::Request<UpstreamBody>,
        sent: Instant,
        timeout: Duration,
    ) -> Result<
        impl Future<Output = Option<Result<http::Response<hyper::body::Incoming>, Unsent>>> + Send + '_,
        Unsent,
    > {
        // The connection is not woken for it: the future below moves it on.
        let sending = self.sender.try_send_request_inline(req)?;
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::from_std(sent) + timeout);
        Ok(async move {
            let mut sending = std::pin::pin!(sending);
            std::future::poll_fn(|cx| {
                // The connection first: it writes the request and reads the answer, which
                // then is in the promise. Only `drive` answers it, so the promise needs no
                // waker: the socket's readiness wakes this task.
                self.drive(cx);
                let mut quiet = std::task::Context::from_waker(std::task::Waker::noop());
                if let Poll::Ready(r) = sending.as_mut().poll(&mut quiet) {
                    return Poll::Ready(Some(r));
                }
                self.timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        // Also once `conn` is gone: dropping hyper's connection closes the sender's side.
        self.sender.is_closed()
    }
}

#[derive(Debug)]
pub struct BackendState {
    pub key: BackendKey,
    /// The URL as text: the `backend` label of metrics and the admin API.
    pub label: Arc<str>,
    target: Target,
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds (f64 bits), and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at_ns: AtomicU64,
    /// Open upstream connections; shared with each connection's task, which decrements it when the
    /// connection ends (the task must not hold the whole state: the pool would keep itself alive).
    open: Arc<AtomicU32>,
    idle: Mutex<Vec<Idle>>,
    /// The one multiplexed connection to an `h2c://` backend.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Set when the backend left the routing table: idle connections are closed and finished
    /// exchanges do not return theirs to the pool.
    retired: AtomicBool,
    connect_errors: IntCounter,
    connections_opened: IntCounter,
    pub(crate) ejections: IntCounter,
    pub health: Health,
}

impl BackendState {
    /// `ready`: whether the backend takes traffic before any health check ran (false when its
    /// service has active checks).
    pub fn new(key: BackendKey, metrics: &Metrics, ready: bool, ramp: bool) -> Self {
        let label: Arc<str> = Arc::from(key.url.to_string());
        let authority = key.url.authority();
        let target = match authority.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => Target::Name(authority),
        };
        let connect_errors = metrics.connect_errors.with_label_values(&[&key.service, &label]);
        let connections_opened = metrics
            .connections_opened
            .with_label_values(&[&key.service, &label]);
        let ejections = metrics.ejections.with_label_values(&[&key.service, &label]);
        Self {
            key,
            label,
            target,
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            ewma_at_ns: AtomicU64::new(0),
            open: Arc::new(AtomicU32::new(0)),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            retired: AtomicBool::new(false),
            connect_errors,
            connections_opened,
            ejections,
            health: Health::new(ready, ramp),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    /// Counts a request against this backend until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records the time to a response head (or a failure's cost) for least-request.
    pub fn observe_latency(&self, sample: Duration, now: Instant) {
        let s = sample.as_nanos() as f64;
        let old = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            s
        } else {
            old + EWMA_ALPHA * (s - old)
        };
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
        self.ewma_at_ns.store(nanos_since_epoch(now), Ordering::Relaxed);
    }

    /// The latency EWMA, decayed towards zero for the time since its last sample.
    pub fn latency_ewma(&self, now: Instant) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        if ewma == 0.0 {
            return 0.0;
        }
        let age = nanos_since_epoch(now).saturating_sub(self.ewma_at_ns.load(Ordering::Relaxed)) as f64;
        ewma * (-age / EWMA_DECAY.as_nanos() as f64).exp()
    }

    /// Takes a pooled connection that is open, not expired, and ready for a request. `now` is
    /// the caller's clock reading from a moment ago (the attempt's start), moved on when this
    /// has to wait for a connection to become ready.
    pub async fn take_idle(&self, idle_timeout: Duration, now: &mut Instant) -> Option<Upstream> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().ok()?;
                idle.pop()?
            };
            if candidate.sender.is_closed() || now.saturating_duration_since(candidate.since) > idle_timeout {
                continue; // dropping the sender closes the connection
            }
            let mut up = candidate.sender;
            // Its last exchange left it asking for the next request (it is put back once the
            // response has been read to its end). A close that arrived meanwhile is read by
            // the send's first move, before the request is written: the request comes back
            // unsent and goes on a new connection (`upstream::send`).
            if up.sender.is_ready() {
                return Some(up);
            }
            // Not asking yet: move it on, which reads what came (a close, most often nothing).
            let open = std::future::poll_fn(|cx| Poll::Ready(up.drive(cx))).await;
            if up.sender.is_ready() {
                return Some(up);
            }
            if !open {
                continue;
            }
            // Not ready yet: the previous exchange's end has not been read to its last byte.
            let ready = tokio::time::timeout(
                Duration::from_millis(100),
                std::future::poll_fn(|cx| {
                    if !up.drive(cx) {
                        return Poll::Ready(false);
                    }
                    up.sender.poll_ready(cx).map(|r| r.is_ok())
                }),
            )
            .await;
            *now = Instant::now();
            if let Ok(true) = ready {
                return Some(up);
            }
        }
    }

    /// Returns a connection whose last response was read to its end.
    pub fn put_idle(&self, sender: Upstream, max_idle: usize) {
        if !sender.reusable || sender.is_closed() || self.retired.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < max_idle
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes pooled connections unused for longer than `idle_timeout`, and forgets those the
    /// backend has closed. Nothing else moves a pooled connection on, so this looks at each
    /// (a connection with nothing to read costs no system call); the no-op waker also lets go
    /// of the task that used it last.
    pub fn evict_idle(&self, idle_timeout: Duration) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain_mut(|c| c.sender.drive(&mut cx) && c.since.elapsed() <= idle_timeout);
        }
    }

    /// Marks the backend as gone from the routing table and closes its idle connections.
    /// Requests already in flight finish on their connections, which are then closed.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.drain("removed from the routing table");
    }

    /// Sends no new requests to the backend and closes its idle connections; requests in flight
    /// finish.
    pub fn drain(&self, why: &str) {
        self.health.drain(why);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        if let Ok(mut h2) = self.h2.lock() {
            h2.take();
        }
    }

    /// The shared HTTP/2 connection to this backend, opened on first use and reopened when it
    /// has closed. HTTP/2 multiplexes, so one connection carries every concurrent request.
    pub async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
        if let Some(s) = self
            .h2
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .filter(|s| !s.is_closed())
        {
            return Ok(s);
        }
        let stream = self
            .tcp(connect_timeout, None)
            .await
            .inspect_err(|_| self.connect_errors.inc())?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let (sender, conn) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        self.connections_opened.inc();
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = self.open.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream h2 connection ended with an error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
        if let Ok(mut g) = self.h2.lock() {
            *g = Some(sender.clone());
        }
        Ok(sender)
    }

    /// Opens a TCP connection to the backend and writes `preamble` (a PROXY protocol header)
    /// first, all within `connect_timeout`.
    pub(crate) async fn tcp(
        &self,
        connect_timeout: Duration,
        preamble: Option<&[u8]>,
    ) -> Result<TcpStream, ConnectError> {
        let connecting = async {
            let mut stream = match &self.target {
                Target::Addr(a) => TcpStream::connect(*a).await,
                Target::Name(n) => TcpStream::connect(n.as_str()).await,
            }?;
            let _ = stream.set_nodelay(true);
            if let Some(p) = preamble {
                tokio::io::AsyncWriteExt::write_all(&mut stream, p).await?;
            }
            Ok(stream)
        };
        match tokio::time::timeout(connect_timeout, connecting).await {
            Err(_) => Err(ConnectError::Timeout(connect_timeout)),
            Ok(Err(e)) => Err(ConnectError::Refused(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Opens a new HTTP/1.1 connection to the backend, sending `preamble` first.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        max_connections: u32,
        preamble: Option<&[u8]>,
    ) -> Result<Upstream, ConnectError> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(ConnectError::Limit);
        }
        self.connect_inner(connect_timeout, preamble)
            .await
            .inspect_err(|e| {
                self.open.fetch_sub(1, Ordering::Relaxed);
                if !matches!(e, ConnectError::Handshake(_)) {
                    self.connect_errors.inc();
                }
                debug!(backend = %self.label, error = %e, "connect failed");
            })
    }

    async fn connect_inner(
        &self,
        connect_timeout: Duration,
        preamble: Option<&[u8]>,
    ) -> Result<Upstream, ConnectError> {
        let stream = self.tcp(connect_timeout, preamble).await?;
        // writev off: a request head and a small body go out in one write(2).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        self.connections_opened.inc();
        let conn = Driver {
            conn: Box::pin(conn.with_upgrades()),
            open: self.open.clone(),
        };
        Ok(Upstream::new(sender, conn))
    }
}

/// Why a connection to a backend could not be had. The request path turns it into a
/// [`ProxyError`](crate::error::ProxyError) (and so a status code); health checks into a reason.
#[derive(Debug)]
pub enum ConnectError {
    /// The backend is at its connection limit and has no idle connection.
    Limit,
    /// TCP connect did not complete in time.
    Timeout(Duration),
    /// TCP connect failed (refused, unreachable, reset).
    Refused(std::io::Error),
    /// The connection opened but the HTTP handshake failed.
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Limit => f.write_str("backend connection limit reached"),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            ConnectError::Refused(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Keeps a request counted as in flight on its backend while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All backends the routing table knows, by identity. Only the snapshot builder writes it.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: Mutex<HashMap<BackendKey, Arc<BackendState>>>,
}

impl BackendRegistry {
    /// The state of a backend, created on first sight.
    /// The state of a backend, created on first sight (not ready until its first passing check
    /// when `checked`).
    /// `ramp`: the backend joins a running service (slow start applies).
    pub fn resolve(
        &self,
        key: &BackendKey,
        metrics: &Metrics,
        checked: bool,
        ramp: bool,
    ) -> Arc<BackendState> {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(BackendState::new(key.clone(), metrics, !checked, ramp)))
            .clone()
    }

    /// Forgets (and retires) these backends; returns the ones it had.
    pub fn remove(&self, keys: &[BackendKey]) -> Vec<Arc<BackendState>> {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| map.remove(k))
            .inspect(|b| b.retire())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<BackendState>> {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
