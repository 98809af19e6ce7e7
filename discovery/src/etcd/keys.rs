//! Every etcd key Gantry reads or writes, in one place: the configuration the etcd source reads
//! (`routers/`, `services/`, `backends/`, `weights/`, `middlewares/`) and what the control plane writes
//! (`instances/`, `figures/`, `rollouts/`, `scaling/`, `leaders/`, `acme/`). Readers parse a key with [`kind`]; writers name one
//! with [`Keys`]. Nothing else spells a key.
//!
//! ```text
//! <prefix>routers/<name>                  a router (JSON)             read by the etcd source
//! <prefix>services/<name>                 a service's settings (JSON)
//! <prefix>backends/<service>/<id>         one backend (JSON)          written by `gantry register` too
//! <prefix>weights/<service>               version weights             written by rollouts, the admin API
//! <prefix>middlewares/<name>              a middleware (JSON)         read by the etcd source
//! <prefix>instances/<id>                  an instance's record        written by each instance (lease)
//! <prefix>figures/<id>                    its per-version counters    every second, same lease
//! <prefix>rollouts/<service>/spec         a rollout as declared       the file, the admin API, etcdctl
//! <prefix>rollouts/<service>/state        phase, step, weight         written by the driver
//! <prefix>rollouts/<service>/driver       the driving instance        under the driver's lease
//! <prefix>rollouts/<service>/decision     the last decision
//! <prefix>scaling/<service>               the replica recommendation  written by the publisher
//! <prefix>leaders/scaling                 the scaling publisher       under its lease
//! <prefix>acme/<resolver>/account         the ACME account (JSON)     written by the first orderer
//! <prefix>acme/<resolver>/certs/<host>    a certificate and its key   written by its orderer
//! <prefix>acme/<resolver>/orders/<host>   the ordering instance       under the order's lease
//! <prefix>acme/<resolver>/failures/<host> failures, next attempt      written by the orderer
//! <prefix>acme/challenges/http/<token>    an HTTP-01 answer           under the order's lease
//! <prefix>acme/challenges/alpn/<host>     a TLS-ALPN-01 digest (hex)  under the order's lease
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

    /// An instance's figures (`id` empty: the prefix of them all).
    pub fn figures(&self, id: &str) -> String {
        format!("{}figures/{id}", self.prefix)
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

    /// The key held by the instance elected for a fleet-wide `role` (`scaling`).
    pub fn leader(&self, role: &str) -> String {
        format!("{}leaders/{role}", self.prefix)
    }

    /// The prefix of every ACME key.
    pub fn acme(&self) -> String {
        format!("{}acme/", self.prefix)
    }

    pub fn acme_account(&self, resolver: &str) -> String {
        format!("{}acme/{resolver}/account", self.prefix)
    }

    pub fn acme_certs(&self, resolver: &str) -> String {
        format!("{}acme/{resolver}/certs/", self.prefix)
    }

    pub fn acme_cert(&self, resolver: &str, host: &str) -> String {
        format!("{}acme/{resolver}/certs/{host}", self.prefix)
    }

    pub fn acme_order(&self, resolver: &str, host: &str) -> String {
        format!("{}acme/{resolver}/orders/{host}", self.prefix)
    }

    pub fn acme_failures(&self, resolver: &str, host: &str) -> String {
        format!("{}acme/{resolver}/failures/{host}", self.prefix)
    }

    pub fn acme_http_challenge(&self, token: &str) -> String {
        format!("{}acme/challenges/http/{token}", self.prefix)
    }

    pub fn acme_alpn_challenge(&self, host: &str) -> String {
        format!("{}acme/challenges/alpn/{host}", self.prefix)
    }

    /// What a key under [`Keys::acme`] is.
    pub fn parse_acme<'k>(&self, key: &'k str) -> Option<AcmeKey<'k>> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("acme/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        Some(match parts.as_slice() {
            ["challenges", "http", token] => AcmeKey::HttpChallenge(token),
            ["challenges", "alpn", host] => AcmeKey::AlpnChallenge(host),
            [resolver, "certs", host] => AcmeKey::Cert(resolver, host),
            _ => return None,
        })
    }
}

/// The ACME keys instances follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeKey<'k> {
    Cert(&'k str, &'k str),
    HttpChallenge(&'k str),
    AlpnChallenge(&'k str),
}

/// Prefixes under the layout's root that are not configuration.
pub const RESERVED: [&str; 6] = [
    "instances/",
    "figures/",
    "rollouts/",
    "scaling/",
    "leaders/",
    "acme/",
];

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
