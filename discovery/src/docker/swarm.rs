//! Docker Swarm mode as a source (`--swarm`, `[swarm]`): on a manager, services' labels
//! (`deploy.labels` in a stack file) become routes, and their running tasks the backends.
//!
//! Each running task is read as a container of the Docker source would be (the same label
//! grammars, the same rules in [`super::state::desired`]): its labels are its service's, its
//! compose project is the stack (`com.docker.stack.namespace`) and its compose service the
//! service's name within the stack, so that two services of one stack declaring the same route
//! are versions of it. Its address is its IP on the network the service names
//! (`gantry.docker.network`, else the configured one, else its only one), read from the
//! manager's view of the overlay networks. A service may instead be reached through its virtual
//! IP (one backend: `[swarm] address = "vip"`, or the label `gantry.swarm.address=vip`); by
//! default it is reached task by task, so that health, weights and drain work per replica.
//!
//! Live: the engine's events for services and nodes, and for the containers of this node's
//! tasks, trigger a new listing; tasks are listed again every second besides (task changes have
//! no events). A task Swarm wants shut down (a rolling update, a scale down) is drained at once,
//! before its container is stopped. Like the Docker source: a broken stream or an unreachable
//! engine keeps the last routes, and the next session lists everything again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{Service, Task, TaskState};
use bollard::query_parameters::{
    EventsOptions, InspectNetworkOptions, ListNetworksOptions, ListServicesOptions, ListTasksOptions,
};
use futures_util::StreamExt;
use gantry_config::Errors;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::labels::{ContainerFacts, DockerHealth};
use super::source::{Engine, Session, Tracker, run_sessions};
use super::state::Observed;
use crate::reconcile::{SourceId, Update};

/// How often tasks are listed again, besides events.
pub const TASK_POLL: Duration = Duration::from_secs(1);

/// The label that picks how a service is reached: `tasks` (default) or `vip`.
pub const ADDRESS_LABEL: &str = "gantry.swarm.address";

#[derive(Debug, Clone)]
pub struct SwarmSource {
    pub engine: Engine,
    /// Services are reached through their virtual IP unless a service's label says `tasks`.
    pub vip: bool,
}

impl SwarmSource {
    pub fn origin(&self) -> String {
        Session::origin(self)
    }

    /// Follows the swarm until `shutdown` (see the module's documentation).
    pub async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        run_sessions(&self, &updates, &shutdown).await;
    }

    /// Every service and its tasks as the source sees them now.
    async fn list(&self, docker: &Docker) -> Result<Listing, String> {
        let services = docker
            .list_services(None::<ListServicesOptions>)
            .await
            .map_err(|e| e.to_string())?;
        let tasks = docker
            .list_tasks(None::<ListTasksOptions>)
            .await
            .map_err(|e| e.to_string())?;
        // Task and virtual IPs on each swarm network, from the manager's view of it.
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "driver".to_string(),
                    vec!["overlay".to_string()],
                )])),
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut addresses = Addresses::default();
        for n in networks {
            let (Some(id), Some(name)) = (n.id, n.name) else {
                continue;
            };
            if n.ingress == Some(true) {
                continue;
            }
            addresses.names.insert(id.clone(), name.clone());
            let verbose = docker
                .inspect_network(
                    &id,
                    Some(InspectNetworkOptions {
                        verbose: true,
                        scope: Some("swarm".into()),
                    }),
                )
                .await;
            let Ok(verbose) = verbose else { continue };
            for svc in verbose.services.unwrap_or_default().values() {
                for t in svc["Tasks"].as_array().into_iter().flatten() {
                    let (Some(task), Some(ip)) = (t["Name"].as_str(), t["EndpointIP"].as_str()) else {
                        continue;
                    };
                    // "<service>.<slot or node>.<task id>"
                    let Some((_, task_id)) = task.rsplit_once('.') else {
                        continue;
                    };
                    if let Ok(ip) = ip.parse() {
                        addresses
                            .tasks
                            .entry(task_id.to_string())
                            .or_default()
                            .insert(name.clone(), ip);
                    }
                }
            }
        }
        Ok(Listing {
            services,
            tasks,
            addresses,
        })
    }
}

