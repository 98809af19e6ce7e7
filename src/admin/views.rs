//! What the admin API answers, as types: the shape of every JSON document under `/api/v1/` is
//! the shape of a struct here (or of a type it names from the crates that own the data).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_config::middleware::Middleware;
use gantry_config::{
    Backend, Canary, HealthCheck, Limits, Outlier, Policy, Retries, Router, Scale, SendProxyProtocol,
    Service, Timeouts,
};
use gantry_control::publish::{Refusal, SourceStatus};
use gantry_control::scaler::Action;
use gantry_control::scaling::Recommendation;
use gantry_proxy::{BackendState, Proxy};
use serde::Serialize;

/// `GET /api/v1/routes`: the live routing table, and each backend's live state.
#[derive(Debug, Serialize)]
pub struct RoutesView<'a> {
    pub generation: u64,
    pub entrypoints: &'a [String],
    pub routers: BTreeMap<String, Router>,
    pub services: BTreeMap<String, ServiceView<'a>>,
    /// Every declared middleware (basic_auth shows user names, never hashes).
    pub middlewares: BTreeMap<&'a str, &'a Middleware>,
}

/// A service as configured, its backends with their state.
#[derive(Debug, Serialize)]
pub struct ServiceView<'a> {
    pub backends: Vec<BackendView<'a>>,
    /// Requests in flight to the whole service now.
    pub in_flight: u32,
    /// The circuit breaker: "open" while `in_flight` is at `limits.max_pending_requests` (more
    /// requests get a fast 503), else "closed".
    pub breaker: &'static str,
    pub policy: &'a Policy,
    pub timeouts: &'a Timeouts,
    pub limits: &'a Limits,
    #[serde(skip_serializing_if = "none")]
    pub health_check: &'a Option<HealthCheck>,
    pub outlier: &'a Outlier,
    #[serde(serialize_with = "gantry_config::duration::serialize")]
    pub slow_start: Duration,
    pub retries: &'a Retries,
    #[serde(skip_serializing_if = "no_versions")]
    pub versions: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "no_canary")]
    pub canary: &'a Canary,
    #[serde(skip_serializing_if = "none")]
    pub scale: &'a Option<Scale>,
    #[serde(skip_serializing_if = "none")]
    pub proxy_protocol: &'a Option<SendProxyProtocol>,
}

// The same fields are skipped as in `Service`'s own serialization; these take the view's
// references.
fn none<T>(o: &&Option<T>) -> bool {
    o.is_none()
}

fn no_versions(v: &&BTreeMap<String, u32>) -> bool {
    v.is_empty()
}

fn no_canary(c: &&Canary) -> bool {
    c.is_empty()
}

impl<'a> ServiceView<'a> {
    pub fn new(
        spec: &'a Service,
        states: &'a [std::sync::Arc<BackendState>],
        in_flight: u32,
        now: Instant,
    ) -> Self {
        Self {
            backends: spec
                .backends
                .iter()
                .zip(states)
                .map(|(b, s)| BackendView::new(b, s, now))
                .collect(),
            in_flight,
            breaker: if in_flight >= spec.limits.max_pending_requests {
                "open"
            } else {
                "closed"
            },
            policy: &spec.policy,
            timeouts: &spec.timeouts,
            limits: &spec.limits,
            health_check: &spec.health_check,
            outlier: &spec.outlier,
            slow_start: spec.slow_start,
            retries: &spec.retries,
            versions: &spec.versions,
            canary: &spec.canary,
            scale: &spec.scale,
            proxy_protocol: &spec.proxy_protocol,
        }
    }
}

/// A backend as configured, with what the data plane knows of it now.
#[derive(Debug, Serialize)]
pub struct BackendView<'a> {
    #[serde(flatten)]
    pub spec: &'a Backend,
    /// ready, not_ready, ejected, draining or slow_start.
    pub state: &'static str,
    /// Why it is not ready (a failed check, an ejection, a drain).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub ejections: u32,
    pub ejected_for_ms: u64,
    pub in_flight: u32,
    pub open_connections: u32,
    pub idle_connections: usize,
    /// The time to a response head, as least-request weighs it (an EWMA that decays towards 0
    /// while the backend gets no traffic).
    pub latency_ewma_ms: f64,
}

impl<'a> BackendView<'a> {
    fn new(spec: &'a Backend, s: &BackendState, at: Instant) -> Self {
        let now = gantry_proxy::clock::nanos_since_epoch(at);
        Self {
            spec,
            state: s.health.phase(now).as_str(),
            reason: s.health.reason(),
            ejections: s.health.ejections(),
            ejected_for_ms: s.health.ejected_for(now).as_millis() as u64,
            in_flight: s.in_flight(),
            open_connections: s.open_connections(),
            idle_connections: s.idle_connections(),
            latency_ewma_ms: (s.latency_ewma(at) / 1e4).round() / 100.0,
        }
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub ready: bool,
    pub generation: u64,
    pub reload_failures: u64,
    pub sources: BTreeMap<&'static str, SourceStatus>,
    pub last_error: Option<Refusal>,
}

/// `GET /api/v1/versions`: each service with versions.
#[derive(Debug, Serialize)]
pub struct VersionsView<'a> {
    pub generation: u64,
    pub services: BTreeMap<String, ServiceVersions<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ServiceVersions<'a> {
    pub versions: BTreeMap<String, VersionFigures>,
    pub canary: &'a Canary,
}

/// What one version has answered since start, and its weight now.
#[derive(Debug, Serialize)]
pub struct VersionFigures {
    pub weight: u32,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

impl VersionFigures {
    pub fn of(proxy: &Proxy, service: &str, version: &str, weight: u32) -> Self {
        let f = proxy.version_stats(service, version);
        Self {
            weight,
            requests: f.requests,
            errors: f.errors,
            error_rate: f.error_rate(),
            p99_ms: f.quantile(0.99).map(|q| q * 1000.0),
        }
    }
}

/// `GET /api/v1/scaling`.
#[derive(Debug, Serialize)]
pub struct ScalingView {
    pub services: Vec<Recommendation>,
    pub scaler: ScalerView,
}

/// The Docker scaler: off, or what it is doing and did.
#[derive(Debug, Serialize)]
pub struct ScalerView {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Action>>,
}

/// The answer to an admin write of version weights.
#[derive(Debug, Serialize)]
pub struct WeightsSet<'a> {
    pub service: &'a str,
    /// `None`: cleared (the declared weights apply again).
    pub weights: Option<BTreeMap<String, u32>>,
    /// With etcd: the revision the whole fleet applies it at.
    pub etcd_revision: Option<i64>,
}

/// The answer to `POST /api/v1/rollouts/<service>`.
#[derive(Debug, Serialize)]
pub struct RolloutStarted<'a> {
    pub service: &'a str,
    pub started: bool,
}

/// The answer to `POST /api/v1/services/<name>/drain`.
#[derive(Debug, Serialize)]
pub struct Drained<'a> {
    pub service: &'a str,
    pub backend: &'a str,
    pub state: &'static str,
}

/// Every refusal: a sentence that says what was wrong.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub error: String,
}

/// An unknown read endpoint, with the ones that exist.
#[derive(Debug, Serialize)]
pub struct NotFound {
    pub error: String,
    pub endpoints: &'static [&'static str],
}
