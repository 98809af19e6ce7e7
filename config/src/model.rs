//! Validated configuration: what Gantry should be doing, independent of where it was declared.
//!
//! Every type here is normalized (sorted, lowercased where case does not matter, defaults filled
//! in) and implements `Eq`, so "did this change alter the meaning?" is a plain `==`. Values of
//! these types only come out of validation (`file`, and later the Docker and etcd sources).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

/// Settings read once at start-up: changing them needs a restart, as with Traefik's static
/// configuration (sockets cannot be re-bound under live connections without surprises).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaticConfig {
    pub entrypoints: Vec<Entrypoint>,
    pub admin: SocketAddr,
    /// After SIGTERM, how long in-flight requests may take to finish before Gantry exits anyway.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub drain_timeout: Duration,
    /// The Docker source, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerConfig>,
    /// The bearer token admin writes require is read from this file (or `GANTRY_ADMIN_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Rollouts declared in the file, started when Gantry starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<crate::rollout::RolloutSpec>,
}

/// How Gantry follows a Docker engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` or `tcp://host:port`; default `DOCKER_HOST`, then the socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Reach containers by their IP on a network (Gantry on that network) or by their ports
    /// published on the host (Gantry on the host).
    pub published: bool,
    /// The network to reach containers on when their `gantry.docker.network` label does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Route containers without `gantry.enable`; false: only those with `gantry.enable=true`.
    pub exposed_by_default: bool,
    /// A service whose containers are all gone answers 503 for this long, then 404.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub grace: Duration,
    /// Hosts no container may claim.
    pub reserved_hosts: Vec<String>,
    /// The scaler: create and remove replicas of compose services that carry scaling labels,
    /// following Gantry's recommendations. Off unless asked for.
    pub scale: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            published: false,
            network: None,
            exposed_by_default: true,
            grace: Duration::from_secs(30),
            reserved_hosts: Vec::new(),
            scale: false,
        }
    }
}

/// The default drain deadline after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the entrypoint `--listen` sets and that a config without entrypoints gets.
pub const DEFAULT_ENTRYPOINT: &str = "web";
/// Where the proxy listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The admin API listens on loopback unless told otherwise: it is never open to the world by
/// default.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8081";

impl Default for StaticConfig {
    fn default() -> Self {
        Self {
            entrypoints: vec![Entrypoint::new(DEFAULT_ENTRYPOINT, default_addr(DEFAULT_LISTEN))],
            admin: default_addr(DEFAULT_ADMIN),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            docker: None,
            admin_token_file: None,
            rollouts: Vec::new(),
        }
    }
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
}

/// A listening socket that accepts client traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    pub name: String,
    pub address: SocketAddr,
    /// TLS termination on this entrypoint (certificates come from `[tls]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EntrypointTls>,
    pub limits: ListenerLimits,
}

impl Entrypoint {
    pub fn new(name: &str, address: SocketAddr) -> Self {
        Self {
            name: name.to_string(),
            address,
            tls: None,
            limits: ListenerLimits::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntrypointTls {
    /// "1.2" (TLS 1.2 and 1.3, the default) or "1.3" (1.3 only). Older versions are never offered.
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: bool,
}

impl Default for EntrypointTls {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::V1_2,
            http2: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// Limits and timeouts of a listener; all on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerLimits {
    /// Client connections open at once; more are closed at accept.
    pub max_connections: u32,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: u32,
    /// Most header fields in one request; more gets 431.
    pub max_headers: u32,
    /// A new connection must complete its TLS handshake and first request head in this time
    /// (slowloris).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub idle_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 256,
        }
    }
}

/// Everything that can change at run time: routers, the services they send traffic to, and
/// TLS certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub routers: BTreeMap<String, Router>,
    pub services: BTreeMap<String, Service>,
    pub tls: crate::tls::TlsCertificates,
    /// Version weights set over a service whichever source declares it (etcd `weights/` keys,
    /// the admin API, a rollout): service -> version -> weight. They replace the service's own
    /// `versions` while set.
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
}

/// A change to a desired state, by name: `Some` is the new value, `None` a removal. Sources that
/// see their own changes (the etcd watch) send these, so that the cost of a change follows its
/// size and not the size of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub routers: BTreeMap<String, Option<Router>>,
    pub services: BTreeMap<String, Option<Service>>,
    /// The new certificates, when they changed.
    pub tls: Option<crate::tls::TlsCertificates>,
    pub weights: BTreeMap<String, Option<BTreeMap<String, u32>>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty() && self.services.is_empty() && self.tls.is_none() && self.weights.is_empty()
    }

    /// Everything in `state`, as additions.
    pub fn all(state: &DesiredState) -> Self {
        Self {
            routers: state
                .routers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            services: state
                .services
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            tls: (state.tls != Default::default()).then(|| state.tls.clone()),
            weights: state
                .weights
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        }
    }

    /// What turns `old` into `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        Self {
            routers: diff(&old.routers, &new.routers),
            services: diff(&old.services, &new.services),
            tls: (old.tls != new.tls).then(|| new.tls.clone()),
            weights: diff(&old.weights, &new.weights),
        }
    }

    /// Makes the change to `state`.
    pub fn apply_to(&self, state: &mut DesiredState) {
        patch(&mut state.routers, &self.routers);
        patch(&mut state.services, &self.services);
        patch(&mut state.weights, &self.weights);
        if let Some(tls) = &self.tls {
            state.tls = tls.clone();
        }
    }
}

