//! Container labels -> what one container declares. Pure: facts in, declaration and problems
//! out; the Docker source feeds it from the engine, the tests feed it by hand.
//!
//! ```text
//! aliyun.routing.port_2368: 'http://myblog;http://www.example.com/blog'   compact routes
//! gantry.routing.port_80:   'shop.example.com'                              same grammar
//! gantry.http.routers.<name>.rule | priority | service | entrypoints | strip_prefix
//!                           | redirect_https | max_body_bytes               full form
//! gantry.http.services.<name>.port | scheme | policy | hash_on | slow_start | proxy_protocol
//!                           | health_check.* | timeouts.* | outlier.* | retries.* | limits.*
//! gantry.http.middlewares.<name>.<type>.<option>                          middlewares
//! gantry.middlewares: 'a,b'  (the compact routes' middlewares)
//! gantry.enable  gantry.version  gantry.weight  gantry.docker.network  gantry.port
//! aliyun.scale  gantry.scale.min | max | target | utilization | window | burst_window | step
//! aliyun.rolling_updates (+ .parallelism): the scaler's step
//! aliyun.probe.url | timeout_seconds                                     health check
//! aliyun.routing.session_sticky                                           sticky cookie
//! ```
//!
//! In a routing label, a name without a dot (`wordpress`) is a domain prefix when the Docker
//! source has a default domain (`wordpress.<default_domain>`), as on Alibaba Cloud; names and
//! paths are at most 128 characters, as there. Other `aliyun.*` labels are reported as not
//! supported (each once per container), never ignored in silence.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use gantry_config::Errors;
use gantry_config::MAX_WEIGHT;
use gantry_config::canary::check_version;
use gantry_config::check::check_name;
use gantry_config::compact::compact_route;
use gantry_config::middleware::FileMiddleware;
use gantry_config::router::FileRouter;
use gantry_config::scale::FileScale;
use gantry_config::service::FileService;
use serde::de::DeserializeOwned;

/// What Docker says about a running container (from `inspect`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub health: DockerHealth,
    pub paused: bool,
    /// Network name -> the container's address on it.
    pub networks: BTreeMap<String, IpAddr>,
    /// Container TCP port -> host addresses it is published on.
    pub published: BTreeMap<u16, Vec<SocketAddr>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DockerHealth {
    /// No HEALTHCHECK.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A compact route: `host[/path]` served on a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecl {
    pub port: u16,
    pub host: String,
    pub path: Option<String>,
    /// Written as `https://`: plain HTTP is redirected.
    pub https: bool,
    /// The label it came from, for problem reports.
    pub label: String,
}

/// `aliyun.probe.url` (and `aliyun.probe.timeout_seconds`): the active health check of the
/// container's compact routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeDecl {
    /// The port the probe names; it must be the routed one (Gantry checks the backend it routes).
    pub port: Option<u16>,
    pub path: String,
    /// Seconds.
    pub timeout: Option<u32>,
}

/// A full-form service: its settings as written, and the container port it is served on.
#[derive(Clone, Debug)]
pub struct ServiceDecl {
    pub port: u16,
    pub h2c: bool,
    pub settings: FileService,
}

/// Scaling labels: the service's replica recommendation (and the scaler's bounds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScaleDecl {
    /// `aliyun.scale`: the initial and minimum replica count.
    pub initial: Option<u32>,
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Target concurrent requests per replica.
    pub target: Option<f64>,
    /// Target utilisation of that concurrency (0-1).
    pub utilization: Option<f64>,
    pub window: Option<String>,
    pub burst_window: Option<String>,
    /// How many replicas the scaler adds or removes per action (`gantry.scale.step`, or
    /// `aliyun.rolling_updates.parallelism` with `aliyun.rolling_updates: true`; default 1 with
    /// rolling updates on); none: all at once. Not a scaling setting by itself.
    pub step: Option<u32>,
}

