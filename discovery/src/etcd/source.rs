//! The etcd watch: read the prefix, watch from the next revision, one update per watch response
//! (one transaction lands as one snapshot). On losing a member, resume the watch on another from
//! the last revision seen; when that revision was compacted meanwhile, read the prefix again.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Endpoints;
use super::keys::is_config;
use super::layout::{Entry, Layout};
use crate::backoff::Backoff;
use crate::reconcile::{Report, SourceId, Update};

/// How often the watch is asked to prove it is alive, and how long it may stay silent.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const STALL_AFTER: Duration = Duration::from_secs(3);

/// What the etcd source counts.
#[derive(Debug, Clone)]
pub struct EtcdMetrics {
    /// Full reads of the prefix, by reason: `start`, `compacted`.
    pub reads: IntCounterVec,
    /// Sessions lost (member down, stalled or partitioned, watch canceled).
    pub reconnects: IntCounter,
    /// Watch responses that changed configuration keys.
    pub changes: IntCounter,
}

impl EtcdMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            reads: prometheus::register_int_counter_vec_with_registry!(
                Opts::new(
                    "gantry_etcd_reads_total",
                    "Full reads of the etcd prefix, by reason (start, compacted).",
                ),
                &["reason"],
                registry
            )?,
            reconnects: prometheus::register_int_counter_with_registry!(
                "gantry_etcd_reconnects_total",
                "etcd sessions lost (member down, stalled or partitioned); the watch resumes on the next member.",
                registry
            )?,
            changes: prometheus::register_int_counter_with_registry!(
                "gantry_etcd_changes_total",
                "etcd watch responses (transactions) that changed configuration keys.",
                registry
            )?,
        };
        Ok(m)
    }

    fn unregistered() -> Self {
        // Unregistered counters: valid to use, never exported.
        #[allow(clippy::unwrap_used)] // constant, valid names
        Self {
            reads: IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap(),
            reconnects: IntCounter::new("c", "c").unwrap(),
            changes: IntCounter::new("e", "e").unwrap(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EtcdSource {
    /// Members, tried in turn: one connection at a time, so the member in use is known.
    pub endpoints: Endpoints,
    /// Keys live under this prefix (default `/gantry/`).
    pub prefix: String,
    pub metrics: Option<EtcdMetrics>,
}

enum Stop {
    /// Shutdown was asked for.
    Shutdown,
    /// Something went wrong with this member; try the next.
    Failed(String),
}

/// What the source has seen, carried from one member to the next.
struct View {
    layout: Layout,
    /// The watch resumes after this revision: every event up to it has been applied.
    seen: i64,
    /// The revision of the last configuration change applied (what is reported as live).
    applied: i64,
}

impl EtcdSource {
    fn origin(&self, endpoint: &str) -> String {
        format!("etcd at {endpoint}")
    }

    /// Follows the prefix until `shutdown`. While no member can be reached, the last routes from
    /// etcd keep serving.
    pub async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let metrics = self.metrics.clone().unwrap_or_else(EtcdMetrics::unregistered);
        let mut view: Option<View> = None;
        let mut i = 0usize;
        let mut backoff = Backoff::default();
        loop {
            let endpoint = self.endpoints[i % self.endpoints.len()].clone();
            let started = Instant::now();
            match self
                .session(&endpoint, &mut view, &metrics, &updates, &shutdown)
                .await
            {
                Stop::Shutdown => return,
                Stop::Failed(why) => {
                    metrics.reconnects.inc();
                    let report = Report::Unreachable(format!("{}: {why}", self.origin(&endpoint)));
                    let u = Update {
                        source: SourceId::Etcd,
                        origin: self.origin(&endpoint),
                        report,
                        revision: None,
                        origins: Default::default(),
                    };
                    if updates.send(u).await.is_err() {
                        return;
                    }
                }
            }
            i += 1;
            backoff.session_lasted(started.elapsed());
            // Every member tried once without luck: wait before the next round.
            if i.is_multiple_of(self.endpoints.len()) && !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn session(
        &self,
        endpoint: &str,
        view: &mut Option<View>,
        metrics: &EtcdMetrics,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut client = match self.endpoints.connect(endpoint).await {
            Ok(c) => c,
            Err(e) => return Stop::Failed(e),
        };
        let mut reason = "start";
        loop {
            if view.is_none() {
                {
                    // Read everything, then watch from the next revision.
                    let read = client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()));
                    let resp = match tokio::time::timeout(STALL_AFTER, read).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => return Stop::Failed(format!("reading {}: {e}", self.prefix)),
                        Err(_) => return Stop::Failed(format!("reading {} timed out", self.prefix)),
                    };
                    let revision = resp.header().map_or(0, |h| h.revision());
                    let layout = Layout::from_kvs(
                        &self.prefix,
                        resp.kvs().iter().filter_map(|kv| {
                            Some((
                                kv.key_str().ok()?,
                                Entry {
                                    value: kv.value().to_vec(),
                                    mod_revision: kv.mod_revision(),
                                },
                            ))
                        }),
                    );
                    metrics.reads.with_label_values(&[reason]).inc();
                    info!(%endpoint, keys = resp.kvs().len(), revision, reason, "etcd: read the prefix");
                    let state = layout.desired();
                    let origins = layout.origins(state.routers.keys(), state.services.keys());
                    let report = Report::Valid {
                        state,
                        warnings: layout.warnings(),
                    };
                    if let Err(e) = self.send(endpoint, report, revision, origins, updates).await {
                        return e;
                    }
                    *view = Some(View {
                        layout,
                        seen: revision,
                        applied: revision,
                    });
                }
            }
            let Some(v) = view.as_mut() else { continue };
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(v.seen + 1)
                .with_progress_notify();
            let mut watch = match client.watch(self.prefix.as_str(), Some(opts)).await {
                Ok(w) => w,
                Err(e) => return Stop::Failed(format!("watching {}: {e}", self.prefix)),
            };
            let mut last_heard = Instant::now();
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Shutdown,
                    _ = tick.tick() => {
                        // A stopped or partitioned member keeps the stream open and silent:
                        // ask for progress, and give up on the member if nothing comes back.
                        if last_heard.elapsed() > STALL_AFTER {
                            return Stop::Failed(format!("the watch has been silent for {STALL_AFTER:?}"));
                        }
                        if let Err(e) = watch.request_progress().await {
                            return Stop::Failed(format!("watch progress request: {e}"));
                        }
                    }
                    msg = watch.message() => {
                        let resp = match msg {
                            Ok(Some(r)) => r,
                            Ok(None) => return Stop::Failed("the watch stream ended".into()),
                            Err(e) => return Stop::Failed(format!("the watch broke: {e}")),
                        };
                        last_heard = Instant::now();
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                info!(compacted = resp.compact_revision(), resume = v.seen + 1, "etcd: the revision to resume from was compacted; reading again");
                                reason = "compacted";
                                break;
                            }
                            return Stop::Failed(format!("the watch was canceled: {}", resp.cancel_reason()));
                        }
                        if resp.created() {
                            // Watching again: tell the reconciler the source is back.
                            let report = Report::Changed { changes: Default::default(), warnings: v.layout.warnings() };
                            if let Err(e) = self.send(endpoint, report, v.applied, Default::default(), updates).await {
                                return e;
                            }
                            continue;
                        }
                        if resp.events().is_empty() {
                            // A progress notification: everything up to its revision was sent.
                            if let Some(h) = resp.header() {
                                v.seen = v.seen.max(h.revision());
                            }
                            continue;
                        }
                        // Every event of one response (one transaction) in one update; the
                        // instances' own records are not configuration.
                        let mut config_rev = None;
                        let mut events = Vec::new();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            v.seen = v.seen.max(kv.mod_revision());
                            let Ok(key) = kv.key_str() else { continue };
                            if !is_config(&self.prefix, key) {
                                continue;
                            }
                            config_rev = config_rev.max(Some(kv.mod_revision()));
                            events.push(match ev.event_type() {
                                EventType::Put => (key, Some(Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })),
                                EventType::Delete => (key, None),
                            });
                        }
                        let Some(revision) = config_rev else { continue };
                        metrics.changes.inc();
                        debug!(revision, events = events.len(), "etcd: change");
                        let changes = v.layout.apply(events);
                        v.applied = revision;
                        let origins = v.layout.origins(changes.routers.keys(), changes.services.keys());
                        let report = Report::Changed { changes, warnings: v.layout.warnings() };
                        if let Err(e) = self.send(endpoint, report, revision, origins, updates).await {
                            return e;
                        }
                    }
                }
            }
            // Compacted: read again.
            *view = None;
        }
    }

    async fn send(
        &self,
        endpoint: &str,
        report: Report,
        revision: i64,
        origins: std::collections::BTreeMap<String, String>,
        updates: &mpsc::Sender<Update>,
    ) -> Result<(), Stop> {
        let u = Update {
            source: SourceId::Etcd,
            origin: self.origin(endpoint),
            report,
            revision: Some(revision),
            origins,
        };
        updates.send(u).await.map_err(|_| Stop::Shutdown)
    }
}