fn diff<T: Clone + PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> BTreeMap<String, Option<T>> {
    let mut out = BTreeMap::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), None);
        }
    }
    out
}

fn patch<T: Clone>(map: &mut BTreeMap<String, T>, changes: &BTreeMap<String, Option<T>>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

/// A rule that matches requests and names the service that handles them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Router {
    /// Entrypoints this router is attached to; empty means all of them.
    pub entrypoints: Vec<String>,
    #[serde(rename = "match")]
    pub matcher: Match,
    /// Higher wins. Routers of equal priority are ordered by specificity (see `routing`).
    pub priority: i32,
    /// Remove the matched `PathPrefix` before forwarding (`/api/users` -> `/users`).
    pub strip_prefix: bool,
    pub service: String,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: u64,
    /// On a plain-HTTP entrypoint, answer 308 with the https:// URL instead of proxying.
    pub redirect_https: bool,
}

/// The default request-body limit of a router. Bodies are streamed, never held in memory, so the
/// limit protects backends rather than Gantry; it is on by default like every other limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 << 20;

/// The conditions a request must meet, all of them (a conjunction). Each list is a disjunction:
/// `hosts = ["a", "b"]` matches either host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostPattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
}

/// `example.com` (exact) or `*.example.com` (any name ending in `.example.com`, at any depth,
/// as nginx does). Stored lowercase, without port or trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`: `*.example.com` is stored as `example.com`.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path equals this, byte for byte.
    Exact(String),
    /// The path starts with this string (as nginx, Traefik and Envoy do: `/api` also matches
    /// `/apix`; write `/api/` to match a segment).
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: String,
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.name.as_str())?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}

/// A pool of backends behind one name, and how to spread traffic over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Sorted by URL; URLs are unique within a service.
    pub backends: Vec<Backend>,
    pub policy: Policy,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Active checks; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection; on by default.
    pub outlier: Outlier,
    /// A new or recovered backend's weight ramps up over this window; zero (the default) means
    /// full weight at once.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub slow_start: Duration,
    pub retries: Retries,
    /// Traffic split between versions by weight (version -> weight); empty: no split, backends
    /// share traffic by their own weights. When set, every backend names one of these versions
    /// and a backend's weight is its share within its version.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, u32>,
    /// How requests are placed between versions beyond their weights.
    #[serde(skip_serializing_if = "Canary::is_empty")]
    pub canary: Canary,
    /// Replica recommendations (and, with the Docker scaler, replicas) for this service; none:
    /// Gantry does not recommend a replica count for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// How many replicas a service should have, from the concurrency Gantry sees (see
/// `docs/scaling.md`): `ceil(average concurrency / (target x utilization))` over `window`, or over
/// `burst_window` when that asks for at least twice the ready replicas; bounded by `min` and
/// `max`; down only once the whole window agrees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    /// Concurrent requests one replica is meant to hold.
    pub target: Milli,
    /// The share of `target` aimed at, leaving headroom for bursts (0-1).
    pub utilization: Milli,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub window: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub burst_window: Duration,
}

impl Scale {
    /// Knative's defaults: 100 concurrent requests per replica at 70%, a 60 s window and a burst
    /// window a tenth of it.
    pub const DEFAULT_TARGET: f64 = 100.0;
    pub const DEFAULT_UTILIZATION: f64 = 0.7;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
    /// Without an explicit `max`, a recommendation never exceeds this.
    pub const DEFAULT_MAX: u32 = 10;

    /// Concurrent requests one replica should hold on average.
    pub fn per_replica(&self) -> f64 {
        self.target.get() * self.utilization.get()
    }
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: 1,
            max: Self::DEFAULT_MAX,
            target: Milli::from_f64(Self::DEFAULT_TARGET),
            utilization: Milli::from_f64(Self::DEFAULT_UTILIZATION),
            window: Self::DEFAULT_WINDOW,
            burst_window: Self::DEFAULT_WINDOW / 10,
        }
    }
}

/// A non-negative real number kept in thousandths, so that settings stay `Eq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub u64);

impl Milli {
    pub fn from_f64(v: f64) -> Self {
        Self((v.max(0.0) * 1000.0).round() as u64)
    }

