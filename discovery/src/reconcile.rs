//! The reconciler: the one writer of the routing table.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gantry_config::{DesiredState, Errors, RoutingTable};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// A source of desired state. The order is the merge precedence: when two sources declare a
/// router or service of the same name, the earlier one wins and the conflict is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceId {
    /// The operator's file: wins every conflict.
    File,
    /// The fleet's shared configuration.
    Etcd,
    /// Container labels, written by whoever deploys the containers.
    Docker,
}

impl SourceId {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceId::File => "file",
            SourceId::Etcd => "etcd",
            SourceId::Docker => "docker",
        }
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a source has to say.
#[derive(Debug)]
pub struct Update {
    pub source: SourceId,
    /// Where this source's objects came from, e.g. the file path (used in error messages).
    pub origin: String,
    pub report: Report,
}

#[derive(Debug)]
pub enum Report {
    /// The source's whole view. `warnings` are problems that did not stop it (a bad label was
    /// skipped, the rest of the source is fine).
    Valid { state: DesiredState, warnings: Errors },
    /// The source's input is invalid: refused, and its previous view keeps serving.
    Invalid(Errors),
    /// The source cannot be reached: its last view keeps serving until it is back.
    Unreachable(String),
}

impl Update {
    pub fn from_result(source: SourceId, origin: String, result: Result<DesiredState, Errors>) -> Self {
        let report = match result {
            Ok(state) => Report::Valid {
                state,
                warnings: Errors::new(),
            },
            Err(e) => Report::Invalid(e),
        };
        Self {
            source,
            origin,
            report,
        }
    }
}

/// Where the reconciler's decisions go. The root crate implements it: build the data-plane
/// snapshot, record status and metrics.
pub trait Sink: Send + Sync {
    /// A new table is ready; make it live and return its generation.
    fn publish(&self, table: Arc<RoutingTable>) -> u64;
    /// An update was refused; the live table is unchanged.
    fn rejected(&self, source: SourceId, errors: &Errors);
    /// The source's update was accepted (whether or not it changed the table).
    fn accepted(&self, _source: SourceId) {}
    /// The problems of the source's latest view that did not stop it (replaces earlier ones).
    fn warnings(&self, _source: SourceId, _warnings: &Errors) {}
    /// The source cannot be reached; its last view keeps serving.
    fn unreachable(&self, _source: SourceId, _why: &str) {}
}

/// What one update led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new snapshot with this generation is live.
    Published(u64),
    /// The update did not change the merged meaning: no new snapshot.
    Unchanged,
    /// The update was refused; the last good table keeps serving.
    Rejected,
}

#[derive(Debug)]
struct SourceState {
    origin: String,
    state: DesiredState,
}

pub struct Reconciler {
    entrypoints: Vec<String>,
    sources: BTreeMap<SourceId, SourceState>,
    live: Option<DesiredState>,
    sink: Arc<dyn Sink>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("sources", &self.sources.keys())
            .finish()
    }
}

impl Reconciler {
    pub fn new(entrypoints: Vec<String>, sink: Arc<dyn Sink>) -> Self {
        Self {
            entrypoints,
            sources: BTreeMap::new(),
            live: None,
            sink,
        }
    }

    /// Applies one update: merge, compare, compile, publish. Synchronous and deterministic, so
    /// it is tested without any source running.
    pub fn apply(&mut self, update: Update) -> Outcome {
        let (state, mut warnings) = match update.report {
            Report::Valid { state, warnings } => (state, warnings),
            Report::Invalid(errors) => {
                warn!(source = %update.source, "refused update, the last good routing table keeps serving:\n{errors}");
                self.sink.rejected(update.source, &errors);
                return Outcome::Rejected;
            }
            Report::Unreachable(why) => {
                warn!(source = %update.source, "{why}; its last routes keep serving");
                self.sink.unreachable(update.source, &why);
                return Outcome::Unchanged;
            }
        };
        let previous = self.sources.insert(
            update.source,
            SourceState {
                origin: update.origin,
                state,
            },
        );
        let (merged, origins, conflicts) = self.merge();
        warnings.extend(conflicts);
        if !warnings.is_empty() {
            warn!(source = %update.source, "{warnings}");
        }
        self.sink.warnings(update.source, &warnings);
        if self.live.as_ref() == Some(&merged) {
            self.sink.accepted(update.source);
            return Outcome::Unchanged;
        }
        let origin_of = |router: &str| origins.get(router).cloned().unwrap_or_default();
        match RoutingTable::compile(Arc::new(merged.clone()), &self.entrypoints, &origin_of) {
            Ok(table) => {
                let generation = self.sink.publish(Arc::new(table));
                self.sink.accepted(update.source);
                info!(
                    source = %update.source,
                    generation,
                    routers = merged.routers.len(),
                    services = merged.services.len(),
                    "routing table updated"
                );
                self.live = Some(merged);
                Outcome::Published(generation)
            }
            Err(errors) => {
                warn!(source = %update.source, "refused update, the last good routing table keeps serving:\n{errors}");
                // Keep the source's previous view, so that the next update from another source
                // is merged with the state that is actually live.
                match previous {
                    Some(p) => {
                        self.sources.insert(update.source, p);
                    }
                    None => {
                        self.sources.remove(&update.source);
                    }
                }
                self.sink.rejected(update.source, &errors);
                Outcome::Rejected
            }
        }
    }

