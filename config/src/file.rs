//! Raw configuration as parsed from TOML (and, with the same shapes, from etcd JSON), and its
//! validation into [`StaticConfig`] (what is fixed at start) and a [`DesiredState`]
//! (routers and services; the slices `router`, `service`… validate their parts).
//!
//! Raw types accept anything serde can read and refuse unknown fields; validation then checks
//! every value and reports all problems at once, each with its origin and dotted field path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::check_name;
use crate::docker::{DockerConfig, FileDocker, validate_docker, validate_swarm};
use crate::duration;
use crate::error::Errors;
use crate::listener::{
    Entrypoint, FileEntrypoint, FileListenerLimits, validate_entrypoint_tls, validate_listener_limits,
    validate_trusted_ips,
};
use crate::router::FileRouter;
use crate::service::FileService;
use crate::state::{DesiredState, validate_state};
use crate::tls::{Certificate, TlsCertificates};

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
    pub swarm: Option<FileDocker>,
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub routers: BTreeMap<String, FileRouter>,
    #[serde(default)]
    pub services: BTreeMap<String, FileService>,
    #[serde(default)]
    pub middlewares: BTreeMap<String, crate::middleware::FileMiddleware>,
    #[serde(default)]
    pub rollouts: BTreeMap<String, crate::rollout::FileRollout>,
    pub access_log: Option<crate::access_log::FileAccessLog>,
    pub tracing: Option<crate::traces::FileTracing>,
    #[serde(default)]
    pub acme: BTreeMap<String, crate::acme::FileAcme>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLifecycle {
    pub drain_timeout: Option<String>,
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

/// The parts of a validated config file.
#[derive(Clone, Debug, PartialEq)]
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
            .is_some_and(|t| !t.certificates.is_empty() || t.default.is_some())
            || !self.acme.is_empty();
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
                    "TLS needs at least one certificate in [[tls.certificates]] or an [acme.<name>] resolver",
                );
            }
            let limits = validate_listener_limits(
                ep.limits.as_ref().unwrap_or(&FileListenerLimits::default()),
                origin,
                &format!("{field}.limits"),
                &mut errs,
            );
            let trusted_ips = validate_trusted_ips(
                ep.trusted_ips.as_deref().unwrap_or_default(),
                origin,
                &format!("{field}.trusted_ips"),
                &mut errs,
            );
            let proxy_protocol = ep.proxy_protocol.unwrap_or(false);
            if proxy_protocol && trusted_ips.is_empty() {
                errs.push(
                    origin,
                    format!("{field}.proxy_protocol"),
                    "needs trusted_ips: the balancers allowed to send PROXY headers (from anyone else they close the connection)",
                );
            }
            match ep.address.parse::<SocketAddr>() {
                Ok(address) => entrypoints.push(Entrypoint {
                    name: name.clone(),
                    address,
                    tls,
                    limits,
                    trusted_ips,
                    proxy_protocol,
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
        let swarm = self.swarm.as_ref().map(|d| validate_swarm(d, origin, &mut errs));
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
        let access_log = self
            .access_log
            .map(|a| crate::access_log::validate_access_log(a, origin, &mut errs));
        let tracing = self
            .tracing
            .map(|t| crate::traces::validate_tracing(t, origin, &mut errs));
        let acme = crate::acme::validate_acme(self.acme, origin, &mut errs);
        let mut state = match validate_state(self.routers, self.services, self.middlewares, origin, read) {
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
                swarm,
                admin_token_file,
                rollouts,
                access_log,
                tracing,
                acme,
            },
            state,
        })
    }
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

#[cfg(test)]
mod tests;
/// Settings read once at start-up: changing them needs a restart, as with Traefik's static
/// configuration (sockets cannot be re-bound under live connections without surprises).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StaticConfig {
    pub entrypoints: Vec<Entrypoint>,
    pub admin: SocketAddr,
    /// After SIGTERM, how long in-flight requests may take to finish before Gantry exits anyway.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub drain_timeout: Duration,
    /// The Docker source, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerConfig>,
    /// The Swarm source, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<DockerConfig>,
    /// The bearer token admin writes require is read from this file (or `GANTRY_ADMIN_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Rollouts declared in the file, started when Gantry starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<crate::rollout::RolloutSpec>,
    /// The access log, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Span export, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::traces::Tracing>,
    /// ACME certificate resolvers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acme: Vec<crate::acme::AcmeResolver>,
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
            swarm: None,
            admin_token_file: None,
            rollouts: Vec::new(),
            access_log: None,
            tracing: None,
            acme: Vec::new(),
        }
    }
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
}
