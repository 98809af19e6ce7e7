//! The pure half of scaling: windows over concurrency samples and the Knative-style rules that
//! turn them into a replica count (see the parent module). No I/O; time is passed in, so the
//! tests replay recorded curves in paused time.

use std::collections::VecDeque;
use std::time::Duration;

use gantry_config::Scale;
use gantry_proxy::service::Demand;
use serde::Serialize;
use tokio::time::Instant;

/// The burst window takes over when it asks for this many times the ready replicas.
pub const BURST_THRESHOLD: f64 = 2.0;
/// One step down never removes more than half of the ready replicas.
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// One reading of a service.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Requests in flight: one reading here, or the sum of the fleet's one-second averages.
    pub in_flight: f64,
    /// The counters (`demand.in_flight` is not read: `in_flight` is).
    pub demand: Demand,
    /// Backends taking traffic (ready or ramping up).
    pub ready: u32,
}

/// What one window saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Window {
    /// The window's length in seconds (shorter while Gantry has seen less than a window).
    pub seconds: f64,
    /// Requests in flight at Gantry, averaged over the window.
    pub concurrency: f64,
    pub requests_per_second: f64,
    /// Mean time to the response head, in milliseconds.
    pub mean_latency_ms: f64,
    /// Share of answers that were 5xx.
    pub error_rate: f64,
    /// The replicas this window alone asks for.
    pub replicas: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Stable,
    Burst,
}

/// A recommendation and the inputs that led to it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    pub service: String,
    pub replicas: u32,
    pub ready: u32,
    pub mode: Mode,
    pub reason: String,
    pub stable: Window,
    pub burst: Window,
    pub min: u32,
    pub max: u32,
    pub target: f64,
    pub utilization: f64,
    /// Whose traffic it was made from and who publishes it (set by the controller).
    pub scope: Scope,
}

/// Where a recommendation comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scope {
    /// `"instance"`: this instance's traffic; `"fleet"`: every reporting instance's.
    pub figures: &'static str,
    /// Whether this instance publishes it (and the Docker scaler, when on, acts on it).
    pub publishes: bool,
    /// In a fleet, the instance that publishes instead (when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The instances whose load was summed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Instances left out for want of a recent report.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            figures: "instance",
            publishes: false,
            publisher: None,
            instances: Vec::new(),
            left_out: Vec::new(),
        }
    }
}

/// The recommender of one service: pure, driven by samples and the time it is asked at.
#[derive(Debug)]
pub struct Recommender {
    spec: Scale,
    /// Samples of the last window, plus the one just before it (the counters' baseline).
    samples: VecDeque<Sample>,
    /// The stable window's figure at each recommendation of the last window.
    history: VecDeque<(Instant, u32)>,
    /// Burst mode lasts until this moment (one window after the burst last crossed the bar).
    burst_until: Option<Instant>,
    current: Option<u32>,
    since: Instant,
}

impl Recommender {
    pub fn new(spec: Scale, now: Instant) -> Self {
        Self {
            spec,
            samples: VecDeque::new(),
            history: VecDeque::new(),
            burst_until: None,
            current: None,
            since: now,
        }
    }

    /// New settings keep what has been observed.
    pub fn set_spec(&mut self, spec: &Scale) {
        if self.spec != *spec {
            self.spec = spec.clone();
        }
    }

    pub fn observe(&mut self, s: Sample) {
        self.samples.push_back(s);
        let horizon = s.at.checked_sub(self.spec.window);
        // Keep one sample at or before the horizon: the baseline of the window's counters.
        while let (Some(h), Some(second)) = (horizon, self.samples.get(1))
            && second.at <= h
        {
            self.samples.pop_front();
        }
    }

