//! The engine connection: list, then follow the event stream; reconnect and re-list when it
//! breaks. Gantry only reads from the engine.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::{FutureExt, StreamExt};
use gantry_config::{DesiredState, Errors};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::labels::{ContainerFacts, DockerHealth};
use super::state::{DockerOptions, Observed, desired};
use crate::backoff::Backoff;
use crate::reconcile::{Report, SourceId, Update};

/// An engine to follow, and how to read what it runs (both the Docker and the Swarm source).
#[derive(Debug, Clone)]
pub struct Engine {
    /// `unix:///path` or `tcp://host:port`; `None`: `DOCKER_HOST`, else the default socket.
    pub endpoint: Option<String>,
    pub options: DockerOptions,
    /// How long a service whose containers are all gone keeps answering 503 before its routes
    /// are removed (and it answers 404).
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct DockerSource {
    pub engine: Engine,
}

/// What a source remembers across events and reconnections.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The containers (or a swarm's tasks) the source routes to, by ID.
    pub(crate) containers: BTreeMap<String, Observed>,
    /// The last state computed from containers (without services kept for the grace period).
    last: DesiredState,
    /// Services whose containers are all gone, kept (with no backend) for the grace period.
    vanished: BTreeMap<String, Vanished>,
}

/// A service whose containers are all gone: it answers 503 until `until`, then disappears.
#[derive(Debug)]
struct Vanished {
    routers: Vec<(String, gantry_config::Router)>,
    service: gantry_config::Service,
    until: Instant,
}

