//! Raw configuration as parsed from TOML (and, with the same shapes, from etcd JSON), and its
//! validation into the types of `model`.
//!
//! Raw types accept anything serde can read and refuse unknown fields; validation then checks
//! every value and reports all problems at once, each with its origin and dotted field path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::error::Errors;
use crate::model::{
    Backend, BackendUrl, Canary, DEFAULT_ADMIN, DEFAULT_DRAIN_TIMEOUT, DEFAULT_ENTRYPOINT, DEFAULT_LISTEN,
    DEFAULT_MAX_BODY_BYTES, DesiredState, Entrypoint, EntrypointTls, HashOn, HeaderMatch, HealthCheck,
    HostPattern, Limits, ListenerLimits, MAX_WEIGHT, Match, Milli, Outlier, Override, PathMatch, Policy,
    Retries, Router, Scale, Scheme, Service, StaticConfig, Timeouts, TlsVersion,
};
use crate::size::FileSize;
use crate::tls::{Certificate, TlsCertificates};
use crate::{duration, rule};

/// Reads a file named in the config (a certificate, a key), relative to the config file.
/// Validation is pure: the caller decides how files are read.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>, String>;

/// For configs that name no files.
pub fn no_files(path: &str) -> Result<Vec<u8>, String> {
    Err(format!(
        "cannot read {path}: this config source cannot refer to files"
    ))
}

