//! Passive backend health: outlier ejection, slow start, drain, and the last result of the
//! active checks (`crate::checks`), which run elsewhere and only store it here.
//!
//! All of it lives in atomics inside each [`BackendState`], which survives routing-table swaps.
//! Balancers ask a backend for its effective weight at the moment of the pick, so a health
//! change never rebuilds a snapshot and never resets a pool: a flapping backend costs a few
//! atomic stores, nothing more.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_config::Outlier;

use super::BackendState;
use crate::clock::nanos_since_epoch;

/// What a backend is doing now, for the admin API and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendPhase {
    /// Takes traffic at its full weight.
    Ready,
    /// Active checks have not passed (yet, or any more).
    NotReady,
    /// Ejected by passive outlier detection until its ejection ends.
    Ejected,
    /// Leaving: no new requests, in-flight ones finish.
    Draining,
    /// Takes traffic at a weight that is still ramping up.
    SlowStart,
}

impl BackendPhase {
    pub const ALL: [BackendPhase; 5] = [
        BackendPhase::Ready,
        BackendPhase::NotReady,
        BackendPhase::Ejected,
        BackendPhase::Draining,
        BackendPhase::SlowStart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendPhase::Ready => "ready",
            BackendPhase::NotReady => "not_ready",
            BackendPhase::Ejected => "ejected",
            BackendPhase::Draining => "draining",
            BackendPhase::SlowStart => "slow_start",
        }
    }
}

/// The health part of a backend's state.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict (true when the service has no checks).
    check_ok: AtomicBool,
    /// Consecutive failures of real traffic (5xx answers, connection failures).
    consecutive_failures: AtomicU32,
    /// Nanoseconds since the process epoch until which the backend is ejected (0: never was).
    ejected_until: AtomicU64,
    /// Ejections so far, decayed while the backend stays healthy: the next ejection lasts
    /// `base_ejection_time` times this plus one.
    ejections: AtomicU32,
    /// When the backend last became eligible (created ready, passed its checks): slow start
    /// counts from the later of this and the end of its last ejection.
    ready_since: AtomicU64,
    draining: AtomicBool,
    /// The service's slow-start window in nanoseconds (set with every snapshot).
    slow_start: AtomicU64,
    /// Why the backend is in its current phase, updated on transitions only.
    reason: Mutex<String>,
}

impl Health {
    /// `ready`: takes traffic before any check ran. `ramp`: joins a running service, so slow
    /// start applies from now (backends that start together with their service share traffic
    /// evenly anyway, and ramping them all would only slow the start).
    pub fn new(ready: bool, ramp: bool) -> Self {
        Self {
            check_ok: AtomicBool::new(ready),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ready_since: AtomicU64::new(if ramp {
                nanos_since_epoch(Instant::now())
            } else {
                0
            }),
            draining: AtomicBool::new(false),
            slow_start: AtomicU64::new(0),
            reason: Mutex::new(if ready {
                String::new()
            } else {
                "waiting for the first passing health check".into()
            }),
        }
    }

