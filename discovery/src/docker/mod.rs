//! Docker as a source: containers' labels become routes, live from the engine's event stream.

pub mod labels;
pub mod source;
pub mod state;

pub use labels::{ContainerDecl, ContainerFacts, parse as parse_labels};
pub use source::{DockerSource, facts};
pub use state::{AddressMode, DockerOptions};
