//! Gantry's configuration model. No I/O happens here: callers hand in text or values and get back
//! validated types or errors that say where the problem came from.
//!
//! The pipeline, one way:
//!
//! ```text
//! TOML text / JSON value / Docker labels
//!     -> File* types (raw, as parsed)
//!     -> DesiredState (validated, normalized, `Eq`; `state`)      <- one per source, merged by the reconciler
//!     -> RoutingTable (compiled host index + ordered matchers; `routing`)
//!     -> Store (one `ArcSwap`, a generation per publish; `store`) -> request path
//! ```
//!
//! The configuration is cut by concern: each slice holds its validated types, their raw shapes
//! and the validation between them, so a field is read, checked and documented in one file:
//!
//! ```text
//! file        the TOML document: FileConfig -> StaticConfig + DesiredState (load, parse_toml)
//! listener    entrypoints, their TLS and limits           docker    the [docker] section
//! router      routers                                     matcher   hosts, paths, methods, headers
//! rule        Traefik-style rule text -> matchers         service   services: policy, timeouts, limits, retries
//! backend     backends and the backend URL grammar        health    active checks, outlier ejection
//! canary      version weights, overrides, stickiness      scale     scaling settings
//! rollout     progressive rollouts                        compact   compact routes and service naming
//! state       DesiredState and Changes                    check     shared field checks
//! routing     the compiled RoutingTable                   store     the snapshot store (ArcSwap)
//! tls         certificates, SNI lookup                    error, duration, size: values and errors
//! ```
//!
//! Slices depend one way (`file` -> `service` -> `backend` -> `check` …); none imports `file`.
//! Validated types are normalized (sorted, lowercased where case does not matter, defaults filled
//! in) and implement `Eq`, so "did this change alter the meaning?" is a plain `==`.
//!
//! Raw and validated types are named apart (`FileRouter` vs `Router`); conversion is the only
//! place where a value is checked, and every error names its origin (file, label, etcd key), the
//! field and the reason.

pub mod access_log;
pub mod acme;
pub mod backend;
pub mod canary;
pub mod check;
pub mod compact;
pub mod docker;
pub mod duration;
pub mod error;
pub mod file;
#[cfg(test)]
mod fuzz;
pub mod hash;
pub mod health;
pub mod listener;
pub mod matcher;
pub mod middleware;
pub mod mirror;
pub mod rollout;
pub mod router;
pub mod routing;
pub mod rule;
pub mod scale;
pub mod service;
pub mod size;
pub mod state;
pub mod store;
pub mod tls;
pub mod traces;

pub use backend::{Backend, BackendUrl, MAX_WEIGHT, Scheme};
pub use canary::{Canary, Override};
pub use docker::DockerConfig;
pub use error::{ConfigError, Errors};
pub use file::{DEFAULT_ENTRYPOINT, StaticConfig};
pub use hash::HashOn;
pub use health::{HealthCheck, Outlier};
pub use listener::{Entrypoint, EntrypointTls, ListenerLimits, TlsVersion};
pub use matcher::{HeaderMatch, HostPattern, Match, PathMatch};
pub use router::Router;
pub use routing::{RequestView, Route, RoutingTable};
pub use scale::{Milli, Scale};
pub use service::{Limits, Policy, Retries, SendProxyProtocol, Service, Timeouts};
pub use state::{Changes, DesiredState};
pub use store::Store;
pub use tls::{CertStore, Certificate, TlsCertificates};
