//! What the request path knows about the client connection it serves, and the bookkeeping that
//! tells the listener when a connection is idle. Shared by `server` (which owns connections) and
//! the request path (`forward`, `response`), so neither imports the other for it.

use std::net::IpAddr;
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
    /// The connection's place under the listener's connection limit. It lives as long as this
    /// struct, so an upgraded connection (WebSocket) keeps counting after hyper lets go of it.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// Requests started and finished on one connection. The connection is idle when both are
/// equal and neither moved for a whole timeout period; checking two counters from one timer per
/// connection costs far less than a timer per request.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    pub(crate) started: AtomicU64,
    pub(crate) finished: AtomicU64,
}

/// Marks a request finished when its response body is dropped (sent or abandoned).
#[derive(Debug)]
pub struct ActiveRequest(pub(crate) Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}
