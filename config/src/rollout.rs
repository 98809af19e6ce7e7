//! Progressive rollouts as declared: in the file (`[rollouts.<service>]`), in etcd
//! (`<prefix>rollouts/<service>/spec`) or through the admin API. One raw type for all three, so
//! the same mistakes get the same messages wherever they are made.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::canary::check_version;
use crate::error::Errors;

/// A rollout as written (TOML or JSON).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRollout {
    pub stable: Option<String>,
    pub canary: Option<String>,
    /// Canary shares in percent, increasing; the last is normally 100.
    pub steps: Option<Vec<i64>>,
    /// Shadow steps before the first live step: each mirrors this share (percent) of stable's
    /// requests to the canary, whose answers are discarded and judged like a live step's.
    pub shadow: Option<Vec<i64>>,
    pub step_time: Option<String>,
    pub min_requests: Option<i64>,
    /// The canary's highest acceptable error rate (5xx and failed requests / requests), 0..=1.
    pub max_error_rate: Option<f64>,
    /// The canary's p99 latency may be at most this many times stable's...
    pub max_p99_ratio: Option<f64>,
    /// ...plus this much (so that sub-millisecond noise does not fail a gate).
    pub p99_slack: Option<String>,
    /// With etcd: how long a step waits for every live instance to serve its weights before
    /// `fleet_lagging` applies.
    pub fleet_deadline: Option<String>,
    /// `wait` (the step keeps waiting, naming the laggards) or `drop` (the step begins without
    /// them once the deadline has passed).
    pub fleet_lagging: Option<String>,
}

/// A validated rollout: move `service` from `stable` to `canary` step by step while the canary's
/// figures, as Gantry measures them, hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub service: String,
    pub stable: String,
    pub canary: String,
    pub steps: Vec<u32>,
    /// Mirrored shares (percent) of the shadow steps, which come before `steps`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<u32>,
    #[serde(with = "crate::duration::text")]
    pub step_time: Duration,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ratio: f64,
    #[serde(with = "crate::duration::text")]
    pub p99_slack: Duration,
    #[serde(with = "crate::duration::text", default = "default_fleet_deadline")]
    pub fleet_deadline: Duration,
    #[serde(default)]
    pub fleet_lagging: Lagging,
}

/// What a step does about an instance that does not serve its weights within the deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lagging {
    /// Keep waiting: the step is not judged on a split the fleet does not serve.
    #[default]
    Wait,
    /// Begin the step without it.
    Drop,
}

pub const DEFAULT_FLEET_DEADLINE: Duration = Duration::from_secs(30);

fn default_fleet_deadline() -> Duration {
    DEFAULT_FLEET_DEADLINE
}

// Validation keeps the rates finite (never NaN), so equality is an equivalence.
impl Eq for RolloutSpec {}

pub const DEFAULT_STEPS: [u32; 5] = [5, 10, 25, 50, 100];

