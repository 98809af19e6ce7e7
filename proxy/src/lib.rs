//! Gantry's data plane.
//!
//! The request path only ever reads: it loads one [`Snapshot`] from the store and uses it from
//! start to finish. The control plane (the reconciler that `gantry-discovery` runs) calls
//! [`Proxy::publish`] with a compiled routing table; the new snapshot is built here, off the
//! request path, reusing the state of every backend that is still there, and swapped in with one
//! store.
//!
//! Modules depend one way, from the listener down to the backend:
//!
//! ```text
//! server      listeners, TLS, HTTP/1.1 + HTTP/2 connections, idle and drain     (io: write progress, peeks)
//!   └─ forward    the request path, phase by phase: admit, route, pick, rewrite, attempt, respond
//!        ├─ headers     what the backend sees: target, Host, X-Forwarded-*, no hop-by-hop
//!        ├─ upstream    one attempt's exchange with a backend; replaying a body-less request
//!        ├─ error       every failure, and the one place it becomes a status code
//!        ├─ response    bodies sent to clients; the lease on a backend connection
//!        ├─ plane       Proxy: snapshot store, registries, metrics, publish   (checks: active health)
//!        │    └─ snapshot    a routing table + runtime per service and route (balance: the pickers)
//!        ├─ backend     per-backend state: pool, in-flight, EWMA, connect    (health: passive state)
//!        └─ service     per-service state: in-flight, demand, retry budget
//! proxy_protocol: the PROXY header an L4 balancer sends before a connection's first byte
//! conn, request_id, body, clock, metrics, shutdown: leaves every layer may use
//! ```
//!
//! This crate never imports `gantry-discovery`: where routes come from is not its business.

pub mod access_log;
pub mod acme;
pub mod backend;
pub mod balance;
pub mod body;
pub mod checks;
pub mod clock;
pub mod compress;
pub mod conn;
mod cors;
pub mod error;
mod error_pages;
pub mod forward;
mod forward_auth;
pub mod headers;
pub mod io;
pub mod metrics;
pub mod middleware;
pub mod mirror;
pub mod plane;
pub mod proxy_protocol;
pub mod request_id;
pub mod response;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod trace_export;
pub mod upstream;

pub use backend::{BackendKey, BackendRegistry, BackendState, ConnectError};
pub use error::ProxyError;
pub use plane::Proxy;
pub use server::{ServerConfig, serve};
pub use shutdown::Shutdown;
pub use snapshot::Snapshot;
