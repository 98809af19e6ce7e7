//! Gantry's configuration model. No I/O happens here: callers hand in text or values and get back
//! validated types or errors that say where the problem came from.
//!
//! The pipeline, one way:
//!
//! ```text
//! TOML text / JSON value / Docker labels
//!     -> File* types (raw, as parsed; `file`)
//!     -> DesiredState (validated, normalized, `Eq`; `model`)      <- one per source, merged by the reconciler
//!     -> RoutingTable (compiled host index + ordered matchers; `routing`)
//!     -> Store (one `ArcSwap`, a generation per publish; `store`) -> request path
//! ```
//!
//! Raw and validated types are named apart (`FileRouter` vs `Router`); conversion is the only
//! place where a value is checked, and every error names its origin (file, label, etcd key), the
//! field and the reason.

pub mod duration;
pub mod error;
pub mod file;
pub mod model;
pub mod rollout;
pub mod routing;
pub mod rule;
pub mod size;
pub mod store;
pub mod tls;

pub use error::{ConfigError, Errors};
pub use model::{
    Backend, BackendUrl, Canary, DesiredState, DockerConfig, Entrypoint, EntrypointTls, HashOn, HeaderMatch,
    HealthCheck, HostPattern, Limits, ListenerLimits, Match, Outlier, Override, PathMatch, Policy, Retries,
    Router, Scale, Scheme, Service, StaticConfig, Timeouts, TlsVersion,
};
pub use routing::{RequestView, Route, RoutingTable};
pub use store::Store;
pub use tls::{CertStore, Certificate, TlsCertificates};
