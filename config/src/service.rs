//! Services: a pool of backends and how it is used (balancing policy, timeouts, limits, retries,
//! health and canary settings), validated from their raw shape.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileBackend, MAX_WEIGHT, validate_backend};
use crate::canary::{Canary, FileCanary, check_version, validate_canary};
use crate::check::{bounded, check_name};
use crate::duration;
use crate::error::Errors;
use crate::hash::{HashOn, parse_hash_on};
use crate::health::{
    FileHealthCheck, FileOutlier, HealthCheck, Outlier, validate_health_check, validate_outlier,
};
use crate::scale::{FileScale, Scale, validate_scale};

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
    /// A PROXY protocol header naming the client opens every backend connection (for backends
    /// that want the client address at L4). Such connections carry one client each, so they
    /// are not pooled; health checks send a `LOCAL` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<SendProxyProtocol>,
    /// Sticky sessions by a cookie Gantry sets; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// A share of the requests to the other versions copied to one version (shadow traffic);
    /// none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::mirror::Mirror>,
}

/// Sticky sessions (Traefik's `sticky.cookie`, Aliyun's `session_sticky`): an answer sets a
/// cookie naming the backend that gave it; while that backend can take requests, the client's
/// next requests go to it. A backend that is gone, failing or draining is replaced, and the
/// cookie with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sticky {
    pub cookie: String,
    pub secure: bool,
    pub http_only: bool,
    /// `Lax` (default), `Strict` or `None` (which needs `secure`).
    pub same_site: &'static str,
}

/// The cookie of `sticky = {}` and of `aliyun.routing.session_sticky`.
pub const DEFAULT_STICKY_COOKIE: &str = "gantry_sticky";

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSticky {
    pub cookie: Option<String>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<String>,
}

fn validate_sticky(s: FileSticky, origin: &str, field: &str, errs: &mut Errors) -> Option<Sticky> {
    let cookie = s.cookie.unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string());
    // A cookie name is an RFC 6265 token.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if cookie.is_empty() || !cookie.chars().all(token) {
        errs.push(
            origin,
            format!("{field}.cookie"),
            format!("{cookie:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
        return None;
    }
    let secure = s.secure.unwrap_or(false);
    let same_site = match s.same_site.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("lax") => "Lax",
        Some("strict") => "Strict",
        Some("none") if secure => "None",
        Some("none") => {
            errs.push(
                origin,
                format!("{field}.same_site"),
                "\"none\" needs secure = true (browsers drop such a cookie otherwise)",
            );
            return None;
        }
        Some(other) => {
            errs.push(
                origin,
                format!("{field}.same_site"),
                format!("{other:?}: use \"lax\", \"strict\" or \"none\""),
            );
            return None;
        }
    };
    Some(Sticky {
        cookie,
        secure,
        http_only: s.http_only.unwrap_or(true),
        same_site,
    })
}

/// Which PROXY protocol header Gantry sends to a service's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendProxyProtocol {
    /// HAProxy's text header.
    V1,
    /// HAProxy's binary header.
    V2,
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
            proxy_protocol: None,
            sticky: None,
            mirror: None,
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
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub policy: Option<String>,
    pub hash_on: Option<String>,
    pub timeouts: Option<FileTimeouts>,
    pub limits: Option<FileLimits>,
    pub health_check: Option<FileHealthCheck>,
    pub outlier: Option<FileOutlier>,
    pub slow_start: Option<String>,
    pub retries: Option<FileRetries>,
    pub versions: Option<BTreeMap<String, i64>>,
    pub canary: Option<FileCanary>,
    pub scale: Option<FileScale>,
    /// `"v1"` or `"v2"`: send a PROXY protocol header to the backends.
    pub proxy_protocol: Option<String>,
    /// Sticky sessions by cookie (`sticky = {}`: the default cookie).
    pub sticky: Option<FileSticky>,
    /// Shadow traffic to one of the service's versions.
    pub mirror: Option<crate::mirror::FileMirror>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetries {
    pub attempts: Option<i64>,
    pub budget_percent: Option<i64>,
    pub min_per_second: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub connect: Option<String>,
    pub response_header: Option<String>,
    pub idle: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_connections_per_backend: Option<i64>,
    pub max_idle_per_backend: Option<i64>,
    pub max_pending_requests: Option<i64>,
    pub max_pending_requests_per_backend: Option<i64>,
}

