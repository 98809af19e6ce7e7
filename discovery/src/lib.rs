//! Where routes come from. Each source turns its own events into a whole [`DesiredState`] of its
//! own (or an error that says where it came from) and sends it to the [`Reconciler`], the only
//! writer of the routing table, which merges the sources, compiles, and publishes through a
//! [`Sink`].
//!
//! ```text
//! file watcher / SIGHUP --\
//! docker events   --------> Update -> Reconciler -> merge -> compile -> Sink::publish
//! etcd watch      --/                      \-> errors -> Sink::rejected (last good table stays)
//! ```
//!
//! `etcd::keys` names every etcd key Gantry reads or writes (the control plane writes through
//! it too). The sink is `gantry_control::publish::Publisher`, which makes the table live.

pub mod backoff;
pub mod docker;
pub mod etcd;
pub mod file;
#[cfg(test)]
mod fuzz;
pub mod reconcile;

pub use docker::{AddressMode, DockerSource, SwarmSource};
pub use file::{FileSource, FileWatch};
pub use reconcile::{Outcome, Reconciler, Report, Sink, SourceId, Update};
