//! The opt-in Docker scaler (`--docker-scale`, `[docker] scale = true`): acts on Gantry's own
//! scaling recommendations for compose services.
//!
//! - It only touches running containers of a compose service whose containers carry scaling
//!   labels (`gantry.scale.*` or `aliyun.scale`), and only when one compose service makes up the
//!   Gantry service (a service split between versions is left to the operator).
//! - Up: clones an existing replica through the engine API (same image, command, env, labels,
//!   health check, networks and aliases; a fresh name `<project>_<service>_<n>`, container
//!   number and published host port) and waits until Gantry has it as a ready backend.
//! - Down: takes the highest-numbered replicas, drains them in Gantry (no new request; the ones
//!   in flight finish), then stops and removes them.
//! - Never below min or above max (the recommendation is bounded); one action per service at a
//!   time; every action logged and counted in `gantry_scaler_actions_total`.
//! - On a Swarm (`--swarm-scale`, `[swarm] scale = true`), see `swarm`: the replica count of a
//!   Swarm service is updated instead.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use gantry_config::compact::route_service_name;
use gantry_discovery::docker::{ContainerFacts, facts, parse_labels};
use gantry_proxy::backend::BackendPhase;
use gantry_proxy::{BackendState, Proxy};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::scaling::{Recommendation, Scaling};

mod engine;
mod swarm;

const PROJECT: &str = "com.docker.compose.project";
const SERVICE: &str = "com.docker.compose.service";
const NUMBER: &str = "com.docker.compose.container-number";

/// One scaling action, as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub service: String,
    pub compose: String,
    pub action: &'static str,
    pub from: u32,
    pub to: u32,
    pub containers: Vec<String>,
    pub result: String,
    pub reason: String,
    pub seconds: f64,
}

pub struct Scaler {
    docker: Docker,
    proxy: Arc<Proxy>,
    exposed_by_default: bool,
    /// What bare names in routing labels are prefixes of (as the Docker source reads them).
    default_domain: Option<String>,
    busy: Mutex<BTreeSet<String>>,
    /// After a failed action, a service is left alone until then.
    backoff: Mutex<HashMap<String, Instant>>,
    warned: Mutex<BTreeSet<String>>,
    history: Mutex<VecDeque<Action>>,
    actions: IntCounterVec,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// Scales Swarm services (replica counts) rather than compose services (containers).
    swarm: bool,
    /// The engine, as given (for the raw exchanges of `engine`).
    endpoint: Option<String>,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaler").finish_non_exhaustive()
    }
}

/// A running replica of a compose service.
#[derive(Clone, Debug)]
struct Replica {
    id: String,
    name: String,
    number: u32,
    /// The compose service's step (see [`stepped`]).
    step: Option<u32>,
}

/// The replica count one action goes to: toward `wanted`, at most `step` away from `have`
/// (`gantry.scale.step`, Aliyun's rolling-update parallelism); without a step, all the way.
pub(crate) fn stepped(have: u32, wanted: u32, step: Option<u32>) -> u32 {
    match step {
        Some(s) if wanted > have => wanted.min(have + s),
        Some(s) => wanted.max(have.saturating_sub(s)),
        None => wanted,
    }
}

