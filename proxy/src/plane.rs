//! The data plane's shared state: the snapshot store, the registries of backend and service
//! state that outlive swaps, the active checkers and the metrics; and [`Proxy::publish`], which
//! builds a snapshot from a compiled routing table off the request path and swaps it in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gantry_config::{RoutingTable, Store};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};

use crate::backend::{BackendKey, BackendRegistry, BackendState};
use crate::checks::Checkers;
use crate::metrics::{ClassCounters, Metrics};
use crate::service::ServiceRegistry;
use crate::shutdown::Shutdown;
use crate::snapshot;
use crate::snapshot::Snapshot;

/// Shared state of the data plane: the snapshot store, backend state, metrics.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) store: Store<Snapshot>,
    pub(crate) registry: Arc<BackendRegistry>,
    pub(crate) services: ServiceRegistry,
    pub(crate) checkers: Checkers,
    pub(crate) metrics: Metrics,
    pub(crate) no_route: ClassCounters,
    pub(crate) entrypoints: Vec<String>,
    /// Upgraded connections (WebSocket tunnels), so that shutdown can wait for them.
    pub(crate) tunnels: tokio_util::task::TaskTracker,
    /// The access log, when configured (set once, before serving).
    pub access_log: std::sync::OnceLock<Arc<crate::access_log::AccessLogger>>,
    /// ACME certificates and challenge answers, when a resolver is configured (set once, before
    /// serving).
    pub acme: std::sync::OnceLock<Arc<crate::acme::AcmeCerts>>,
}

impl Proxy {
    /// A proxy with an empty routing table (every request gets 404 until the first publish).
    pub fn new(entrypoints: Vec<String>, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = Metrics::new(registry)?;
        let backends = Arc::new(BackendRegistry::default());
        registry.register(Box::new(BackendGauges::new(backends.clone())?))?;
        let no_route = metrics.class_counters("", "", "");
        let empty = Arc::new(RoutingTable::empty(&entrypoints));
        Ok(Arc::new(Self {
            store: Store::new(Snapshot::empty(empty)),
            registry: backends,
            services: ServiceRegistry::default(),
            checkers: Checkers::default(),
            metrics,
            no_route,
            entrypoints,
            tunnels: tokio_util::task::TaskTracker::new(),
            access_log: std::sync::OnceLock::new(),
            acme: std::sync::OnceLock::new(),
        }))
    }

    /// Builds a snapshot for `table` and makes it live. Returns its generation.
    ///
    /// Only what the table says changed is rebuilt, then settled: health checks follow the
    /// changed services, backends that left a service are retired (their idle connections
    /// close, requests in flight on them finish) and the metric series of what disappeared are
    /// dropped.
    pub fn publish(&self, table: Arc<RoutingTable>) -> u64 {
        let mut delta = snapshot::Delta::default();
        let generation = self.store.publish(|generation, previous| {
            let (snapshot, d) = Snapshot::build(
                generation,
                table,
                previous,
                &self.registry,
                &self.services,
                &self.metrics,
            );
            delta = d;
            snapshot
        });
        self.settle(&delta);
        generation
    }