/// A whole config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub entrypoints: BTreeMap<String, FileEntrypoint>,
    pub admin: Option<FileAdmin>,
    pub lifecycle: Option<FileLifecycle>,
    pub docker: Option<FileDocker>,
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub routers: BTreeMap<String, FileRouter>,
    #[serde(default)]
    pub services: BTreeMap<String, FileService>,
    #[serde(default)]
    pub rollouts: BTreeMap<String, crate::rollout::FileRollout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntrypoint {
    pub address: String,
    /// Present (even empty: `tls = {}`) means TLS is terminated on this entrypoint.
    pub tls: Option<FileEntrypointTls>,
    pub limits: Option<FileListenerLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntrypointTls {
    pub min_version: Option<String>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerLimits {
    pub max_connections: Option<i64>,
    pub max_header_bytes: Option<FileSize>,
    pub max_headers: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub h2_max_concurrent_streams: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLifecycle {
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDocker {
    pub endpoint: Option<String>,
    /// "ip" or "published".
    pub address: Option<String>,
    pub network: Option<String>,
    pub exposed_by_default: Option<bool>,
    pub grace: Option<String>,
    pub reserved_hosts: Option<Vec<String>>,
    /// Act on scaling recommendations (create and remove replicas).
    pub scale: Option<bool>,
}

fn validate_docker(d: &FileDocker, origin: &str, errs: &mut Errors) -> crate::model::DockerConfig {
    let mut out = crate::model::DockerConfig {
        endpoint: d.endpoint.clone(),
        network: d.network.clone(),
        ..Default::default()
    };
    match d.address.as_deref() {
        None | Some("ip") => {}
        Some("published") => out.published = true,
        Some(a) => errs.push(
            origin,
            "docker.address",
            format!("{a:?}: use \"ip\" or \"published\""),
        ),
    }
    if let Some(e) = d.exposed_by_default {
        out.exposed_by_default = e;
    }
    out.scale = d.scale.unwrap_or(false);
    out.grace = duration_or(&d.grace, out.grace, origin, "docker.grace".into(), errs);
    for (i, h) in d.reserved_hosts.iter().flatten().enumerate() {
        match parse_host_pattern(h) {
            Ok(p) => out.reserved_hosts.push(p.to_string()),
            Err(e) => errs.push(origin, format!("docker.reserved_hosts[{i}]"), e),
        }
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    #[serde(default)]
    pub certificates: Vec<FileCert>,
    pub default: Option<FileCert>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub address: Option<String>,
    /// A file holding the bearer token that admin writes require.
    pub token_file: Option<String>,
}

/// A router as written. Either `rule` (Traefik-style expression) or the structured fields.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouter {
    pub entrypoints: Option<Vec<String>>,
    pub rule: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub query: Option<BTreeMap<String, String>>,
    pub priority: Option<i64>,
    pub strip_prefix: Option<bool>,
    pub service: Option<String>,
    pub max_body_bytes: Option<FileSize>,
    pub redirect_https: Option<bool>,
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
}

/// `[services.<name>.scale]`, and the `gantry.scale.*` labels.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileScale {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub target: Option<f64>,
    pub utilization: Option<f64>,
    pub window: Option<String>,
    pub burst_window: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCanary {
    pub stable: Option<String>,
    pub sticky: Option<String>,
    #[serde(default)]
    pub overrides: Vec<FileOverride>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOverride {
    pub on: Option<String>,
    pub value: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub expected_statuses: Option<Vec<FileStatus>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub trust_source_health: Option<bool>,
}

/// `200` or `"200-399"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FileStatus {
    Code(i64),
    Range(String),
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    pub consecutive_failures: Option<i64>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub panic_threshold_percent: Option<i64>,
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
pub struct FileBackend {
    pub url: String,
    pub weight: Option<i64>,
    pub version: Option<String>,
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

/// The parts of a validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedFile {
    pub static_config: StaticConfig,
    pub state: DesiredState,
}

/// Parses TOML text. `origin` (usually the file path) prefixes every error.
pub fn parse_toml(text: &str, origin: &str) -> Result<FileConfig, Errors> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let mut errs = Errors::new();
        let reason = e.message().trim().to_string();
        let field = match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("line {line}, column {col}")
            }
            None => String::new(),
        };
        errs.push(origin, field, reason);
        errs
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses and validates a config file's text in one step (a config that names no files).
pub fn load(text: &str, origin: &str) -> Result<ValidatedFile, Errors> {
    load_with(text, origin, &no_files)
}

/// Parses and validates, reading the certificate and key files the config names with `read`.
pub fn load_with(text: &str, origin: &str, read: ReadFile<'_>) -> Result<ValidatedFile, Errors> {
    parse_toml(text, origin)?.validate(origin, read)
}

impl FileConfig {
    pub fn validate(self, origin: &str, read: ReadFile<'_>) -> Result<ValidatedFile, Errors> {
        let mut errs = Errors::new();

        let has_certificates = self
            .tls
            .as_ref()
            .is_some_and(|t| !t.certificates.is_empty() || t.default.is_some());
        let mut entrypoints = Vec::new();
        for (name, ep) in &self.entrypoints {
            let field = format!("entrypoints.{name}");
            check_name(&mut errs, origin, &field, name);
            let tls = ep
                .tls
                .as_ref()
                .map(|t| validate_entrypoint_tls(t, origin, &format!("{field}.tls"), &mut errs));
            if tls.is_some() && !has_certificates {
                errs.push(
                    origin,
                    format!("{field}.tls"),
                    "TLS needs at least one certificate in [[tls.certificates]]",
                );
            }
            let limits = validate_listener_limits(
                ep.limits.as_ref().unwrap_or(&FileListenerLimits::default()),
                origin,
                &format!("{field}.limits"),
                &mut errs,
            );
            match ep.address.parse::<SocketAddr>() {
                Ok(address) => entrypoints.push(Entrypoint {
                    name: name.clone(),
                    address,
                    tls,
                    limits,
                }),
                Err(_) => errs.push(
                    origin,
                    format!("{field}.address"),
                    format!(
                        "{:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")",
                        ep.address
                    ),
                ),
            }
        }
        if entrypoints.is_empty()
            && self.entrypoints.is_empty()
            && let Ok(address) = DEFAULT_LISTEN.parse()
        {
            entrypoints.push(Entrypoint::new(DEFAULT_ENTRYPOINT, address));
        }
        let drain_timeout = match self.lifecycle.as_ref().and_then(|l| l.drain_timeout.as_deref()) {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(t) => match duration::parse(t) {
                Ok(d) => d,
                Err(e) => {
                    errs.push(origin, "lifecycle.drain_timeout", e);
                    DEFAULT_DRAIN_TIMEOUT
                }
            },
        };
        let tls = match &self.tls {
            Some(t) => validate_tls(t, origin, read, &mut errs),
            None => TlsCertificates::default(),
        };
        let docker = self
            .docker
            .as_ref()
            .map(|d| validate_docker(d, origin, &mut errs));
        let admin_text = self
            .admin
            .as_ref()
            .and_then(|a| a.address.as_deref())
            .unwrap_or(DEFAULT_ADMIN);
        let admin = match admin_text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errs.push(
                    origin,
                    "admin.address",
                    format!("{admin_text:?} is not an IP:port address"),
                );
                StaticConfig::default().admin
            }
        };

        let admin_token_file = self
            .admin
            .as_ref()
            .and_then(|a| a.token_file.clone())
            .map(std::path::PathBuf::from);
        let mut rollouts = Vec::new();
        for (service, r) in self.rollouts {
            let field = format!("rollouts.{service}");
            check_name(&mut errs, origin, &field, &service);
            rollouts.extend(r.validate(&service, origin, &field, &mut errs));
        }
        let mut state = match validate_state(self.routers, self.services, origin) {
            Ok(s) => s,
            Err(e) => {
                errs.extend(e);
                DesiredState::default()
            }
        };
        state.tls = tls;
        errs.into_result(ValidatedFile {
            static_config: StaticConfig {
                entrypoints,
                admin,
                drain_timeout,
                docker,
                admin_token_file,
                rollouts,
            },
            state,
        })
    }
}

