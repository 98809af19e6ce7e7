//! Docker as a source: containers' labels become routes, live from the engine's event stream.

pub mod labels;
pub mod source;
pub mod state;

pub use source::DockerSource;
pub use state::{AddressMode, DockerOptions};