impl FileRollout {
    /// Validates a rollout of `service`; errors name `origin` and `field.<name>`.
    pub fn validate(
        self,
        service: &str,
        origin: &str,
        field: &str,
        errs: &mut Errors,
    ) -> Option<RolloutSpec> {
        let before = errs.0.len();
        let mut version = |v: Option<String>, name: &str| match v {
            Some(v) => {
                if let Err(e) = check_version(&v) {
                    errs.push(origin, format!("{field}.{name}"), e);
                }
                v
            }
            None => {
                errs.push(origin, format!("{field}.{name}"), "missing: the version's name");
                String::new()
            }
        };
        let stable = version(self.stable, "stable");
        let canary = version(self.canary, "canary");
        if !stable.is_empty() && stable == canary {
            errs.push(origin, format!("{field}.canary"), "must differ from stable");
        }
        let steps: Vec<u32> = match self.steps {
            None => DEFAULT_STEPS.to_vec(),
            Some(s) => {
                let mut out = Vec::new();
                for (i, p) in s.into_iter().enumerate() {
                    match u32::try_from(p) {
                        Ok(p) if (1..=100).contains(&p) && out.last().is_none_or(|&l| p > l) => out.push(p),
                        _ => errs.push(
                            origin,
                            format!("{field}.steps[{i}]"),
                            format!("{p}: steps are percentages 1..=100, each above the one before"),
                        ),
                    }
                }
                if out.is_empty() && errs.0.len() == before {
                    errs.push(origin, format!("{field}.steps"), "needs at least one step");
                }
                out
            }
        };
        let mut shadow = Vec::new();
        for (i, p) in self.shadow.into_iter().flatten().enumerate() {
            match u32::try_from(p) {
                Ok(p) if (1..=100).contains(&p) => shadow.push(p),
                _ => errs.push(
                    origin,
                    format!("{field}.shadow[{i}]"),
                    format!("{p}: a shadow step mirrors a share in percent, 1..=100"),
                ),
            }
        }
        let mut duration = |v: Option<String>, name: &str, default: Duration| match v {
            None => default,
            Some(t) => crate::duration::parse(&t).unwrap_or_else(|e| {
                errs.push(origin, format!("{field}.{name}"), e);
                default
            }),
        };
        let step_time = duration(self.step_time, "step_time", Duration::from_secs(60));
        let p99_slack = duration(self.p99_slack, "p99_slack", Duration::from_millis(5));
        let fleet_deadline = duration(self.fleet_deadline, "fleet_deadline", DEFAULT_FLEET_DEADLINE);
        if step_time.is_zero() {
            errs.push(origin, format!("{field}.step_time"), "must be above zero");
        }
        let fleet_lagging = match self.fleet_lagging.as_deref() {
            None | Some("wait") => Lagging::Wait,
            Some("drop") => Lagging::Drop,
            Some(other) => {
                errs.push(
                    origin,
                    format!("{field}.fleet_lagging"),
                    format!("{other:?}: wait or drop"),
                );
                Lagging::Wait
            }
        };
        let min_requests = match self.min_requests {
            None => 100,
            Some(n) => u64::try_from(n).unwrap_or_else(|_| {
                errs.push(
                    origin,
                    format!("{field}.min_requests"),
                    format!("{n} is negative"),
                );
                0
            }),
        };
        let max_error_rate = self.max_error_rate.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&max_error_rate) {
            errs.push(
                origin,
                format!("{field}.max_error_rate"),
                format!("{max_error_rate} is not a rate in 0..=1"),
            );
        }
        let max_p99_ratio = self.max_p99_ratio.unwrap_or(1.5);
        if !(max_p99_ratio.is_finite() && max_p99_ratio >= 1.0) {
            errs.push(
                origin,
                format!("{field}.max_p99_ratio"),
                format!("{max_p99_ratio} must be at least 1"),
            );
        }
        (errs.0.len() == before).then(|| RolloutSpec {
            service: service.to_string(),
            stable,
            canary,
            steps,
            shadow,
            step_time,
            min_requests,
            max_error_rate,
            max_p99_ratio,
            p99_slack,
            fleet_deadline,
            fleet_lagging,
        })
    }
}

impl RolloutSpec {
    /// How many steps the rollout has: its shadow steps, then its live steps.
    pub fn step_count(&self) -> usize {
        self.shadow.len() + self.steps.len()
    }

    /// Step `i` of the whole rollout: (the canary's share of the traffic, the share of stable's
    /// requests mirrored to it), both in percent.
    pub fn step_at(&self, i: usize) -> (u32, u32) {
        match self.shadow.get(i) {
            Some(&mirrored) => (0, mirrored),
            None => (self.steps.get(i - self.shadow.len()).copied().unwrap_or(100), 0),
        }
    }

    /// Step `i` mirrors traffic rather than sending users to the canary.
    pub fn is_shadow(&self, i: usize) -> bool {
        i < self.shadow.len()
    }

    /// Parses a JSON rollout (etcd, admin API).
    pub fn from_json(service: &str, bytes: &[u8], origin: &str) -> Result<Self, Errors> {
        let mut errs = Errors::new();
        let raw: FileRollout = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                errs.push(origin, "body", e.to_string());
                return Err(errs);
            }
        };
        match raw.validate(service, origin, "rollout", &mut errs) {
            Some(s) if errs.is_empty() => Ok(s),
            _ => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let ok = RolloutSpec::from_json("web", br#"{"stable": "v1", "canary": "v2"}"#, "test").unwrap();
        assert_eq!(ok.steps, DEFAULT_STEPS);
        assert_eq!(ok.step_time, Duration::from_secs(60));
        let e = RolloutSpec::from_json(
            "web",
            br#"{"stable": "v1", "canary": "v1", "steps": [10, 5], "max_error_rate": 2}"#,
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rollout.canary"), "{e}");
        assert!(e.contains("rollout.steps[1]"), "{e}");
        assert!(e.contains("rollout.max_error_rate"), "{e}");
        let e = RolloutSpec::from_json("web", br#"{"stable": "v1", "canary": "v2", "speed": 3}"#, "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `speed`"), "{e}");
        let sh = RolloutSpec::from_json(
            "web",
            br#"{"stable": "v1", "canary": "v2", "shadow": [50], "steps": [10, 100]}"#,
            "test",
        )
        .unwrap();
        assert_eq!(
            (sh.step_count(), sh.step_at(0), sh.step_at(1), sh.step_at(2)),
            (3, (0, 50), (10, 0), (100, 0))
        );
        let e = RolloutSpec::from_json(
            "web",
            br#"{"stable": "v1", "canary": "v2", "shadow": [0]}"#,
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rollout.shadow[0]"), "{e}");
    }
}
