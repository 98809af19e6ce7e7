//! All observed containers -> one desired state. Pure and deterministic: containers are taken in
//! name order, so the same containers always give the same routes, whatever order Docker
//! reported them in.
//!
//! Rules:
//! - A container takes traffic while it runs, is not paused, has not been told to stop, and is
//!   `healthy` if it has a HEALTHCHECK. A container that exists but cannot take traffic keeps
//!   its routes with no backend: clients get 503 (not 404) until a replica can.
//! - Compact routes (`*.routing.port_<port>`) with the same host and path form one service.
//!   Compose services of one project that declare the same route are its versions (a canary
//!   split by `gantry.version` and `gantry.weight`); a route already declared by another compose
//!   project is reported and ignored: the project whose container sorts first keeps it.
//! - With versions, `gantry.weight` is the version's weight and replicas share it evenly;
//!   without, it is the container's own weight.
//! - A full-form router or service declared by several containers is taken from the first; a
//!   different declaration elsewhere is reported and ignored.
//! - The address is the container's IP on `gantry.docker.network` (or the global network, or
//!   its only network), or its port published on the host; anything else is an error, never a
//!   guess.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gantry_config::compact::route_service_name;
use gantry_config::health::FileHealthCheck;
use gantry_config::middleware::{FileMiddleware, validate_middleware};
use gantry_config::router::{FileRouter, validate_router};
use gantry_config::scale::FileScale;
use gantry_config::service::{FileService, FileSticky, validate_service};
use gantry_config::{Backend, BackendUrl, DesiredState, Errors, Scheme};

use super::labels::{self, ContainerDecl, ContainerFacts, DockerHealth, origin};

/// How Gantry reaches containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMode {
    /// The container's IP on a Docker network (Gantry runs on that network).
    ContainerIp,
    /// The port the container publishes on the host (Gantry runs on the host).
    Published,
}

#[derive(Clone, Debug)]
pub struct DockerOptions {
    pub address: AddressMode,
    /// The network to reach containers on when a container does not say.
    pub network: Option<String>,
    /// Containers without `gantry.enable` are routed (true) or ignored (false: opt-in).
    pub exposed_by_default: bool,
    /// Hosts containers may not claim (the admin host, names kept for the operator).
    pub reserved_hosts: Vec<String>,
    /// What a bare name in a routing label is a prefix of.
    pub default_domain: Option<String>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            address: AddressMode::ContainerIp,
            network: None,
            exposed_by_default: true,
            reserved_hosts: Vec::new(),
            default_domain: None,
        }
    }
}

/// A container as the source tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub facts: ContainerFacts,
    /// `stop` or `kill` was seen: drain it now rather than at `die`.
    pub stopping: bool,
}

impl Observed {
    fn takes_traffic(&self) -> bool {
        !self.stopping
            && !self.facts.paused
            && matches!(self.facts.health, DockerHealth::None | DockerHealth::Healthy)
    }
}

/// One backend contributed by one container to one service.
struct Contribution {
    url: BackendUrl,
    version: Option<String>,
    weight: u32,
    healthy: bool,
    container: String,
}

struct RouteGroup {
    project: Option<String>,
    https: bool,
    port_owner: String,
    members: Vec<Contribution>,
    /// The scaling labels of the first container (by name) that declares the route.
    scale: Option<FileScale>,
    /// `gantry.middlewares` of that container.
    middlewares: Vec<String>,
    /// Its `aliyun.probe.url`, as a health check.
    health: Option<FileHealthCheck>,
    /// Its `aliyun.routing.session_sticky`.
    sticky: bool,
}

struct FullService {
    project: Option<String>,
    owner: String,
    settings: FileService,
    h2c: bool,
    members: Vec<Contribution>,
}

