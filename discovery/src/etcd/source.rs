//! The etcd watch: read the prefix, watch from the next revision, one update per watch response
//! (one transaction lands as one snapshot), re-read after compaction, fail over between members.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::layout::{Entry, Layout, is_config};
use crate::reconcile::{Report, SourceId, Update};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the watch is asked to prove it is alive, and how long it may stay silent.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const STALL_AFTER: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct EtcdSource {
    /// Members, tried in turn: one connection at a time, so the member in use is known.
    pub endpoints: Vec<String>,
    /// Keys live under this prefix (default `/gantry/`).
    pub prefix: String,
}

/// How Gantry connects to one member.
pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
}

pub async fn connect(endpoint: &str) -> Result<Client, String> {
    Client::connect([endpoint], Some(connect_options()))
        .await
        .map_err(|e| e.to_string())
}

enum Stop {
    /// Shutdown was asked for.
    Shutdown,
    /// Something went wrong with this member; try the next.
    Failed(String),
}

impl EtcdSource {
    fn origin(&self, endpoint: &str) -> String {
        format!("etcd at {endpoint}")
    }

    /// Follows the prefix until `shutdown`. While no member can be reached, the last routes from
    /// etcd keep serving; on reconnection the prefix is read again, so nothing is missed.
    pub async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut i = 0usize;
        let mut backoff = BACKOFF_MIN;
        loop {
            let endpoint = self.endpoints[i % self.endpoints.len()].clone();
            let started = Instant::now();
            match self.session(&endpoint, &updates, &shutdown).await {
                Stop::Shutdown => return,
                Stop::Failed(why) => {
                    let report = Report::Unreachable(format!("{}: {why}", self.origin(&endpoint)));
                    let u = Update {
                        source: SourceId::Etcd,
                        origin: self.origin(&endpoint),
                        report,
                        revision: None,
                    };
                    if updates.send(u).await.is_err() {
                        return;
                    }
                }
            }
            i += 1;
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            // Every member tried once without luck: wait before the next round.
            if i.is_multiple_of(self.endpoints.len()) {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    async fn session(
        &self,
        endpoint: &str,
        updates: &mpsc::Sender<Update>,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut client = match connect(endpoint).await {
            Ok(c) => c,
            Err(e) => return Stop::Failed(e),
        };
        loop {
            // Read everything, then watch from the next revision.
            let resp = match tokio::time::timeout(
                STALL_AFTER,
                client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Stop::Failed(format!("reading {}: {e}", self.prefix)),
                Err(_) => return Stop::Failed(format!("reading {} timed out", self.prefix)),
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            let mut layout = Layout::from_kvs(
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
            info!(%endpoint, keys = resp.kvs().len(), revision, "etcd: read the prefix");
            let report = Report::Valid {
                state: layout.desired(),
                warnings: layout.warnings(),
            };
            if let Err(e) = self.send(endpoint, report, revision, updates).await {
                return e;
            }
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1)
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
                                info!(compacted = resp.compact_revision(), "etcd: watched revision was compacted; reading again");
                                break;
                            }
                            return Stop::Failed(format!("the watch was canceled: {}", resp.cancel_reason()));
                        }
                        if resp.events().is_empty() {
                            continue; // created, or a progress notification
                        }
                        // Every event of one response (one transaction) in one update; the
                        // instances' own records are not configuration.
                        let mut revision = None;
                        let events: Vec<(&str, Option<Entry>)> = resp
                            .events()
                            .iter()
                            .filter_map(|ev| {
                                let kv = ev.kv()?;
                                let key = kv.key_str().ok().filter(|k| is_config(&self.prefix, k))?;
                                revision = revision.max(Some(kv.mod_revision()));
                                Some(match ev.event_type() {
                                    EventType::Put => (key, Some(Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })),
                                    EventType::Delete => (key, None),
                                })
                            })
                            .collect();
                        let Some(revision) = revision else { continue };
                        debug!(revision, events = events.len(), "etcd: change");
                        let changes = layout.apply(events);
                        let report = Report::Changed { changes, warnings: layout.warnings() };
                        if let Err(e) = self.send(endpoint, report, revision, updates).await {
                            return e;
                        }
                    }
                }
            }
        }
    }

    async fn send(
        &self,
        endpoint: &str,
        report: Report,
        revision: i64,
        updates: &mpsc::Sender<Update>,
    ) -> Result<(), Stop> {
        let u = Update {
            source: SourceId::Etcd,
            origin: self.origin(endpoint),
            report,
            revision: Some(revision),
        };
        updates.send(u).await.map_err(|_| Stop::Shutdown)
    }
}