    /// May take new requests (ignoring the panic threshold).
    #[inline]
    pub fn eligible(&self, now: u64) -> bool {
        self.check_ok.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
            && !self.draining.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_slow_start(&self, window: Duration) {
        self.slow_start.store(window.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The share of its weight the backend gets now: ramps from 10% to 100% over the slow-start
    /// window after it became eligible (the 10% floor keeps a trickle of traffic that proves it).
    #[inline]
    pub fn weight_factor(&self, now: u64) -> f64 {
        let window = self.slow_start.load(Ordering::Relaxed);
        if window == 0 {
            return 1.0;
        }
        let since = self
            .ready_since
            .load(Ordering::Relaxed)
            .max(self.ejected_until.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(since) as f64;
        (elapsed / window as f64).clamp(0.1, 1.0)
    }

    pub fn phase(&self, now: u64) -> BackendPhase {
        if self.is_draining() {
            BackendPhase::Draining
        } else if !self.check_ok.load(Ordering::Relaxed) {
            BackendPhase::NotReady
        } else if self.ejected_until.load(Ordering::Relaxed) > now {
            BackendPhase::Ejected
        } else if self.weight_factor(now) < 1.0 {
            BackendPhase::SlowStart
        } else {
            BackendPhase::Ready
        }
    }

    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Remaining ejection time.
    pub fn ejected_for(&self, now: u64) -> Duration {
        Duration::from_nanos(self.ejected_until.load(Ordering::Relaxed).saturating_sub(now))
    }

    fn set_reason(&self, r: impl Into<String>) {
        if let Ok(mut g) = self.reason.lock() {
            *g = r.into();
        }
    }

    pub fn drain(&self, why: &str) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            self.set_reason(why);
        }
    }

    /// The active checks' verdict changed (or checks were removed: `ok` with no reason).
    pub fn set_check(&self, ok: bool, reason: &str) {
        let was = self.check_ok.swap(ok, Ordering::Relaxed);
        if ok && !was {
            self.ready_since
                .store(nanos_since_epoch(Instant::now()), Ordering::Relaxed);
            self.set_reason(reason);
        } else if !ok {
            // Keep the latest failure visible while the backend stays out.
            self.set_reason(reason);
        }
    }

    /// A real request succeeded.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A real request failed (5xx, connection failure). Ejects the backend when it crossed the
    /// threshold and the service can spare it. Returns the ejection time if it was ejected.
    pub fn record_failure(
        &self,
        now: u64,
        outlier: &Outlier,
        peers: &[Arc<BackendState>],
    ) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until > now {
            return None; // already ejected (requests that were in flight when it happened)
        }
        let total = peers.len();
        let ejected = peers
            .iter()
            .filter(|b| b.health.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        if (ejected + 1) * 100 > total * outlier.max_ejection_percent as usize {
            return None; // ejecting it would leave too few backends
        }
        // Hysteresis: each base ejection time spent healthy since the last ejection forgives one.
        let healthy_for = now.saturating_sub(until);
        let forgiven = (healthy_for / outlier.base_ejection_time.as_nanos().max(1) as u64) as u32;
        let prior = if until == 0 {
            0
        } else {
            self.ejections.load(Ordering::Relaxed).saturating_sub(forgiven)
        };
        let time = (outlier.base_ejection_time * (prior + 1)).min(outlier.max_ejection_time);
        self.ejections.store(prior + 1, Ordering::Relaxed);
        self.ejected_until
            .store(now + time.as_nanos() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.set_reason(format!(
            "ejected for {} after {n} consecutive failures",
            gantry_config::duration::format(time)
        ));
        Some(time)
    }
}

impl Health {
    pub(crate) fn eligible_by_check(&self) -> bool {
        self.check_ok.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKey;
    use crate::metrics::Metrics;

    fn backends(n: usize) -> Vec<Arc<BackendState>> {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        (0..n)
            .map(|i| {
                let url =
                    gantry_config::backend::parse_backend_url(&format!("http://10.0.0.{i}:80")).unwrap();
                Arc::new(BackendState::new(
                    BackendKey {
                        service: "s".into(),
                        url,
                    },
                    &metrics,
                    true,
                    true,
                ))
            })
            .collect()
    }

    const SEC: u64 = 1_000_000_000;

    fn outlier() -> Outlier {
        Outlier {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }

    #[test]
    fn ejection_needs_consecutive_failures_and_grows_each_time_up_to_the_cap() {
        let bs = backends(2);
        let h = &bs[0].health;
        let o = outlier();
        let t = 100 * SEC;
        assert_eq!(h.record_failure(t, &o, &bs), None);
        h.record_success();
        assert_eq!(h.record_failure(t, &o, &bs), None);
        assert_eq!(h.record_failure(t, &o, &bs), None);
        assert_eq!(h.record_failure(t, &o, &bs), Some(Duration::from_secs(10)));
        assert!(!h.eligible(t + 9 * SEC));
        assert!(h.eligible(t + 10 * SEC));
        // Failing again right after: 20 s, then capped at 25 s.
        let t2 = t + 10 * SEC;
        for _ in 0..2 {
            h.record_failure(t2, &o, &bs);
        }
        assert_eq!(h.record_failure(t2, &o, &bs), Some(Duration::from_secs(20)));
        let t3 = t2 + 20 * SEC;
        for _ in 0..2 {
            h.record_failure(t3, &o, &bs);
        }
        assert_eq!(h.record_failure(t3, &o, &bs), Some(Duration::from_secs(25)));
        assert_eq!(h.ejections(), 3);
    }

    #[test]
    fn healthy_time_forgives_earlier_ejections() {
        let bs = backends(2);
        let (h, o) = (&bs[0].health, outlier());
        let t = 100 * SEC;
        for _ in 0..3 {
            h.record_failure(t, &o, &bs);
        }
        // Ejected for 10 s, then healthy for 30 s (three base times): back to a first ejection.
        let later = t + 40 * SEC;
        for _ in 0..2 {
            h.record_failure(later, &o, &bs);
        }
        assert_eq!(h.record_failure(later, &o, &bs), Some(Duration::from_secs(10)));
    }

    #[test]
    fn never_more_than_the_max_ejection_percent() {
        let bs = backends(4);
        let o = outlier();
        let t = 100 * SEC;
        let ejected = bs
            .iter()
            .filter(|b| (0..3).filter_map(|_| b.health.record_failure(t, &o, &bs)).count() > 0)
            .count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full_weight() {
        let bs = backends(1);
        let h = &bs[0].health;
        h.set_slow_start(Duration::from_secs(10));
        let since = h.ready_since.load(Ordering::Relaxed);
        assert_eq!(h.weight_factor(since), 0.1);
        assert!((h.weight_factor(since + 5 * SEC) - 0.5).abs() < 1e-9);
        assert_eq!(h.weight_factor(since + 20 * SEC), 1.0);
        assert_eq!(h.phase(since + SEC), BackendPhase::SlowStart);
        assert_eq!(h.phase(since + 20 * SEC), BackendPhase::Ready);
    }

    #[test]
    fn checks_and_drain_decide_eligibility() {
        let bs = backends(1);
        let h = &bs[0].health;
        let now = nanos_since_epoch(Instant::now());
        h.set_check(false, "health check answered 503");
        assert!(!h.eligible(now));
        assert_eq!(h.phase(now), BackendPhase::NotReady);
        assert_eq!(h.reason(), "health check answered 503");
        h.set_check(true, "");
        assert!(h.eligible(now));
        h.drain("admin request");
        assert!(!h.eligible(now));
        assert_eq!(h.phase(now), BackendPhase::Draining);
    }
}
