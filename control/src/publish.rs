//! The root crate's [`Sink`]: makes a compiled table live in the proxy and keeps what the admin
//! API and metrics report about the control plane (generation, readiness, reload failures).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gantry_config::{Errors, RoutingTable};
use gantry_discovery::{Sink, SourceId};
use gantry_proxy::Proxy;
use prometheus::{IntCounter, IntGauge, Registry};
use serde::Serialize;

use crate::time::unix_secs;

#[derive(Debug)]
pub struct Publisher {
    proxy: Arc<Proxy>,
    ready: AtomicBool,
    /// Set when shutdown begins: `/readyz` then fails, so load balancers stop sending traffic.
    draining: AtomicBool,
    generation: IntGauge,
    etcd_revision: IntGauge,
    /// Bumped on every accepted update and publish, for whoever mirrors the status (the etcd
    /// instance record).
    changed: tokio::sync::watch::Sender<()>,
    source_problems: prometheus::IntGaugeVec,
    source_up: prometheus::IntGaugeVec,
    reloads: IntCounter,
    reload_failures: IntCounter,
    last_success: IntGauge,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Inner {
    /// The last refused update, kept after later successes so that an operator can see what was
    /// refused and when.
    pub last_error: Option<Refusal>,
    /// Per source: was its latest update accepted, is it reachable, what is wrong with it.
    pub sources: BTreeMap<&'static str, SourceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub source: &'static str,
    pub at_unix: u64,
    pub errors: Errors,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// Whether the latest update from this source was accepted.
    pub ok: bool,
    pub at_unix: u64,
    /// Updates received from this source, accepted or not.
    pub updates: u64,
    /// False while the source cannot be reached (its last routes keep serving).
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable_because: Option<String>,
    /// Problems in the source's latest view that did not stop it (a skipped label, a name
    /// another source already declares).
    pub problems: Vec<String>,
    /// The source's version of what is live (etcd: the revision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Where the source's latest accepted view came from (etcd: the member it is connected to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

fn source_entry(inner: &mut Inner, source: SourceId) -> &mut SourceStatus {
    inner
        .sources
        .entry(source.as_str())
        .or_insert_with(|| SourceStatus {
            ok: true,
            at_unix: unix_secs(),
            updates: 0,
            reachable: true,
            unreachable_because: None,
            problems: Vec::new(),
            revision: None,
            origin: None,
        })
}

impl Publisher {
    pub fn new(proxy: Arc<Proxy>, registry: &Registry) -> Result<Self, prometheus::Error> {
        let generation = prometheus::register_int_gauge_with_registry!(
            "gantry_config_generation",
            "Generation of the live routing table.",
            registry
        )?;
        let etcd_revision = prometheus::register_int_gauge_with_registry!(
            "gantry_etcd_revision",
            "The etcd revision the live routing table was built from (0 without etcd).",
            registry
        )?;
        let reloads = prometheus::register_int_counter_with_registry!(
            "gantry_config_reloads_total",
            "Updates that produced a new routing table (including the first).",
            registry
        )?;
        let reload_failures = prometheus::register_int_counter_with_registry!(
            "gantry_config_reload_failures_total",
            "Updates refused as invalid; the previous routing table kept serving.",
            registry
        )?;
        let last_success = prometheus::register_int_gauge_with_registry!(
            "gantry_config_last_reload_success_timestamp_seconds",
            "Unix time of the last update that produced a new routing table.",
            registry
        )?;
        let source_problems = prometheus::register_int_gauge_vec_with_registry!(
            prometheus::Opts::new(
                "gantry_source_problems",
                "Problems in each source's latest view that did not stop it (bad labels, conflicts).",
            ),
            &["source"],
            registry
        )?;
        let source_up = prometheus::register_int_gauge_vec_with_registry!(
            prometheus::Opts::new("gantry_source_up", "1 while a source is reachable."),
            &["source"],
            registry
        )?;
        Ok(Self {
            proxy,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            generation,
            etcd_revision,
            changed: tokio::sync::watch::channel(()).0,
            source_problems,
            source_up,
            reloads,
            reload_failures,
            last_success,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// True once the first routing table is live, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn snapshot(&self) -> Inner {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.get()
    }

    /// The etcd revision the live table was built from.
    pub fn etcd_revision(&self) -> i64 {
        self.etcd_revision.get()
    }

    pub fn generation(&self) -> i64 {
        self.generation.get()
    }

    /// Notified whenever something an instance record shows changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn set_source(&self, source: SourceId, ok: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = source_entry(&mut inner, source);
        s.ok = ok;
        s.at_unix = unix_secs();
        s.updates += 1;
        s.reachable = true;
        s.unreachable_because = None;
        self.source_up.with_label_values(&[source.as_str()]).set(1);
    }
}

impl Sink for Publisher {
    fn publish(&self, table: Arc<RoutingTable>) -> u64 {
        let generation = self.proxy.publish(table);
        self.generation.set(generation as i64);
        self.reloads.inc();
        self.last_success.set(unix_secs() as i64);
        self.ready.store(true, Ordering::Release);
        generation
    }

    fn rejected(&self, source: SourceId, errors: &Errors) {
        self.set_source(source, false);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.last_error = Some(Refusal {
                source: source.as_str(),
                at_unix: unix_secs(),
                errors: errors.clone(),
                message: errors.to_string(),
            });
        }
        // Counted after the error is recorded: whoever sees the count also finds the error.
        self.reload_failures.inc();
    }

    fn accepted(&self, source: SourceId, origin: &str, revision: Option<i64>) {
        self.set_source(source, true);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let s = source_entry(&mut inner, source);
            s.origin = Some(origin.to_string());
            if let Some(rev) = revision {
                s.revision = Some(rev);
                self.etcd_revision.set(rev);
            }
        }
        self.changed.send_modify(|_| {});
    }

    fn warnings(&self, source: SourceId, warnings: &Errors) {
        self.source_problems
            .with_label_values(&[source.as_str()])
            .set(warnings.0.len() as i64);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        source_entry(&mut inner, source).problems = warnings.0.iter().map(ToString::to_string).collect();
    }

    fn unreachable(&self, source: SourceId, why: &str) {
        self.source_up.with_label_values(&[source.as_str()]).set(0);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = source_entry(&mut inner, source);
        s.reachable = false;
        s.unreachable_because = Some(why.to_string());
    }
}