/// The desired state of every route the containers declare, and every problem found.
pub fn desired(containers: &BTreeMap<String, Observed>, opts: &DockerOptions) -> (DesiredState, Errors) {
    let mut sorted: Vec<&Observed> = containers.values().collect();
    sorted.sort_by(|a, b| a.facts.name.cmp(&b.facts.name));
    let mut all = Declared::default();
    for c in sorted {
        let (decl, errs) = labels::parse(&c.facts, opts.exposed_by_default, opts.default_domain.as_deref());
        all.problems.extend(errs);
        if decl.enabled {
            all.compact_routes(c, &decl, opts);
            all.full_services(c, &decl, opts);
            all.full_routers(c, &decl);
            all.middlewares(c, &decl);
        }
    }
    all.into_state(opts)
}

/// What the containers declare, gathered name by name before it is validated: compact routes
/// grouped by host and path, full-form services and routers with the container that declared
/// them first.
#[derive(Default)]
struct Declared {
    routes: BTreeMap<(String, Option<String>), RouteGroup>,
    routers: BTreeMap<String, (FileRouter, String)>,
    services: BTreeMap<String, FullService>,
    middlewares: BTreeMap<String, (FileMiddleware, String)>,
    problems: Errors,
}

impl Declared {
    /// `aliyun.routing.port_*` / `gantry.routing.port_*`: one group per host and path, the
    /// container's address on that port a member of it.
    fn compact_routes(&mut self, c: &Observed, decl: &ContainerDecl, opts: &DockerOptions) {
        let o = origin(&c.facts.name);
        let live = c.takes_traffic();
        let healthy = c.facts.health == DockerHealth::Healthy;
        for r in &decl.routes {
            if opts
                .reserved_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&r.host))
            {
                self.problems.push(
                    &o,
                    format!("label {}", r.label),
                    format!("host {:?} is reserved", r.host),
                );
                continue;
            }
            let key = (r.host.clone(), r.path.clone());
            let scale = decl.scale.settings();
            let health = match &decl.probe {
                Some(labels::ProbeDecl { port: Some(port), .. }) if *port != r.port => {
                    self.problems.push(
                        &o,
                        "label aliyun.probe.url",
                        format!(
                            "port {port} is not the routed port {}: Gantry checks the port it routes; not checked",
                            r.port
                        ),
                    );
                    None
                }
                Some(p) => Some(FileHealthCheck {
                    path: Some(p.path.clone()),
                    timeout: p.timeout.map(|t| format!("{t}s")),
                    ..Default::default()
                }),
                None => None,
            };
            let group = self.routes.entry(key).or_insert_with(|| RouteGroup {
                project: decl.project.clone(),
                https: r.https,
                port_owner: c.facts.name.clone(),
                members: Vec::new(),
                scale: scale.clone(),
                middlewares: decl.route_middlewares.clone(),
                health: health.clone(),
                sticky: decl.session_sticky,
            });
            if group.project != decl.project {
                self.problems.push(
                    &o,
                    format!("label {}", r.label),
                    format!(
                        "{}{} is already routed to {} (container {}); ignored",
                        r.host,
                        r.path.as_deref().unwrap_or(""),
                        group
                            .project
                            .as_deref()
                            .map_or("another container".into(), |p| format!("compose project {p}")),
                        group.port_owner
                    ),
                );
                continue;
            }
            // Settings of the route's service that the first container decides.
            for (differs, field) in [
                (
                    group.middlewares != decl.route_middlewares,
                    "label gantry.middlewares",
                ),
                (
                    group.sticky != decl.session_sticky,
                    "label aliyun.routing.session_sticky",
                ),
                (group.health != health, "label aliyun.probe.url"),
            ] {
                if differs {
                    self.problems.push(
                        &o,
                        field,
                        format!(
                            "differs from that of container {}, which routes {} too; using theirs",
                            group.port_owner, r.host
                        ),
                    );
                }
            }
            if group.scale != scale {
                self.problems.push(
                    &o,
                    "label gantry.scale",
                    format!(
                        "the scaling labels differ from those of container {}; using theirs",
                        group.port_owner
                    ),
                );
            }
            if live {
                match address(&c.facts, decl, r.port, opts) {
                    Ok(addr) => {
                        group
                            .members
                            .push(contribution(addr, Scheme::Http, decl, healthy, &c.facts.name))
                    }
                    Err(e) => self.problems.push(&o, format!("label {}", r.label), e),
                }
            }
        }
    }

    /// `gantry.http.services.*`: a service per name, the container's address a member of it.
    fn full_services(&mut self, c: &Observed, decl: &ContainerDecl, opts: &DockerOptions) {
        let o = origin(&c.facts.name);
        let live = c.takes_traffic();
        let healthy = c.facts.health == DockerHealth::Healthy;
        for (name, svc) in &decl.services {
            // `gantry.scale.*` on the container scale its services that say nothing themselves.
            let mut settings = svc.settings.clone();
            if settings.scale.is_none() {
                settings.scale = decl.scale.settings();
            }
            let entry = self.services.entry(name.clone()).or_insert_with(|| FullService {
                project: decl.project.clone(),
                owner: c.facts.name.clone(),
                settings: settings.clone(),
                h2c: svc.h2c,
                members: Vec::new(),
            });
            if entry.settings != settings || entry.h2c != svc.h2c || entry.project != decl.project {
                self.problems.push(
                    &o,
                    format!("label gantry.http.services.{name}"),
                    format!(
                        "differs from its declaration on container {}; ignored",
                        entry.owner
                    ),
                );
                continue;
            }
            if live {
                let scheme = if svc.h2c { Scheme::H2c } else { Scheme::Http };
                match address(&c.facts, decl, svc.port, opts) {
                    Ok(addr) => entry
                        .members
                        .push(contribution(addr, scheme, decl, healthy, &c.facts.name)),
                    Err(e) => self
                        .problems
                        .push(&o, format!("label gantry.http.services.{name}.port"), e),
                }
            }
        }
    }

    /// `gantry.http.routers.*`: the first declaration of a name wins; a different one is reported.
    fn full_routers(&mut self, c: &Observed, decl: &ContainerDecl) {
        let o = origin(&c.facts.name);
        for (name, router) in &decl.routers {
            let mut router = router.clone();
            if router.service.is_none() {
                match implicit_service(decl, &c.facts.name) {
                    Some(s) => router.service = Some(s),
                    None => {
                        self.problems.push(
                            &o,
                            format!("label gantry.http.routers.{name}.service"),
                            "missing, and the container declares no single service to default to",
                        );
                        continue;
                    }
                }
            }
            match self.routers.get(name) {
                Some((existing, owner)) if *existing != router => self.problems.push(
                    &o,
                    format!("label gantry.http.routers.{name}"),
                    format!("differs from its declaration on container {owner}; ignored"),
                ),
                Some(_) => {}
                None => {
                    self.routers.insert(name.clone(), (router, c.facts.name.clone()));
                }
            }
        }
    }

    /// `gantry.http.middlewares.*`: the first declaration of a name wins; a different one is
    /// reported.
    fn middlewares(&mut self, c: &Observed, decl: &ContainerDecl) {
        for (name, m) in &decl.middlewares {
            match self.middlewares.get(name) {
                Some((existing, owner)) if existing != m => self.problems.push(
                    &origin(&c.facts.name),
                    format!("label gantry.http.middlewares.{name}"),
                    format!("differs from its declaration on container {owner}; ignored"),
                ),
                Some(_) => {}
                None => {
                    self.middlewares
                        .insert(name.clone(), (m.clone(), c.facts.name.clone()));
                }
            }
        }
    }

    /// Validates what was gathered into a desired state: compact routes first, then full-form
    /// services and routers whose names they do not already use.
    fn into_state(mut self, opts: &DockerOptions) -> (DesiredState, Errors) {
        let mut state = DesiredState::default();
        for ((host, path), group) in std::mem::take(&mut self.routes) {
            let name = route_service_name(&host, path.as_deref());
            let o = origin(&group.port_owner);
            let router = FileRouter {
                hosts: Some(vec![host]),
                path_prefix: path,
                redirect_https: Some(group.https),
                // An https:// route's host gets its certificate from the default ACME resolver,
                // when one is configured.
                tls: group.https.then(gantry_config::router::RouterTls::default),
                service: Some(name.clone()),
                middlewares: (!group.middlewares.is_empty()).then_some(group.middlewares),
                ..Default::default()
            };
            if let Some(r) =
                validate_router(router, &o, &format!("routers.{name}"), &name, &mut self.problems)
            {
                state.routers.insert(name.clone(), r);
            }
            let settings = FileService {
                scale: group.scale,
                health_check: group.health,
                sticky: group.sticky.then(FileSticky::default),
                ..Default::default()
            };
            if let Some(s) = build_service(&name, settings, group.members, &o, &mut self.problems) {
                state.services.insert(name, s);
            }
        }
        for (name, svc) in std::mem::take(&mut self.services) {
            let o = origin(&svc.owner);
            if state.services.contains_key(&name) {
                self.problems.push(
                    &o,
                    format!("label gantry.http.services.{name}"),
                    "a compact route already uses this service name; ignored",
                );
                continue;
            }
            if let Some(s) = build_service(&name, svc.settings, svc.members, &o, &mut self.problems) {
                state.services.insert(name, s);
            }
        }
        for (name, (router, owner)) in std::mem::take(&mut self.routers) {
            let o = origin(&owner);
            if state.routers.contains_key(&name) {
                self.problems.push(
                    &o,
                    format!("label gantry.http.routers.{name}"),
                    "a compact route already uses this router name; ignored",
                );
                continue;
            }
            if let Some(h) = router
                .hosts
                .iter()
                .flatten()
                .find(|h| opts.reserved_hosts.iter().any(|r| r.eq_ignore_ascii_case(h)))
            {
                self.problems.push(
                    &o,
                    format!("label gantry.http.routers.{name}"),
                    format!("host {h:?} is reserved"),
                );
                continue;
            }
            if let Some(r) = validate_router(
                router,
                &o,
                &format!("label gantry.http.routers.{name}"),
                &name,
                &mut self.problems,
            ) {
                state.routers.insert(name, r);
            }
        }
        for (name, (m, owner)) in std::mem::take(&mut self.middlewares) {
            if let Some(m) = validate_middleware(
                m,
                &origin(&owner),
                &format!("label gantry.http.middlewares.{name}"),
                &name,
                &gantry_config::file::no_files,
                &mut self.problems,
            ) {
                state.middlewares.insert(name, m);
            }
        }
        (state, self.problems)
    }
}

