//! The pure half of rollouts: where a rollout is ([`RolloutState`]), the judgement of a step on
//! the canary's and the stable version's figures ([`judge`]), and the state machine that turns a
//! verdict or an admin command into the next state ([`advance`], [`command`]). No I/O, no clock
//! but what callers pass in; the driver (`super`) and its backings do the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_config::mirror::Split;
use gantry_config::rollout::{Lagging, RolloutSpec};
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
    /// In a shadow step: the share of stable's requests mirrored to the canary, in percent.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mirror: u32,
    pub step_started_ms: u64,
    pub reason: String,
    /// The revision of the `spec` key this state follows (etcd); a newer spec starts over.
    #[serde(default)]
    pub spec_revision: i64,
    /// With etcd: every live instance serves this step's weights, and the step's clock runs
    /// (from `step_started_ms`). Until then `step_started_ms` is when the weights were written
    /// and the step is not judged. Always true without etcd.
    #[serde(default = "yes")]
    pub fleet_ready: bool,
    /// With etcd: the revision this step's weights were written at (0 until known: the revision
    /// of the state written with them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weights_revision: i64,
    /// Live instances that do not serve this step's weights yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

fn yes() -> bool {
    true
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
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
/// rate, or earlier (before `min_requests`) when its errors alone already exceed what
/// `min_requests` would allow; the latency gate fails when, over at least `min_requests`, the
/// canary's p99 is above stable's times `max_p99_ratio` plus `p99_slack`. With both gates
/// holding, the step ends once its time is up and it has seen `min_requests`.
pub fn judge(spec: &RolloutSpec, canary: &VersionStats, stable: &VersionStats, elapsed: Duration) -> Verdict {
    let min = spec.min_requests.max(1);
    let rate = canary.error_rate();
    let too_many_errors = if canary.requests >= min {
        rate > spec.max_error_rate
    } else {
        canary.errors as f64 > spec.max_error_rate * min as f64
    };
    if too_many_errors {
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
            next.mirror = 0;
            next.reason = why.clone();
            Action::Rollback
        }
        Verdict::Advance(why) if state.step + 1 < state.spec.step_count() => {
            next.step += 1;
            (next.weight, next.mirror) = state.spec.step_at(next.step);
            next.reason = why.clone();
            Action::Step
        }
        Verdict::Advance(why) => {
            next.phase = Phase::Promoted;
            next.weight = 100;
            next.mirror = 0;
            next.reason = why.clone();
            Action::Promote
        }
    };
    Some((next, action))
}

/// The weights a rollout state asks for, with the mirror share of a shadow step.
pub fn weights(state: &RolloutState) -> Split {
    Split {
        versions: BTreeMap::from([
            (state.spec.stable.clone(), 100 - state.weight),
            (state.spec.canary.clone(), state.weight),
        ]),
        mirror: (state.mirror > 0).then(|| (state.spec.canary.clone(), state.mirror)),
    }
}

/// A new rollout's first state.
pub fn started(spec: RolloutSpec, spec_revision: i64) -> RolloutState {
    let (weight, mirror) = spec.step_at(0);
    RolloutState {
        weight,
        mirror,
        spec,
        phase: Phase::Running,
        step: 0,
        step_started_ms: unix_ms(),
        reason: "started".into(),
        spec_revision,
        fleet_ready: true,
        weights_revision: 0,
        waiting_for: Vec::new(),
    }
}

/// A step that has new weights to be served by the fleet before its clock starts (etcd).
pub fn await_fleet(mut state: RolloutState) -> RolloutState {
    if state.phase == Phase::Running {
        state.fleet_ready = false;
        state.weights_revision = 0;
        state.waiting_for.clear();
    }
    state
}

