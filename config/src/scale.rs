//! Scaling settings of a service (Knative-style target concurrency, bounds, windows).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{bounded, duration_or};
use crate::duration;
use crate::error::Errors;

/// How many replicas a service should have, from the concurrency Gantry sees (see
/// `docs/scaling.md`): `ceil(average concurrency / (target x utilization))` over `window`, or over
/// `burst_window` when that asks for at least twice the ready replicas; bounded by `min` and
/// `max`; down only once the whole window agrees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    /// Concurrent requests one replica is meant to hold.
    pub target: Milli,
    /// The share of `target` aimed at, leaving headroom for bursts (0-1).
    pub utilization: Milli,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub window: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub burst_window: Duration,
}

impl Scale {
    /// Knative's defaults: 100 concurrent requests per replica at 70%, a 60 s window and a burst
    /// window a tenth of it.
    pub const DEFAULT_TARGET: f64 = 100.0;
    pub const DEFAULT_UTILIZATION: f64 = 0.7;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
    /// Without an explicit `max`, a recommendation never exceeds this.
    pub const DEFAULT_MAX: u32 = 10;

    /// Concurrent requests one replica should hold on average.
    pub fn per_replica(&self) -> f64 {
        self.target.get() * self.utilization.get()
    }
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: 1,
            max: Self::DEFAULT_MAX,
            target: Milli::from_f64(Self::DEFAULT_TARGET),
            utilization: Milli::from_f64(Self::DEFAULT_UTILIZATION),
            window: Self::DEFAULT_WINDOW,
            burst_window: Self::DEFAULT_WINDOW / 10,
        }
    }
}

/// A non-negative real number kept in thousandths, so that settings stay `Eq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub u64);

impl Milli {
    pub fn from_f64(v: f64) -> Self {
        Self((v.max(0.0) * 1000.0).round() as u64)
    }

    pub fn get(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}
/// `[services.<name>.scale]`, and the `gantry.scale.*` labels.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileScale {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub target: Option<f64>,
    pub utilization: Option<f64>,
    pub window: Option<String>,
    pub burst_window: Option<String>,
}

/// The `scale` table of a service. Scaling to zero is not supported (a request would have
/// nowhere to wait for a replica), so `min` is at least 1.
pub fn validate_scale(s: FileScale, origin: &str, field: &str, errs: &mut Errors) -> Scale {
    let d = Scale::default();
    let min = bounded(s.min, d.min, 1, 1000, origin, format!("{field}.min"), errs);
    let max = bounded(
        s.max,
        d.max.max(min),
        1,
        1000,
        origin,
        format!("{field}.max"),
        errs,
    );
    if min > max {
        errs.push(
            origin,
            format!("{field}.min"),
            format!("{min} is above {field}.max {max}"),
        );
    }
    let mut real = |v: Option<f64>, default: f64, lo: f64, hi: f64, name: &str| match v {
        None => Milli::from_f64(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Milli::from_f64(v),
        Some(v) => {
            errs.push(
                origin,
                format!("{field}.{name}"),
                format!("{v} is out of range {lo}..={hi}"),
            );
            Milli::from_f64(default)
        }
    };
    let target = real(s.target, Scale::DEFAULT_TARGET, 0.01, 1e6, "target");
    let utilization = real(
        s.utilization,
        Scale::DEFAULT_UTILIZATION,
        0.01,
        1.0,
        "utilization",
    );
    let window = duration_or(&s.window, d.window, origin, format!("{field}.window"), errs);
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&window) {
        errs.push(
            origin,
            format!("{field}.window"),
            format!("{} is out of range 2s..=1h", duration::format(window)),
        );
    }
    // Knative's default: a tenth of the window, at least a second.
    let burst_default = (window / 10).max(Duration::from_secs(1)).min(window);
    let burst_window = duration_or(
        &s.burst_window,
        burst_default,
        origin,
        format!("{field}.burst_window"),
        errs,
    );
    if burst_window.is_zero() || burst_window > window {
        errs.push(
            origin,
            format!("{field}.burst_window"),
            format!(
                "{} must be above zero and at most the window ({})",
                duration::format(burst_window),
                duration::format(window)
            ),
        );
    }
    Scale {
        min,
        max,
        target,
        utilization,
        window,
        burst_window,
    }
}