/// A full-form router without a service uses the container's only service, or the default one
/// on `gantry.port`.
fn implicit_service(decl: &ContainerDecl, container: &str) -> Option<String> {
    if decl.services.len() == 1 {
        return decl.services.keys().next().cloned();
    }
    let _ = container;
    None
}

fn contribution(
    addr: SocketAddr,
    scheme: Scheme,
    decl: &ContainerDecl,
    healthy: bool,
    container: &str,
) -> Contribution {
    let host = match addr.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => a.to_string(),
    };
    Contribution {
        url: BackendUrl {
            scheme,
            host,
            port: addr.port(),
        },
        version: decl.version.clone(),
        weight: decl.weight,
        healthy,
        container: container.to_string(),
    }
}

fn build_service(
    name: &str,
    settings: FileService,
    members: Vec<Contribution>,
    o: &str,
    problems: &mut Errors,
) -> Option<gantry_config::Service> {
    let mut service = validate_service(settings, o, &format!("services.{name}"), name, problems)?;
    let versioned = members.iter().any(|m| m.version.is_some());
    let mut backends = Vec::new();
    for m in members {
        let weight = if versioned {
            let version = m.version.clone().unwrap_or_else(|| "unversioned".into());
            match service.versions.get(&version) {
                Some(w) if *w != m.weight => problems.push(
                    &origin(&m.container),
                    "label gantry.weight",
                    format!(
                        "{} differs from the weight {w} of version {version:?} on another replica; using {w}",
                        m.weight
                    ),
                ),
                Some(_) => {}
                None => {
                    service.versions.insert(version, m.weight);
                }
            }
            1
        } else {
            m.weight
        };
        let version = if versioned {
            Some(m.version.unwrap_or_else(|| "unversioned".into()))
        } else {
            None
        };
        if !backends.iter().any(|b: &Backend| b.url == m.url) {
            backends.push(Backend {
                url: m.url,
                weight,
                version,
                source_healthy: m.healthy,
            });
        }
    }
    backends.sort_by(|a, b| a.url.cmp(&b.url));
    service.backends = backends;
    Some(service)
}

