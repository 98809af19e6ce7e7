//! Progressive rollouts: move a service's traffic from its stable version to a canary step by
//! step, gated on the canary's error rate and p99 latency as this proxy measures them, and roll
//! back at once when a gate fails.
//!
//! The judgement ([`judge`]) and the state machine ([`advance`]) are pure. Around them, a
//! [`Rollouts`] controller keeps the state either in memory (one instance, weights applied
//! through the reconciler as the `admin` source) or in etcd (a fleet): then the state lives under
//! `<prefix>rollouts/<service>/`, exactly one instance drives each rollout (it holds the
//! `driver` key under its lease), every instance applies the weights it writes to
//! `<prefix>weights/<service>`, and when the driver dies another takes over from the stored step.
//!
//! ```text
//! <prefix>rollouts/<service>/spec       the rollout as declared (etcdctl, the admin API, the file)
//! <prefix>rollouts/<service>/state      phase, step, canary weight, when the step began
//! <prefix>rollouts/<service>/driver     the driving instance's id, under its lease
//! <prefix>rollouts/<service>/decision   the last decision (step, promote, rollback, ...) and its figures
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use gantry_config::Changes;
use gantry_config::rollout::RolloutSpec;
use gantry_discovery::etcd::source::connect;
use gantry_discovery::{Report, SourceId, Update};
use gantry_proxy::Proxy;
use gantry_proxy::metrics::VersionStats;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// Where a rollout is. Stored as JSON in etcd; everything needed to continue from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub spec: RolloutSpec,
    pub phase: Phase,
    /// Index into `spec.steps`.
    pub step: usize,
    /// The canary's share of the traffic, in percent.
    pub weight: u32,
    pub step_started_ms: u64,
    pub reason: String,
    /// The revision of the `spec` key this state follows (etcd); a newer spec starts over.
    #[serde(default)]
    pub spec_revision: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Step,
    Promote,
    Rollback,
    Pause,
    Resume,
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Step => "step",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
        }
    }
}

/// One decision, as logged, counted and published.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub service: String,
    pub action: Action,
    pub step: usize,
    /// The canary's share after the decision, in percent.
    pub weight: u32,
    pub reason: String,
    pub canary: Figures,
    pub stable: Figures,
    pub at_ms: u64,
    pub instance: String,
}

/// A version's figures over the current step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

impl Figures {
    fn of(s: &VersionStats) -> Self {
        Self {
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            p99_ms: s.quantile(0.99).map(|q| q * 1000.0),
        }
    }
}

/// The verdict on the current step.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Wait(String),
    Advance(String),
    Fail(String),
}

/// Judges a step from the canary's and stable's figures since it began.
///
/// The error gate fails as soon as the canary has had `min_requests` with too high an error
/// rate, or earlier when its errors alone already exceed what `min_requests` would allow; the
/// latency gate fails when, over at least `min_requests`, the canary's p99 is above stable's
/// times `max_p99_ratio` plus `p99_slack`. With both gates holding, the step ends once its time
/// is up and it has seen `min_requests`.
pub fn judge(spec: &RolloutSpec, canary: &VersionStats, stable: &VersionStats, elapsed: Duration) -> Verdict {
    let min = spec.min_requests.max(1);
    let rate = canary.error_rate();
    if (canary.requests >= min && rate > spec.max_error_rate)
        || canary.errors as f64 > spec.max_error_rate * min as f64
    {
        return Verdict::Fail(format!(
            "canary error rate {:.2}% ({} of {}) above {:.2}%",
            rate * 100.0,
            canary.errors,
            canary.requests,
            spec.max_error_rate * 100.0
        ));
    }
    if canary.requests < min {
        return Verdict::Wait(format!("{} of {min} canary requests this step", canary.requests));
    }
    if let (Some(c), Some(s)) = (canary.quantile(0.99), stable.quantile(0.99)) {
        let limit = s * spec.max_p99_ratio + spec.p99_slack.as_secs_f64();
        if c > limit {
            return Verdict::Fail(format!(
                "canary p99 {:.1} ms above {:.1} ms (stable p99 {:.1} ms x {} + {} ms)",
                c * 1000.0,
                limit * 1000.0,
                s * 1000.0,
                spec.max_p99_ratio,
                spec.p99_slack.as_millis()
            ));
        }
    }
    if elapsed < spec.step_time {
        return Verdict::Wait(format!("gates hold; {:.0?} of {:.0?}", elapsed, spec.step_time));
    }
    Verdict::Advance(format!(
        "gates held over {} canary requests ({:.2}% errors)",
        canary.requests,
        rate * 100.0
    ))
}

