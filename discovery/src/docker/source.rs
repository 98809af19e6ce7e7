//! The engine connection: list, then follow the event stream; reconnect and re-list when it
//! breaks. Gantry only reads from the engine.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::{FutureExt, StreamExt};
use gantry_config::DesiredState;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::labels::{ContainerFacts, DockerHealth};
use super::state::{DockerOptions, Observed, desired};
use crate::backoff::Backoff;
use crate::reconcile::{Report, SourceId, Update};

#[derive(Debug, Clone)]
pub struct DockerSource {
    /// `unix:///path` or `tcp://host:port`; `None`: `DOCKER_HOST`, else the default socket.
    pub endpoint: Option<String>,
    pub options: DockerOptions,
    /// How long a service whose containers are all gone keeps answering 503 before its routes
    /// are removed (and it answers 404).
    pub grace: Duration,
}

/// What the source remembers across events and reconnections.
#[derive(Debug, Default)]
struct Tracker {
    containers: BTreeMap<String, Observed>,
    /// The last state computed from containers (without services kept for the grace period).
    last: DesiredState,
    /// Services whose containers are gone, kept (with no backend) for the grace period.
    vanished: BTreeMap<String, Vanished>,
}

/// A service whose containers are all gone: it answers 503 until `until`, then disappears.
#[derive(Debug)]
struct Vanished {
    routers: Vec<(String, gantry_config::Router)>,
    service: gantry_config::Service,
    until: Instant,
}

impl DockerSource {
    pub fn origin(&self) -> String {
        format!(
            "docker at {}",
            self.endpoint
                .clone()
                .or_else(|| std::env::var("DOCKER_HOST").ok())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
        )
    }

    fn connect(&self) -> Result<Docker, bollard::errors::Error> {
        match &self.endpoint {
            Some(e) => Docker::connect_with_host(e),
            None => Docker::connect_with_defaults(),
        }
    }

    /// Follows the engine until `shutdown`. While the engine cannot be reached, the last routes
    /// keep serving; on reconnection the containers are listed again, so nothing that happened
    /// meanwhile is missed.
    pub async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut tracker = Tracker::default();
        let mut backoff = Backoff::default();
        loop {
            let connected_at = Instant::now();
            match self.session(&mut tracker, &updates, &shutdown).await {
                Ok(()) => return,
                Err(why) => {
                    let report = Report::Unreachable(format!("{}: {why}", self.origin()));
                    if updates
                        .send(Update {
                            source: SourceId::Docker,
                            origin: self.origin(),
                            report,
                            revision: None,
                            origins: Default::default(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            backoff.session_lasted(connected_at.elapsed());
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn session(
        &self,
        t: &mut Tracker,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let docker = self.connect().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
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
        self.publish(t, updates).await?;
        loop {
            let next_expiry = t.vanished.values().map(|v| v.until).min();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = sleep_until(next_expiry) => self.publish(t, updates).await?,
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
                    self.publish(t, updates).await?;
                }
            }
        }
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
            "stop" => mark_stopping(t, &id),
            "kill" => {
                // `docker kill -s HUP` is a signal, not a stop.
                let signal = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("signal"))
                    .map(String::as_str);
                if matches!(
                    signal,
                    None | Some("9" | "15" | "2" | "3" | "SIGKILL" | "SIGTERM" | "SIGINT" | "SIGQUIT")
                ) {
                    mark_stopping(t, &id);
                }
            }
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

    /// Computes the state, keeps vanished services for the grace period, and sends it.
    async fn publish(&self, t: &mut Tracker, updates: &mpsc::Sender<Update>) -> Result<(), String> {
        let (state, problems) = desired(&t.containers, &self.options);
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
                        until: now + self.grace,
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
                source: SourceId::Docker,
                origin: self.origin(),
                report,
                revision: None,
                origins: Default::default(),
            })
            .await
            .map_err(|_| "shutting down".to_string())
    }
}

fn mark_stopping(t: &mut Tracker, id: &str) {
    if let Some(c) = t.containers.get_mut(id) {
        c.stopping = true;
    }
}

async fn sleep_until(at: Option<Instant>) {
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
