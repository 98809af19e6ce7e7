//! Client-facing listeners: accept, protocol detection (HTTP/1.1, or h2c with prior knowledge),
//! connection limits and timeouts, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, warn};

use crate::{Proxy, Shutdown};

/// Limits and timeouts of a listener. All are on by default.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A new connection must send a complete request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// `X-Forwarded-Proto` value for requests on this listener.
    pub proto: &'static str,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 8192,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_concurrent_streams: 256,
            proto: "http",
        }
    }
}

/// What the request path knows about the client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub entrypoint: usize,
    pub client_ip: IpAddr,
    /// `client_ip` as a header value, made once per connection for `X-Forwarded-For`.
    pub client_ip_header: HeaderValue,
    pub proto: &'static str,
}

/// Requests started and finished on one connection. The connection is idle when both are
/// equal and neither moved for a whole timeout period; checking two counters from one timer per
/// connection costs far less than a timer per request.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Marks a request finished when its response body is dropped (sent or abandoned).
#[derive(Debug)]
pub struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts connections on `listener` for entrypoint number `entrypoint` until `shutdown` fires,
/// then waits for open connections to finish (they are told to close when idle).
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
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections));
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
            proxy.refused_connections.inc();
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
        };
        tracker.spawn(
            async move {
                conn.run(stream, peer).await;
                drop(permit);
            }
            .instrument(debug_span!("conn", %peer, ep = %name)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

struct Conn {
    proxy: Arc<Proxy>,
    config: Arc<ServerConfig>,
    shutdown: Shutdown,
    active: IntGauge,
    entrypoint: usize,
}

impl Conn {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        self.active.inc();
        let client_ip = canonical_ip(peer.ip());
        let info = Arc::new(ConnInfo {
            entrypoint: self.entrypoint,
            client_ip,
            client_ip_header: HeaderValue::from_str(&client_ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: self.config.proto,
        });
        let activity = Arc::new(Activity::default());
        let proxy = self.proxy.clone();
        let act = activity.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            let act = act.clone();
            act.started.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut resp = proxy.handle(req, &info).await;
                resp.body_mut().set_active(ActiveRequest(act));
                Ok::<_, Infallible>(resp)
            }
        });

        match detect_h2(&stream, self.config.header_read_timeout).await {
            Detected::Closed => {}
            Detected::H2 => {
                let mut b = http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .max_concurrent_streams(self.config.h2_max_concurrent_streams)
                    .max_header_list_size(self.config.max_header_bytes as u32)
                    .max_pending_accept_reset_streams(Some(20))
                    .max_local_error_reset_streams(Some(1024))
                    .keep_alive_interval(Some(Duration::from_secs(20)))
                    .keep_alive_timeout(Duration::from_secs(20));
                let conn = b.serve_connection(TokioIo::new(stream), service);
                self.drive(conn, &activity).await;
            }
            Detected::Http1 => {
                let mut b = http1::Builder::new();
                // half_close: a client that shuts down its write side after the request still
                // gets the response (and hyper stops re-growing its read buffer per request).
                // writev off: small heads and bodies are copied into one buffer and written
                // with one write(2), cheaper than gathering (measured in shared/PERFORMANCE.md).
                b.keep_alive(true)
                    .half_close(true)
                    .writev(false)
                    .max_headers(self.config.max_headers)
                    .max_buf_size(self.config.max_header_bytes.max(8192));
                let conn = b.serve_connection(TokioIo::new(stream), service).with_upgrades();
                self.drive(conn, &activity).await;
            }
        }
        self.active.dec();
    }

    /// Runs a connection to its end, closing it when it has been idle too long (or never sent a
    /// complete request head), and asking it to finish gracefully on shutdown.
    async fn drive<C: Graceful>(&self, conn: C, activity: &Activity) {
        tokio::pin!(conn);
        let mut last_started = 0u64;
        let timer = tokio::time::sleep(self.config.header_read_timeout);
        tokio::pin!(timer);
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
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
                    let period = if closing {
                        return; // the grace period after a close request has run out
                    } else if started == finished && started == last_started {
                        debug!(requests = started, "closing idle connection");
                        conn.as_mut().graceful();
                        closing = true;
                        Duration::from_secs(1)
                    } else {
                        last_started = started;
                        self.config.idle_timeout
                    };
                    timer.as_mut().reset(Instant::now() + period);
                }
                Event::Shutdown => {
                    conn.as_mut().graceful();
                    closing = true;
                    // In-flight requests get the whole drain deadline (enforced by the caller).
                    timer.as_mut().reset(Instant::now() + Duration::from_secs(3600));
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
async fn watch<C: Graceful>(
    mut conn: Pin<&mut C>,
    mut timer: Pin<&mut tokio::time::Sleep>,
    mut cancelled: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    shutdown: &Shutdown,
    closing: bool,
) -> Event {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if let std::task::Poll::Ready(res) = conn.as_mut().poll(cx) {
            return std::task::Poll::Ready(Event::Done(res));
        }
        if !registered {
            registered = true;
            if timer.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(Event::Timer);
            }
            if !closing && cancelled.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(Event::Shutdown);
            }
        } else {
            if timer.is_elapsed() {
                return std::task::Poll::Ready(Event::Timer);
            }
            if !closing && shutdown.is_triggered() {
                return std::task::Poll::Ready(Event::Shutdown);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// A connection that can be asked to finish what it is doing and close.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

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
        let n = match tokio::time::timeout_at(until, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Detected::Closed,
            Ok(Ok(n)) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Detected::Http1;
        }
        if n == H2_PREFACE.len() {
            return Detected::H2;
        }
        // A prefix of the preface arrived; peek returns at once with the same bytes until more
        // arrive, so wait a little before looking again. Rare: clients send the preface whole.
        if Instant::now() >= until {
            return Detected::Closed;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// IPv4 clients on a dual-stack socket show up as `::ffff:a.b.c.d`; use the IPv4 form.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Counts connections refused at the limit.
pub(crate) fn refused_counter(registry: &prometheus::Registry) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(
        "gantry_client_connections_refused_total",
        "Client connections closed at accept because the connection limit was reached.",
    )?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}
