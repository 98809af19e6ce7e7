//! The `[docker]` section: how the Docker source finds the engine, addresses and networks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::duration_or;
use crate::error::Errors;
use crate::matcher::parse_host_pattern;

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
    /// The domain a routing label's bare name (no dot) is a prefix of: `wordpress` routes
    /// `wordpress.<default_domain>` (Alibaba Cloud's per-cluster domain). None: a bare name is
    /// a host of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_domain: Option<String>,
    /// The scaler: create and remove replicas of compose services that carry scaling labels,
    /// following Gantry's recommendations. Off unless asked for.
    pub scale: bool,
    /// `[swarm]` only: services are reached through their virtual IP (`address = "vip"`)
    /// rather than task by task.
    pub vip: bool,
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
            default_domain: None,
            scale: false,
            vip: false,
        }
    }
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
    /// The domain bare names in routing labels are prefixes of.
    pub default_domain: Option<String>,
    /// Act on scaling recommendations (create and remove replicas).
    pub scale: Option<bool>,
}

pub(crate) fn validate_docker(d: &FileDocker, origin: &str, errs: &mut Errors) -> DockerConfig {
    validate_engine(d, origin, "docker", errs)
}

/// `[swarm]`: the same settings as `[docker]`, but `address` is `"tasks"` (default) or `"vip"`.
pub(crate) fn validate_swarm(d: &FileDocker, origin: &str, errs: &mut Errors) -> DockerConfig {
    validate_engine(d, origin, "swarm", errs)
}

fn validate_engine(d: &FileDocker, origin: &str, section: &str, errs: &mut Errors) -> DockerConfig {
    let mut out = crate::DockerConfig {
        endpoint: d.endpoint.clone(),
        network: d.network.clone(),
        ..Default::default()
    };
    match (section, d.address.as_deref()) {
        (_, None) | ("docker", Some("ip")) | ("swarm", Some("tasks")) => {}
        ("docker", Some("published")) => out.published = true,
        ("swarm", Some("vip")) => out.vip = true,
        (_, Some(a)) => errs.push(
            origin,
            format!("{section}.address"),
            match section {
                "swarm" => format!("{a:?}: use \"tasks\" or \"vip\""),
                _ => format!("{a:?}: use \"ip\" or \"published\""),
            },
        ),
    }
    if let Some(e) = d.exposed_by_default {
        out.exposed_by_default = e;
    }
    out.scale = d.scale.unwrap_or(false);
    out.grace = duration_or(&d.grace, out.grace, origin, format!("{section}.grace"), errs);
    for (i, h) in d.reserved_hosts.iter().flatten().enumerate() {
        match parse_host_pattern(h) {
            Ok(p) => out.reserved_hosts.push(p.to_string()),
            Err(e) => errs.push(origin, format!("{section}.reserved_hosts[{i}]"), e),
        }
    }
    if let Some(d) = &d.default_domain {
        match parse_host_pattern(d) {
            Ok(p) if !d.contains('*') && !d.starts_with('[') && p.to_string().contains('.') => {
                out.default_domain = Some(p.to_string())
            }
            Ok(_) => errs.push(
                origin,
                format!("{section}.default_domain"),
                format!("{d:?}: expected a domain name with a dot, like apps.example.com"),
            ),
            Err(e) => errs.push(origin, format!("{section}.default_domain"), e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_domain_is_a_domain_name() {
        let read = |d: &str| {
            let mut errs = Errors::new();
            let file = FileDocker {
                default_domain: Some(d.to_string()),
                ..Default::default()
            };
            (
                validate_docker(&file, "gantry.toml", &mut errs).default_domain,
                errs.to_string(),
            )
        };
        assert_eq!(
            read("Apps.Example.com."),
            (Some("apps.example.com".into()), String::new())
        );
        for bad in ["*.apps.example.com", "apps", "127.0.0.1:80", "[::1]", "a b.com"] {
            let (domain, errs) = read(bad);
            assert_eq!(domain, None, "{bad}");
            assert!(
                errs.contains("gantry.toml: docker.default_domain"),
                "{bad}: {errs}"
            );
        }
    }
}