/// Where tasks and services are on the swarm's networks.
#[derive(Debug, Default)]
struct Addresses {
    /// Network ID -> name.
    names: BTreeMap<String, String>,
    /// Task ID -> network name -> its IP there.
    tasks: BTreeMap<String, BTreeMap<String, IpAddr>>,
}

struct Listing {
    services: Vec<Service>,
    tasks: Vec<Task>,
    addresses: Addresses,
}

/// Each service's labels as a task of it carries them: the service's own, with its stack as the
/// compose project and its name in the stack as the compose service.
pub fn service_labels(s: &Service) -> Option<(String, BTreeMap<String, String>)> {
    let spec = s.spec.as_ref()?;
    let name = spec.name.clone()?;
    let mut labels: BTreeMap<String, String> = spec.labels.clone().unwrap_or_default().into_iter().collect();
    let stack = labels.get("com.docker.stack.namespace").cloned();
    let short = stack
        .as_deref()
        .and_then(|st| name.strip_prefix(st)?.strip_prefix('_'))
        .unwrap_or(&name)
        .to_string();
    if let Some(stack) = stack {
        labels.entry("com.docker.compose.project".into()).or_insert(stack);
    }
    labels.entry("com.docker.compose.service".into()).or_insert(short);
    labels.insert("com.docker.swarm.service.name".into(), name.clone());
    Some((name, labels))
}

/// The tasks (and, for services reached by VIP, the services) that Gantry routes to, as the
/// Docker source's containers: keyed by task (or service) ID.
fn observed(listing: &Listing, vip_by_default: bool) -> BTreeMap<String, Observed> {
    let mut out = BTreeMap::new();
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &listing.tasks {
        let state = t.status.as_ref().and_then(|s| s.state);
        if state == Some(TaskState::RUNNING)
            && let Some(s) = &t.service_id
        {
            *running.entry(s.as_str()).or_default() += 1;
        }
    }
    for s in &listing.services {
        let Some((name, labels)) = service_labels(s) else {
            continue;
        };
        let Some(id) = s.id.clone() else { continue };
        let vip = match labels.get(ADDRESS_LABEL).map(String::as_str) {
            Some("vip") => true,
            Some("tasks") => false,
            _ => vip_by_default,
        };
        if vip {
            // One backend: the service's virtual IP on each network, while a task runs.
            let networks = s
                .endpoint
                .iter()
                .flat_map(|e| e.virtual_ips.iter().flatten())
                .filter_map(|v| {
                    let net = listing.addresses.names.get(v.network_id.as_deref()?)?;
                    let ip = v.addr.as_deref()?.split('/').next()?.parse().ok()?;
                    Some((net.clone(), ip))
                })
                .collect();
            let facts = ContainerFacts {
                id: id.clone(),
                name: name.clone(),
                labels,
                health: DockerHealth::None,
                paused: false,
                networks,
                published: BTreeMap::new(),
            };
            let stopping = running.get(id.as_str()).copied().unwrap_or(0) == 0;
            out.insert(id, Observed { facts, stopping });
            continue;
        }
        for t in listing
            .tasks
            .iter()
            .filter(|t| t.service_id.as_ref() == Some(&id))
        {
            let Some(task_id) = t.id.clone() else { continue };
            if t.status.as_ref().and_then(|s| s.state) != Some(TaskState::RUNNING) {
                continue;
            }
            let place = t
                .slot
                .map(|s| s.to_string())
                .or_else(|| t.node_id.clone())
                .unwrap_or_default();
            let facts = ContainerFacts {
                id: task_id.clone(),
                name: format!("{name}.{place}.{task_id}"),
                labels: labels.clone(),
                health: DockerHealth::None,
                paused: false,
                networks: listing.addresses.tasks.get(&task_id).cloned().unwrap_or_default(),
                published: BTreeMap::new(),
            };
            // Swarm wants it gone (an update replaces it, a scale down removes it): drain now.
            let stopping = t.desired_state != Some(TaskState::RUNNING);
            out.insert(task_id, Observed { facts, stopping });
        }
    }
    out
}