    fn window(&self, now: Instant, length: Duration) -> Window {
        let start = now.checked_sub(length);
        let inside: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| start.is_none_or(|t| s.at > t))
            .collect();
        let (Some(last), Some(first)) = (inside.last(), inside.first()) else {
            return Window::default();
        };
        let concurrency = inside.iter().map(|s| s.in_flight).sum::<f64>() / inside.len() as f64;
        // The counters' baseline: the last sample before the window, else its first.
        let base = self
            .samples
            .iter()
            .rev()
            .find(|s| start.is_some_and(|t| s.at <= t))
            .unwrap_or(first);
        let seconds = last.at.duration_since(base.at).as_secs_f64();
        let answered = last.demand.answered.saturating_sub(base.demand.answered);
        let errors = last.demand.errors.saturating_sub(base.demand.errors);
        let busy = last.demand.busy_micros.saturating_sub(base.demand.busy_micros);
        Window {
            seconds,
            concurrency,
            requests_per_second: if seconds > 0.0 {
                answered as f64 / seconds
            } else {
                0.0
            },
            mean_latency_ms: if answered > 0 {
                busy as f64 / answered as f64 / 1000.0
            } else {
                0.0
            },
            error_rate: if answered > 0 {
                errors as f64 / answered as f64
            } else {
                0.0
            },
            replicas: replicas_for(concurrency, self.spec.per_replica()),
        }
    }

    /// The recommendation at `now`.
    pub fn recommend(&mut self, service: &str, now: Instant) -> Recommendation {
        let spec = &self.spec;
        let per = spec.per_replica();
        let ready = self.samples.back().map_or(0, |s| s.ready);
        let stable = self.window(now, spec.window);
        let burst = self.window(now, spec.burst_window);
        let current = *self.current.get_or_insert(ready.clamp(spec.min, spec.max));

        self.history.push_back((now, stable.replicas));
        while let Some(&(t, _)) = self.history.front()
            && now.duration_since(t) >= spec.window
        {
            self.history.pop_front();
        }
        if burst.concurrency / per >= BURST_THRESHOLD * f64::from(ready.max(1)) {
            self.burst_until = Some(now + spec.window);
        }
        let in_burst = self.burst_until.is_some_and(|t| t > now);
        let window_text = gantry_config::duration::format(spec.window);
        let (mut wanted, mode, mut reason) = if in_burst {
            let wanted = burst.replicas.max(current);
            let reason = format!(
                "burst: {:.1} in flight over {} asks for {} ({}x the {ready} ready); not scaling down before {window_text} without a burst",
                burst.concurrency,
                gantry_config::duration::format(spec.burst_window),
                burst.replicas,
                if ready == 0 {
                    "inf".to_string()
                } else {
                    format!("{:.1}", burst.concurrency / per / f64::from(ready))
                },
            );
            (wanted, Mode::Burst, reason)
        } else {
            let agreed = self
                .history
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(stable.replicas);
            let whole_window = now.duration_since(self.since) >= spec.window;
            if agreed.max(spec.min) < current && !whole_window {
                (
                    current,
                    Mode::Stable,
                    format!("holding {current}: Gantry has seen less than the {window_text} window"),
                )
            } else if agreed > stable.replicas {
                (
                    agreed,
                    Mode::Stable,
                    format!(
                        "stable: {:.1} in flight over {window_text} asks for {}; the last {window_text} asked for up to {agreed}",
                        stable.concurrency, stable.replicas
                    ),
                )
            } else {
                (
                    agreed,
                    Mode::Stable,
                    format!(
                        "stable: {:.1} in flight over {window_text} asks for {} at {:.1} per replica",
                        stable.concurrency, stable.replicas, per
                    ),
                )
            }
        };
        if wanted < ready {
            let floor = (f64::from(ready) / MAX_SCALE_DOWN_RATE).ceil() as u32;
            if wanted < floor {
                reason.push_str(&format!("; down to half the {ready} ready at most"));
                wanted = floor;
            }
        }
        let bounded = wanted.clamp(spec.min, spec.max);
        if bounded != wanted {
            reason.push_str(&format!("; bounded to {}..={}", spec.min, spec.max));
        }
        self.current = Some(bounded);
        Recommendation {
            service: service.to_string(),
            replicas: bounded,
            ready,
            mode,
            reason,
            stable,
            burst,
            min: spec.min,
            max: spec.max,
            target: spec.target.get(),
            utilization: spec.utilization.get(),
            scope: Scope::default(),
        }
    }
}