impl Scaler {
    /// A scaler of compose services, or with `swarm` of Swarm services.
    pub fn new(
        endpoint: Option<&str>,
        swarm: bool,
        proxy: Arc<Proxy>,
        exposed_by_default: bool,
        default_domain: Option<String>,
        registry: &Registry,
    ) -> Result<Arc<Self>, String> {
        let docker = match endpoint {
            Some(e) => Docker::connect_with_host(e),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| e.to_string())?;
        let actions = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_scaler_actions_total",
                "Replicas the Docker scaler set out to add (up) or remove (down), by result.",
            ),
            &["service", "action", "result"],
            registry
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            docker,
            proxy,
            exposed_by_default,
            default_domain,
            busy: Mutex::new(BTreeSet::new()),
            backoff: Mutex::new(HashMap::new()),
            warned: Mutex::new(BTreeSet::new()),
            history: Mutex::new(VecDeque::new()),
            actions,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            swarm,
            endpoint: endpoint.map(str::to_string),
        }))
    }

    /// The last actions, newest last.
    pub fn history(&self) -> Vec<Action> {
        lock(&self.history).iter().cloned().collect()
    }

    /// Services with an action under way.
    pub fn busy(&self) -> Vec<String> {
        lock(&self.busy).iter().cloned().collect()
    }

    pub async fn run(self: Arc<Self>, scaling: Arc<Scaling>, shutdown: CancellationToken) {
        let mut updates = scaling.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = updates.changed() => if r.is_err() { return },
            }
            let recs = updates.borrow_and_update().clone();
            // In a fleet, only the instance that publishes the recommendations acts on them.
            if recs.is_empty() || !scaling.publishes() {
                continue;
            }
            if self.swarm {
                match self.swarm_groups().await {
                    Ok(groups) => self.act_swarm(&recs, groups, &shutdown),
                    Err(e) => warn!(error = %e, "scaler: cannot list swarm services"),
                }
                continue;
            }
            match self.groups().await {
                Ok(groups) => self.act(&recs, groups, &shutdown),
                Err(e) => warn!(error = %e, "scaler: cannot list containers"),
            }
        }
    }

    /// Running compose replicas with scaling labels, by the Gantry service they serve and their
    /// compose service.
    async fn groups(&self) -> Result<BTreeMap<String, BTreeMap<(String, String), Vec<Replica>>>, String> {
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(HashMap::from([("label".to_string(), vec![PROJECT.to_string()])])),
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut out: BTreeMap<String, BTreeMap<(String, String), Vec<Replica>>> = BTreeMap::new();
        for c in listed {
            let (Some(id), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let f = ContainerFacts {
                id: id.clone(),
                name: name.clone(),
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            let (decl, _) = parse_labels(&f, self.exposed_by_default, self.default_domain.as_deref());
            if !decl.enabled || decl.scale.settings().is_none() {
                continue;
            }
            let (Some(project), Some(service)) = (decl.project.clone(), decl.compose_service.clone()) else {
                continue;
            };
            let number = f.labels.get(NUMBER).and_then(|n| n.parse().ok()).unwrap_or(0);
            let names = decl
                .routes
                .iter()
                .map(|r| route_service_name(&r.host, r.path.as_deref()))
                .chain(decl.services.keys().cloned())
                .collect::<BTreeSet<_>>();
            for s in names {
                out.entry(s)
                    .or_default()
                    .entry((project.clone(), service.clone()))
                    .or_default()
                    .push(Replica {
                        id: id.clone(),
                        name: name.clone(),
                        number,
                        step: decl.scale.step,
                    });
            }
        }
        Ok(out)
    }

    fn act(
        self: &Arc<Self>,
        recs: &BTreeMap<String, Recommendation>,
        groups: BTreeMap<String, BTreeMap<(String, String), Vec<Replica>>>,
        shutdown: &CancellationToken,
    ) {
        for (service, composes) in groups {
            let Some(rec) = recs.get(&service) else { continue };
            if composes.len() != 1 {
                if lock(&self.warned).insert(service.clone()) {
                    warn!(
                        %service,
                        compose_services = ?composes.keys().collect::<Vec<_>>(),
                        "scaler: several compose services serve this service; not scaling it (scale each version's compose service yourself)"
                    );
                }
                continue;
            }
            let Some(((project, compose), mut replicas)) = composes.into_iter().next() else {
                continue;
            };
            let have = replicas.len() as u32;
            if have == rec.replicas {
                continue;
            }
            let mut rec = rec.clone();
            rec.replicas = stepped(have, rec.replicas, replicas.first().and_then(|r| r.step));
            if !self.may_act(&service) {
                continue;
            }
            replicas.sort_by_key(|r| (r.number, r.name.clone()));
            let me = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (action, result) = if rec.replicas > have {
                    (
                        "up",
                        me.scale_up(&rec, &project, &compose, &replicas, &shutdown).await,
                    )
                } else {
                    ("down", me.scale_down(&rec, &replicas, &shutdown).await)
                };
                me.finish(
                    &rec,
                    format!("{project}/{compose}"),
                    action,
                    have,
                    result,
                    started,
                );
            });
        }
    }

    /// Swarm: each Gantry service made of one replicated Swarm service with scaling labels gets
    /// its recommended replica count.
    fn act_swarm(
        self: &Arc<Self>,
        recs: &BTreeMap<String, Recommendation>,
        groups: BTreeMap<String, Vec<swarm::SwarmService>>,
        shutdown: &CancellationToken,
    ) {
        for (service, services) in groups {
            let Some(rec) = recs.get(&service) else { continue };
            let target = match swarm::single(services) {
                Ok(t) => t,
                Err(names) => {
                    if lock(&self.warned).insert(service.clone()) {
                        warn!(%service, swarm_services = ?names, "scaler: several swarm services serve this service; not scaling it (scale each version's service yourself)");
                    }
                    continue;
                }
            };
            if target.replicas == rec.replicas || !self.may_act(&service) {
                continue;
            }
            let mut rec = rec.clone();
            rec.replicas = stepped(target.replicas, rec.replicas, target.step);
            let (me, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let action = if rec.replicas > target.replicas {
                    "up"
                } else {
                    "down"
                };
                let result = me.swarm_scale(&rec, &target, &shutdown).await;
                me.finish(
                    &rec,
                    target.name.clone(),
                    action,
                    target.replicas,
                    result,
                    started,
                );
            });
        }
    }

    /// Whether `service` may get an action now (none under way, not backing off after a
    /// failure); if so, it is marked busy until [`Scaler::finish`].
    fn may_act(&self, service: &str) -> bool {
        if lock(&self.backoff)
            .get(service)
            .is_some_and(|t| *t > Instant::now())
        {
            return false;
        }
        lock(&self.busy).insert(service.to_string())
    }

    /// Logs, counts and keeps the outcome of an action on `rec.service` (through `target`: a
    /// compose service, or a Swarm service), and frees the service for the next one.
    fn finish(
        &self,
        rec: &Recommendation,
        target: String,
        action: &'static str,
        have: u32,
        result: Result<Vec<String>, (Vec<String>, String)>,
        started: Instant,
    ) {
        let service = rec.service.clone();
        let (containers, outcome) = match result {
            Ok(c) => (c, "ok".to_string()),
            Err((c, e)) => (c, format!("failed: {e}")),
        };
        let ok = outcome == "ok";
        self.actions
            .with_label_values(&[service.as_str(), action, if ok { "ok" } else { "failed" }])
            .inc();
        let record = Action {
            service: service.clone(),
            compose: target,
            action,
            from: have,
            to: rec.replicas,
            containers,
            result: outcome,
            reason: rec.reason.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        if ok {
            info!(%service, compose = %record.compose, action, from = have, to = rec.replicas, containers = ?record.containers, seconds = record.seconds, "scaler: done");
        } else {
            warn!(%service, compose = %record.compose, action, from = have, to = rec.replicas, result = %record.result, "scaler: action failed");
            lock(&self.backoff).insert(service.clone(), Instant::now() + Duration::from_secs(10));
        }
        {
            let mut h = lock(&self.history);
            h.push_back(record);
            while h.len() > 50 {
                h.pop_front();
            }
        }
        lock(&self.busy).remove(&service);
    }

    async fn scale_up(
        &self,
        rec: &Recommendation,
        project: &str,
        compose: &str,
        replicas: &[Replica],
        shutdown: &CancellationToken,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let Some(template) = replicas.first() else {
            return Err((Vec::new(), "no replica to clone".into()));
        };
        info!(service = %rec.service, from = replicas.len(), to = rec.replicas, template = %template.name, reason = %rec.reason, "scaler: adding replicas");
        let t = self
            .docker
            .inspect_container(&template.id, None)
            .await
            .map_err(|e| (Vec::new(), format!("inspect {}: {e}", template.name)))?;
        // Numbers in use, stopped containers included, so that a fresh name is free.
        let all = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{PROJECT}={project}"), format!("{SERVICE}={compose}")],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| (Vec::new(), e.to_string()))?;
        let mut next = all
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(NUMBER)?.parse::<u32>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut created = Vec::new();
        for _ in replicas.len() as u32..rec.replicas {
            let (id, name) = self
                .clone_of(&t, project, compose, &mut next)
                .await
                .map_err(|e| (created.clone(), e))?;
            created.push(name.clone());
            if let Err(e) = self.docker.start_container(&id, None).await {
                let _ = self.remove(&id).await;
                return Err((created, format!("start {name}: {e}")));
            }
            info!(service = %rec.service, container = %name, "scaler: replica started; waiting until ready");
            if let Err(e) = self.until_ready(&rec.service, &id, shutdown).await {
                let _ = self.remove(&id).await;
                return Err((created, format!("{name}: {e}")));
            }
            info!(service = %rec.service, container = %name, "scaler: replica ready and routed");
        }
        Ok(created)
    }

    /// Creates a container configured like `t`, named `<project>_<compose>_<n>`.
    async fn clone_of(
        &self,
        t: &ContainerInspectResponse,
        project: &str,
        compose: &str,
        next: &mut u32,
    ) -> Result<(String, String), String> {
        let cfg = t.config.clone().unwrap_or_default();
        let mut host = t.host_config.clone().unwrap_or_default();
        // A fresh host port for every published port (same host address).
        for bindings in host
            .port_bindings
            .iter_mut()
            .flat_map(|m| m.values_mut())
            .flatten()
        {
            for b in bindings.iter_mut() {
                b.host_port = Some(String::new());
            }
        }
        let template_id = t.id.clone().unwrap_or_default();
        let short = template_id.get(..12).unwrap_or(&template_id).to_string();
        let template_name = t
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let mut networks: Vec<(String, EndpointSettings)> = t
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ep)| {
                // Aliases naming the template itself (its id, its name) are not the clone's.
                let aliases = ep.aliases.map(|a| {
                    a.into_iter()
                        .filter(|x| !x.starts_with(&short) && *x != template_name)
                        .collect::<Vec<_>>()
                });
                (
                    name,
                    EndpointSettings {
                        aliases,
                        ..Default::default()
                    },
                )
            })
            .collect();
        // The network of the network mode first: the engine attaches one at creation.
        let mode = host.network_mode.clone().unwrap_or_default();
        networks.sort_by_key(|(n, _)| (*n != mode, n.clone()));
        let first = networks.first().cloned();
        for _ in 0..10 {
            let n = *next;
            *next += 1;
            let name = format!("{project}_{compose}_{n}");
            let mut labels = cfg.labels.clone().unwrap_or_default();
            labels.insert(NUMBER.to_string(), n.to_string());
            let body = ContainerCreateBody {
                user: cfg.user.clone(),
                exposed_ports: cfg.exposed_ports.clone(),
                tty: cfg.tty,
                open_stdin: cfg.open_stdin,
                env: cfg.env.clone(),
                cmd: cfg.cmd.clone(),
                healthcheck: cfg.healthcheck.clone(),
                image: cfg.image.clone(),
                volumes: cfg.volumes.clone(),
                working_dir: cfg.working_dir.clone(),
                entrypoint: cfg.entrypoint.clone(),
                labels: Some(labels),
                stop_signal: cfg.stop_signal.clone(),
                stop_timeout: cfg.stop_timeout,
                shell: cfg.shell.clone(),
                host_config: Some(host.clone()),
                networking_config: first.clone().map(|(net, ep)| NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(net, ep)])),
                }),
                ..Default::default()
            };
            let options = CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            match self.docker.create_container(Some(options), body).await {
                Ok(r) => {
                    for (net, ep) in networks.iter().skip(1) {
                        let req = NetworkConnectRequest {
                            container: r.id.clone(),
                            endpoint_config: Some(ep.clone()),
                        };
                        if let Err(e) = self.docker.connect_network(net, req).await {
                            let _ = self.remove(&r.id).await;
                            return Err(format!("connect {name} to {net}: {e}"));
                        }
                    }
                    return Ok((r.id, name));
                }
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => continue,
                Err(e) => return Err(format!("create {name}: {e}")),
            }
        }
        Err("no free container name after 10 tries".into())
    }

    /// Waits until Gantry has the container as a ready backend of `service`.
    async fn until_ready(&self, service: &str, id: &str, shutdown: &CancellationToken) -> Result<(), String> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let f = self.facts(id).await.ok_or("exited before it was ready")?;
            let now = gantry_proxy::clock::nanos_since_epoch(std::time::Instant::now());
            if self
                .backends_of(service, &f)
                .iter()
                .any(|b| matches!(b.health.phase(now), BackendPhase::Ready | BackendPhase::SlowStart))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not a ready backend of {service} after {:?}",
                    self.ready_timeout
                ));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err("shutting down".into()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn scale_down(
        &self,
        rec: &Recommendation,
        replicas: &[Replica],
        shutdown: &CancellationToken,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let surplus = replicas.len().saturating_sub(rec.replicas as usize);
        // The highest numbers go first, as `docker-compose up --scale` does.
        let victims: Vec<&Replica> = replicas.iter().rev().take(surplus).collect();
        info!(service = %rec.service, from = replicas.len(), to = rec.replicas, containers = ?victims.iter().map(|v| &v.name).collect::<Vec<_>>(), reason = %rec.reason, "scaler: removing replicas");
        let mut removed = Vec::new();
        for v in victims {
            let backends = match self.facts(&v.id).await {
                Some(f) => self.backends_of(&rec.service, &f),
                None => Vec::new(),
            };
            for b in &backends {
                b.drain("scaled down");
            }
            let deadline = Instant::now() + self.drain_timeout;
            loop {
                let in_flight: u32 = backends.iter().map(|b| b.in_flight()).sum();
                if in_flight == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    warn!(container = %v.name, in_flight, "scaler: drain deadline reached; stopping anyway");
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err((removed, "shutting down".into())),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            info!(container = %v.name, backends = backends.len(), "scaler: drained; stopping");
            self.remove(&v.id)
                .await
                .map_err(|e| (removed.clone(), format!("remove {}: {e}", v.name)))?;
            removed.push(v.name.clone());
        }
        Ok(removed)
    }

    async fn remove(&self, id: &str) -> Result<(), String> {
        let _ = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(10),
                    signal: None,
                }),
            )
            .await;
        self.docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn facts(&self, id: &str) -> Option<ContainerFacts> {
        facts(self.docker.inspect_container(id, None).await.ok()?)
    }

    /// The backends of `service` that are this container: its address on one of its networks,
    /// or one of its published ports.
    fn backends_of(&self, service: &str, f: &ContainerFacts) -> Vec<Arc<BackendState>> {
        let snap = self.proxy.snapshot();
        let Some(svc) = snap.service_named(service) else {
            return Vec::new();
        };
        let ips: BTreeSet<IpAddr> = f.networks.values().copied().collect();
        let ports: BTreeSet<u16> = f.published.values().flatten().map(|a| a.port()).collect();
        svc.backends
            .iter()
            .filter(|b| {
                let url = &b.key.url;
                match url.host.parse::<IpAddr>() {
                    Ok(ip) if ips.contains(&ip) => true,
                    Ok(ip) => ip.is_loopback() && ports.contains(&url.port),
                    Err(_) => false,
                }
            })
            .cloned()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::stepped;

    #[test]
    fn a_step_bounds_how_far_one_action_goes() {
        assert_eq!(stepped(1, 4, None), 4);
        assert_eq!(stepped(1, 4, Some(1)), 2);
        assert_eq!(stepped(1, 4, Some(5)), 4);
        assert_eq!(stepped(5, 1, Some(2)), 3);
        assert_eq!(stepped(2, 1, Some(2)), 1);
    }
}
