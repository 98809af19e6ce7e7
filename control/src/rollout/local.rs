//! The local backing: rollouts of this instance alone, kept in memory. Weights reach the
//! reconciler as updates of the `admin` source; a restart forgets the rollouts.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_config::Changes;
use gantry_config::mirror::Split;
use gantry_config::rollout::RolloutSpec;
use gantry_discovery::{Report, SourceId, Update};
use gantry_proxy::metrics::VersionStats;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::judge::{self, Action, Command, RolloutState, started, weights};
use super::{RolloutError, Rollouts};

impl Rollouts {
    pub(super) async fn run_local(self: Arc<Self>, tx: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let running: Vec<RolloutState> = self.inner().states.values().cloned().collect();
            for state in running {
                if let Some((next, d)) = self.step(&state, None) {
                    self.record(&d);
                    let service = next.spec.service.clone();
                    let w = weights(&next);
                    self.inner().states.insert(service.clone(), next);
                    let _ = tx.send(local_weights(&service, Some(w))).await;
                }
            }
        }
    }

    pub(super) async fn start_local(
        &self,
        tx: &mpsc::Sender<Update>,
        spec: RolloutSpec,
    ) -> Result<(), RolloutError> {
        let service = spec.service.clone();
        if let Some(s) = self.inner().states.get(&service)
            && !s.phase.is_over()
        {
            return Err(RolloutError::Conflict(format!(
                "a rollout of {service} is already {:?}",
                s.phase
            )));
        }
        let state = started(spec, 0);
        let d = self.decide(
            &state,
            Action::Start,
            &VersionStats::default(),
            &VersionStats::default(),
        );
        self.record(&d);
        let w = weights(&state);
        self.inner().windows.remove(&service);
        self.inner().states.insert(service.clone(), state);
        tx.send(local_weights(&service, Some(w)))
            .await
            .map_err(|_| RolloutError::Unavailable("shutting down".into()))
    }

    pub(super) async fn command_local(
        &self,
        tx: &mpsc::Sender<Update>,
        service: &str,
        cmd: Command,
    ) -> Result<RolloutState, RolloutError> {
        let current = self
            .state(service)
            .ok_or_else(|| RolloutError::NotFound(format!("no rollout of {service}")))?;
        let (next, action) = judge::command(&current, cmd)?;
        let d = self.decide_now(&next, action);
        self.record(&d);
        self.inner().states.insert(service.to_string(), next.clone());
        if action == Action::Abort {
            let _ = tx.send(local_weights(service, Some(weights(&next)))).await;
        }
        Ok(next)
    }
}

/// Weights set on this instance alone, as an update of the `admin` source.
pub fn local_weights(service: &str, weights: Option<Split>) -> Update {
    let mut changes = Changes::default();
    changes.weights.insert(service.to_string(), weights);
    Update {
        source: SourceId::Admin,
        origin: "admin API".into(),
        report: Report::Changed {
            changes,
            warnings: Default::default(),
        },
        revision: None,
        origins: BTreeMap::new(),
    }
}
