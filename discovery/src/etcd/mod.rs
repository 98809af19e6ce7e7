//! etcd as a source: the shared configuration of a fleet of Gantry instances.

pub mod layout;
pub mod lease;
pub mod source;

pub use source::EtcdSource;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/gantry/";

/// Makes a prefix end in `/`.
pub fn normalize_prefix(p: &str) -> String {
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    if p.ends_with('/') { p } else { format!("{p}/") }
}
