//! Docker as a source: containers' labels become routes, live from the engine's event stream;
//! and Docker Swarm mode, whose services' labels become routes to their tasks.

pub mod labels;
pub mod source;
pub mod state;
pub mod swarm;

pub use labels::{ContainerDecl, ContainerFacts, parse as parse_labels};
pub use source::{DockerSource, Engine, facts};
pub use state::{AddressMode, DockerOptions};
pub use swarm::SwarmSource;