pub fn validate_service(
    s: FileService,
    origin: &str,
    field: &str,
    name: &str,
    errs: &mut Errors,
) -> Option<Service> {
    let before = errs.0.len();
    check_name(errs, origin, field, name);
    let mut backends: Vec<Backend> = Vec::with_capacity(s.backends.len());
    for (i, b) in s.backends.into_iter().enumerate() {
        if let Some(b) = validate_backend(b, origin, &format!("{field}.backends[{i}]"), errs) {
            if backends.iter().any(|x| x.url == b.url) {
                errs.push(
                    origin,
                    format!("{field}.backends[{i}].url"),
                    format!("{} is listed twice; use one entry with a weight", b.url),
                );
            } else {
                backends.push(b);
            }
        }
    }
    let policy = parse_policy(s.policy.as_deref(), s.hash_on.as_deref(), origin, field, errs);
    let timeouts = validate_timeouts(
        s.timeouts.unwrap_or_default(),
        origin,
        &format!("{field}.timeouts"),
        errs,
    );
    let limits = validate_limits(
        s.limits.unwrap_or_default(),
        origin,
        &format!("{field}.limits"),
        errs,
    );
    if let Some(first) = backends.first()
        && backends.iter().any(|b| b.url.scheme != first.url.scheme)
    {
        errs.push(
            origin,
            format!("{field}.backends"),
            "all backends of a service must use the same scheme (http or h2c)",
        );
    }
    let mut service = Service::new(backends);
    service.policy = policy;
    service.timeouts = timeouts;
    service.limits = limits;
    service.health_check = s
        .health_check
        .map(|h| validate_health_check(h, origin, &format!("{field}.health_check"), errs));
    service.outlier = validate_outlier(
        s.outlier.unwrap_or_default(),
        origin,
        &format!("{field}.outlier"),
        errs,
    );
    service.retries = validate_retries(
        s.retries.unwrap_or_default(),
        origin,
        &format!("{field}.retries"),
        errs,
    );
    for (v, w) in s.versions.iter().flatten() {
        let f = format!("{field}.versions.{v}");
        if let Err(e) = check_version(v) {
            errs.push(origin, &f, e);
        }
        match u32::try_from(*w) {
            Ok(w) if w <= MAX_WEIGHT => {
                service.versions.insert(v.clone(), w);
            }
            _ => errs.push(origin, f, format!("{w} is out of range 0..={MAX_WEIGHT}")),
        }
    }
    if !service.versions.is_empty() {
        for (i, b) in service.backends.iter().enumerate() {
            match &b.version {
                Some(v) if service.versions.contains_key(v) => {}
                Some(v) => errs.push(
                    origin,
                    format!("{field}.backends[{i}].version"),
                    format!("version {v:?} is not in {field}.versions"),
                ),
                None => errs.push(
                    origin,
                    format!("{field}.backends[{i}].version"),
                    "with versions set, every backend names its version",
                ),
            }
        }
    }
    if let Some(t) = &s.slow_start {
        match duration::parse(t) {
            Ok(d) => service.slow_start = d,
            Err(e) => errs.push(origin, format!("{field}.slow_start"), e),
        }
    }
    if let Some(c) = s.canary {
        service.canary = validate_canary(c, &service.versions, origin, &format!("{field}.canary"), errs);
    }
    if let Some(m) = s.mirror {
        service.mirror =
            crate::mirror::validate_mirror(m, &service.versions, origin, &format!("{field}.mirror"), errs);
    }
    if let Some(sc) = s.scale {
        service.scale = Some(validate_scale(sc, origin, &format!("{field}.scale"), errs));
    }
    if let Some(st) = s.sticky {
        service.sticky = validate_sticky(st, origin, &format!("{field}.sticky"), errs);
    }
    if let Some(v) = &s.proxy_protocol {
        let f = format!("{field}.proxy_protocol");
        match v.as_str() {
            "v1" => service.proxy_protocol = Some(SendProxyProtocol::V1),
            "v2" => service.proxy_protocol = Some(SendProxyProtocol::V2),
            other => errs.push(
                origin,
                &f,
                format!("{other:?} is not a PROXY protocol version (\"v1\" or \"v2\")"),
            ),
        }
        if service
            .backends
            .iter()
            .any(|b| b.url.scheme == crate::Scheme::H2c)
        {
            errs.push(
                origin,
                f,
                "needs http:// backends: an h2c connection is shared by many clients, a PROXY header names one",
            );
        }
    }
    (errs.0.len() == before).then_some(service)
}

