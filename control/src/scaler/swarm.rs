//! The scaler on a Docker Swarm (`[swarm] scale = true`, `--swarm-scale`): a Swarm service
//! whose labels carry scaling settings gets the recommended number of replicas by an update of
//! its replica count (what `docker service scale` does); Swarm starts and stops the tasks, and
//! the Swarm source routes and drains them. One action per service at a time: an action ends
//! when Gantry has as many ready backends as asked for (or, scaling down, when the surplus
//! tasks are gone), or after the ready timeout.

use std::collections::{BTreeMap, BTreeSet};

use bollard::query_parameters::ListServicesOptions;
use gantry_config::compact::route_service_name;
use gantry_discovery::docker::swarm::service_labels;
use gantry_discovery::docker::{ContainerFacts, parse_labels};
use gantry_proxy::backend::BackendPhase;
use http::Method;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Scaler;
use crate::scaling::Recommendation;

/// A replicated Swarm service with scaling labels.
#[derive(Clone, Debug)]
pub(super) struct SwarmService {
    pub(super) name: String,
    pub(super) replicas: u32,
    /// Replicas per action (`gantry.scale.step`, Aliyun's rolling-update parallelism).
    pub(super) step: Option<u32>,
}

impl Scaler {
    /// Replicated Swarm services with scaling labels, by the Gantry service they serve.
    pub(super) async fn swarm_groups(&self) -> Result<BTreeMap<String, Vec<SwarmService>>, String> {
        let services = self
            .docker
            .list_services(None::<ListServicesOptions>)
            .await
            .map_err(|e| e.to_string())?;
        let mut out: BTreeMap<String, Vec<SwarmService>> = BTreeMap::new();
        for s in &services {
            let Some((name, labels)) = service_labels(s) else {
                continue;
            };
            let Some(replicas) = s
                .spec
                .as_ref()
                .and_then(|sp| sp.mode.as_ref()?.replicated.as_ref()?.replicas)
            else {
                continue; // global services have no replica count
            };
            let f = ContainerFacts {
                name: name.clone(),
                labels,
                ..Default::default()
            };
            let (decl, _) = parse_labels(&f, self.exposed_by_default, self.default_domain.as_deref());
            if !decl.enabled || decl.scale.settings().is_none() {
                continue;
            }
            let names: BTreeSet<String> = decl
                .routes
                .iter()
                .map(|r| route_service_name(&r.host, r.path.as_deref()))
                .chain(decl.services.keys().cloned())
                .collect();
            for g in names {
                out.entry(g).or_default().push(SwarmService {
                    name: name.clone(),
                    replicas: u32::try_from(replicas).unwrap_or(0),
                    step: decl.scale.step,
                });
            }
        }
        Ok(out)
    }

    /// Sets the replica count of `target` to the recommendation, and waits until the Gantry
    /// service `rec.service` has that many ready backends (up) or no more than that many (down).
    pub(super) async fn swarm_scale(
        &self,
        rec: &Recommendation,
        target: &SwarmService,
        shutdown: &CancellationToken,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        info!(service = %rec.service, swarm_service = %target.name, from = target.replicas, to = rec.replicas, reason = %rec.reason, "scaler: updating the swarm service's replicas");
        let fail = |e: String| (Vec::new(), e);
        // `docker service scale`: the spec as the engine has it, with only the count changed.
        let path = format!("/services/{}", target.name);
        let current = super::engine::exchange(self.endpoint.as_deref(), Method::GET, &path, None)
            .await
            .map_err(fail)?;
        let version = current["Version"]["Index"]
            .as_u64()
            .ok_or_else(|| fail(format!("{} has no version", target.name)))?;
        let mut spec = current["Spec"].clone();
        spec["Mode"]["Replicated"]["Replicas"] = rec.replicas.into();
        let update = format!("{path}/update?version={version}");
        super::engine::exchange(self.endpoint.as_deref(), Method::POST, &update, Some(&spec))
            .await
            .map_err(|e| fail(format!("update {}: {e}", target.name)))?;
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let now = gantry_proxy::clock::nanos_since_epoch(std::time::Instant::now());
            let (ready, all) = self
                .proxy
                .snapshot()
                .service_named(&rec.service)
                .map_or((0, 0), |s| {
                    let ready = s
                        .backends
                        .iter()
                        .filter(|b| {
                            matches!(b.health.phase(now), BackendPhase::Ready | BackendPhase::SlowStart)
                        })
                        .count();
                    (ready, s.backends.len())
                });
            let done = if rec.replicas > target.replicas {
                ready >= rec.replicas as usize
            } else {
                all <= rec.replicas as usize
            };
            if done {
                return Ok(vec![target.name.clone()]);
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "{ready} ready backends of {} (of {all}) after {:?}, asked for {}",
                    rec.service, self.ready_timeout, rec.replicas
                )));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(fail("shutting down".into())),
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    }
}

/// The one Swarm service making up a Gantry service, when exactly one does.
pub(super) fn single(services: Vec<SwarmService>) -> Result<SwarmService, Vec<String>> {
    match <[SwarmService; 1]>::try_from(services) {
        Ok([s]) => Ok(s),
        Err(v) => Err(v.into_iter().map(|s| s.name).collect()),
    }
}
