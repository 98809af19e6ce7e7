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
//!
//! With etcd, the recommendation is the fleet's: one elected instance sums every instance's
//! load, publishes and scales (`fleet`); the others only report their load.
//!
//! `recommender` is the pure rule; this module samples the proxy and keeps one recommender per
//! scaled service; `fleet` elects the publisher and sums the fleet's load; `publish` writes the
//! results to etcd.

pub mod fleet;
mod publish;
pub mod recommender;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_proxy::Proxy;
use gantry_proxy::backend::BackendPhase;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use fleet::{FleetLoad, lead};
pub use publish::publish_to_etcd;
pub use recommender::{Mode, Recommendation, Recommender, Sample, Scope, Window};

use crate::figures::{Load, REPORT_EVERY, STALE_AFTER};

struct Entry {
    recommender: Recommender,
    /// Whether the recommender is fed the fleet's load (else this instance's).
    fleet: bool,
    /// This instance's in-flight readings over the last report interval, and its counters.
    local: VecDeque<(Instant, u32)>,
    counters: gantry_proxy::service::Demand,
    last: Option<Recommendation>,
}

/// Whose traffic the recommendations are made from, and who acts on them.
#[derive(Clone, Debug)]
enum Role {
    /// No etcd: this instance's traffic; it publishes and scales.
    Alone,
    /// Elected in the fleet: the fleet's load; it publishes and scales.
    Publisher(Arc<FleetLoad>),
    /// Another instance publishes (`None`: not known yet, or etcd is out of reach).
    Follower(Option<String>),
}

/// The controller: samples every scaled service, recommends, publishes.
pub struct Scaling {
    proxy: Arc<Proxy>,
    sample: Duration,
    tick: Duration,
    entries: Mutex<BTreeMap<String, Entry>>,
    role: Mutex<Role>,
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
        let recommended = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_scale_recommended_replicas",
                "The replicas Gantry recommends for each service that declares scale settings.",
            ),
            &["service"],
            registry
        )?;
        let ready = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_scale_ready_replicas",
                "Backends of each scaled service taking traffic now.",
            ),
            &["service"],
            registry
        )?;
        let concurrency = prometheus::register_gauge_vec_with_registry!(
            Opts::new(
                "gantry_scale_concurrency",
                "Requests in flight at Gantry, averaged over the stable and burst windows.",
            ),
            &["service", "window"],
            registry
        )?;
        let burst = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_scale_burst_mode",
                "1 while a service's recommendation follows its burst window.",
            ),
            &["service"],
            registry
        )?;
        Ok(Arc::new(Self {
            proxy,
            sample,
            tick,
            entries: Mutex::new(BTreeMap::new()),
            role: Mutex::new(Role::Alone),
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

    /// In a fleet (etcd): nothing is published or scaled until [`lead`] elects this instance.
    pub fn join_fleet(&self) {
        self.follow(None);
    }

    fn set_leading(&self, load: FleetLoad) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Publisher(Arc::new(load));
    }

    fn follow(&self, publisher: Option<String>) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Follower(publisher);
    }

    fn role(&self) -> Role {
        self.role.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this instance publishes the recommendations and may act on them: alone, or
    /// elected with a recent read of the fleet's load.
    pub fn publishes(&self) -> bool {
        match self.role() {
            Role::Alone => true,
            Role::Publisher(f) => f.read.is_some_and(|t| t.elapsed() <= STALE_AFTER),
            Role::Follower(_) => false,
        }
    }

    /// This instance's load on each scaled service, for its fleet report: requests in flight
    /// averaged over the last report interval, and its counters.
    pub fn loads(&self) -> BTreeMap<String, Load> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|(name, e)| {
                let n = e.local.len().max(1) as f64;
                let sum: f64 = e.local.iter().map(|&(_, c)| f64::from(c)).sum();
                (
                    name.clone(),
                    Load {
                        in_flight: (sum / n * 100.0).round() / 100.0,
                        answered: e.counters.answered,
                        errors: e.counters.errors,
                        busy_micros: e.counters.busy_micros,
                    },
                )
            })
            .collect()
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
        let role = self.role();
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
            let demand = svc.state.demand();
            let entry = entries.entry(svc.name.to_string()).or_insert_with(|| Entry {
                recommender: Recommender::new(spec.clone(), now),
                fleet: false,
                local: VecDeque::new(),
                counters: demand,
                last: None,
            });
            entry.local.push_back((now, demand.in_flight));
            while entry
                .local
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) >= REPORT_EVERY)
            {
                entry.local.pop_front();
            }
            entry.counters = demand;
            // The publisher judges on the fleet's load once the fleet reports the service.
            let fleet = match &role {
                Role::Publisher(f) => f.services.get(&*svc.name).copied(),
                _ => None,
            };
            if fleet.is_some() != entry.fleet {
                // The counters are another series: the windows begin again.
                entry.recommender = Recommender::new(spec.clone(), now);
                entry.fleet = fleet.is_some();
            }
            entry.recommender.set_spec(spec);
            let (in_flight, demand) = fleet.unwrap_or((f64::from(demand.in_flight), demand));
            entry.recommender.observe(Sample {
                at: now,
                in_flight,
                demand,
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
        let role = self.role();
        let publishes = self.publishes();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = BTreeMap::new();
        for (name, entry) in entries.iter_mut() {
            let mut r = entry.recommender.recommend(name, now);
            r.scope = match (&role, entry.fleet) {
                (Role::Publisher(f), true) => Scope {
                    figures: "fleet",
                    publishes,
                    publisher: None,
                    instances: f.instances.clone(),
                    left_out: f.left_out.clone(),
                },
                (Role::Follower(p), _) => Scope {
                    publisher: p.clone(),
                    ..Scope::default()
                },
                _ => Scope {
                    publishes,
                    ..Scope::default()
                },
            };
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