    pub fn get(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

/// How a service with versions places a request (see `docs/canary.md`).
///
/// Sticky assignment hashes a user key to a bucket in `0..10_000`; the versions own consecutive
/// bucket ranges in a fixed order (every version but the stable one by name, newest name
/// first, from bucket 0; the stable version last), each as wide as its share of the weight. A
/// user is in the canary exactly when their bucket is below the canary's share, so raising the
/// canary's weight only moves users from stable to canary, and every instance places a user the
/// same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Canary {
    /// The stable version (takes the top buckets); default: the first version by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The user key of sticky assignment; none: every request is placed by weight alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<HashOn>,
    /// Rules that pin a request to a version, tried in order, before weights and stickiness.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

impl Canary {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A request whose header or cookie `on` is present (and equals `value`, when set) goes to
/// `version`; without `version`, the header's or cookie's value names the version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Override {
    /// A header or a cookie (never `client_ip`).
    pub on: HashOn,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Service {
    pub fn new(backends: Vec<Backend>) -> Self {
        let mut backends = backends;
        backends.sort_by(|a, b| a.url.cmp(&b.url));
        Self {
            backends,
            policy: Policy::RoundRobin,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            health_check: None,
            outlier: Outlier::default(),
            slow_start: Duration::ZERO,
            retries: Retries::default(),
            versions: BTreeMap::new(),
            canary: Canary::default(),
            scale: None,
        }
    }
}

/// An active HTTP check, run against every backend of a service on its own connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub method: String,
    /// Path and optional query, e.g. `/healthz`.
    pub path: String,
    /// Host header of the check; the backend's address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as passing, as inclusive ranges (default 200-399).
    pub expected_statuses: Vec<(u16, u16)>,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub interval: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub timeout: Duration,
    /// Consecutive passes to become ready again after failing (a new backend needs one).
    pub healthy_threshold: u32,
    /// Consecutive failures to stop receiving traffic.
    pub unhealthy_threshold: u32,
    /// A backend whose source already reports it healthy (a Docker HEALTHCHECK) takes traffic
    /// before its first check here.
    pub trust_source_health: bool,
}

impl HealthCheck {
    pub fn passes(&self, status: u16) -> bool {
        self.expected_statuses
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Passive outlier ejection, driven by the answers of real traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Outlier {
    /// Consecutive 5xx answers or connection failures that eject a backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each further one longer (times the ejection count).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub max_ejection_time: Duration,
    /// Never eject more than this share of a service's backends at once.
    pub max_ejection_percent: u32,
    /// Below this share of eligible backends, a service ignores health and balances across all
    /// its backends: a broken check must not black-hole the service.
    pub panic_threshold_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

/// Retries on another backend after a connection failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Retries {
    /// Further attempts after the first (0 turns retries off).
    pub attempts: u32,
    /// Retries may add at most this share of the service's live traffic...
    pub budget_percent: u32,
    /// ...plus this many per second, so that a quiet service can still retry.
    pub min_per_second: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            min_per_second: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub url: BackendUrl,
    /// Relative share of traffic; 0 takes the backend out of rotation without removing it.
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The source vouches for the backend's health (Docker reported `healthy`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub source_healthy: bool,
}

/// Weights are bounded so that sums never overflow and so that typos such as `weight = 10000000`
/// are caught.
pub const MAX_WEIGHT: u32 = 10_000;

/// Where a backend is reached. Only the origin: a path in a backend URL is refused, because
/// proxies that silently drop or prepend it surprise people.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendUrl {
    pub scheme: Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    /// `host:port` as a connect target (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

impl Serialize for BackendUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/2 over TCP with prior knowledge (gRPC backends).
    H2c,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::H2c => "h2c",
        }
    }
}

/// How a service picks a backend for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "hash_on")]
pub enum Policy {
    /// Smooth weighted round robin, as nginx does it: over any window the split follows the
    /// weights, and a heavy backend's turns are spread out rather than bunched.
    RoundRobin,
    /// Power of two choices over in-flight requests and latency EWMA, divided by weight.
    LeastRequest,
    /// Consistent hashing (a ring with virtual nodes per weight) on the given key.
    Hash(HashOn),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::Header(h) => write!(f, "header:{h}"),
            HashOn::Cookie(c) => write!(f, "cookie:{c}"),
            HashOn::ClientIp => f.write_str("client_ip"),
        }
    }
}

impl Serialize for HashOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// TCP connect to a backend. Exceeding it is a 504.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub connect: Duration,
    /// From the request being sent to the backend's response head arriving. Exceeding it is a 504.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub response_header: Duration,
    /// How long an unused pooled connection to a backend is kept open.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            idle: Duration::from_secs(90),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Open connections to one backend (pooled and busy). A request that finds no idle
    /// connection while the limit is reached gets a fast 503 instead of piling up.
    pub max_connections_per_backend: u32,
    /// Idle keep-alive connections kept per backend.
    pub max_idle_per_backend: u32,
    /// Requests in flight to the whole service; more get a fast 503 (circuit breaking).
    pub max_pending_requests: u32,
    /// Requests in flight to one backend; more go to another backend, or get a fast 503.
    pub max_pending_requests_per_backend: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_backend: 1024,
            max_idle_per_backend: 128,
            max_pending_requests: 10_000,
            max_pending_requests_per_backend: 1024,
        }
    }
}