impl ScaleDecl {
    /// The service's `scale` settings, when the container carries any scaling label.
    /// `aliyun.scale` is the minimum unless `gantry.scale.min` says otherwise.
    pub fn settings(&self) -> Option<FileScale> {
        let without_step = Self {
            step: None,
            ..self.clone()
        };
        if without_step == Self::default() {
            return None;
        }
        Some(FileScale {
            min: self.min.or(self.initial).map(i64::from),
            max: self.max.map(i64::from),
            target: self.target,
            utilization: self.utilization,
            window: self.window.clone(),
            burst_window: self.burst_window.clone(),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct ContainerDecl {
    pub enabled: bool,
    pub project: Option<String>,
    pub compose_service: Option<String>,
    pub version: Option<String>,
    pub weight: u32,
    pub network: Option<String>,
    pub routes: Vec<RouteDecl>,
    pub routers: BTreeMap<String, FileRouter>,
    pub services: BTreeMap<String, ServiceDecl>,
    /// `gantry.port`: the port of the default service full-form routers use.
    pub default_port: Option<u16>,
    pub scale: ScaleDecl,
    /// `gantry.http.middlewares.<name>.<type>.<option>`: declared here, usable by any router.
    pub middlewares: BTreeMap<String, FileMiddleware>,
    /// `gantry.middlewares=a,b`: the middlewares of the container's compact routes.
    pub route_middlewares: Vec<String>,
    /// `aliyun.probe.url`: the health check of the container's compact routes.
    pub probe: Option<ProbeDecl>,
    /// `aliyun.routing.session_sticky`: the compact routes' clients stay on their replica.
    pub session_sticky: bool,
}

/// Where problems of a container come from.
pub fn origin(container: &str) -> String {
    format!("docker container {container}")
}

fn label(key: &str) -> String {
    format!("label {key}")
}

/// The longest name or path a routing label may give (Alibaba Cloud's limit).
pub const MAX_ROUTE_PART: usize = 128;

/// Reads a container's labels. Problems are reported per label; a bad label is skipped and the
/// rest of the container is used. `default_domain`: what a bare name in a routing label is a
/// prefix of.
pub fn parse(
    f: &ContainerFacts,
    exposed_by_default: bool,
    default_domain: Option<&str>,
) -> (ContainerDecl, Errors) {
    let mut errs = Errors::new();
    let o = origin(&f.name);
    let mut d = ContainerDecl {
        enabled: exposed_by_default,
        project: f.labels.get("com.docker.compose.project").cloned(),
        compose_service: f.labels.get("com.docker.compose.service").cloned(),
        weight: 1,
        ..Default::default()
    };
    let mut routers: BTreeMap<String, toml::Table> = BTreeMap::new();
    let mut services: BTreeMap<String, toml::Table> = BTreeMap::new();
    let mut middlewares: BTreeMap<String, toml::Table> = BTreeMap::new();
    let mut probe_timeout = None;
    let (mut rolling, mut parallelism) = (None, None);
    for (key, value) in &f.labels {
        let rest = match (key.strip_prefix("gantry."), key.strip_prefix("aliyun.")) {
            (Some(r), _) => r,
            (None, Some(r)) => {
                if let Some(p) = r.strip_prefix("routing.port_") {
                    routes(&mut d, &mut errs, &o, key, p, value, default_domain);
                } else if r == "routing.session_sticky" {
                    d.session_sticky = boolean(&mut errs, &o, key, value).unwrap_or(d.session_sticky);
                } else if r == "scale" {
                    d.scale.initial = number(&mut errs, &o, key, value, 1, 1000);
                } else if r == "probe.url" {
                    match probe_url(value) {
                        Ok(p) => d.probe = Some(p),
                        Err(e) => errs.push(&o, label(key), e),
                    }
                } else if r == "probe.timeout_seconds" {
                    probe_timeout = number(&mut errs, &o, key, value, 1, 300);
                } else if r == "rolling_updates" {
                    rolling = boolean(&mut errs, &o, key, value);
                } else if r == "rolling_updates.parallelism" {
                    parallelism = number(&mut errs, &o, key, value, 1, 100);
                } else {
                    // The cloud's load balancer ports, logs, dependencies, global services,
                    // command probes and rolling updates: said, not silently dropped.
                    errs.push(&o, label(key), "not supported by Gantry; ignored");
                }
                continue;
            }
            _ => continue,
        };
        match rest {
            // Read by the Swarm source (`swarm`): how a service is reached.
            "swarm.address" if matches!(value.trim(), "tasks" | "vip") => {}
            "swarm.address" => errs.push(&o, label(key), format!("{value:?}: \"tasks\" or \"vip\"")),
            "enable" => d.enabled = boolean(&mut errs, &o, key, value).unwrap_or(d.enabled),
            "version" => match check_version(value.trim()) {
                Ok(()) => d.version = Some(value.trim().to_string()),
                Err(e) => errs.push(&o, label(key), e),
            },
            "weight" => d.weight = number(&mut errs, &o, key, value, 0, MAX_WEIGHT).unwrap_or(1),
            "docker.network" => d.network = Some(value.trim().to_string()),
            "port" => d.default_port = port(&mut errs, &o, key, value),
            "middlewares" => {
                d.route_middlewares = value
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "scale.min" => d.scale.min = number(&mut errs, &o, key, value, 1, 1000),
            "scale.max" => d.scale.max = number(&mut errs, &o, key, value, 1, 1000),
            "scale.target" => d.scale.target = float(&mut errs, &o, key, value, 0.01, 1e6),
            "scale.utilization" => d.scale.utilization = float(&mut errs, &o, key, value, 0.01, 1.0),
            "scale.window" => d.scale.window = duration(&mut errs, &o, key, value, 2.0, 3600.0),
            "scale.burst_window" => d.scale.burst_window = duration(&mut errs, &o, key, value, 0.1, 3600.0),
            "scale.step" => d.scale.step = number(&mut errs, &o, key, value, 1, 100),
            r if r.starts_with("routing.port_") => routes(
                &mut d,
                &mut errs,
                &o,
                key,
                &r["routing.port_".len()..],
                value,
                default_domain,
            ),
            r if r.starts_with("http.routers.") => full_form(
                &mut routers,
                &mut errs,
                &o,
                key,
                &r["http.routers.".len()..],
                value,
            ),
            r if r.starts_with("http.middlewares.") => full_form(
                &mut middlewares,
                &mut errs,
                &o,
                key,
                &r["http.middlewares.".len()..],
                value,
            ),
            r if r.starts_with("http.services.") => full_form(
                &mut services,
                &mut errs,
                &o,
                key,
                &r["http.services.".len()..],
                value,
            ),
            _ => errs.push(&o, label(key), "unknown gantry label"),
        }
    }
    match (&mut d.probe, probe_timeout) {
        (Some(p), t) => p.timeout = t,
        (None, Some(_)) => errs.push(
            &o,
            label("aliyun.probe.timeout_seconds"),
            "without aliyun.probe.url; ignored",
        ),
        (None, None) => {}
    }
    // Aliyun's rolling updates replace `parallelism` replicas at a time (1 by default): the
    // scaler's step. Off, replicas change all at once.
    match (rolling, parallelism) {
        (Some(false), _) => d.scale.step = None,
        (Some(true), p) => d.scale.step = d.scale.step.or(p).or(Some(1)),
        (None, Some(_)) => errs.push(
            &o,
            label("aliyun.rolling_updates.parallelism"),
            "needs aliyun.rolling_updates: true; ignored",
        ),
        (None, None) => {}
    }
    if let (Some(min), Some(max)) = (d.scale.min, d.scale.max)
        && min > max
    {
        errs.push(
            &o,
            label("gantry.scale.min"),
            format!("{min} is above gantry.scale.max {max}"),
        );
    }
    for (name, table) in routers {
        let prefix = format!("gantry.http.routers.{name}");
        if check_name(&mut errs, &o, &label(&prefix), &name)
            && let Some(r) = typed::<FileRouter>(table, &mut errs, &o, &prefix)
        {
            d.routers.insert(name, r);
        }
    }
    for (name, table) in middlewares {
        let prefix = format!("gantry.http.middlewares.{name}");
        if check_name(&mut errs, &o, &label(&prefix), &name)
            && let Some(m) = typed::<FileMiddleware>(table, &mut errs, &o, &prefix)
        {
            d.middlewares.insert(name, m);
        }
    }
    for (name, mut table) in services {
        let prefix = format!("gantry.http.services.{name}");
        if !check_name(&mut errs, &o, &label(&prefix), &name) {
            continue;
        }
        // Traefik spells the port loadbalancer.server.port; both are accepted.
        let lb_port = table
            .remove("loadbalancer")
            .and_then(|lb| lb.get("server").and_then(|s| s.get("port")).cloned());
        let port_value = table.remove("port").or(lb_port);
        let scheme = table.remove("scheme");
        if table.contains_key("backends") {
            errs.push(
                &o,
                label(&format!("{prefix}.backends")),
                "backends come from the containers themselves",
            );
            table.remove("backends");
        }
        let port = match port_value.or_else(|| d.default_port.map(|p| toml::Value::Integer(i64::from(p)))) {
            Some(toml::Value::Integer(p)) if (1..=65535).contains(&p) => p as u16,
            Some(v) => {
                errs.push(&o, label(&format!("{prefix}.port")), format!("{v} is not a port"));
                continue;
            }
            None => {
                errs.push(
                    &o,
                    label(&format!("{prefix}.port")),
                    "missing: which container port serves it?",
                );
                continue;
            }
        };
        let h2c = match scheme.as_ref().and_then(|v| v.as_str()) {
            None | Some("http") => false,
            Some("h2c") => true,
            Some(other) => {
                errs.push(
                    &o,
                    label(&format!("{prefix}.scheme")),
                    format!("{other:?}: use http or h2c"),
                );
                continue;
            }
        };
        if let Some(settings) = typed::<FileService>(table, &mut errs, &o, &prefix) {
            d.services.insert(name, ServiceDecl { port, h2c, settings });
        }
    }
    (d, errs)
}

/// `http://myblog;https://www.example.com/blog` on `port_<port>`.
fn routes(
    d: &mut ContainerDecl,
    errs: &mut Errors,
    o: &str,
    key: &str,
    port_text: &str,
    value: &str,
    default_domain: Option<&str>,
) {
    let Some(port) = port_text.parse::<u16>().ok().filter(|p| *p > 0) else {
        errs.push(o, label(key), format!("{port_text:?} is not a port number"));
        return;
    };
    if value.trim().is_empty() {
        // An empty value declares nothing: say so rather than route nothing in silence.
        errs.push(
            o,
            label(key),
            "empty: expected routes like http://example.com[/path]; ignored",
        );
        return;
    }
    for item in value.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        match compact_route(item) {
            Ok(r)
                if r.host.len() > MAX_ROUTE_PART
                    || r.path.as_ref().is_some_and(|p| p.len() > MAX_ROUTE_PART) =>
            {
                errs.push(
                    o,
                    label(key),
                    format!("{item:?}: a name or path is longer than {MAX_ROUTE_PART} characters"),
                )
            }
            Ok(r) => d.routes.push(RouteDecl {
                port,
                host: match default_domain {
                    Some(domain) if !r.host.contains('.') && !r.host.starts_with('[') => {
                        format!("{}.{domain}", r.host)
                    }
                    _ => r.host,
                },
                path: r.path,
                https: r.https,
                label: key.to_string(),
            }),
            Err(e) => errs.push(o, label(key), format!("{item:?}: {e}")),
        }
    }
}

/// `http://container[:port][/path]` (the host part names the container itself, whatever it
/// says). Gantry's checks are HTTP: a `tcp://` probe is refused.
fn probe_url(value: &str) -> Result<ProbeDecl, String> {
    let value = value.trim();
    let Some(rest) = value.strip_prefix("http://") else {
        return Err(if value.starts_with("tcp://") {
            format!(
                "{value:?}: TCP probes are not supported by Gantry (its health checks are HTTP); not checked"
            )
        } else {
            format!("{value:?}: expected http://container[:port]/path")
        });
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port = match authority.rsplit_once(':') {
        Some((_, p)) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{value:?}: {p:?} is not a port number"))?,
        ),
        None => None,
    };
    let path = if path.is_empty() { "/" } else { path };
    gantry_config::matcher::check_path(path.split('?').next().unwrap_or(path))
        .map_err(|e| format!("{value:?}: {e}"))?;
    Ok(ProbeDecl {
        port,
        path: path.to_string(),
        timeout: None,
    })
}

/// Collects `gantry.http.<kind>.<name>.<a.b.c>` into a table per name.
fn full_form(
    into: &mut BTreeMap<String, toml::Table>,
    errs: &mut Errors,
    o: &str,
    key: &str,
    rest: &str,
    value: &str,
) {
    let Some((name, path)) = rest.split_once('.') else {
        errs.push(o, label(key), "expected <name>.<setting>");
        return;
    };
    let mut table = into.entry(name.to_string()).or_default();
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => {
                errs.push(o, label(key), format!("{p} is both a value and a table"));
                return;
            }
        }
    }
    let leaf = parts[parts.len() - 1];
    table.insert(leaf.to_string(), infer(leaf, value));
}

/// Label values are text; the settings they fill are typed. Lists are comma-separated.
fn infer(key: &str, value: &str) -> toml::Value {
    let v = value.trim();
    if matches!(
        key,
        "entrypoints"
            | "methods"
            | "hosts"
            | "expected_statuses"
            | "middlewares"
            | "allow"
            | "deny"
            | "remove"
            | "users"
            | "encodings"
            | "content_types"
            | "exclude_content_types"
            | "status"
            | "allow_origins"
            | "allow_methods"
            | "allow_headers"
            | "expose_headers"
            | "request_headers"
            | "response_headers"
    ) {
        return toml::Value::Array(v.split(',').map(|i| infer("", i)).collect());
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(v.to_string()),
    }
}

fn typed<T: DeserializeOwned>(table: toml::Table, errs: &mut Errors, o: &str, prefix: &str) -> Option<T> {
    match toml::Value::Table(table).try_into::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(o, label(prefix), e.message().trim().to_string());
            None
        }
    }
}

