//! etcd as a source: the shared configuration of a fleet of Gantry instances.

pub mod conn;
pub mod keys;
pub mod layout;
pub mod lease;
pub mod source;

pub use conn::{Endpoints, Security, SecurityFiles};
pub use source::EtcdSource;

pub use keys::{DEFAULT_PREFIX, Keys, RolloutKey, normalize_prefix};