/// What the Docker and Swarm sources have in common: an engine to follow session after
/// session, and containers (or tasks) that become one desired state.
pub(crate) trait Session {
    fn id(&self) -> SourceId;
    fn engine(&self) -> &Engine;
    /// `docker at unix:///var/run/docker.sock`, `swarm at ...`.
    fn origin(&self) -> String {
        format!(
            "{} at {}",
            self.id(),
            endpoint_text(self.engine().endpoint.as_deref())
        )
    }
    /// The problems found, as this source words them.
    fn reword(&self, problems: Errors, _observed: &BTreeMap<String, Observed>) -> Errors {
        problems
    }
    /// One connection's life: list, follow, publish; `Ok` only at shutdown.
    async fn session(
        &self,
        docker: Docker,
        t: &mut Tracker,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Result<(), String>;
}

/// `unix:///path` or `tcp://host:port`, as the engine is reached.
pub(crate) fn endpoint_text(endpoint: Option<&str>) -> String {
    endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// Follows the engine until `shutdown`. While the engine cannot be reached, the last routes keep
/// serving; each new session lists everything again, so nothing that happened meanwhile is
/// missed.
pub(crate) async fn run_sessions<S: Session>(
    s: &S,
    updates: &mpsc::Sender<Update>,
    shutdown: &CancellationToken,
) {
    let mut tracker = Tracker::default();
    let mut backoff = Backoff::default();
    loop {
        let connected_at = Instant::now();
        let docker = match s.engine().endpoint.as_deref() {
            Some(e) => Docker::connect_with_host(e),
            None => Docker::connect_with_defaults(),
        };
        let outcome = match docker {
            Ok(d) => match d.negotiate_version().await {
                Ok(d) => s.session(d, &mut tracker, updates, shutdown).await,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => return,
            Err(why) => {
                let report = Report::Unreachable(format!("{}: {why}", s.origin()));
                let update = Update {
                    source: s.id(),
                    origin: s.origin(),
                    report,
                    revision: None,
                    origins: Default::default(),
                };
                if updates.send(update).await.is_err() {
                    return;
                }
            }
        }
        backoff.session_lasted(connected_at.elapsed());
        if !backoff.wait(shutdown).await {
            return;
        }
    }
}

impl Tracker {
    /// When the next vanished service goes.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.vanished.values().map(|v| v.until).min()
    }

    /// Computes the state, keeps vanished services for the grace period, and sends it.
    pub(crate) async fn publish<S: Session>(
        &mut self,
        s: &S,
        updates: &mpsc::Sender<Update>,
    ) -> Result<(), String> {
        let t = self;
        let (state, problems) = desired(&t.containers, &s.engine().options);
        let problems = s.reword(problems, &t.containers);
        let now = Instant::now();
        for (name, svc) in &t.last.services {
            if !state.services.contains_key(name) && !t.vanished.contains_key(name) {
                let routers: Vec<(String, gantry_config::Router)> = t
                    .last
                    .routers
                    .iter()
                    .filter(|(_, r)| &r.service == name)
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect();
                let mut empty = svc.clone();
                empty.backends.clear();
                t.vanished.insert(
                    name.clone(),
                    Vanished {
                        routers,
                        service: empty,
                        until: now + s.engine().grace,
                    },
                );
            }
        }
        t.vanished
            .retain(|name, v| v.until > now && !state.services.contains_key(name));
        t.last = state.clone();
        let mut state = state;
        for (name, v) in &t.vanished {
            state.services.insert(name.clone(), v.service.clone());
            for (rn, r) in &v.routers {
                state.routers.entry(rn.clone()).or_insert_with(|| r.clone());
            }
        }
        let report = Report::Valid {
            state,
            warnings: problems,
        };
        updates
            .send(Update {
                source: s.id(),
                origin: s.origin(),
                report,
                revision: None,
                origins: Default::default(),
            })
            .await
            .map_err(|_| "shutting down".to_string())
    }
}

impl DockerSource {
    pub fn origin(&self) -> String {
        Session::origin(self)
    }

    /// Follows the engine until `shutdown`. While the engine cannot be reached, the last routes
    /// keep serving; on reconnection the containers are listed again, so nothing that happened
    /// meanwhile is missed.
    pub async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        run_sessions(&self, &updates, &shutdown).await;
    }

    async fn handle(&self, docker: &Docker, t: &mut Tracker, msg: EventMessage) {
        let (Some(action), Some(actor)) = (msg.action, msg.actor) else {
            return;
        };
        let Some(id) = actor.id else { return };
        debug!(%action, container = %id, "docker event");
        match action.as_str() {
            "die" | "destroy" => {
                t.containers.remove(&id);
            }
            "stop" | "kill" if stops(&action, actor.attributes.as_ref()) => mark_stopping(t, &id),
            a if a == "start" || a == "pause" || a == "unpause" || a.starts_with("health_status") => {
                match inspect(docker, &id).await {
                    Some(facts) => {
                        t.containers.insert(
                            id,
                            Observed {
                                facts,
                                stopping: false,
                            },
                        );
                    }
                    None => {
                        t.containers.remove(&id);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Session for DockerSource {
    fn id(&self) -> SourceId {
        SourceId::Docker
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn session(
        &self,
        docker: Docker,
        t: &mut Tracker,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        // Subscribe from just before the listing: whatever happens in between is replayed, and
        // replays are harmless (a container is inspected again).
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().saturating_sub(2));
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                [
                    "start",
                    "die",
                    "stop",
                    "kill",
                    "destroy",
                    "health_status",
                    "pause",
                    "unpause",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
        ]);
        let mut events = docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));
        let list_started = std::time::Instant::now();
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut containers = BTreeMap::new();
        for c in listed {
            let Some(id) = c.id else { continue };
            if let Some(facts) = inspect(&docker, &id).await {
                containers.insert(
                    id,
                    Observed {
                        facts,
                        stopping: false,
                    },
                );
            }
        }
        info!(
            containers = containers.len(),
            ms = list_started.elapsed().as_secs_f64() * 1000.0,
            "docker: listed and inspected running containers"
        );
        t.containers = containers;
        t.publish(self, updates).await?;
        loop {
            let next_expiry = t.next_expiry();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = sleep_until(next_expiry) => t.publish(self, updates).await?,
                ev = events.next() => {
                    let msg = match ev {
                        None => return Err("the event stream ended".into()),
                        Some(Err(e)) => return Err(format!("the event stream broke: {e}")),
                        Some(Ok(m)) => m,
                    };
                    self.handle(&docker, t, msg).await;
                    // Take every event already waiting before computing the new state once.
                    while let Some(Some(ev)) = events.next().now_or_never() {
                        match ev {
                            Ok(m) => self.handle(&docker, t, m).await,
                            Err(e) => return Err(format!("the event stream broke: {e}")),
                        }
                    }
                    t.publish(self, updates).await?;
                }
            }
        }
    }
}

/// A container event that means the container is being stopped (`docker kill -s HUP` is a
/// signal, not a stop).
pub(crate) fn stops(action: &str, attributes: Option<&HashMap<String, String>>) -> bool {
    match action {
        "stop" => true,
        "kill" => matches!(
            attributes.and_then(|a| a.get("signal")).map(String::as_str),
            None | Some("9" | "15" | "2" | "3" | "SIGKILL" | "SIGTERM" | "SIGINT" | "SIGQUIT")
        ),
        _ => false,
    }
}

fn mark_stopping(t: &mut Tracker, id: &str) {
    if let Some(c) = t.containers.get_mut(id) {
        c.stopping = true;
    }
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What Gantry needs to know about a container, or `None` if it is not running (or gone).
async fn inspect(docker: &Docker, id: &str) -> Option<ContainerFacts> {
    let c = match docker.inspect_container(id, None).await {
        Ok(c) => c,
        Err(e) => {
            debug!(container = %id, error = %e, "inspect failed (gone?)");
            return None;
        }
    };
    facts(c)
}

/// What Gantry reads from an inspected container; `None` unless it is running.
pub fn facts(c: ContainerInspectResponse) -> Option<ContainerFacts> {
    let state = c.state.as_ref()?;
    let running = state.running.unwrap_or(false)
        || matches!(
            state.status,
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
        );
    if !running {
        return None;
    }
    let health = match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => DockerHealth::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => DockerHealth::Unhealthy,
        Some(HealthStatusEnum::STARTING) => DockerHealth::Starting,
        _ => DockerHealth::None,
    };
    let settings = c.network_settings.as_ref();
    let networks = settings
        .and_then(|n| n.networks.as_ref())
        .map(|nets| {
            nets.iter()
                .filter_map(|(name, ep)| {
                    let ip: IpAddr = ep.ip_address.as_deref().filter(|s| !s.is_empty())?.parse().ok()?;
                    Some((name.clone(), ip))
                })
                .collect()
        })
        .unwrap_or_default();
    let published = settings
        .and_then(|n| n.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(key, bindings)| {
                    let port: u16 = key.strip_suffix("/tcp")?.parse().ok()?;
                    let addrs: Vec<SocketAddr> = bindings
                        .iter()
                        .flatten()
                        .filter_map(|b| {
                            let ip = match b.host_ip.as_deref() {
                                None | Some("") => "0.0.0.0",
                                Some(ip) => ip,
                            };
                            Some(SocketAddr::new(
                                ip.parse().ok()?,
                                b.host_port.as_deref()?.parse().ok()?,
                            ))
                        })
                        .collect();
                    Some((port, addrs))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ContainerFacts {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
        labels: c
            .config
            .and_then(|cfg| cfg.labels)
            .map(|l| l.into_iter().collect())
            .unwrap_or_default(),
        health,
        paused: state.paused.unwrap_or(false),
        networks,
        published,
    })
}
