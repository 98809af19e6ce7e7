//! The pure half of rollouts: where a rollout is ([`RolloutState`]), the judgement of a step on
//! the canary's and the stable version's figures ([`judge`]), and the state machine that turns a
//! verdict or an admin command into the next state ([`advance`], [`command`]). No I/O, no clock
//! but what callers pass in; the driver (`super`) and its backings do the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_config::rollout::RolloutSpec;
use gantry_proxy::metrics::VersionStats;
use serde::{Deserialize, Serialize};

use super::RolloutError;
use crate::time::unix_ms;

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
    pub(super) fn of(s: &VersionStats) -> Self {
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

/// A new rollout's first state.
pub fn started(spec: RolloutSpec, spec_revision: i64) -> RolloutState {
    RolloutState {
        weight: spec.steps[0],
        spec,
        phase: Phase::Running,
        step: 0,
        step_started_ms: unix_ms(),
        reason: "started".into(),
        spec_revision,
    }
}

/// What an admin command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}

/// The state an admin command leads to, or why it cannot apply in the rollout's phase.
pub fn command(state: &RolloutState, cmd: Command) -> Result<(RolloutState, Action), RolloutError> {
    let service = &state.spec.service;
    let mut next = state.clone();
    let action = match (cmd, state.phase) {
        (_, p) if p.is_over() => {
            return Err(RolloutError::Conflict(format!(
                "the rollout of {service} is over ({p:?})"
            )));
        }
        (Command::Pause, _) => {
            next.phase = Phase::Paused;
            Action::Pause
        }
        (Command::Resume, Phase::Paused) => {
            next.phase = Phase::Running;
            next.step_started_ms = unix_ms();
            Action::Resume
        }
        (Command::Resume, _) => {
            return Err(RolloutError::Conflict(format!(
                "the rollout of {service} is not paused"
            )));
        }
        (Command::Abort, _) => {
            next.phase = Phase::Aborted;
            next.weight = 0;
            Action::Abort
        }
    };
    next.reason = format!("{} through the admin API", action.as_str());
    Ok((next, action))
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