fn boolean(errs: &mut Errors, o: &str, key: &str, value: &str) -> Option<bool> {
    match value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        v => {
            errs.push(o, label(key), format!("{v:?} is not true or false"));
            None
        }
    }
}

fn number(errs: &mut Errors, o: &str, key: &str, value: &str, min: u32, max: u32) -> Option<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            errs.push(
                o,
                label(key),
                format!("{value:?} is not a number in {min}..={max}"),
            );
            None
        }
    }
}

fn float(errs: &mut Errors, o: &str, key: &str, value: &str, min: f64, max: f64) -> Option<f64> {
    match value.trim().parse::<f64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            errs.push(
                o,
                label(key),
                format!("{value:?} is not a number in {min}..={max}"),
            );
            None
        }
    }
}

/// A duration label (`8s`, `1m`) within `min..=max` seconds, kept as written.
fn duration(errs: &mut Errors, o: &str, key: &str, value: &str, min: f64, max: f64) -> Option<String> {
    match gantry_config::duration::parse(value) {
        Ok(d) if (min..=max).contains(&d.as_secs_f64()) => Some(value.trim().to_string()),
        Ok(_) => {
            errs.push(o, label(key), format!("{value:?} is not within {min}s..={max}s"));
            None
        }
        Err(e) => {
            errs.push(o, label(key), e);
            None
        }
    }
}