fn validate_entrypoint_tls(
    t: &FileEntrypointTls,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> EntrypointTls {
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(v) => {
            errs.push(
                origin,
                format!("{field}.min_version"),
                format!("{v:?} is not supported: use \"1.2\" or \"1.3\" (older versions are insecure)"),
            );
            TlsVersion::V1_2
        }
    };
    EntrypointTls {
        min_version,
        http2: t.http2.unwrap_or(true),
    }
}

fn validate_listener_limits(
    l: &FileListenerLimits,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> ListenerLimits {
    let mut out = ListenerLimits::default();
    let mut int = |name: &str, v: Option<i64>, slot: &mut u32, min: i64, max: i64| {
        if let Some(v) = v {
            if (min..=max).contains(&v) {
                *slot = v as u32;
            } else {
                errs.push(
                    origin,
                    format!("{field}.{name}"),
                    format!("{v} is out of range {min}..={max}"),
                );
            }
        }
    };
    int(
        "max_connections",
        l.max_connections,
        &mut out.max_connections,
        1,
        1_000_000,
    );
    int("max_headers", l.max_headers, &mut out.max_headers, 1, 1000);
    int(
        "h2_max_concurrent_streams",
        l.h2_max_concurrent_streams,
        &mut out.h2_max_concurrent_streams,
        1,
        10_000,
    );
    if let Some(size) = &l.max_header_bytes {
        // hyper needs room for at least 8 KiB of head.
        match size.bytes() {
            Ok(n) if (8192..=16 << 20).contains(&n) => out.max_header_bytes = n as u32,
            Ok(n) => errs.push(
                origin,
                format!("{field}.max_header_bytes"),
                format!("{n} is out of range 8KiB..=16MiB"),
            ),
            Err(e) => errs.push(origin, format!("{field}.max_header_bytes"), e),
        }
    }
    for (name, text, slot) in [
        (
            "header_read_timeout",
            &l.header_read_timeout,
            &mut out.header_read_timeout,
        ),
        ("idle_timeout", &l.idle_timeout, &mut out.idle_timeout),
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

fn validate_tls(t: &FileTls, origin: &str, read: ReadFile<'_>, errs: &mut Errors) -> TlsCertificates {
    let mut load = |c: &FileCert, field: String| -> Option<Certificate> {
        let cert = read(&c.cert)
            .map_err(|e| errs.push(origin, format!("{field}.cert"), e))
            .ok()?;
        let key = read(&c.key)
            .map_err(|e| errs.push(origin, format!("{field}.key"), e))
            .ok()?;
        Certificate::from_pem(&c.cert, cert, &c.key, key)
            .map_err(|e| errs.push(origin, field, e))
            .ok()
    };
    let certificates = t
        .certificates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| load(c, format!("tls.certificates[{i}]")))
        .collect();
    let default = t.default.as_ref().and_then(|c| load(c, "tls.default".into()));
    TlsCertificates {
        certificates,
        default,
    }
}

/// Validates routers and services together (a router must name a service that exists in the
/// same input or, once merged, in another source; that cross-check happens at compile time).
pub fn validate_state(
    routers: BTreeMap<String, FileRouter>,
    services: BTreeMap<String, FileService>,
    origin: &str,
) -> Result<DesiredState, Errors> {
    let mut errs = Errors::new();
    let mut state = DesiredState::default();
    for (name, r) in routers {
        let field = format!("routers.{name}");
        if let Some(router) = validate_router(r, origin, &field, &name, &mut errs) {
            state.routers.insert(name, router);
        }
    }
    for (name, s) in services {
        let field = format!("services.{name}");
        if let Some(service) = validate_service(s, origin, &field, &name, &mut errs) {
            state.services.insert(name, service);
        }
    }
    errs.into_result(state)
}

/// Names of routers, services and entrypoints appear in metrics labels, URLs of the admin API
/// and etcd keys, so they are kept to a safe alphabet.
pub fn check_name(errs: &mut Errors, origin: &str, field: &str, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(
            origin,
            field,
            format!("name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    ok
}

pub fn validate_router(
    r: FileRouter,
    origin: &str,
    field: &str,
    name: &str,
    errs: &mut Errors,
) -> Option<Router> {
    let before = errs.0.len();
    check_name(errs, origin, field, name);
    let structured = r.hosts.is_some()
        || r.path.is_some()
        || r.path_prefix.is_some()
        || r.methods.is_some()
        || r.headers.is_some()
        || r.query.is_some();
    let mut matcher = Match::default();
    if let Some(text) = &r.rule {
        if structured {
            errs.push(
                origin,
                format!("{field}.rule"),
                "use either `rule` or the fields hosts/path/path_prefix/methods/headers/query, not both",
            );
        }
        match rule::parse(text) {
            Ok(m) => matcher = m,
            Err(e) => errs.push(origin, format!("{field}.rule"), e),
        }
    } else {
        for (i, h) in r.hosts.iter().flatten().enumerate() {
            match parse_host_pattern(h) {
                Ok(p) => matcher.hosts.push(p),
                Err(e) => errs.push(origin, format!("{field}.hosts[{i}]"), e),
            }
        }
        match (&r.path, &r.path_prefix) {
            (Some(_), Some(_)) => errs.push(
                origin,
                format!("{field}.path"),
                "set either `path` or `path_prefix`, not both",
            ),
            (Some(p), None) => match check_path(p) {
                Ok(()) => matcher.path = Some(PathMatch::Exact(p.clone())),
                Err(e) => errs.push(origin, format!("{field}.path"), e),
            },
            (None, Some(p)) => match check_path(p) {
                Ok(()) => matcher.path = Some(PathMatch::Prefix(p.clone())),
                Err(e) => errs.push(origin, format!("{field}.path_prefix"), e),
            },
            (None, None) => {}
        }
        for (i, m) in r.methods.iter().flatten().enumerate() {
            match parse_method(m) {
                Ok(m) => matcher.methods.push(m),
                Err(e) => errs.push(origin, format!("{field}.methods[{i}]"), e),
            }
        }
        for (k, v) in r.headers.iter().flatten() {
            match parse_header_match(k, v) {
                Ok(h) => matcher.headers.push(h),
                Err(e) => errs.push(origin, format!("{field}.headers.{k}"), e),
            }
        }
        for (k, v) in r.query.iter().flatten() {
            if k.is_empty() {
                errs.push(origin, format!("{field}.query"), "empty query parameter name");
            } else {
                matcher.query.push((k.clone(), v.clone()));
            }
        }
    }
    normalize_match(&mut matcher);

    let priority = match r.priority {
        None => 0,
        Some(p) => match i32::try_from(p) {
            Ok(p) => p,
            Err(_) => {
                errs.push(
                    origin,
                    format!("{field}.priority"),
                    format!("{p} is out of range"),
                );
                0
            }
        },
    };
    let max_body_bytes = match &r.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(size) => match size.bytes() {
            Ok(n) => n,
            Err(e) => {
                errs.push(origin, format!("{field}.max_body_bytes"), e);
                0
            }
        },
    };
    let redirect_https = r.redirect_https.unwrap_or(false);
    let strip_prefix = r.strip_prefix.unwrap_or(false);
    if strip_prefix && !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
        errs.push(
            origin,
            format!("{field}.strip_prefix"),
            "strip_prefix needs a path prefix to strip",
        );
    }
    let mut entrypoints = Vec::new();
    for (i, ep) in r.entrypoints.iter().flatten().enumerate() {
        if check_name(errs, origin, &format!("{field}.entrypoints[{i}]"), ep) {
            entrypoints.push(ep.clone());
        }
    }
    entrypoints.sort();
    entrypoints.dedup();
    let service = match r.service {
        Some(s) => {
            check_name(errs, origin, &format!("{field}.service"), &s);
            s
        }
        None => {
            errs.push(
                origin,
                format!("{field}.service"),
                "missing: a router must name its service",
            );
            String::new()
        }
    };
    (errs.0.len() == before).then_some(Router {
        max_body_bytes,
        redirect_https,
        entrypoints,
        matcher,
        priority,
        strip_prefix,
        service,
    })
}

/// Sorts and dedups every list so that the same meaning compares equal. A path prefix of `/`
/// matches every request, so it is the same as no path condition and ranks like one.
pub fn normalize_match(m: &mut Match) {
    if matches!(&m.path, Some(PathMatch::Prefix(p)) if p == "/") {
        m.path = None;
    }
    m.hosts.sort();
    m.hosts.dedup();
    m.methods.sort();
    m.methods.dedup();
    m.headers
        .sort_by(|a, b| (a.name.as_str(), &a.value).cmp(&(b.name.as_str(), &b.value)));
    m.headers.dedup();
    m.query.sort();
    m.query.dedup();
}

pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let h = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, h.clone()),
    };
    if name.is_empty() {
        return Err(format!("host {text:?} is empty"));
    }
    if name.contains('*') {
        return Err(format!(
            "host {text:?}: a wildcard is only allowed as a leading `*.`"
        ));
    }
    let is_ipv6 = name.starts_with('[') && name.ends_with(']');
    if !is_ipv6 && name.contains(':') {
        return Err(format!(
            "host {text:?} must not carry a port: hosts match without it"
        ));
    }
    let ok = is_ipv6
        || name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!("host {text:?} is not a valid host name"));
    }
    Ok(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    if p.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
    {
        return Err(format!(
            "path {p:?} must not contain spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

pub fn parse_method(m: &str) -> Result<String, String> {
    let up = m.trim().to_ascii_uppercase();
    if up.is_empty() || http::Method::from_bytes(up.as_bytes()).is_err() {
        return Err(format!("{m:?} is not an HTTP method"));
    }
    Ok(up)
}

pub fn parse_header_match(name: &str, value: &str) -> Result<HeaderMatch, String> {
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    Ok(HeaderMatch {
        name,
        value: value.to_string(),
    })
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
    if let Some(sc) = s.scale {
        service.scale = Some(validate_scale(sc, origin, &format!("{field}.scale"), errs));
    }
    (errs.0.len() == before).then_some(service)
}

pub fn validate_backend(b: FileBackend, origin: &str, field: &str, errs: &mut Errors) -> Option<Backend> {
    let before = errs.0.len();
    let url = match parse_backend_url(&b.url) {
        Ok(u) => Some(u),
        Err(e) => {
            errs.push(origin, format!("{field}.url"), e);
            None
        }
    };
    let weight = match b.weight {
        None => 1,
        Some(w) if (0..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
        Some(w) => {
            errs.push(
                origin,
                format!("{field}.weight"),
                format!("{w} is out of range 0..={MAX_WEIGHT}"),
            );
            0
        }
    };
    let version = match b.version {
        Some(v) => match check_version(&v) {
            Ok(()) => Some(v),
            Err(e) => {
                errs.push(origin, format!("{field}.version"), e);
                None
            }
        },
        None => None,
    };
    match url {
        Some(url) if errs.0.len() == before => Some(Backend {
            url,
            weight,
            version,
            source_healthy: false,
        }),
        _ => None,
    }
}

/// The `scale` table of a service. Scaling to zero is not supported (a request would have
/// nowhere to wait for a replica), so `min` is at least 1.
pub fn validate_scale(s: FileScale, origin: &str, field: &str, errs: &mut Errors) -> Scale {
    let d = Scale::default();
    let min = bounded(s.min, d.min, 1, 1000, origin, format!("{field}.min"), errs);
    let max = bounded(
        s.max,
        d.max.max(min),
        1,
        1000,
        origin,
        format!("{field}.max"),
        errs,
    );
    if min > max {
        errs.push(
            origin,
            format!("{field}.min"),
            format!("{min} is above {field}.max {max}"),
        );
    }
    let mut real = |v: Option<f64>, default: f64, lo: f64, hi: f64, name: &str| match v {
        None => Milli::from_f64(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Milli::from_f64(v),
        Some(v) => {
            errs.push(
                origin,
                format!("{field}.{name}"),
                format!("{v} is out of range {lo}..={hi}"),
            );
            Milli::from_f64(default)
        }
    };
    let target = real(s.target, Scale::DEFAULT_TARGET, 0.01, 1e6, "target");
    let utilization = real(
        s.utilization,
        Scale::DEFAULT_UTILIZATION,
        0.01,
        1.0,
        "utilization",
    );
    let window = duration_or(&s.window, d.window, origin, format!("{field}.window"), errs);
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&window) {
        errs.push(
            origin,
            format!("{field}.window"),
            format!("{} is out of range 2s..=1h", duration::format(window)),
        );
    }
    // Knative's default: a tenth of the window, at least a second.
    let burst_default = (window / 10).max(Duration::from_secs(1)).min(window);
    let burst_window = duration_or(
        &s.burst_window,
        burst_default,
        origin,
        format!("{field}.burst_window"),
        errs,
    );
    if burst_window.is_zero() || burst_window > window {
        errs.push(
            origin,
            format!("{field}.burst_window"),
            format!(
                "{} must be above zero and at most the window ({})",
                duration::format(burst_window),
                duration::format(window)
            ),
        );
    }
    Scale {
        min,
        max,
        target,
        utilization,
        window,
        burst_window,
    }
}

/// The `canary` table of a service. Versions named here must be among `versions` when the
/// service declares them (weights set from elsewhere may bring others).
pub fn validate_canary(
    c: FileCanary,
    versions: &BTreeMap<String, u32>,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Canary {
    let known = |v: &str, f: String, errs: &mut Errors| {
        if let Err(e) = check_version(v) {
            errs.push(origin, f, e);
        } else if !versions.is_empty() && !versions.contains_key(v) {
            errs.push(
                origin,
                f,
                format!(
                    "{v:?} is not one of the versions {:?}",
                    versions.keys().collect::<Vec<_>>()
                ),
            );
        }
    };
    let mut canary = Canary::default();
    if let Some(v) = c.stable {
        known(&v, format!("{field}.stable"), errs);
        canary.stable = Some(v);
    }
    if let Some(s) = c.sticky {
        match parse_hash_on(&s) {
            Ok(on) => canary.sticky = Some(on),
            Err(e) => errs.push(origin, format!("{field}.sticky"), e),
        }
    }
    for (i, o) in c.overrides.into_iter().enumerate() {
        let f = format!("{field}.overrides[{i}]");
        let on = match o.on.as_deref().map(parse_hash_on) {
            Some(Ok(HashOn::ClientIp)) => {
                errs.push(
                    origin,
                    format!("{f}.on"),
                    "an override matches \"header:NAME\" or \"cookie:NAME\"",
                );
                continue;
            }
            Some(Ok(on)) => on,
            Some(Err(e)) => {
                errs.push(origin, format!("{f}.on"), e);
                continue;
            }
            None => {
                errs.push(
                    origin,
                    format!("{f}.on"),
                    "missing: \"header:NAME\" or \"cookie:NAME\"",
                );
                continue;
            }
        };
        if let Some(v) = &o.version {
            known(v, format!("{f}.version"), errs);
        }
        canary.overrides.push(Override {
            on,
            value: o.value,
            version: o.version,
        });
    }
    canary
}

pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {v:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// `http://host[:port][/]`. The port defaults to 80.
pub fn parse_backend_url(text: &str) -> Result<BackendUrl, String> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("h2c") => Scheme::H2c,
        Some(other) => {
            return Err(format!(
                "{text:?}: scheme {other:?} is not supported (use http or h2c)"
            ));
        }
        None => return Err(format!("{text:?} needs a scheme, e.g. http://{text}")),
    };
    let authority = uri.authority().ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{text:?}: credentials in backend URLs are not supported"));
    }
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => {}
        Some(p) => {
            return Err(format!(
                "{text:?}: a backend URL cannot carry a path or query ({p:?})"
            ));
        }
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(format!("{text:?}: port 0 is not a port"));
    }
    Ok(BackendUrl { scheme, host, port })
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

pub fn parse_hash_on(text: &str) -> Result<HashOn, String> {
    let t = text.trim();
    if t == "client_ip" {
        return Ok(HashOn::ClientIp);
    }
    if let Some(h) = t.strip_prefix("header:") {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(HashOn::Header)
            .map_err(|_| format!("{h:?} is not a valid header name"));
    }
    if let Some(c) = t.strip_prefix("cookie:") {
        let c = c.trim();
        if c.is_empty() || c.bytes().any(|b| b.is_ascii_whitespace() || b"=;,".contains(&b)) {
            return Err(format!("{c:?} is not a valid cookie name"));
        }
        return Ok(HashOn::Cookie(c.to_string()));
    }
    Err(format!(
        "{t:?}: use \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
    ))
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

/// An integer field within a range, reported with its field path.
fn bounded(
    v: Option<i64>,
    default: u32,
    min: i64,
    max: i64,
    origin: &str,
    field: String,
    errs: &mut Errors,
) -> u32 {
    match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => v as u32,
        Some(v) => {
            errs.push(origin, field, format!("{v} is out of range {min}..={max}"));
            default
        }
    }
}

/// A duration field with a default, reported with its field path.
fn duration_or(
    text: &Option<String>,
    default: Duration,
    origin: &str,
    field: String,
    errs: &mut Errors,
) -> Duration {
    match text {
        None => default,
        Some(t) => match duration::parse(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(origin, field, "must be greater than zero");
                default
            }
            Err(e) => {
                errs.push(origin, field, e);
                default
            }
        },
    }
}

pub fn validate_health_check(
    h: FileHealthCheck,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> HealthCheck {
    let path = h.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        errs.push(
            origin,
            format!("{field}.path"),
            format!("{path:?} must start with '/' and contain no spaces"),
        );
    }
    let method = match h.method.as_deref().map(parse_method) {
        None => "GET".to_string(),
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.method"), e);
            "GET".into()
        }
    };
    let mut expected_statuses = Vec::new();
    for (i, s) in h.expected_statuses.unwrap_or_default().into_iter().enumerate() {
        let range = match s {
            FileStatus::Code(c) => u16::try_from(c).ok().map(|c| (c, c)),
            FileStatus::Range(r) => r
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        };
        match range {
            Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                expected_statuses.push((lo, hi))
            }
            _ => errs.push(
                origin,
                format!("{field}.expected_statuses[{i}]"),
                "expected a status code (200) or a range (\"200-399\") within 100..=599",
            ),
        }
    }
    if expected_statuses.is_empty() {
        expected_statuses.push((200, 399));
    }
    HealthCheck {
        method,
        path,
        host: h.host,
        expected_statuses,
        interval: duration_or(
            &h.interval,
            Duration::from_secs(5),
            origin,
            format!("{field}.interval"),
            errs,
        ),
        timeout: duration_or(
            &h.timeout,
            Duration::from_secs(2),
            origin,
            format!("{field}.timeout"),
            errs,
        ),
        healthy_threshold: bounded(
            h.healthy_threshold,
            2,
            1,
            100,
            origin,
            format!("{field}.healthy_threshold"),
            errs,
        ),
        unhealthy_threshold: bounded(
            h.unhealthy_threshold,
            3,
            1,
            100,
            origin,
            format!("{field}.unhealthy_threshold"),
            errs,
        ),
        trust_source_health: h.trust_source_health.unwrap_or(false),
    }
}

pub fn validate_outlier(o: FileOutlier, origin: &str, field: &str, errs: &mut Errors) -> Outlier {
    let d = Outlier::default();
    let out = Outlier {
        consecutive_failures: bounded(
            o.consecutive_failures,
            d.consecutive_failures,
            0,
            1000,
            origin,
            format!("{field}.consecutive_failures"),
            errs,
        ),
        base_ejection_time: duration_or(
            &o.base_ejection_time,
            d.base_ejection_time,
            origin,
            format!("{field}.base_ejection_time"),
            errs,
        ),
        max_ejection_time: duration_or(
            &o.max_ejection_time,
            d.max_ejection_time,
            origin,
            format!("{field}.max_ejection_time"),
            errs,
        ),
        max_ejection_percent: bounded(
            o.max_ejection_percent,
            d.max_ejection_percent,
            0,
            100,
            origin,
            format!("{field}.max_ejection_percent"),
            errs,
        ),
        panic_threshold_percent: bounded(
            o.panic_threshold_percent,
            d.panic_threshold_percent,
            0,
            100,
            origin,
            format!("{field}.panic_threshold_percent"),
            errs,
        ),
    };
    if out.max_ejection_time < out.base_ejection_time {
        errs.push(
            origin,
            format!("{field}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        );
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
mod tests;
