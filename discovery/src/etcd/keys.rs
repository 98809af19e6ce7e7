//! Every etcd key Gantry reads or writes, in one place: the configuration the etcd source reads
//! (`routers/`, `services/`, `backends/`, `weights/`, `middlewares/`) and what the control plane writes
//! (`instances/`, `rollouts/`, `scaling/`). Readers parse a key with [`kind`]; writers name one
//! with [`Keys`]. Nothing else spells a key.
//!
//! ```text
//! <prefix>routers/<name>                  a router (JSON)             read by the etcd source
//! <prefix>services/<name>                 a service's settings (JSON)
//! <prefix>backends/<service>/<id>         one backend (JSON)          written by `gantry register` too
//! <prefix>weights/<service>               version weights             written by rollouts, the admin API
//! <prefix>middlewares/<name>              a middleware (JSON)         read by the etcd source
//! <prefix>instances/<id>                  an instance's record        written by each instance (lease)
//! <prefix>rollouts/<service>/spec         a rollout as declared       the file, the admin API, etcdctl
//! <prefix>rollouts/<service>/state        phase, step, weight         written by the driver
//! <prefix>rollouts/<service>/driver       the driving instance        under the driver's lease
//! <prefix>rollouts/<service>/decision     the last decision
//! <prefix>scaling/<service>               the replica recommendation
//! ```

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/gantry/";

/// Makes a prefix end in `/` (and begin with one).
pub fn normalize_prefix(p: &str) -> String {
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    if p.ends_with('/') { p } else { format!("{p}/") }
}

/// The keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Normalized: begins and ends with `/`.
    prefix: String,
}

/// The keys of one rollout, under `rollouts/<service>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutKey {
    Spec,
    State,
    Driver,
    Decision,
}

impl RolloutKey {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKey::Spec => "spec",
            RolloutKey::State => "state",
            RolloutKey::Driver => "driver",
            RolloutKey::Decision => "decision",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "spec" => RolloutKey::Spec,
            "state" => RolloutKey::State,
            "driver" => RolloutKey::Driver,
            "decision" => RolloutKey::Decision,
            _ => return None,
        })
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: normalize_prefix(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn router(&self, name: &str) -> String {
        format!("{}routers/{name}", self.prefix)
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    /// The prefix of every backend key of `service`.
    pub fn backends(&self, service: &str) -> String {
        format!("{}backends/{service}/", self.prefix)
    }

    pub fn backend(&self, service: &str, id: &str) -> String {
        format!("{}backends/{service}/{id}", self.prefix)
    }

    pub fn weights(&self, service: &str) -> String {
        format!("{}weights/{service}", self.prefix)
    }

    pub fn instance(&self, id: &str) -> String {
        format!("{}instances/{id}", self.prefix)
    }

    /// The prefix of every rollout key.
    pub fn rollouts(&self) -> String {
        format!("{}rollouts/", self.prefix)
    }

    pub fn rollout(&self, service: &str, key: RolloutKey) -> String {
        format!("{}rollouts/{service}/{}", self.prefix, key.as_str())
    }

    /// `(service, key)` of a key under [`Keys::rollouts`].
    pub fn parse_rollout<'k>(&self, key: &'k str) -> Option<(&'k str, RolloutKey)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("rollouts/")?;
        let (service, what) = rest.split_once('/')?;
        Some((service, RolloutKey::parse(what)?))
    }

    pub fn scaling(&self, service: &str) -> String {
        format!("{}scaling/{service}", self.prefix)
    }
}

/// Prefixes under the layout's root that are not configuration.
pub const RESERVED: [&str; 3] = ["instances/", "rollouts/", "scaling/"];

/// What a key is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Router(String),
    Service(String),
    Backend(String, String),
    Weights(String),
    Middleware(String),
    /// Not configuration (`instances/`, ...), or outside the prefix.
    Ignored,
    Stray,
}

pub fn kind(prefix: &str, key: &str) -> Kind {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Kind::Ignored;
    };
    if RESERVED.iter().any(|r| rest.starts_with(r)) {
        return Kind::Ignored;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["routers", name] if !name.is_empty() => Kind::Router(name.to_string()),
        ["services", name] if !name.is_empty() => Kind::Service(name.to_string()),
        ["backends", service, id] if !service.is_empty() && !id.is_empty() => {
            Kind::Backend(service.to_string(), id.to_string())
        }
        ["weights", service] if !service.is_empty() => Kind::Weights(service.to_string()),
        ["middlewares", name] if !name.is_empty() => Kind::Middleware(name.to_string()),
        _ => Kind::Stray,
    }
}

/// Whether a key is configuration (a change to it can change the routing table).
pub fn is_config(prefix: &str, key: &str) -> bool {
    kind(prefix, key) != Kind::Ignored
}