    /// Unions the sources in precedence order. Returns the merged state, the origin of each
    /// router, and a warning for every name that a later source also declared.
    fn merge(&self) -> (DesiredState, BTreeMap<String, String>, Errors) {
        let mut merged = DesiredState::default();
        let mut origins = BTreeMap::new();
        let mut owner: BTreeMap<(bool, &str), &str> = BTreeMap::new();
        let mut warnings = Errors::new();
        for s in self.sources.values() {
            let has_tls = !s.state.tls.certificates.is_empty() || s.state.tls.default.is_some();
            if has_tls && merged.tls == Default::default() {
                merged.tls = s.state.tls.clone();
            }
            for (name, r) in &s.state.routers {
                if let Some(first) = owner.get(&(true, name.as_str())) {
                    warnings.push(
                        &s.origin,
                        format!("routers.{name}"),
                        format!("ignored: already declared by {first}"),
                    );
                    continue;
                }
                owner.insert((true, name), &s.origin);
                origins.insert(name.clone(), s.origin.clone());
                merged.routers.insert(name.clone(), r.clone());
            }
            for (name, svc) in &s.state.services {
                if let Some(first) = owner.get(&(false, name.as_str())) {
                    warnings.push(
                        &s.origin,
                        format!("services.{name}"),
                        format!("ignored: already declared by {first}"),
                    );
                    continue;
                }
                owner.insert((false, name), &s.origin);
                merged.services.insert(name.clone(), svc.clone());
            }
        }
        (merged, origins, warnings)
    }

    /// Applies updates until every sender is gone.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        while let Some(u) = updates.recv().await {
            self.apply(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        published: Mutex<Vec<Arc<RoutingTable>>>,
        rejected: Mutex<Vec<String>>,
    }

    impl Sink for Recorder {
        fn publish(&self, table: Arc<RoutingTable>) -> u64 {
            let mut p = self.published.lock().unwrap();
            p.push(table);
            p.len() as u64
        }
        fn rejected(&self, _: SourceId, errors: &Errors) {
            self.rejected.lock().unwrap().push(errors.to_string());
        }
    }

    fn state(text: &str) -> Result<DesiredState, Errors> {
        gantry_config::file::load(text, "g.toml").map(|v| v.state)
    }

    fn update(text: &str) -> Update {
        Update::from_result(SourceId::File, "g.toml".into(), state(text))
    }

    const A: &str = "[routers.r]\npath = \"/a\"\nservice = \"s\"\n[services.s]\nbackends = [{ url = \"http://127.0.0.1:1\" }]\n";

    #[test]
    fn publishes_changes_only() {
        let rec = Arc::new(Recorder::default());
        let mut r = Reconciler::new(vec!["web".into()], rec.clone());
        assert_eq!(r.apply(update(A)), Outcome::Published(1));
        assert_eq!(r.apply(update(&format!("# comment\n{A}"))), Outcome::Unchanged);
        assert_eq!(r.apply(update(&A.replace("/a", "/b"))), Outcome::Published(2));
        assert_eq!(rec.published.lock().unwrap().len(), 2);
    }

    #[test]
    fn invalid_or_dangling_updates_keep_the_last_good_table() {
        let rec = Arc::new(Recorder::default());
        let mut r = Reconciler::new(vec!["web".into()], rec.clone());
        assert_eq!(r.apply(update(A)), Outcome::Published(1));
        assert_eq!(r.apply(update("[routers.r]\npath = 3\n")), Outcome::Rejected);
        assert_eq!(
            r.apply(update(&A.replace("service = \"s\"", "service = \"nope\""))),
            Outcome::Rejected
        );
        let rejected = rec.rejected.lock().unwrap().clone();
        assert!(
            rejected[1].contains("g.toml: routers.r.service: unknown service \"nope\""),
            "{rejected:?}"
        );
        // Back to the good file: nothing changed relative to what is live.
        assert_eq!(r.apply(update(A)), Outcome::Unchanged);
        assert_eq!(rec.published.lock().unwrap().len(), 1);
    }
}