fn port(errs: &mut Errors, o: &str, key: &str, value: &str) -> Option<u16> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(o, label(key), format!("{value:?} is not a port number"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels read with no default domain.
    fn plain(f: &ContainerFacts, exposed_by_default: bool) -> (ContainerDecl, Errors) {
        parse(f, exposed_by_default, None)
    }

    fn facts(labels: &[(&str, &str)]) -> ContainerFacts {
        ContainerFacts {
            id: "abc".into(),
            name: "blog-1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_routing_label_is_reported_not_dropped() {
        let (d, errs) = plain(&facts(&[("aliyun.routing.port_80", "  ")]), true);
        assert!(d.routes.is_empty());
        assert!(
            errs.to_string().contains("label aliyun.routing.port_80: empty"),
            "{errs}"
        );
    }

    #[test]
    fn compact_routes_as_existing_compose_files_write_them() {
        let (d, errs) = plain(
            &facts(&[
                (
                    "aliyun.routing.port_2368",
                    "http://myblog; https://www.example.com/blog/",
                ),
                ("gantry.routing.port_80", "api.example.com"),
                ("aliyun.scale", "3"),
                ("aliyun.logs.foo", "stdout"),
            ]),
            true,
        );
        // The cloud's other labels are said to be ignored, not dropped in silence.
        assert_eq!(
            errs.to_string(),
            "docker container blog-1: label aliyun.logs.foo: not supported by Gantry; ignored"
        );
        let r: Vec<_> = d
            .routes
            .iter()
            .map(|r| (r.port, r.host.as_str(), r.path.as_deref(), r.https))
            .collect();
        assert_eq!(
            r,
            [
                (2368, "myblog", None, false),
                (2368, "www.example.com", Some("/blog"), true),
                (80, "api.example.com", None, false),
            ]
        );
        assert_eq!(d.scale.initial, Some(3));
    }

    /// `aliyun.rolling_updates` (with its parallelism) is the scaler's step; alone it does not
    /// turn scaling on.
    #[test]
    fn aliyun_rolling_updates_set_the_scalers_step() {
        let step = |labels: &[(&str, &str)]| {
            let (d, errs) = plain(&facts(labels), true);
            (d.scale.step, d.scale.settings().is_some(), errs.to_string())
        };
        assert_eq!(
            step(&[("aliyun.rolling_updates", "true")]),
            (Some(1), false, String::new())
        );
        assert_eq!(
            step(&[
                ("aliyun.scale", "2"),
                ("aliyun.rolling_updates", "true"),
                ("aliyun.rolling_updates.parallelism", "3"),
            ]),
            (Some(3), true, String::new())
        );
        assert_eq!(
            step(&[
                ("aliyun.rolling_updates", "false"),
                ("aliyun.rolling_updates.parallelism", "3")
            ])
            .0,
            None
        );
        let (_, _, errs) = step(&[("aliyun.rolling_updates.parallelism", "3")]);
        assert!(errs.contains("needs aliyun.rolling_updates: true"), "{errs}");
    }

    /// `aliyun.routing.port_80: wordpress;http://wp.sample.com/context`, as the cloud's docs
    /// write it: a bare name is a prefix of the default domain, when there is one.
    #[test]
    fn a_bare_routing_name_is_a_prefix_of_the_default_domain() {
        let f = facts(&[
            ("aliyun.routing.port_80", "wordpress;http://wp.sample.com/context"),
            ("gantry.routing.port_81", "https://api"),
        ]);
        let hosts = |d: &ContainerDecl| -> Vec<(String, Option<String>, bool)> {
            d.routes
                .iter()
                .map(|r| (r.host.clone(), r.path.clone(), r.https))
                .collect()
        };
        let (d, errs) = parse(&f, true, Some("apps.example.com"));
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(
            hosts(&d),
            [
                ("wordpress.apps.example.com".into(), None, false),
                ("wp.sample.com".into(), Some("/context".into()), false),
                ("api.apps.example.com".into(), None, true),
            ]
        );
        // Without a default domain a bare name is a host of its own, as before.
        let (d, _) = plain(&f, true);
        assert_eq!(hosts(&d)[0].0, "wordpress");
    }

    #[test]
    fn aliyun_probes_are_read_and_tcp_ones_refused() {
        let probe = |labels: &[(&str, &str)]| {
            let (d, errs) = plain(&facts(labels), true);
            (d.probe, errs.to_string())
        };
        assert_eq!(
            probe(&[
                ("aliyun.probe.url", "http://container:8080/health?full=1"),
                ("aliyun.probe.timeout_seconds", "4"),
            ]),
            (
                Some(ProbeDecl {
                    port: Some(8080),
                    path: "/health?full=1".into(),
                    timeout: Some(4)
                }),
                String::new()
            )
        );
        assert_eq!(
            probe(&[("aliyun.probe.url", "http://container")]).0,
            Some(ProbeDecl {
                port: None,
                path: "/".into(),
                timeout: None
            })
        );
        let (p, errs) = probe(&[("aliyun.probe.url", "tcp://container:3306")]);
        assert!(
            p.is_none() && errs.contains("TCP probes are not supported"),
            "{errs}"
        );
        let (_, errs) = probe(&[("aliyun.probe.timeout_seconds", "4")]);
        assert!(errs.contains("without aliyun.probe.url"), "{errs}");
    }

    #[test]
    fn names_and_paths_over_128_characters_are_refused_with_their_label() {
        let long_name = format!("{}.example.com", "a".repeat(60) + "." + &"b".repeat(60));
        let long_path = format!("ok.example.com/{}", "p".repeat(128));
        let (d, errs) = plain(
            &facts(&[(
                "aliyun.routing.port_80",
                &format!("{long_name};{long_path};fine.example.com/{}", "p".repeat(127)),
            )]),
            true,
        );
        assert_eq!(
            d.routes.len(),
            1,
            "only the route within the limits: {:?}",
            d.routes
        );
        let text = errs.to_string();
        assert_eq!(text.matches("longer than 128 characters").count(), 2, "{text}");
        assert!(text.contains("label aliyun.routing.port_80"), "{text}");
    }

    #[test]
    fn full_form_in_the_spirit_of_traefik() {
        let (d, errs) = plain(
            &facts(&[
                (
                    "gantry.http.routers.api.rule",
                    "Host(`api.test`) && PathPrefix(`/v1`)",
                ),
                ("gantry.http.routers.api.priority", "10"),
                ("gantry.http.routers.api.entrypoints", "web,websecure"),
                ("gantry.http.routers.api.service", "api"),
                ("gantry.http.services.api.loadbalancer.server.port", "8080"),
                ("gantry.http.services.api.policy", "least_request"),
                ("gantry.http.services.api.health_check.path", "/healthz"),
                ("gantry.http.services.api.health_check.interval", "2s"),
                ("gantry.version", "v2"),
                ("gantry.weight", "10"),
            ]),
            true,
        );
        assert!(errs.is_empty(), "{errs}");
        let r = &d.routers["api"];
        assert_eq!(r.priority, Some(10));
        assert_eq!(
            r.entrypoints.as_deref(),
            Some(&["web".to_string(), "websecure".to_string()][..])
        );
        let s = &d.services["api"];
        assert_eq!(s.port, 8080);
        assert_eq!(s.settings.policy.as_deref(), Some("least_request"));
        assert_eq!(
            s.settings.health_check.as_ref().unwrap().path.as_deref(),
            Some("/healthz")
        );
        assert_eq!((d.version.as_deref(), d.weight), (Some("v2"), 10));
    }

    #[test]
    fn every_bad_label_is_reported_with_container_and_key_and_the_rest_is_kept() {
        let (d, errs) = plain(
            &facts(&[
                ("gantry.routing.port_abc", "x.test"),
                ("gantry.routing.port_70000", "y.test"),
                ("gantry.routing.port_80", "good.test;bad host;z.test:8080"),
                ("gantry.wieght", "3"),
                ("gantry.weight", "lots"),
                ("gantry.http.routers.r.rule", "Hots(`a`)"),
                ("gantry.http.routers.r.service", "s"),
                ("gantry.http.services.s.port", "8080"),
                ("gantry.http.services.s.polcy", "hash"),
                ("gantry.http.services.t.policy", "hash"),
            ]),
            true,
        );
        let text = errs.to_string();
        for expected in [
            "docker container blog-1: label gantry.routing.port_abc: \"abc\" is not a port number",
            "docker container blog-1: label gantry.routing.port_70000: \"70000\" is not a port number",
            "docker container blog-1: label gantry.routing.port_80: \"bad host\"",
            "docker container blog-1: label gantry.routing.port_80: \"z.test:8080\"",
            "docker container blog-1: label gantry.wieght: unknown gantry label",
            "docker container blog-1: label gantry.weight: \"lots\" is not a number",
            "docker container blog-1: label gantry.http.services.s: unknown field `polcy`",
            "docker container blog-1: label gantry.http.services.t.port: missing",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        // The good route survives; the router with a bad rule is kept as written and refused
        // when validated with the rest.
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.routes[0].host, "good.test");
        assert_eq!(d.weight, 1);
    }

    #[test]
    fn opt_in_and_opt_out() {
        assert!(!plain(&facts(&[("gantry.enable", "false")]), true).0.enabled);
        assert!(!plain(&facts(&[]), false).0.enabled);
        assert!(plain(&facts(&[("gantry.enable", "true")]), false).0.enabled);
    }
}