/// Problems as the Docker source words them ("docker container web.1.x"), worded for a swarm
/// ("swarm service web"), once per service.
fn per_service(problems: Errors, observed: &BTreeMap<String, Observed>) -> Errors {
    let mut out = Errors::new();
    for mut e in problems.0 {
        if let Some(o) = observed
            .values()
            .find(|o| e.origin == super::labels::origin(&o.facts.name))
            && let Some(service) = o.facts.labels.get("com.docker.swarm.service.name")
        {
            e.origin = format!("swarm service {service}");
        }
        if !out.0.contains(&e) {
            out.0.push(e);
        }
    }
    out
}

impl Session for SwarmSource {
    fn id(&self) -> SourceId {
        SourceId::Swarm
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn reword(&self, problems: Errors, observed: &BTreeMap<String, Observed>) -> Errors {
        per_service(problems, observed)
    }

    async fn session(
        &self,
        docker: Docker,
        t: &mut Tracker,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let swarm = docker.inspect_swarm().await.map_err(|e| {
            format!("not a swarm manager ({e}); run Gantry on a manager node, or `docker swarm init`")
        })?;
        debug!(id = ?swarm.id, "swarm");
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "type".to_string(),
            vec!["service".to_string(), "node".to_string(), "container".to_string()],
        )]);
        let mut events = docker.events(Some(EventsOptions {
            since: None,
            until: None,
            filters: Some(filters),
        }));
        let listing = self.list(&docker).await?;
        t.containers = observed(&listing, self.vip);
        info!(
            services = listing.services.len(),
            backends = t.containers.len(),
            "swarm: listed services and tasks"
        );
        t.publish(self, updates).await?;
        // Tasks whose containers this node saw being stopped.
        let mut stopped: std::collections::BTreeSet<String> = Default::default();
        let mut poll = tokio::time::interval(TASK_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_expiry = t.next_expiry();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = super::source::sleep_until(next_expiry) => {
                    t.publish(self, updates).await?;
                    continue;
                }
                _ = poll.tick() => {}
                ev = events.next() => match ev {
                    None => return Err("the event stream ended".into()),
                    Some(Err(e)) => return Err(format!("the event stream broke: {e}")),
                    Some(Ok(m)) => {
                        // A container of one of this node's tasks being stopped: drain the task
                        // now, before Swarm's own view catches up.
                        let attributes = m.actor.as_ref().and_then(|a| a.attributes.as_ref());
                        let task = attributes.and_then(|a| a.get("com.docker.swarm.task.id"));
                        let action = m.action.as_deref().unwrap_or_default();
                        // Health checks exec into containers every interval: nothing to list.
                        if action.starts_with("exec_") {
                            continue;
                        }
                        let stop = action == "die" || super::source::stops(action, attributes);
                        if let (Some(task), true) = (task, stop)
                            && let Some(o) = t.containers.get_mut(task.as_str())
                            && !o.stopping
                        {
                            o.stopping = true;
                            stopped.insert(task.clone());
                            t.publish(self, updates).await?;
                        }
                    }
                },
            }
            let listing = self.list(&docker).await?;
            let mut now = observed(&listing, self.vip);
            // A task drained on its container's event stays drained (a task never runs again).
            stopped.retain(|id| now.contains_key(id));
            for id in &stopped {
                if let Some(o) = now.get_mut(id) {
                    o.stopping = true;
                }
            }
            if now != t.containers {
                t.containers = now;
                t.publish(self, updates).await?;
            }
        }
    }
}