    fn settle(&self, d: &snapshot::Delta) {
        self.checkers
            .update(&d.old_services, &d.new_services, &self.metrics);
        let services: HashSet<&str> = d.new_services.iter().map(|s| &*s.name).collect();
        let versions: HashSet<(&str, &str)> = d
            .new_services
            .iter()
            .flat_map(|s| s.versions().map(|(v, _)| (&*s.name, v)))
            .collect();
        for s in &d.old_services {
            for (v, _) in s.versions() {
                if !versions.contains(&(&*s.name, v)) {
                    self.metrics.forget_version(&s.name, v);
                }
            }
        }
        self.services.forget(
            d.old_services
                .iter()
                .map(|s| &s.name)
                .filter(|n| !services.contains(&***n)),
            &self.metrics,
        );
        let routes: HashSet<(&str, &str)> = d.new_routes.iter().map(|r| (&*r.name, &*r.service)).collect();
        let mut routers_of_service: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in &d.old_routes {
            routers_of_service.entry(&r.service).or_default().push(&r.name);
            if !routes.contains(&(&*r.name, &*r.service)) {
                self.metrics.forget_route(&r.name, &r.service);
            }
        }
        let keep: HashSet<&BackendKey> = d
            .new_services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| &b.key))
            .collect();
        let gone: Vec<BackendKey> = d
            .old_services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| &b.key))
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for b in self.registry.remove(&gone) {
            let routers = routers_of_service
                .get(&*b.key.service)
                .cloned()
                .unwrap_or_default();
            self.metrics.forget_backend(&routers, &b.key.service, &b.label);
        }
    }

    /// The live snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.load()
    }

    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    pub fn entrypoint_name(&self, i: usize) -> &str {
        self.entrypoints.get(i).map_or("", String::as_str)
    }

    /// What one version of a service has answered so far (for rollout gates and the admin API).
    pub fn version_stats(&self, service: &str, version: &str) -> crate::metrics::VersionStats {
        self.metrics.version_stats(service, version)
    }

    /// What the copies mirrored to one version of a service got so far (shadow steps).
    pub fn mirror_stats(&self, service: &str, version: &str) -> crate::metrics::VersionStats {
        self.metrics.mirror_stats(service, version)
    }

    pub fn backends(&self) -> Vec<Arc<BackendState>> {
        self.registry.all()
    }

    /// Waits until every upgraded connection (WebSocket tunnel) has closed.
    pub async fn tunnels_closed(&self) {
        self.tunnels.close();
        self.tunnels.wait().await;
    }

    /// Background upkeep: closes pooled connections past their idle timeout, so that idle
    /// upstream connections go away without waiting for the next request.
    pub async fn maintain(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let snap = self.snapshot();
            for svc in snap.services() {
                for b in &svc.backends {
                    b.evict_idle(svc.spec.timeouts.idle);
                }
            }
        }
    }
}

/// Exposes per-backend gauges read at scrape time, so the request path pays nothing for them.
struct BackendGauges {
    registry: Arc<BackendRegistry>,
    in_flight: IntGaugeVec,
    open: IntGaugeVec,
    idle: IntGaugeVec,
    phase: IntGaugeVec,
}

impl BackendGauges {
    fn new(registry: Arc<BackendRegistry>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            registry,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "gantry_backend_requests_in_flight",
                    "Requests in flight on each backend.",
                ),
                &["service", "backend"],
            )?,
            open: IntGaugeVec::new(
                Opts::new(
                    "gantry_backend_connections_open",
                    "Open connections to each backend.",
                ),
                &["service", "backend"],
            )?,
            idle: IntGaugeVec::new(
                Opts::new(
                    "gantry_backend_connections_idle",
                    "Idle pooled connections to each backend.",
                ),
                &["service", "backend"],
            )?,
            phase: IntGaugeVec::new(
                Opts::new(
                    "gantry_backend_state",
                    "1 for each backend's current state: ready, not_ready, ejected, draining, slow_start.",
                ),
                &["service", "backend", "state"],
            )?,
        })
    }
}

impl std::fmt::Debug for BackendGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendGauges")
    }
}

impl Collector for BackendGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.in_flight.desc();
        d.extend(self.open.desc());
        d.extend(self.idle.desc());
        d.extend(self.phase.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.in_flight.reset();
        self.open.reset();
        self.idle.reset();
        self.phase.reset();
        let now = crate::clock::nanos_since_epoch(std::time::Instant::now());
        for b in self.registry.all() {
            let current = b.health.phase(now);
            for p in crate::backend::BackendPhase::ALL {
                self.phase
                    .with_label_values(&[&*b.key.service, &*b.label, p.as_str()])
                    .set(i64::from(p == current));
            }
            let labels = [&*b.key.service, &*b.label];
            self.in_flight
                .with_label_values(&labels)
                .set(i64::from(b.in_flight()));
            self.open
                .with_label_values(&labels)
                .set(i64::from(b.open_connections()));
            self.idle
                .with_label_values(&labels)
                .set(b.idle_connections() as i64);
        }
        let mut out = self.in_flight.collect();
        out.extend(self.open.collect());
        out.extend(self.idle.collect());
        out.extend(self.phase.collect());
        out
    }
}
