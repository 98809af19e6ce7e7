//! Scaling recommendations from the traffic Gantry sees, in the manner of Knative's autoscaler.
//!
//! Every `sample` (100 ms) the concurrency of each service that declares `scale` (requests in
//! flight at Gantry) and its demand counters are read; every `tick` (1 s) a [`Recommender`]
//! turns them into a replica count:
//!
//! ```text
//! per replica  = target x utilization
//! stable       = ceil(average concurrency over the window / per replica)          (default 60 s)
//! burst        = ceil(average concurrency over the burst window / per replica)    (default 6 s)
//! burst mode   : while the burst window asks for >= 2x the ready replicas, and one window after:
//!                the recommendation is the larger of burst and the last one (never down)
//! stable mode  : the largest stable figure of the last window: up at once, down only once the
//!                whole window agrees; never below half the ready replicas in one step
//! bounded by min and max
//! ```
//!
//! The result is published as `gantry_scale_recommended_replicas{service}`, in
//! `GET /api/v1/scaling`, in etcd (`<prefix>scaling/<service>`, with its inputs) and, when the
//! Docker scaler is on, acted upon (`scaler.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_config::Scale;
use gantry_proxy::Proxy;
use gantry_proxy::backend::BackendPhase;
use gantry_proxy::service::Demand;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The burst window takes over when it asks for this many times the ready replicas.
pub const BURST_THRESHOLD: f64 = 2.0;
/// One step down never removes more than half of the ready replicas.
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// One reading of a service.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
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
        let concurrency =
            inside.iter().map(|s| f64::from(s.demand.in_flight)).sum::<f64>() / inside.len() as f64;
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

struct Entry {
    recommender: Recommender,
    last: Option<Recommendation>,
}

/// The controller: samples every scaled service, recommends, publishes.
pub struct Scaling {
    proxy: Arc<Proxy>,
    sample: Duration,
    tick: Duration,
    entries: Mutex<BTreeMap<String, Entry>>,
    published: watch::Sender<BTreeMap<String, Recommendation>>,
    recommended: IntGaugeVec,
    ready: IntGaugeVec,
    concurrency: GaugeVec,
    burst: IntGaugeVec,
}

impl std::fmt::Debug for Scaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaling").field("tick", &self.tick).finish()
    }
}

