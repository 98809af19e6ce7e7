//! What the request path knows about the client connection it serves, and the bookkeeping that
//! tells the listener when a connection is idle. Shared by `server` (which owns connections) and
//! the request path (`forward`, `response`), so neither imports the other for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use ipnet::IpNet;
use tokio::sync::OwnedSemaphorePermit;

/// What the request path knows about the client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub entrypoint: usize,
    pub client_ip: IpAddr,
    /// The client's address and port (from a PROXY header when one came), and the address it
    /// connected to: what a PROXY header sent to a backend names.
    pub client_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// `client_ip` as a header value, made once per connection for `X-Forwarded-For`.
    pub client_ip_header: HeaderValue,
    /// `X-Forwarded-Proto`: "https" on TLS listeners.
    pub proto: &'static str,
    /// The peer is in the entrypoint's `trusted_ips`: its forwarded headers are kept and
    /// extended, and the client address is read from `X-Forwarded-For`.
    pub trusted_peer: bool,
    /// The entrypoint's trusted networks (to skip trusted hops in `X-Forwarded-For`).
    pub trusted_ips: Arc<[IpNet]>,
    pub https_port: Option<u16>,
    /// The TLS version and SNI, once the handshake is done (for the access log).
    pub tls: crate::access_log::TlsFacts,
    /// The connection's place under the listener's connection limit. It lives as long as this
    /// struct, so an upgraded connection (WebSocket) keeps counting after hyper lets go of it.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// Requests started and finished on one connection, and whether the client is taking what it
/// is sent. The connection is idle when started and finished are equal and neither moved for a
/// whole timeout period; it is stalled when a response waits on the client (handed to hyper and
/// not asked for again) and the client took nothing for a whole send-timeout period. Checking a
/// few counters from one timer per connection costs far less than a timer per request.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    pub(crate) started: AtomicU64,
    pub(crate) finished: AtomicU64,
    /// Response heads and chunks handed to hyper to send.
    handed: AtomicU64,
    /// Of those, how many the connection came back for (it sent them and wants more).
    taken: AtomicU64,
    /// Successful writes to the client's socket (HTTP/1.1, where a write is progress; on
    /// HTTP/2 a client can make the server write PING and SETTINGS acknowledgements at will).
    written: AtomicU64,
}

impl Activity {
    /// Something handed to hyper has not been taken by the client yet.
    pub(crate) fn waiting_on_client(&self) -> bool {
        self.handed.load(Ordering::Relaxed) != self.taken.load(Ordering::Relaxed)
    }

    pub(crate) fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    /// Moves whenever the client takes some of a response.
    pub(crate) fn progress(&self) -> u64 {
        self.taken.load(Ordering::Relaxed) + self.written.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn wrote(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }
}

/// One response on its way to the client: marks the request finished when the body is dropped
/// (sent or abandoned), and tells [`Activity`] when the body is handed over and asked for.
#[derive(Debug)]
pub struct ActiveRequest {
    activity: Arc<Activity>,
    waiting: bool,
}

impl ActiveRequest {
    /// A response whose head has just been handed to hyper.
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        activity.handed.fetch_add(1, Ordering::Relaxed);
        Self {
            activity,
            waiting: true,
        }
    }

    /// hyper asks the body for more: what it was handed is on its way.
    #[inline]
    pub(crate) fn polled(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.activity.taken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The body handed hyper a chunk.
    #[inline]
    pub(crate) fn yielded(&mut self) {
        self.waiting = true;
        self.activity.handed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.polled();
        self.activity.finished.fetch_add(1, Ordering::Relaxed);
    }
}