/// `ceil(concurrency / per)`, forgiving the rounding noise of an average that is exactly a
/// multiple.
fn replicas_for(concurrency: f64, per: f64) -> u32 {
    if per <= 0.0 {
        return 0;
    }
    (concurrency / per - 1e-6).ceil().max(0.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_config::Milli;

    fn spec(min: u32, max: u32, target: f64, window_s: u64) -> Scale {
        Scale {
            min,
            max,
            target: Milli::from_f64(target),
            utilization: Milli::from_f64(1.0),
            window: Duration::from_secs(window_s),
            burst_window: Duration::from_secs(window_s / 10).max(Duration::from_secs(1)),
        }
    }

    /// Plays a load curve through a recommender in paused time: `load(t)` is the concurrency
    /// at second `t`; replicas become ready `startup` after being recommended and go at once
    /// when the recommendation falls. Returns the recommendation of every second.
    async fn play(
        spec: Scale,
        seconds: u64,
        startup: Duration,
        load: impl Fn(f64) -> f64,
    ) -> Vec<(u64, u32, u32, Mode)> {
        let start = Instant::now();
        let mut r = Recommender::new(spec.clone(), start);
        let mut ready = spec.min;
        // (ready at, replicas) of recommendations still starting.
        let mut pending: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut out = Vec::new();
        let mut answered = 0u64;
        for tenth in 0..seconds * 10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = Instant::now();
            let t = tenth as f64 / 10.0;
            while pending.front().is_some_and(|&(at, _)| at <= now) {
                ready = ready.max(pending.pop_front().map_or(0, |p| p.1));
            }
            let c = load(t);
            answered += (c * 10.0) as u64;
            r.observe(Sample {
                at: now,
                in_flight: c.round(),
                demand: Demand {
                    in_flight: c.round() as u32,
                    answered,
                    errors: 0,
                    busy_micros: answered * 100_000,
                },
                ready,
            });
            if tenth % 10 == 9 {
                let rec = r.recommend("s", now);
                if rec.replicas > ready {
                    pending.push_back((now + startup, rec.replicas));
                } else {
                    ready = rec.replicas;
                    pending.clear();
                }
                out.push(((tenth + 1) / 10, rec.replicas, rec.ready, rec.mode));
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_up_in_load_scales_up_within_the_burst_window() {
        // Target 10 per replica; load steps from 8 (one replica) to 40 (four) at t = 100 s.
        let s = spec(1, 10, 10.0, 60);
        let curve = play(
            s,
            130,
            Duration::from_secs(3),
            |t| if t < 100.0 { 8.0 } else { 40.0 },
        )
        .await;
        assert!(curve[..100].iter().all(|&(_, r, _, _)| r == 1), "{curve:?}");
        let reached = curve
            .iter()
            .find(|&&(t, r, _, _)| t > 100 && r >= 4)
            .expect("never reached 4");
        assert!(reached.0 <= 106, "4 replicas only at {}s: {curve:?}", reached.0);
        assert_eq!(reached.3, Mode::Burst);
        // And it stays at 4 (not more: the load asks for exactly 4).
        assert!(curve[110..].iter().all(|&(_, r, _, _)| r == 4), "{curve:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_spike_does_not_cause_a_scale_down_afterwards() {
        // A steady 25 (three replicas at 10) with a 5 s spike to 120 at t = 100 s.
        let s = spec(1, 20, 10.0, 60);
        let spike = |t: f64| if (100.0..105.0).contains(&t) { 120.0 } else { 25.0 };
        let curve = play(s.clone(), 300, Duration::from_secs(2), spike).await;
        let before: Vec<u32> = curve[70..100].iter().map(|c| c.1).collect();
        assert!(before.iter().all(|&r| r == 3), "{before:?}");
        // The spike scales up...
        let peak = curve[100..110].iter().map(|c| c.1).max().unwrap();
        assert!(peak >= 6, "peak {peak}: {curve:?}");
        // ...and afterwards the recommendation never drops below the steady need, and does not
        // start down before a whole window has passed since the spike.
        let after = &curve[105..];
        assert!(after.iter().all(|c| c.1 >= 3), "{after:?}");
        let first_down = after
            .windows(2)
            .find(|w| w[1].1 < w[0].1)
            .map(|w| w[1].0)
            .unwrap();
        // The spike last asked for 2x the ready replicas at 104 s: a window later, not before.
        assert!(first_down >= 104 + 60, "down at {first_down}: {curve:?}");
        // It ends back at the steady need.
        assert_eq!(curve.last().unwrap().1, 3, "{curve:?}");

        // A 2 s blip, too short to fill the burst window, changes nothing at all.
        let blip = |t: f64| if (100.0..102.0).contains(&t) { 120.0 } else { 25.0 };
        let curve = play(s, 300, Duration::from_secs(2), blip).await;
        assert!(curve[70..].iter().all(|c| c.1 == 3), "{curve:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn oscillating_load_does_not_flap() {
        // Between 15 and 35 (two and four replicas at 10) every 10 s, for 5 minutes.
        let s = spec(1, 20, 10.0, 60);
        let wave = |t: f64| if (t as u64 / 10) % 2 == 0 { 15.0 } else { 35.0 };
        let curve = play(s, 300, Duration::from_secs(2), wave).await;
        let settled = &curve[60..];
        let changes = settled.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert_eq!(
            changes, 0,
            "the recommendation changed {changes} times: {settled:?}"
        );
        // It holds enough for the peaks.
        assert!(settled.iter().all(|c| c.1 >= 3), "{settled:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_hold_and_down_steps_take_at_most_half() {
        let s = spec(2, 5, 10.0, 10);
        let curve = play(
            s,
            80,
            Duration::from_secs(1),
            |t| if t < 30.0 { 200.0 } else { 0.0 },
        )
        .await;
        assert!(curve.iter().all(|c| (2..=5).contains(&c.1)), "{curve:?}");
        assert!(curve[5..30].iter().all(|c| c.1 == 5), "{curve:?}");
        for w in curve.windows(2) {
            let (from, to) = (w[0].1, w[1].1);
            assert!(to >= from.div_ceil(2), "{from} -> {to}: {curve:?}");
        }
        assert_eq!(curve.last().unwrap().1, 2, "{curve:?}");
    }

    #[test]
    fn window_figures_come_from_the_counters() {
        let start = Instant::now();
        let mut r = Recommender::new(spec(1, 10, 2.0, 10), start);
        for i in 0..=20u64 {
            r.observe(Sample {
                at: start + Duration::from_millis(100 * i),
                in_flight: 4.0,
                demand: Demand {
                    in_flight: 4,
                    answered: 10 * i,
                    errors: i,
                    busy_micros: 10 * i * 40_000,
                },
                ready: 1,
            });
        }
        let rec = r.recommend("s", start + Duration::from_secs(2));
        assert!((rec.stable.concurrency - 4.0).abs() < 1e-9);
        assert!(
            (rec.stable.requests_per_second - 100.0).abs() < 1e-6,
            "{:?}",
            rec.stable
        );
        assert!((rec.stable.mean_latency_ms - 40.0).abs() < 1e-6);
        assert!((rec.stable.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(rec.stable.replicas, 2);
        // 4 in flight at 2 per replica with 1 ready: the burst window asks for 2x: burst mode.
        assert_eq!(rec.mode, Mode::Burst);
        assert_eq!(rec.replicas, 2);
    }
}