/// Where Gantry reaches `port` of a container.
fn address(
    f: &ContainerFacts,
    decl: &ContainerDecl,
    port: u16,
    opts: &DockerOptions,
) -> Result<SocketAddr, String> {
    match opts.address {
        AddressMode::ContainerIp => {
            let wanted = decl.network.as_ref().or(opts.network.as_ref());
            let ip = match wanted {
                Some(n) => *f.networks.get(n).ok_or_else(|| {
                    format!(
                        "not attached to network {n:?} (attached to: {})",
                        f.networks.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?,
                None if f.networks.len() == 1 => *f
                    .networks
                    .values()
                    .next()
                    .unwrap_or(&IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                None if f.networks.is_empty() => return Err("attached to no network with an address".into()),
                None => {
                    return Err(format!(
                        "attached to several networks ({}); set gantry.docker.network or --docker-network",
                        f.networks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            };
            Ok(SocketAddr::new(ip, port))
        }
        AddressMode::Published => {
            let bindings = f.published.get(&port).filter(|b| !b.is_empty()).ok_or_else(|| {
                format!(
                    "port {port} is not published on the host (with --docker-address published it must be)"
                )
            })?;
            // Deterministic: loopback first, then the wildcard (reached on loopback), then the
            // lowest address.
            let mut candidates: Vec<SocketAddr> = bindings
                .iter()
                .map(|a| match a.ip() {
                    IpAddr::V4(v) if v.is_unspecified() => {
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
                    }
                    IpAddr::V6(v) if v.is_unspecified() => {
                        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port())
                    }
                    _ => *a,
                })
                .collect();
            candidates.sort_by_key(|a| (!a.ip().is_loopback(), !a.is_ipv4(), *a));
            Ok(candidates[0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(
        name: &str,
        project: &str,
        service: &str,
        ip: &str,
        labels: &[(&str, &str)],
    ) -> (String, Observed) {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("com.docker.compose.project".into(), project.into());
        l.insert("com.docker.compose.service".into(), service.into());
        let facts = ContainerFacts {
            id: format!("id-{name}"),
            name: name.into(),
            labels: l,
            networks: [("net".to_string(), ip.parse().unwrap())].into(),
            published: [(
                80u16,
                vec![format!("0.0.0.0:{}", 30000 + ip.len()).parse().unwrap()],
            )]
            .into(),
            ..Default::default()
        };
        (
            facts.id.clone(),
            Observed {
                facts,
                stopping: false,
            },
        )
    }

    #[test]
    fn replicas_of_a_compose_service_are_backends_of_one_service() {
        let cs: BTreeMap<_, _> = (1..=3)
            .map(|i| {
                container(
                    &format!("blog-{i}"),
                    "p",
                    "blog",
                    &format!("10.0.0.{i}"),
                    &[("aliyun.routing.port_2368", "http://myblog")],
                )
            })
            .collect();
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert!(problems.is_empty(), "{problems}");
        let svc = &s.services["myblog"];
        let urls: Vec<String> = svc.backends.iter().map(|b| b.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:2368",
                "http://10.0.0.2:2368",
                "http://10.0.0.3:2368"
            ]
        );
        assert_eq!(s.routers["myblog"].service, "myblog");
    }

    /// `aliyun.probe.url` on the replicas of a compact route: the route's service is checked
    /// on that path, with the probe's timeout; a probe of another port is reported, not used.
    #[test]
    fn an_aliyun_probe_is_the_health_check_of_the_compact_routes_service() {
        let probe = [
            ("aliyun.routing.port_2368", "http://myblog"),
            ("aliyun.probe.url", "http://container:2368/ping"),
            ("aliyun.probe.timeout_seconds", "3"),
        ];
        let cs: BTreeMap<_, _> = (1..=2)
            .map(|i| container(&format!("blog-{i}"), "p", "blog", &format!("10.0.0.{i}"), &probe))
            .collect();
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert!(problems.is_empty(), "{problems}");
        let check = s.services["myblog"].health_check.clone().expect("a health check");
        assert_eq!(
            (check.path.as_str(), check.timeout),
            ("/ping", std::time::Duration::from_secs(3))
        );

        let other_port = [
            ("aliyun.routing.port_2368", "http://myblog"),
            ("aliyun.probe.url", "http://container:9000/ping"),
        ];
        let cs: BTreeMap<_, _> = [container("blog-1", "p", "blog", "10.0.0.1", &other_port)].into();
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert!(s.services["myblog"].health_check.is_none());
        assert!(
            problems
                .to_string()
                .contains("label aliyun.probe.url: port 9000 is not the routed port 2368"),
            "{problems}"
        );
    }

    #[test]
    fn two_compose_services_with_versions_split_by_version_weight() {
        let mut cs = BTreeMap::new();
        for i in 1..=3 {
            cs.extend([container(
                &format!("web-v1-{i}"),
                "p",
                "web-v1",
                &format!("10.0.1.{i}"),
                &[
                    ("gantry.routing.port_80", "web.test"),
                    ("gantry.version", "v1"),
                    ("gantry.weight", "90"),
                ],
            )]);
        }
        cs.extend([container(
            "web-v2-1",
            "p",
            "web-v2",
            "10.0.2.1",
            &[
                ("gantry.routing.port_80", "web.test"),
                ("gantry.version", "v2"),
                ("gantry.weight", "10"),
            ],
        )]);
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert!(problems.is_empty(), "{problems}");
        let svc = &s.services["web.test"];
        assert_eq!(
            svc.versions,
            [("v1".to_string(), 90), ("v2".to_string(), 10)].into()
        );
        assert_eq!(svc.backends.len(), 4);
        assert!(svc.backends.iter().all(|b| b.weight == 1));
    }

    #[test]
    fn another_project_cannot_take_a_route_and_reserved_hosts_are_refused() {
        let mut cs = BTreeMap::new();
        cs.extend([container(
            "a-1",
            "alpha",
            "web",
            "10.0.0.1",
            &[("gantry.routing.port_80", "shop.test")],
        )]);
        cs.extend([container(
            "b-1",
            "beta",
            "web",
            "10.0.0.2",
            &[("gantry.routing.port_80", "shop.test;admin.gantry")],
        )]);
        let opts = DockerOptions {
            reserved_hosts: vec!["admin.gantry".into()],
            ..Default::default()
        };
        let (s, problems) = desired(&cs, &opts);
        let text = problems.to_string();
        assert!(text.contains("docker container b-1: label gantry.routing.port_80: shop.test is already routed to compose project alpha (container a-1)"), "{text}");
        assert!(
            text.contains(
                "docker container b-1: label gantry.routing.port_80: host \"admin.gantry\" is reserved"
            ),
            "{text}"
        );
        assert_eq!(s.services["shop.test"].backends.len(), 1);
        assert_eq!(s.services["shop.test"].backends[0].url.host, "10.0.0.1");
    }

    #[test]
    fn containers_that_cannot_take_traffic_keep_the_route_with_no_backend() {
        let (id, mut c) = container(
            "x-1",
            "p",
            "x",
            "10.0.0.1",
            &[("gantry.routing.port_80", "x.test")],
        );
        c.facts.health = DockerHealth::Starting;
        let mut cs = BTreeMap::from([(id.clone(), c.clone())]);
        let (s, _) = desired(&cs, &DockerOptions::default());
        assert!(s.services["x.test"].backends.is_empty());
        c.facts.health = DockerHealth::Healthy;
        cs.insert(id.clone(), c.clone());
        let (s, _) = desired(&cs, &DockerOptions::default());
        assert!(s.services["x.test"].backends[0].source_healthy);
        c.stopping = true;
        cs.insert(id, c);
        assert!(
            desired(&cs, &DockerOptions::default()).0.services["x.test"]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn addresses_are_chosen_deterministically_or_refused() {
        let (id, mut c) = container(
            "x-1",
            "p",
            "x",
            "10.0.0.1",
            &[("gantry.routing.port_80", "x.test")],
        );
        c.facts
            .networks
            .insert("other".into(), "172.18.0.5".parse().unwrap());
        let cs = BTreeMap::from([(id.clone(), c.clone())]);
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert!(
            problems
                .to_string()
                .contains("attached to several networks (net, other); set gantry.docker.network"),
            "{problems}"
        );
        assert!(s.services["x.test"].backends.is_empty());
        let opts = DockerOptions {
            network: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(
            desired(&cs, &opts).0.services["x.test"].backends[0].url.host,
            "172.18.0.5"
        );
        let opts = DockerOptions {
            network: Some("missing".into()),
            ..Default::default()
        };
        assert!(
            desired(&cs, &opts)
                .1
                .to_string()
                .contains("not attached to network \"missing\"")
        );
        let opts = DockerOptions {
            address: AddressMode::Published,
            ..Default::default()
        };
        let url = &desired(&cs, &opts).0.services["x.test"].backends[0].url;
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 30008));
    }

    #[test]
    fn full_form_routers_and_services_validate_like_the_file() {
        let cs = BTreeMap::from([container(
            "api-1",
            "p",
            "api",
            "10.0.0.9",
            &[
                (
                    "gantry.http.routers.api.rule",
                    "Host(`api.test`) && PathPrefix(`/v1`)",
                ),
                ("gantry.http.services.api.port", "8080"),
                ("gantry.http.services.api.timeouts.connect", "250ms"),
                ("gantry.http.routers.bad.rule", "Hots(`x`)"),
                ("gantry.http.routers.bad.service", "api"),
            ],
        )]);
        let (s, problems) = desired(&cs, &DockerOptions::default());
        assert_eq!(s.routers["api"].service, "api");
        assert_eq!(
            s.services["api"].backends[0].url.to_string(),
            "http://10.0.0.9:8080"
        );
        assert_eq!(
            s.services["api"].timeouts.connect,
            std::time::Duration::from_millis(250)
        );
        assert!(
            problems.to_string().contains(
                "docker container api-1: label gantry.http.routers.bad.rule: unknown matcher \"Hots\""
            ),
            "{problems}"
        );
        assert!(!s.routers.contains_key("bad"));
    }

    #[test]
    fn scaling_labels_become_the_service_scale_and_replicas_that_disagree_are_reported() {
        let mut cs = BTreeMap::new();
        for i in 1..=2 {
            cs.extend([container(
                &format!("api-{i}"),
                "p",
                "api",
                &format!("10.0.0.{i}"),
                &[
                    ("gantry.routing.port_80", "api.test"),
                    ("aliyun.scale", "2"),
                    ("gantry.scale.max", "6"),
                    ("gantry.scale.target", "20"),
                    ("gantry.scale.window", "30s"),
                ],
            )]);
        }
        cs.extend([container(
            "api-3",
            "p",
            "api",
            "10.0.0.3",
            &[("gantry.routing.port_80", "api.test"), ("gantry.scale.max", "9")],
        )]);
        let (s, problems) = desired(&cs, &DockerOptions::default());
        let scale = s.services["api.test"].scale.clone().unwrap();
        assert_eq!((scale.min, scale.max), (2, 6));
        assert!((scale.target.get() - 20.0).abs() < 1e-9);
        assert_eq!(scale.window, std::time::Duration::from_secs(30));
        assert_eq!(scale.burst_window, std::time::Duration::from_secs(3));
        assert!(
            problems.to_string().contains(
                "docker container api-3: label gantry.scale: the scaling labels differ from those of container api-1; using theirs"
            ),
            "{problems}"
        );
        assert_eq!(s.services["api.test"].backends.len(), 3);
    }
}
