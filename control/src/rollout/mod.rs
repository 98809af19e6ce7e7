//! Progressive rollouts: move a service's traffic from its stable version to a canary step by
//! step, gated on the canary's error rate and p99 latency as this proxy measures them, and roll
//! back at once when a gate fails.
//!
//! ```text
//! judge   pure: RolloutState, judge (a step's verdict), advance and command (the next state)
//! mod     the driver (Rollouts): step windows, decisions, metrics, the public API
//! local   backing of one instance: state in memory, weights through the reconciler
//! etcd    backing of a fleet: state in etcd, one driver under a lease, guarded transactions
//! ```
//!
//! Errors are [`RolloutError`]s; the admin API decides what status code each one is.

mod etcd;
pub mod judge;
mod local;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_config::rollout::RolloutSpec;
use gantry_discovery::Update;
use gantry_proxy::Proxy;
use gantry_proxy::metrics::VersionStats;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use etcd::EtcdBacking;
pub use judge::{
    Action, Command, Decision, Figures, Phase, RolloutState, Verdict, advance, judge, started, weights,
};
pub use local::local_weights;

use crate::time::unix_ms;

/// Where rollout state lives.
#[derive(Debug, Clone)]
pub enum Backing {
    /// In memory; weights go to the reconciler as the `admin` source.
    Local(mpsc::Sender<Update>),
    /// In etcd, shared by a fleet.
    Etcd(EtcdBacking),
}

/// Why a rollout request cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutError {
    /// No rollout of that service.
    NotFound(String),
    /// The rollout's phase does not allow it (over, not paused, already running), or it changed
    /// while the request was being carried out.
    Conflict(String),
    /// Where rollouts live cannot be reached now (etcd down, shutting down).
    Unavailable(String),
    /// What etcd holds for the rollout is not a rollout state.
    Corrupt(String),
}