fn parse_policy(
    policy: Option<&str>,
    hash_on: Option<&str>,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Policy {
    let p = match policy.unwrap_or("round_robin") {
        "round_robin" | "wrr" => Policy::RoundRobin,
        "least_request" => Policy::LeastRequest,
        "hash" => match hash_on {
            Some(h) => match parse_hash_on(h) {
                Ok(h) => return Policy::Hash(h),
                Err(e) => {
                    errs.push(origin, format!("{field}.hash_on"), e);
                    return Policy::RoundRobin;
                }
            },
            None => {
                errs.push(
                    origin,
                    format!("{field}.hash_on"),
                    "policy \"hash\" needs hash_on = \"header:NAME\", \"cookie:NAME\" or \"client_ip\"",
                );
                return Policy::RoundRobin;
            }
        },
        other => {
            errs.push(
                origin,
                format!("{field}.policy"),
                format!("unknown policy {other:?} (use round_robin, least_request or hash)"),
            );
            Policy::RoundRobin
        }
    };
    if hash_on.is_some() {
        errs.push(
            origin,
            format!("{field}.hash_on"),
            "hash_on only applies to policy = \"hash\"",
        );
    }
    p
}

pub fn validate_timeouts(t: FileTimeouts, origin: &str, field: &str, errs: &mut Errors) -> Timeouts {
    let mut out = Timeouts::default();
    for (name, text, slot) in [
        ("connect", &t.connect, &mut out.connect),
        ("response_header", &t.response_header, &mut out.response_header),
        ("idle", &t.idle, &mut out.idle),
    ] {
        if let Some(text) = text {
            match duration::parse(text) {
                Ok(d) if d.is_zero() => {
                    errs.push(origin, format!("{field}.{name}"), "must be greater than zero")
                }
                Ok(d) => *slot = d,
                Err(e) => errs.push(origin, format!("{field}.{name}"), e),
            }
        }
    }
    out
}

pub fn validate_retries(r: FileRetries, origin: &str, field: &str, errs: &mut Errors) -> Retries {
    let d = Retries::default();
    Retries {
        attempts: bounded(
            r.attempts,
            d.attempts,
            0,
            10,
            origin,
            format!("{field}.attempts"),
            errs,
        ),
        budget_percent: bounded(
            r.budget_percent,
            d.budget_percent,
            0,
            100,
            origin,
            format!("{field}.budget_percent"),
            errs,
        ),
        min_per_second: bounded(
            r.min_per_second,
            d.min_per_second,
            0,
            100_000,
            origin,
            format!("{field}.min_per_second"),
            errs,
        ),
    }
}

pub fn validate_limits(l: FileLimits, origin: &str, field: &str, errs: &mut Errors) -> Limits {
    let d = Limits::default();
    let f = |name: &str| format!("{field}.{name}");
    Limits {
        max_connections_per_backend: bounded(
            l.max_connections_per_backend,
            d.max_connections_per_backend,
            1,
            1_000_000,
            origin,
            f("max_connections_per_backend"),
            errs,
        ),
        max_idle_per_backend: bounded(
            l.max_idle_per_backend,
            d.max_idle_per_backend,
            0,
            1_000_000,
            origin,
            f("max_idle_per_backend"),
            errs,
        ),
        max_pending_requests: bounded(
            l.max_pending_requests,
            d.max_pending_requests,
            1,
            1_000_000,
            origin,
            f("max_pending_requests"),
            errs,
        ),
        max_pending_requests_per_backend: bounded(
            l.max_pending_requests_per_backend,
            d.max_pending_requests_per_backend,
            1,
            1_000_000,
            origin,
            f("max_pending_requests_per_backend"),
            errs,
        ),
    }
}

#[cfg(test)]
mod sticky_tests {
    use super::*;

    #[test]
    fn sticky_cookies_have_token_names_and_a_same_site_browsers_keep() {
        let read = |f: FileSticky| {
            let mut errs = Errors::new();
            (
                validate_sticky(f, "gantry.toml", "services.web.sticky", &mut errs),
                errs.to_string(),
            )
        };
        let (s, errs) = read(FileSticky::default());
        assert_eq!(
            s,
            Some(Sticky {
                cookie: DEFAULT_STICKY_COOKIE.into(),
                secure: false,
                http_only: true,
                same_site: "Lax"
            }),
            "{errs}"
        );
        let (s, _) = read(FileSticky {
            cookie: Some("srv".into()),
            secure: Some(true),
            same_site: Some("None".into()),
            ..Default::default()
        });
        assert_eq!(s.map(|s| (s.cookie, s.same_site)), Some(("srv".into(), "None")));
        for (bad, field) in [
            (
                FileSticky {
                    cookie: Some("a b".into()),
                    ..Default::default()
                },
                "services.web.sticky.cookie",
            ),
            (
                FileSticky {
                    same_site: Some("none".into()),
                    ..Default::default()
                },
                "services.web.sticky.same_site",
            ),
            (
                FileSticky {
                    same_site: Some("sometimes".into()),
                    ..Default::default()
                },
                "services.web.sticky.same_site",
            ),
        ] {
            let (s, errs) = read(bad);
            assert!(s.is_none() && errs.contains(field), "{errs}");
        }
    }
}