impl Scaling {
    pub fn new(
        proxy: Arc<Proxy>,
        sample: Duration,
        tick: Duration,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let recommended = IntGaugeVec::new(
            Opts::new(
                "gantry_scale_recommended_replicas",
                "The replicas Gantry recommends for each service that declares scale settings.",
            ),
            &["service"],
        )?;
        let ready = IntGaugeVec::new(
            Opts::new(
                "gantry_scale_ready_replicas",
                "Backends of each scaled service taking traffic now.",
            ),
            &["service"],
        )?;
        let concurrency = GaugeVec::new(
            Opts::new(
                "gantry_scale_concurrency",
                "Requests in flight at Gantry, averaged over the stable and burst windows.",
            ),
            &["service", "window"],
        )?;
        let burst = IntGaugeVec::new(
            Opts::new(
                "gantry_scale_burst_mode",
                "1 while a service's recommendation follows its burst window.",
            ),
            &["service"],
        )?;
        registry.register(Box::new(recommended.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(concurrency.clone()))?;
        registry.register(Box::new(burst.clone()))?;
        Ok(Arc::new(Self {
            proxy,
            sample,
            tick,
            entries: Mutex::new(BTreeMap::new()),
            published: watch::channel(BTreeMap::new()).0,
            recommended,
            ready,
            concurrency,
            burst,
        }))
    }

    /// Every service's latest recommendation.
    pub fn recommendations(&self) -> BTreeMap<String, Recommendation> {
        self.published.borrow().clone()
    }

    /// Follows every new set of recommendations.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, Recommendation>> {
        self.published.subscribe()
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(self.sample);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_tick = Instant::now() + self.tick;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
            }
            let now = Instant::now();
            self.observe(now);
            if now >= next_tick {
                next_tick = now + self.tick;
                self.recommend(now);
            }
        }
    }

    fn observe(&self, now: Instant) {
        let snap = self.proxy.snapshot();
        let nanos = gantry_proxy::clock::nanos_since_epoch(std::time::Instant::now());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = Vec::new();
        for svc in snap.services() {
            let Some(spec) = &svc.spec.scale else { continue };
            let ready = svc
                .backends
                .iter()
                .filter(|b| {
                    matches!(
                        b.health.phase(nanos),
                        BackendPhase::Ready | BackendPhase::SlowStart
                    )
                })
                .count() as u32;
            let entry = entries.entry(svc.name.to_string()).or_insert_with(|| Entry {
                recommender: Recommender::new(spec.clone(), now),
                last: None,
            });
            entry.recommender.set_spec(spec);
            entry.recommender.observe(Sample {
                at: now,
                demand: svc.state.demand(),
                ready,
            });
            seen.push(svc.name.to_string());
        }
        entries.retain(|name, _| {
            let keep = seen.contains(name);
            if !keep {
                let _ = self.recommended.remove_label_values(&[name]);
                let _ = self.ready.remove_label_values(&[name]);
                let _ = self.burst.remove_label_values(&[name]);
                for w in ["stable", "burst"] {
                    let _ = self.concurrency.remove_label_values(&[name, w]);
                }
            }
            keep
        });
    }

    fn recommend(&self, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = BTreeMap::new();
        for (name, entry) in entries.iter_mut() {
            let r = entry.recommender.recommend(name, now);
            let changed = entry
                .last
                .as_ref()
                .is_none_or(|l| l.replicas != r.replicas || l.mode != r.mode);
            if changed {
                info!(
                    service = %name,
                    replicas = r.replicas,
                    ready = r.ready,
                    mode = ?r.mode,
                    reason = %r.reason,
                    "scaling recommendation"
                );
            }
            self.recommended
                .with_label_values(&[name])
                .set(i64::from(r.replicas));
            self.ready.with_label_values(&[name]).set(i64::from(r.ready));
            self.burst
                .with_label_values(&[name])
                .set(i64::from(r.mode == Mode::Burst));
            self.concurrency
                .with_label_values(&[name, "stable"])
                .set(r.stable.concurrency);
            self.concurrency
                .with_label_values(&[name, "burst"])
                .set(r.burst.concurrency);
            entry.last = Some(r.clone());
            all.insert(name.clone(), r);
        }
        drop(entries);
        self.published.send_replace(all);
    }
}

/// Writes each service's recommendation, with its inputs, to `<prefix>scaling/<service>` when
/// it changes (and every `refresh` otherwise, so the inputs stay current); removes the keys of
/// services that stopped declaring scale settings.
pub async fn publish_to_etcd(
    scaling: Arc<Scaling>,
    endpoints: Vec<String>,
    prefix: String,
    instance: String,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut updates = scaling.subscribe();
    let mut client = None;
    let mut written: BTreeMap<String, (u32, Mode, Instant)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = updates.changed() => if r.is_err() { return },
        }
        let all = updates.borrow_and_update().clone();
        if client.is_none() {
            match crate::rollout::connect_any(&endpoints).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "scaling: cannot reach etcd to publish recommendations");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let now = Instant::now();
        let mut failed = false;
        for (name, r) in &all {
            let due = written.get(name).is_none_or(|&(n, m, at)| {
                n != r.replicas || m != r.mode || now.duration_since(at) >= refresh
            });
            if !due {
                continue;
            }
            let value = serde_json::json!({
                "recommendation": r,
                "instance": instance,
                "at_unix_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            });
            match c
                .put(format!("{prefix}scaling/{name}"), value.to_string(), None)
                .await
            {
                Ok(_) => {
                    written.insert(name.clone(), (r.replicas, r.mode, now));
                }
                Err(e) => {
                    warn!(error = %e, "scaling: cannot write the recommendation to etcd");
                    failed = true;
                    break;
                }
            }
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|n| !all.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if c.delete(format!("{prefix}scaling/{name}"), None).await.is_ok() {
                written.remove(&name);
            }
        }
        if failed {
            client = None;
        }
    }
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