/// A step waiting for the fleet, against the revision each live instance serves
/// (`instances`: id and revision): the state to write when something changed. The step begins
/// when every instance serves `awaited` or later, or, past `fleet_deadline` with
/// `fleet_lagging = drop`, without the laggards.
pub fn fleet_check(
    state: &RolloutState,
    awaited: i64,
    instances: &[(String, i64)],
    now_ms: u64,
) -> Option<RolloutState> {
    if state.fleet_ready || state.phase != Phase::Running {
        return None;
    }
    let mut lagging: Vec<String> = instances
        .iter()
        .filter(|(_, rev)| *rev < awaited)
        .map(|(id, _)| id.clone())
        .collect();
    lagging.sort();
    let deadline = state.spec.fleet_deadline;
    let late = Duration::from_millis(now_ms.saturating_sub(state.step_started_ms)) >= deadline;
    let mut next = state.clone();
    next.weights_revision = awaited;
    if lagging.is_empty() || (late && state.spec.fleet_lagging == Lagging::Drop) {
        next.fleet_ready = true;
        next.step_started_ms = now_ms;
        next.reason = if lagging.is_empty() {
            format!(
                "step {} begins: every live instance ({}) serves revision {awaited}",
                state.step,
                instances.len()
            )
        } else {
            format!(
                "step {} begins without {}: not serving revision {awaited} after {deadline:?}",
                state.step,
                lagging.join(", ")
            )
        };
        next.waiting_for.clear();
        return Some(next);
    }
    next.reason = if late {
        format!(
            "waiting: {} not serving revision {awaited} after {deadline:?} (fleet_lagging = wait)",
            lagging.join(", ")
        )
    } else {
        format!("waiting for {} to serve revision {awaited}", lagging.join(", "))
    };
    next.waiting_for = lagging;
    (next.waiting_for != state.waiting_for
        || next.reason != state.reason
        || next.weights_revision != state.weights_revision)
        .then_some(next)
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
            next.mirror = 0;
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
        // Past min_requests only the rate counts: 10 errors in 1,000 requests is 1%.
        assert!(matches!(
            judge(&s, &stats(1000, 10, 2.0), &stable, Duration::ZERO),
            Verdict::Wait(_)
        ));
        // p99 of 50 ms against 2 ms x 1.5 + 5 ms.
        let v = judge(&s, &stats(200, 0, 50.0), &stable, Duration::from_secs(10));
        assert!(matches!(&v, Verdict::Fail(why) if why.contains("p99")), "{v:?}");
    }

    #[test]
    fn a_step_waits_for_every_live_instance_then_begins() {
        let mut st = await_fleet(started(spec(), 0));
        st.step_started_ms = 1_000;
        let fleet = |c: i64| vec![("a".to_string(), 42), ("b".to_string(), 40), ("c".to_string(), c)];
        // b and c lag behind revision 41.
        let w = fleet_check(&st, 41, &fleet(12), 2_000).unwrap();
        assert!(!w.fleet_ready);
        assert_eq!(w.waiting_for, ["b", "c"]);
        assert!(w.reason.contains("b, c"), "{}", w.reason);
        // Nothing new: nothing to write.
        assert!(fleet_check(&w, 41, &fleet(12), 3_000).is_none());
        // Past the deadline, waiting says so (once); the step has not begun.
        let mut w2 = w.clone();
        w2.waiting_for = vec!["c".into()];
        let late = fleet_check(&w2, 41, &[("a".into(), 42), ("c".into(), 12)], 1_000 + 30_000).unwrap();
        assert!(
            !late.fleet_ready && late.reason.contains("after 30s"),
            "{}",
            late.reason
        );
        // Everyone there: the clock starts now.
        let go = fleet_check(&late, 41, &[("a".into(), 42), ("c".into(), 41)], 40_000).unwrap();
        assert!(go.fleet_ready && go.waiting_for.is_empty());
        assert_eq!(go.step_started_ms, 40_000);
        // With fleet_lagging = drop, the laggard is left out after the deadline.
        let mut d = w2.clone();
        d.spec.fleet_lagging = Lagging::Drop;
        assert!(fleet_check(&d, 41, &[("c".into(), 12)], 20_000).is_some_and(|s| !s.fleet_ready));
        let dropped = fleet_check(&d, 41, &[("c".into(), 12)], 31_000).unwrap();
        assert!(
            dropped.fleet_ready && dropped.reason.contains("without c"),
            "{}",
            dropped.reason
        );
    }

    #[test]
    fn shadow_steps_come_first_and_mirror_with_no_user_on_the_canary() {
        let mut spec = spec();
        spec.shadow = vec![20, 50];
        let st = started(spec, 0);
        let w = weights(&st);
        assert_eq!((st.weight, st.mirror, w.versions["v2"]), (0, 20, 0));
        assert_eq!(w.mirror, Some(("v2".to_string(), 20)));
        let (st, _) = advance(&st, &Verdict::Advance("ok".into()), 1).unwrap();
        assert_eq!((st.step, st.weight, st.mirror), (1, 0, 50));
        let (live, a) = advance(&st, &Verdict::Advance("ok".into()), 2).unwrap();
        assert_eq!((a, live.step, live.weight, live.mirror), (Action::Step, 2, 10, 0));
        assert_eq!(weights(&live).mirror, None);
        // A failing shadow step rolls back with no mirror left behind.
        let (back, a) = advance(&st, &Verdict::Fail("errors".into()), 3).unwrap();
        assert_eq!(
            (a, back.weight, back.mirror, weights(&back).mirror),
            (Action::Rollback, 0, 0, None)
        );
    }

    #[test]
    fn steps_then_promotion_or_rollback_to_zero() {
        let st = started(spec(), 0);
        assert_eq!((st.weight, weights(&st).versions["v1"]), (10, 90));
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
            (a, back.phase, weights(&back).versions["v2"]),
            (Action::Rollback, Phase::RolledBack, 0)
        );
        assert!(advance(&st, &Verdict::Wait("..".into()), 5).is_none());
    }
}