/// The state after a verdict, and the decision it makes (none while waiting).
pub fn advance(state: &RolloutState, verdict: &Verdict, now_ms: u64) -> Option<(RolloutState, Action)> {
    let mut next = state.clone();
    next.step_started_ms = now_ms;
    let action = match verdict {
        Verdict::Wait(_) => return None,
        Verdict::Fail(why) => {
            next.phase = Phase::RolledBack;
            next.weight = 0;
            next.reason = why.clone();
            Action::Rollback
        }
        Verdict::Advance(why) if state.step + 1 < state.spec.steps.len() => {
            next.step += 1;
            next.weight = state.spec.steps[next.step];
            next.reason = why.clone();
            Action::Step
        }
        Verdict::Advance(why) => {
            next.phase = Phase::Promoted;
            next.weight = 100;
            next.reason = why.clone();
            Action::Promote
        }
    };
    Some((next, action))
}

/// The weights a rollout state asks for.
pub fn weights(state: &RolloutState) -> BTreeMap<String, u32> {
    BTreeMap::from([
        (state.spec.stable.clone(), 100 - state.weight),
        (state.spec.canary.clone(), state.weight),
    ])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new rollout's first state.
pub fn started(spec: RolloutSpec, spec_revision: i64) -> RolloutState {
    RolloutState {
        weight: spec.steps[0],
        spec,
        phase: Phase::Running,
        step: 0,
        step_started_ms: now_ms(),
        reason: "started".into(),
        spec_revision,
    }
}

/// Where rollout state lives.
#[derive(Debug, Clone)]
pub enum Backing {
    /// In memory; weights go to the reconciler as the `admin` source.
    Local(mpsc::Sender<Update>),
    /// In etcd, shared by a fleet.
    Etcd {
        endpoints: Vec<String>,
        /// Normalized (ends with `/`).
        prefix: String,
        /// The driver key's lease: how long a dead driver holds its rollouts.
        lease_ttl: Duration,
    },
}

/// What an admin command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}

/// An admin request that cannot be carried out, with the HTTP status that says why.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

/// The step window of a rollout this instance drives: the counters when it began here.
#[derive(Debug)]
struct Window {
    step: usize,
    started_ms: u64,
    canary: VersionStats,
    stable: VersionStats,
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
        let decisions_total = IntCounterVec::new(
            Opts::new(
                "gantry_rollout_decisions_total",
                "Rollout decisions made by this instance, by service and action (start, step, promote, rollback, pause, resume, abort).",
            ),
            &["service", "action"],
        )?;
        let canary_weight = IntGaugeVec::new(
            Opts::new(
                "gantry_rollout_canary_weight_percent",
                "The canary's share of the traffic that the rollout of each service asks for.",
            ),
            &["service"],
        )?;
        registry.register(Box::new(decisions_total.clone()))?;
        registry.register(Box::new(canary_weight.clone()))?;
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
    pub fn view(&self) -> serde_json::Value {
        let inner = self.inner();
        let rollouts: serde_json::Map<String, serde_json::Value> = inner
            .states
            .iter()
            .map(|(s, st)| {
                let mut v = serde_json::to_value(st).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    let here =
                        matches!(self.backing, Backing::Local(_)) || inner.driving.get(s) == Some(&true);
                    o.insert("driven_here".into(), here.into());
                }
                (s.clone(), v)
            })
            .collect();
        serde_json::json!({
            "instance": self.instance,
            "rollouts": rollouts,
            "decisions": inner.decisions.iter().collect::<Vec<_>>(),
        })
    }

    /// The state of the rollout of `service`, as last seen.
    pub fn state(&self, service: &str) -> Option<RolloutState> {
        self.inner().states.get(service).cloned()
    }

    fn figures(&self, spec: &RolloutSpec, w: Option<&Window>) -> (VersionStats, VersionStats) {
        let c = self.proxy.version_stats(&spec.service, &spec.canary);
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
            at_ms: now_ms(),
            instance: self.instance.clone(),
        }
    }

    /// A decision made outside a judgement (an admin command): with the current step's figures.
    fn decide_now(&self, state: &RolloutState, action: Action) -> Decision {
        let (canary, stable) = {
            let inner = self.inner();
            match inner.windows.get(&state.spec.service) {
                Some(w) => self.figures(&state.spec, Some(w)),
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

    /// One judgement of a rollout this instance drives: the new state and its decision, if any.
    fn step(&self, state: &RolloutState) -> Option<(RolloutState, Decision)> {
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
            let (canary, stable) = self.figures(&state.spec, None);
            self.inner().windows.insert(
                service.clone(),
                Window {
                    step: state.step,
                    started_ms: state.step_started_ms,
                    canary,
                    stable,
                },
            );
        }
        let (canary, stable) = {
            let inner = self.inner();
            let w = inner.windows.get(&service);
            self.figures(&state.spec, w)
        };
        let elapsed = Duration::from_millis(now_ms().saturating_sub(state.step_started_ms));
        let verdict = judge(&state.spec, &canary, &stable, elapsed);
        let (next, action) = advance(state, &verdict, now_ms())?;
        let d = self.decide(&next, action, &canary, &stable);
        Some((next, d))
    }

    /// Runs the controller until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.backing.clone() {
            Backing::Local(tx) => self.run_local(tx, shutdown).await,
            Backing::Etcd {
                endpoints,
                prefix,
                lease_ttl,
            } => self.run_etcd(endpoints, prefix, lease_ttl, shutdown).await,
        }
    }

    async fn run_local(self: Arc<Self>, tx: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let running: Vec<RolloutState> = self.inner().states.values().cloned().collect();
            for state in running {
                if let Some((next, d)) = self.step(&state) {
                    self.record(&d);
                    let service = next.spec.service.clone();
                    let w = weights(&next);
                    self.inner().states.insert(service.clone(), next);
                    let _ = tx.send(local_weights(&service, Some(w))).await;
                }
            }
        }
    }

    /// Starts a rollout (admin API, file). Refused while another rollout of the service runs.
    pub async fn start(&self, spec: RolloutSpec) -> Result<(), Refused> {
        let service = spec.service.clone();
        match &self.backing {
            Backing::Local(tx) => {
                if let Some(s) = self.inner().states.get(&service)
                    && !s.phase.is_over()
                {
                    return Err(Refused(
                        409,
                        format!("a rollout of {service} is already {:?}", s.phase),
                    ));
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
                    .map_err(|_| Refused(503, "shutting down".into()))
            }
            Backing::Etcd {
                endpoints, prefix, ..
            } => {
                let mut client = connect_any(endpoints).await.map_err(|e| Refused(503, e))?;
                let key = |k: &str| format!("{prefix}rollouts/{service}/{k}");
                let state = client
                    .get(key("state"), None)
                    .await
                    .map_err(|e| Refused(503, e.to_string()))?;
                if let Some(kv) = state.kvs().first()
                    && let Ok(s) = serde_json::from_slice::<RolloutState>(kv.value())
                    && !s.phase.is_over()
                {
                    return Err(Refused(
                        409,
                        format!("a rollout of {service} is already {:?}", s.phase),
                    ));
                }
                let body = serde_json::to_string(&spec).unwrap_or_default();
                client
                    .put(key("spec"), body, None)
                    .await
                    .map_err(|e| Refused(503, e.to_string()))?;
                Ok(())
            }
        }
    }

    /// A rollout declared in the config file: started unless etcd already holds the same spec
    /// (an instance restarting must not start a finished rollout over).
    pub async fn declare(&self, spec: RolloutSpec) -> Result<(), Refused> {
        if let Backing::Etcd {
            endpoints, prefix, ..
        } = &self.backing
        {
            let mut client = connect_any(endpoints).await.map_err(|e| Refused(503, e))?;
            let key = format!("{prefix}rollouts/{}/spec", spec.service);
            let got = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| Refused(503, e.to_string()))?;
            let same = got
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<RolloutSpec>(kv.value()).ok())
                .is_some_and(|stored| stored == spec);
            if same {
                return Ok(());
            }
        }
        self.start(spec).await
    }

    /// Sets (or, with `None`, clears) the version weights of `service`: on this instance, or
    /// with etcd for the whole fleet at one revision (returned).
    pub async fn set_weights(
        &self,
        service: &str,
        weights: Option<BTreeMap<String, u32>>,
    ) -> Result<Option<i64>, Refused> {
        match &self.backing {
            Backing::Local(tx) => tx
                .send(local_weights(service, weights))
                .await
                .map(|_| None)
                .map_err(|_| Refused(503, "shutting down".into())),
            Backing::Etcd {
                endpoints, prefix, ..
            } => {
                let mut client = connect_any(endpoints).await.map_err(|e| Refused(503, e))?;
                let key = format!("{prefix}weights/{service}");
                let rev = match weights {
                    Some(w) => client
                        .put(key, serde_json::to_string(&w).unwrap_or_default(), None)
                        .await
                        .map_err(|e| Refused(503, e.to_string()))?
                        .header()
                        .map(|h| h.revision()),
                    None => client
                        .delete(key, None)
                        .await
                        .map_err(|e| Refused(503, e.to_string()))?
                        .header()
                        .map(|h| h.revision()),
                };
                Ok(rev)
            }
        }
    }

    /// Pauses, resumes or aborts the rollout of `service`.
    pub async fn command(&self, service: &str, cmd: Command) -> Result<RolloutState, Refused> {
        let change = |s: &RolloutState| -> Result<(RolloutState, Action), Refused> {
            let mut next = s.clone();
            let action = match (cmd, s.phase) {
                (_, p) if p.is_over() => {
                    return Err(Refused(409, format!("the rollout of {service} is over ({p:?})")));
                }
                (Command::Pause, _) => {
                    next.phase = Phase::Paused;
                    Action::Pause
                }
                (Command::Resume, Phase::Paused) => {
                    next.phase = Phase::Running;
                    next.step_started_ms = now_ms();
                    Action::Resume
                }
                (Command::Resume, _) => {
                    return Err(Refused(409, format!("the rollout of {service} is not paused")));
                }
                (Command::Abort, _) => {
                    next.phase = Phase::Aborted;
                    next.weight = 0;
                    Action::Abort
                }
            };
            next.reason = format!("{} through the admin API", action.as_str());
            Ok((next, action))
        };
        match &self.backing {
            Backing::Local(tx) => {
                let current = self
                    .state(service)
                    .ok_or_else(|| Refused(404, format!("no rollout of {service}")))?;
                let (next, action) = change(&current)?;
                let d = self.decide_now(&next, action);
                self.record(&d);
                self.inner().states.insert(service.to_string(), next.clone());
                if action == Action::Abort {
                    let _ = tx.send(local_weights(service, Some(weights(&next)))).await;
                }
                Ok(next)
            }
            Backing::Etcd {
                endpoints, prefix, ..
            } => {
                let mut client = connect_any(endpoints).await.map_err(|e| Refused(503, e))?;
                let key = format!("{prefix}rollouts/{service}/state");
                let got = client
                    .get(key.as_str(), None)
                    .await
                    .map_err(|e| Refused(503, e.to_string()))?;
                let kv = got
                    .kvs()
                    .first()
                    .ok_or_else(|| Refused(404, format!("no rollout of {service}")))?;
                let current: RolloutState = serde_json::from_slice(kv.value())
                    .map_err(|e| Refused(500, format!("{key} holds no rollout state: {e}")))?;
                let (next, action) = change(&current)?;
                let d = self.decide_now(&next, action);
                let mut ops = vec![
                    TxnOp::put(
                        key.as_str(),
                        serde_json::to_string(&next).unwrap_or_default(),
                        None,
                    ),
                    TxnOp::put(
                        format!("{prefix}rollouts/{service}/decision"),
                        serde_json::to_string(&d).unwrap_or_default(),
                        None,
                    ),
                ];
                if action == Action::Abort {
                    ops.push(weights_op(prefix, &next));
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then(ops);
                let ok = client
                    .txn(txn)
                    .await
                    .map_err(|e| Refused(503, e.to_string()))?
                    .succeeded();
                if !ok {
                    return Err(Refused(409, "the rollout changed meanwhile; try again".into()));
                }
                self.record(&d);
                Ok(next)
            }
        }
    }

    async fn run_etcd(
        self: Arc<Self>,
        endpoints: Vec<String>,
        prefix: String,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = gantry_discovery::backoff::Backoff::default();
        loop {
            let started = std::time::Instant::now();
            match self.etcd_session(&endpoints, &prefix, lease_ttl, &shutdown).await {
                Ok(()) => return,
                Err(e) => warn!(error = %e, "rollouts: lost etcd; retrying"),
            }
            self.inner().driving.clear();
            backoff.session_lasted(started.elapsed());
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn etcd_session(
        &self,
        endpoints: &[String],
        prefix: &str,
        lease_ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut client = connect_any(endpoints).await?;
        let ttl = lease_ttl.as_secs().max(1) as i64;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| e.to_string())?
            .id();
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(self.tick.min(lease_ttl / 3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Hand the rollouts over at once rather than at lease expiry.
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                    return Ok(());
                }
                _ = tick.tick() => {}
            }
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(lease_ttl, answers.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                _ => return Err("the rollout lease expired or its keep-alive failed".into()),
            }
            self.etcd_tick(&mut client, prefix, lease).await?;
        }
    }

    /// Reads every rollout; starts declared ones, takes undriven ones, drives its own.
    async fn etcd_tick(&self, client: &mut Client, prefix: &str, lease: i64) -> Result<(), String> {
        let root = format!("{prefix}rollouts/");
        let got = client
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        #[derive(Default)]
        struct Keys {
            spec: Option<(Vec<u8>, i64)>,
            state: Option<(Vec<u8>, i64)>,
            driver: Option<String>,
        }
        let mut by: BTreeMap<String, Keys> = BTreeMap::new();
        for kv in got.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some((service, what)) = key.strip_prefix(root.as_str()).and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let k = by.entry(service.to_string()).or_default();
            match what {
                "spec" => k.spec = Some((kv.value().to_vec(), kv.mod_revision())),
                "state" => k.state = Some((kv.value().to_vec(), kv.mod_revision())),
                "driver" => k.driver = kv.value_str().ok().map(str::to_string),
                _ => {}
            }
        }
        let mut seen = BTreeMap::new();
        let mut driving = BTreeMap::new();
        for (service, k) in by {
            let key = |w: &str| format!("{root}{service}/{w}");
            let state: Option<(RolloutState, i64)> = k
                .state
                .as_ref()
                .and_then(|(v, rev)| serde_json::from_slice(v).ok().map(|s| (s, *rev)));
            let spec = match &k.spec {
                Some((v, rev)) => match RolloutSpec::from_json(
                    &service,
                    v,
                    &format!("etcd key {} @ rev {rev}", key("spec")),
                ) {
                    Ok(s) => Some((s, *rev)),
                    Err(e) => {
                        warn!("rollout not started:\n{e}");
                        None
                    }
                },
                None => None,
            };
            // A spec newer than the state (or without one) starts a rollout.
            let fresh = match (&spec, &state) {
                (Some((_, rev)), Some((s, _))) => *rev > s.spec_revision,
                (Some(_), None) => true,
                _ => false,
            };
            let mine = k.driver.as_deref() == Some(self.instance.as_str());
            let live = fresh || state.as_ref().is_some_and(|(s, _)| !s.phase.is_over());
            if let Some((s, _)) = &state {
                seen.insert(service.clone(), s.clone());
            }
            if !live {
                continue;
            }
            if !mine {
                if k.driver.is_some() {
                    continue;
                }
                // Nobody drives it: try to.
                let txn = Txn::new()
                    .when([Compare::create_revision(key("driver"), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key("driver"),
                        self.instance.as_str(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                if !client.txn(txn).await.map_err(|e| e.to_string())?.succeeded() {
                    continue;
                }
                info!(%service, instance = %self.instance, "rollouts: driving the rollout of {service}");
            }
            driving.insert(service.clone(), true);
            let state_rev = state.as_ref().map_or(0, |(_, r)| *r);
            let (next, d) = match (fresh, spec, state) {
                (true, Some((spec, rev)), _) => {
                    let st = started(spec, rev);
                    let d = self.decide(
                        &st,
                        Action::Start,
                        &VersionStats::default(),
                        &VersionStats::default(),
                    );
                    (st, d)
                }
                (_, _, Some((st, _))) => match self.step(&st) {
                    Some(x) => x,
                    None => continue,
                },
                _ => continue,
            };
            let guard = if state_rev == 0 {
                Compare::create_revision(key("state"), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key("state"), CompareOp::Equal, state_rev)
            };
            let txn = Txn::new()
                .when([
                    Compare::value(key("driver"), CompareOp::Equal, self.instance.as_str()),
                    guard,
                ])
                .and_then([
                    TxnOp::put(
                        key("state"),
                        serde_json::to_string(&next).unwrap_or_default(),
                        None,
                    ),
                    TxnOp::put(
                        key("decision"),
                        serde_json::to_string(&d).unwrap_or_default(),
                        None,
                    ),
                    weights_op(prefix, &next),
                ]);
            if client.txn(txn).await.map_err(|e| e.to_string())?.succeeded() {
                self.record(&d);
                if fresh {
                    self.inner().windows.remove(&service);
                }
                seen.insert(service.clone(), next);
            }
        }
        let mut inner = self.inner();
        inner.states = seen;
        inner.driving = driving;
        Ok(())
    }
}

fn weights_op(prefix: &str, state: &RolloutState) -> TxnOp {
    TxnOp::put(
        format!("{prefix}weights/{}", state.spec.service),
        serde_json::to_string(&weights(state)).unwrap_or_default(),
        None,
    )
}

/// Weights set on this instance alone, as an update of the `admin` source.
pub fn local_weights(service: &str, weights: Option<BTreeMap<String, u32>>) -> Update {
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

/// A client of the first member that answers.
pub async fn connect_any(endpoints: &[String]) -> Result<Client, String> {
    let mut last = String::from("no etcd endpoint");
    for e in endpoints {
        match connect(e).await {
            Ok(c) => return Ok(c),
            Err(err) => last = format!("{e}: {err}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_json(
            "web",
            br#"{"stable": "v1", "canary": "v2", "steps": [10, 50, 100], "step_time": "10s", "min_requests": 100, "max_error_rate": 0.05}"#,
            "test",
        )
        .unwrap()
    }

    /// Figures of `n` requests with `errors` errors, all at `ms` milliseconds.
    fn stats(n: u64, errors: u64, ms: f64) -> VersionStats {
        VersionStats {
            requests: n,
            errors,
            buckets: gantry_proxy::metrics::VERSION_BUCKETS
                .iter()
                .map(|&le| (le, if ms / 1000.0 <= le { n } else { 0 }))
                .collect(),
        }
    }

    #[test]
    fn a_step_waits_for_its_time_and_its_requests() {
        let s = spec();
        let ok = stats(500, 0, 2.0);
        assert!(matches!(
            judge(&s, &stats(50, 0, 2.0), &ok, Duration::from_secs(60)),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&s, &ok, &ok, Duration::from_secs(5)),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&s, &ok, &ok, Duration::from_secs(10)),
            Verdict::Advance(_)
        ));
    }

    #[test]
    fn gates_fail_on_errors_early_and_on_latency() {
        let s = spec();
        let stable = stats(500, 0, 2.0);
        // 6 errors in 20 requests: 100 requests could no longer stay under 5%.
        assert!(matches!(
            judge(&s, &stats(20, 6, 2.0), &stable, Duration::ZERO),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            judge(&s, &stats(20, 4, 2.0), &stable, Duration::ZERO),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&s, &stats(200, 20, 2.0), &stable, Duration::ZERO),
            Verdict::Fail(_)
        ));
        // p99 of 50 ms against 2 ms x 1.5 + 5 ms.
        let v = judge(&s, &stats(200, 0, 50.0), &stable, Duration::from_secs(10));
        assert!(matches!(&v, Verdict::Fail(why) if why.contains("p99")), "{v:?}");
    }

    #[test]
    fn steps_then_promotion_or_rollback_to_zero() {
        let st = started(spec(), 0);
        assert_eq!((st.weight, weights(&st)["v1"]), (10, 90));
        let (st, a) = advance(&st, &Verdict::Advance("ok".into()), 1).unwrap();
        assert_eq!((a, st.step, st.weight), (Action::Step, 1, 50));
        let (st2, a) = advance(&st, &Verdict::Advance("ok".into()), 2).unwrap();
        assert_eq!((a, st2.weight), (Action::Step, 100));
        let (done, a) = advance(&st2, &Verdict::Advance("ok".into()), 3).unwrap();
        assert_eq!(
            (a, done.phase, done.weight),
            (Action::Promote, Phase::Promoted, 100)
        );
        let (back, a) = advance(&st, &Verdict::Fail("errors".into()), 4).unwrap();
        assert_eq!(
            (a, back.phase, weights(&back)["v2"]),
            (Action::Rollback, Phase::RolledBack, 0)
        );
        assert!(advance(&st, &Verdict::Wait("..".into()), 5).is_none());
    }
}