impl std::fmt::Display for RolloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutError::NotFound(m)
            | RolloutError::Conflict(m)
            | RolloutError::Unavailable(m)
            | RolloutError::Corrupt(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RolloutError {}

/// What `GET /api/v1/rollouts` shows: the rollouts as this instance last saw them, and its
/// recent decisions.
#[derive(Debug, Serialize)]
pub struct RolloutsView {
    pub instance: String,
    pub rollouts: BTreeMap<String, RolloutView>,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub state: RolloutState,
    /// This instance drives the rollout (always, without etcd).
    pub driven_here: bool,
}

/// The step window of a rollout this instance drives: the counters when it began here.
#[derive(Debug)]
struct Window {
    step: usize,
    started_ms: u64,
    canary: VersionStats,
    stable: VersionStats,
    /// With etcd: each instance's counters when the window began (as first reported).
    fleet: crate::figures::Baselines,
}

#[derive(Debug, Default)]
struct Inner {
    /// Local: the rollouts. Etcd: the last view read (for the admin API).
    states: BTreeMap<String, RolloutState>,
    windows: HashMap<String, Window>,
    decisions: VecDeque<Decision>,
    /// The services whose rollouts this instance drives now.
    driving: BTreeMap<String, bool>,
}

#[derive(Debug)]
pub struct Rollouts {
    proxy: Arc<Proxy>,
    instance: String,
    backing: Backing,
    tick: Duration,
    inner: Mutex<Inner>,
    decisions_total: IntCounterVec,
    canary_weight: IntGaugeVec,
}

const KEPT_DECISIONS: usize = 100;

impl Rollouts {
    pub fn new(
        proxy: Arc<Proxy>,
        instance: String,
        backing: Backing,
        tick: Duration,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let decisions_total = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_rollout_decisions_total",
                "Rollout decisions made by this instance, by service and action (start, step, promote, rollback, pause, resume, abort).",
            ),
            &["service", "action"],
            registry
        )?;
        let canary_weight = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_rollout_canary_weight_percent",
                "The canary's share of the traffic that the rollout of each service asks for.",
            ),
            &["service"],
            registry
        )?;
        Ok(Arc::new(Self {
            proxy,
            instance,
            backing,
            tick,
            inner: Mutex::new(Inner::default()),
            decisions_total,
            canary_weight,
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rollouts as last seen, with whether this instance drives each.
    pub fn view(&self) -> RolloutsView {
        let inner = self.inner();
        let local = matches!(self.backing, Backing::Local(_));
        RolloutsView {
            instance: self.instance.clone(),
            rollouts: inner
                .states
                .iter()
                .map(|(s, st)| {
                    let view = RolloutView {
                        state: st.clone(),
                        driven_here: local || inner.driving.get(s) == Some(&true),
                    };
                    (s.clone(), view)
                })
                .collect(),
            decisions: inner.decisions.iter().cloned().collect(),
        }
    }

    /// The services whose rollouts are under way (running or paused), as last seen: those whose
    /// figures the fleet publishes.
    pub fn active(&self) -> Vec<String> {
        self.inner()
            .states
            .iter()
            .filter(|(_, st)| !st.phase.is_over())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The state of the rollout of `service`, as last seen.
    pub fn state(&self, service: &str) -> Option<RolloutState> {
        self.inner().states.get(service).cloned()
    }

    /// The canary's and stable's figures now (since the window began, with `w`). In a shadow
    /// step, the canary's are those of the copies mirrored to it.
    fn figures(&self, state: &RolloutState, w: Option<&Window>) -> (VersionStats, VersionStats) {
        let spec = &state.spec;
        let c = if spec.is_shadow(state.step) {
            self.proxy.mirror_stats(&spec.service, &spec.canary)
        } else {
            self.proxy.version_stats(&spec.service, &spec.canary)
        };
        let s = self.proxy.version_stats(&spec.service, &spec.stable);
        match w {
            Some(w) => (c.since(&w.canary), s.since(&w.stable)),
            None => (c, s),
        }
    }

    /// A decision about `state`, with the figures it was made on.
    fn decide(
        &self,
        state: &RolloutState,
        action: Action,
        canary: &VersionStats,
        stable: &VersionStats,
    ) -> Decision {
        Decision {
            service: state.spec.service.clone(),
            action,
            step: state.step,
            weight: state.weight,
            reason: state.reason.clone(),
            canary: Figures::of(canary),
            stable: Figures::of(stable),
            at_ms: unix_ms(),
            instance: self.instance.clone(),
        }
    }

    /// A decision made outside a judgement (an admin command): with the current step's figures.
    fn decide_now(&self, state: &RolloutState, action: Action) -> Decision {
        let (canary, stable) = {
            let inner = self.inner();
            match inner.windows.get(&state.spec.service) {
                Some(w) => self.figures(state, Some(w)),
                None => Default::default(),
            }
        };
        self.decide(state, action, &canary, &stable)
    }

    /// Logs, counts and keeps a decision.
    fn record(&self, d: &Decision) {
        info!(
            service = %d.service,
            action = d.action.as_str(),
            step = d.step,
            canary_weight = d.weight,
            canary_requests = d.canary.requests,
            canary_error_rate = d.canary.error_rate,
            reason = %d.reason,
            "rollout decision"
        );
        self.decisions_total
            .with_label_values(&[&d.service, d.action.as_str()])
            .inc();
        self.canary_weight
            .with_label_values(&[&d.service])
            .set(i64::from(d.weight));
        let mut inner = self.inner();
        if inner.decisions.len() == KEPT_DECISIONS {
            inner.decisions.pop_front();
        }
        inner.decisions.push_back(d.clone());
    }

    /// A step's window begins: the counters now, this instance's and (with etcd) each
    /// instance's as last reported. (A report is at most one interval old: the window may take
    /// in up to that much from before the step, never miss what came after it.)
    pub(super) fn begin_window(
        &self,
        state: &RolloutState,
        reports: Option<&[(String, crate::figures::Report)]>,
    ) {
        let (canary, stable) = self.figures(state, None);
        let fleet = reports.map_or_else(Default::default, |r| {
            let spec = &state.spec;
            crate::figures::baselines(r, &spec.service, &crate::figures::canary_key(state), &spec.stable)
        });
        self.inner().windows.insert(
            state.spec.service.clone(),
            Window {
                step: state.step,
                started_ms: state.step_started_ms,
                canary,
                stable,
                fleet,
            },
        );
    }

    /// One judgement of a rollout this instance drives: the new state and its decision, if any.
    /// With `reports` (etcd), on the whole fleet's figures; without, on this instance's.
    fn step(
        &self,
        state: &RolloutState,
        reports: Option<&[(String, crate::figures::Report)]>,
    ) -> Option<(RolloutState, Decision)> {
        if state.phase != Phase::Running {
            return None;
        }
        let service = state.spec.service.clone();
        // A window begins with each step, and when this instance takes a rollout over.
        let fresh = {
            let inner = self.inner();
            inner
                .windows
                .get(&service)
                .is_none_or(|w| w.step != state.step || w.started_ms != state.step_started_ms)
        };
        if fresh {
            self.begin_window(state, reports);
        }
        let (canary, stable, left_out) = match reports {
            None => {
                let inner = self.inner();
                let w = inner.windows.get(&service);
                let (c, s) = self.figures(state, w);
                (c, s, Vec::new())
            }
            Some(reports) => {
                let mut inner = self.inner();
                let w = inner.windows.get_mut(&service)?;
                let spec = &state.spec;
                crate::figures::since(
                    reports,
                    &mut w.fleet,
                    &service,
                    &crate::figures::canary_key(state),
                    &spec.stable,
                    unix_ms(),
                )
            }
        };
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(state.step_started_ms));
        let verdict = match judge(&state.spec, &canary, &stable, elapsed) {
            v if !state.spec.is_shadow(state.step) => v,
            Verdict::Wait(why) => Verdict::Wait(format!("shadow step: {why}")),
            Verdict::Advance(why) => Verdict::Advance(format!("shadow step: {why} (mirrored)")),
            Verdict::Fail(why) => Verdict::Fail(format!("shadow step: {why} (mirrored)")),
        };
        let (mut next, action) = advance(state, &verdict, unix_ms())?;
        if !left_out.is_empty() {
            next.reason = format!(
                "{} (on the fleet's figures without {}: no report for {:?})",
                next.reason,
                left_out.join(", "),
                crate::figures::STALE_AFTER
            );
        }
        let d = self.decide(&next, action, &canary, &stable);
        Some((next, d))
    }

    /// Runs the controller until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.backing.clone() {
            Backing::Local(tx) => self.run_local(tx, shutdown).await,
            Backing::Etcd(etcd) => self.run_etcd(etcd, shutdown).await,
        }
    }

    /// Starts a rollout (admin API, file). Refused while another rollout of the service runs.
    pub async fn start(&self, spec: RolloutSpec) -> Result<(), RolloutError> {
        match &self.backing {
            Backing::Local(tx) => self.start_local(tx, spec).await,
            Backing::Etcd(etcd) => self.start_etcd(etcd, spec).await,
        }
    }

    /// A rollout declared in the config file: started unless etcd already holds the same spec
    /// (an instance restarting must not start a finished rollout over).
    pub async fn declare(&self, spec: RolloutSpec) -> Result<(), RolloutError> {
        if let Backing::Etcd(etcd) = &self.backing
            && self.declared_etcd(etcd, &spec).await?
        {
            return Ok(());
        }
        self.start(spec).await
    }

    /// Sets (or, with `None`, clears) the version weights of `service`: on this instance, or
    /// with etcd for the whole fleet at one revision (returned).
    pub async fn set_weights(
        &self,
        service: &str,
        weights: Option<BTreeMap<String, u32>>,
    ) -> Result<Option<i64>, RolloutError> {
        match &self.backing {
            Backing::Local(tx) => tx
                .send(local_weights(service, weights.map(Into::into)))
                .await
                .map(|_| None)
                .map_err(|_| RolloutError::Unavailable("shutting down".into())),
            Backing::Etcd(etcd) => self.set_weights_etcd(etcd, service, weights).await,
        }
    }

    /// Pauses, resumes or aborts the rollout of `service`.
    pub async fn command(&self, service: &str, cmd: Command) -> Result<RolloutState, RolloutError> {
        match &self.backing {
            Backing::Local(tx) => self.command_local(tx, service, cmd).await,
            Backing::Etcd(etcd) => self.command_etcd(etcd, service, cmd).await,
        }
    }
}
