//! The reconciler: the one writer of the routing table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use gantry_config::mirror::Split;
use gantry_config::routing::Applied;
use gantry_config::{Changes, DesiredState, Errors, RoutingTable};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// A source of desired state. The order is the merge precedence: when two sources declare a
/// router or service of the same name, the earlier one wins and the conflict is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceId {
    /// Weights set through the admin API or by a rollout on an instance without etcd. It only
    /// ever sets weights (with etcd, those go to etcd instead, for the whole fleet).
    Admin,
    /// The operator's file: wins every conflict.
    File,
    /// The fleet's shared configuration.
    Etcd,
    /// Container labels, written by whoever deploys the containers.
    Docker,
    /// Swarm services' labels, written by whoever deploys the stacks.
    Swarm,
}

impl SourceId {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceId::Admin => "admin",
            SourceId::File => "file",
            SourceId::Etcd => "etcd",
            SourceId::Docker => "docker",
            SourceId::Swarm => "swarm",
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
    /// The source's own version of this view (the etcd revision), reported once it is live.
    pub revision: Option<i64>,
    /// Where single items came from (`routers.<name>` -> an etcd key and revision), when the
    /// source can say better than `origin`. A whole view replaces the source's earlier ones; a
    /// change adds to them.
    pub origins: BTreeMap<String, String>,
}

#[derive(Debug)]
pub enum Report {
    /// The source's whole view. `warnings` are problems that did not stop it (a bad label was
    /// skipped, the rest of the source is fine).
    Valid { state: DesiredState, warnings: Errors },
    /// A change to the source's previous view, and all of its current warnings. A whole view
    /// costs its size to merge; a change, only its own.
    Changed { changes: Changes, warnings: Errors },
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
            revision: None,
            origins: BTreeMap::new(),
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
    /// The source's update was accepted (whether or not it changed the table); `revision` is the
    /// source's version of what is now live.
    fn accepted(&self, _source: SourceId, _origin: &str, _revision: Option<i64>) {}
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

/// A change as the table must see it, and who won each name.
#[derive(Debug, Default)]
struct Merge {
    merged: Changes,
    /// `(loser, name)` -> the winner's origin, or `None` when the name is no longer shadowed.
    shadowed: Vec<((SourceId, String), Option<String>)>,
    /// The source that owns each field (`routers.<name>`, `services.<name>`).
    owners: BTreeMap<String, SourceId>,
}

#[derive(Debug, Default)]
struct SourceState {
    origin: String,
    state: DesiredState,
    /// The source's own problems (from its latest update).
    warnings: Errors,
    /// Where single items came from, when the source says (see [`Update::origins`]).
    origins: BTreeMap<String, String>,
}

/// Merges the sources into one routing table, change by change.
///
/// Each source's view is kept as it declares it. A change to a source is merged name by name:
/// the first source in precedence order that declares a name wins it, the others are reported
/// as shadowed. The merged change goes to [`RoutingTable::apply`], which refuses what would leave
/// the table inconsistent. The file is all or nothing (a refused item refuses the whole file,
/// which is the operator's to fix); Docker and etcd are item by item (a bad container or key is
/// reported and the rest applies). Refused items are tried again with every update, so that a
/// router waiting for its service goes live when the service appears.
pub struct Reconciler {
    sources: BTreeMap<SourceId, SourceState>,
    /// The merged state that is live.
    live: DesiredState,
    table: Arc<RoutingTable>,
    /// Items the table refused: field (`routers.<name>`) -> (the source it came from, why).
    refused: BTreeMap<String, (SourceId, Errors)>,
    /// Routers live without some of their middlewares (they answer 503): field -> (the source
    /// that declares the router, which middlewares).
    dangling: BTreeMap<String, (SourceId, Errors)>,
    /// Items ignored because an earlier source declares the same name: (source, field) -> the
    /// winner's origin.
    shadowed: BTreeMap<(SourceId, String), String>,
    sink: Arc<dyn Sink>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("sources", &self.sources.keys())
            .finish()
    }
}

/// The value a name has in one source's view, with a pending change to `source` applied.
fn declared<'a, T>(
    map: &'a BTreeMap<String, T>,
    pending: Option<&'a BTreeMap<String, Option<T>>>,
    name: &str,
) -> Option<&'a T> {
    match pending.and_then(|p| p.get(name)) {
        Some(change) => change.as_ref(),
        None => map.get(name),
    }
}

impl Reconciler {
    pub fn new(entrypoints: Vec<String>, sink: Arc<dyn Sink>) -> Self {
        Self {
            table: Arc::new(RoutingTable::empty(&entrypoints)),
            sources: BTreeMap::new(),
            live: DesiredState::default(),
            refused: BTreeMap::new(),
            dangling: BTreeMap::new(),
            shadowed: BTreeMap::new(),
            sink,
        }
    }

    /// Applies one update: merge, compile the difference, publish. Synchronous and
    /// deterministic, so it is tested without any source running.
    pub fn apply(&mut self, update: Update) -> Outcome {
        let src = update.source;
        let (changes, whole, own_warnings) = match update.report {
            Report::Valid { state, warnings } => {
                let empty = DesiredState::default();
                let old = self.sources.get(&src).map_or(&empty, |s| &s.state);
                (Changes::between(old, &state), Some(state), warnings)
            }
            Report::Changed { changes, warnings } => (changes, None, warnings),
            Report::Invalid(errors) => {
                warn!(source = %src, "refused update, the last good routing table keeps serving:\n{errors}");
                self.sink.rejected(src, &errors);
                return Outcome::Rejected;
            }
            Report::Unreachable(why) => {
                warn!(source = %src, "{why}; its last routes keep serving");
                self.sink.unreachable(src, &why);
                return Outcome::Unchanged;
            }
        };

        let merge = self.merge(src, &update.origin, &changes);
        let applied = match self.compile(src, &update.origin, &update.origins, &changes, &merge) {
            Ok(applied) => applied,
            Err(errors) => {
                warn!(source = %src, "refused update, the last good routing table keeps serving:\n{errors}");
                self.sink.rejected(src, &errors);
                return Outcome::Rejected;
            }
        };
        let Merge {
            merged,
            shadowed,
            owners,
        } = merge;
        self.commit(src, &update.origin, update.origins, changes, whole, own_warnings);
        self.commit_names(shadowed, &owners, applied.as_ref());
        let outcome = match applied {
            Some(applied) => self.publish(src, merged, applied),
            None => Outcome::Unchanged,
        };
        self.report_warnings();
        self.sink.accepted(src, &update.origin, update.revision);
        outcome
    }

    /// Merge: the change as the table must see it: every name the source changed, and every
    /// refused name again, each resolved to the source that wins it.
    fn merge(&self, src: SourceId, origin: &str, changes: &Changes) -> Merge {
        let mut merged = Changes::default();
        let mut shadowed: Vec<((SourceId, String), Option<String>)> = Vec::new();
        let mut owners: BTreeMap<String, SourceId> = BTreeMap::new();
        let retry_routers: Vec<String> = self
            .refused
            .keys()
            .filter_map(|f| f.strip_prefix("routers."))
            .map(str::to_string)
            .collect();
        let retry_services: Vec<String> = self
            .refused
            .keys()
            .filter_map(|f| f.strip_prefix("services."))
            .map(str::to_string)
            .collect();
        let routers: BTreeSet<&String> = changes.routers.keys().chain(&retry_routers).collect();
        // New weights change the service they apply to, whoever declares it.
        let services: BTreeSet<&String> = changes
            .services
            .keys()
            .chain(&retry_services)
            .chain(changes.weights.keys())
            .collect();
        for name in routers {
            let field = format!("routers.{name}");
            let (winner, value) = self.winner(
                src,
                origin,
                &field,
                name,
                &changes.routers,
                |s| &s.routers,
                &mut shadowed,
            );
            owners.insert(field, winner);
            if self.live.routers.get(name.as_str()) != value.as_ref() {
                merged.routers.insert(name.clone(), value);
            }
        }
        for name in services {
            let field = format!("services.{name}");
            let (winner, value) = self.winner(
                src,
                origin,
                &field,
                name,
                &changes.services,
                |s| &s.services,
                &mut shadowed,
            );
            owners.insert(field, winner);
            let value = value.map(|mut service| {
                if let Some(w) = self.weights_of(src, &changes.weights, name) {
                    w.apply(&mut service);
                }
                service
            });
            if self.live.services.get(name.as_str()) != value.as_ref() {
                merged.services.insert(name.clone(), value);
            }
        }
        for name in changes.middlewares.keys() {
            let field = format!("middlewares.{name}");
            let (winner, value) = self.winner(
                src,
                origin,
                &field,
                name,
                &changes.middlewares,
                |s| &s.middlewares,
                &mut shadowed,
            );
            owners.insert(field, winner);
            if self.live.middlewares.get(name.as_str()) != value.as_ref() {
                merged.middlewares.insert(name.clone(), value);
            }
        }
        if let Some(pending) = &changes.tls {
            // Certificates are not merged: the first source that has any provides them all.
            let empty = SourceState::default();
            let tls = self
                .precedence(src)
                .into_iter()
                .map(|s| {
                    if s == src {
                        pending
                    } else {
                        &self.sources.get(&s).unwrap_or(&empty).state.tls
                    }
                })
                .find(|t| **t != Default::default())
                .cloned()
                .unwrap_or_default();
            if tls != self.live.tls {
                merged.tls = Some(tls);
            }
        }
        Merge {
            merged,
            shadowed,
            owners,
        }
    }

    /// Compile: the table with the merged change applied (`None`: nothing to change). A file
    /// whose own names are refused is refused whole (`Err`), so a bad edit never half-applies.
    fn compile(
        &self,
        src: SourceId,
        origin: &str,
        origins: &BTreeMap<String, String>,
        changes: &Changes,
        merge: &Merge,
    ) -> Result<Option<Applied>, Errors> {
        let (merged, owners) = (&merge.merged, &merge.owners);
        let origin_of = |field: &str| match owners.get(field).filter(|&&s| s != src) {
            Some(s) => self
                .sources
                .get(s)
                .map(|st| st.origins.get(field).unwrap_or(&st.origin).clone())
                .unwrap_or_default(),
            None => origins
                .get(field)
                .or_else(|| self.sources.get(&src).and_then(|st| st.origins.get(field)))
                .map_or_else(|| origin.to_string(), Clone::clone),
        };
        let applied = (!merged.is_empty()).then(|| self.table.apply(merged, &origin_of));
        let refused = applied.as_ref().map(|a| &a.refused);
        let mine = |field: &str| {
            let name = field.split_once('.').map_or("", |(_, n)| n);
            if field.starts_with("routers.") {
                changes.routers.contains_key(name)
            } else if field.starts_with("middlewares.") {
                changes.middlewares.contains_key(name)
            } else {
                changes.services.contains_key(name)
            }
        };
        if src == SourceId::File
            && let Some(refused) = refused
            && refused.keys().any(|f| mine(f))
        {
            let mut errors = Errors::new();
            for (_, e) in refused.iter().filter(|(f, _)| mine(f)) {
                errors.extend(e.clone());
            }
            return Err(errors);
        }
        Ok(applied)
    }

    /// Commit: the source's own state (its whole view, or its view with the change applied).
    fn commit(
        &mut self,
        src: SourceId,
        origin: &str,
        origins: BTreeMap<String, String>,
        changes: Changes,
        whole: Option<DesiredState>,
        own_warnings: Errors,
    ) {
        let entry = self.sources.entry(src).or_default();
        entry.origin = origin.to_string();
        entry.warnings = own_warnings;
        match whole {
            Some(state) => {
                entry.state = state;
                entry.origins = origins;
            }
            None => {
                changes.apply_to(&mut entry.state);
                let gone = changes
                    .routers
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| format!("routers.{n}"));
                let gone = gone
                    .chain(
                        changes
                            .services
                            .iter()
                            .filter(|(_, v)| v.is_none())
                            .map(|(n, _)| format!("services.{n}")),
                    )
                    .chain(
                        changes
                            .middlewares
                            .iter()
                            .filter(|(_, v)| v.is_none())
                            .map(|(n, _)| format!("middlewares.{n}")),
                    );
                for field in gone.collect::<Vec<_>>() {
                    entry.origins.remove(&field);
                }
                entry.origins.extend(origins);
            }
        }
    }

    /// Commit: which source shadows which name, and which names stay refused.
    fn commit_names(
        &mut self,
        shadowed: Vec<((SourceId, String), Option<String>)>,
        owners: &BTreeMap<String, SourceId>,
        applied: Option<&Applied>,
    ) {
        for (key, winner) in shadowed {
            match winner {
                Some(w) => self.shadowed.insert(key, w),
                None => self.shadowed.remove(&key),
            };
        }
        let none = BTreeMap::new();
        let refused = applied.map_or(&none, |a| &a.refused);
        for (field, owner) in owners {
            match refused.get(field) {
                Some(e) => self.refused.insert(field.clone(), (*owner, e.clone())),
                None => self.refused.remove(field),
            };
        }
        for (field, missing) in applied.map(|a| &a.dangling).into_iter().flatten() {
            match missing {
                Some(e) => {
                    let name = field.strip_prefix("routers.").unwrap_or(field);
                    let owner = owners.get(field).copied().or_else(|| self.router_owner(name));
                    if let Some(owner) = owner {
                        self.dangling.insert(field.clone(), (owner, e.clone()));
                    }
                }
                None => {
                    self.dangling.remove(field);
                }
            }
        }
    }

    /// The source whose router `name` is live: the first in precedence order that declares it.
    fn router_owner(&self, name: &str) -> Option<SourceId> {
        self.sources
            .iter()
            .find(|(_, st)| st.state.routers.contains_key(name))
            .map(|(&s, _)| s)
    }

    /// Publish: what the table took becomes live; a table that changed goes to the sink.
    fn publish(&mut self, src: SourceId, merged: Changes, applied: Applied) -> Outcome {
        let mut live = merged.clone();
        for field in applied.refused.keys() {
            if let Some(name) = field.strip_prefix("routers.") {
                live.routers.remove(name);
            } else if let Some(name) = field.strip_prefix("services.") {
                live.services.remove(name);
            } else if let Some(name) = field.strip_prefix("middlewares.") {
                live.middlewares.remove(name);
            }
        }
        if !applied.refused.is_empty() {
            let mut errors = Errors::new();
            for e in applied.refused.values() {
                errors.extend(e.clone());
            }
            warn!(source = %src, "not applied, the previous value of each keeps serving:\n{errors}");
        }
        live.apply_to(&mut self.live);
        let table = applied.table;
        if table.changed_routes().is_empty()
            && table.changed_services().is_empty()
            && merged.tls.is_none()
            && merged.middlewares.is_empty()
        {
            return Outcome::Unchanged;
        }
        let table = Arc::new(table);
        self.table = table.clone();
        let generation = self.sink.publish(table);
        info!(
            source = %src,
            generation,
            routers = self.table.route_count(),
            services = self.table.service_count(),
            "routing table updated"
        );
        Outcome::Published(generation)
    }

    /// The weights set over service `name`: the first source in precedence order that sets any,
    /// counting the pending change of `src`.
    fn weights_of<'a>(
        &'a self,
        src: SourceId,
        pending: &'a BTreeMap<String, Option<Split>>,
        name: &str,
    ) -> Option<&'a Split> {
        static NONE: BTreeMap<String, Split> = BTreeMap::new();
        self.precedence(src).into_iter().find_map(|s| {
            let own = self.sources.get(&s).map_or(&NONE, |st| &st.state.weights);
            declared(own, (s == src).then_some(pending), name)
        })
    }

    /// The sources in precedence order, counting `src` even before its first update.
    fn precedence(&self, src: SourceId) -> Vec<SourceId> {
        let mut ids: Vec<SourceId> = self.sources.keys().copied().chain([src]).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Who wins `name`: the first source in precedence order that declares it, counting the
    /// pending change of `src`; and its value. Records whom it shadows.
    #[allow(clippy::too_many_arguments)]
    fn winner<T: Clone>(
        &self,
        src: SourceId,
        origin: &str,
        field: &str,
        name: &str,
        pending: &BTreeMap<String, Option<T>>,
        map: impl Fn(&DesiredState) -> &BTreeMap<String, T>,
        shadowed: &mut Vec<((SourceId, String), Option<String>)>,
    ) -> (SourceId, Option<T>) {
        let empty = SourceState::default();
        let mut winner: Option<(SourceId, &T, &str)> = None;
        for s in self.precedence(src) {
            let st = self.sources.get(&s).unwrap_or(&empty);
            let here = if s == src {
                declared(map(&st.state), Some(pending), name)
            } else {
                map(&st.state).get(name)
            };
            let key = (s, field.to_string());
            match (&winner, here) {
                (None, Some(v)) => {
                    winner = Some((s, v, if s == src { origin } else { &st.origin }));
                    shadowed.push((key, None));
                }
                (Some((_, _, first)), Some(_)) => shadowed.push((key, Some(first.to_string()))),
                (_, None) => shadowed.push((key, None)),
            }
        }
        match winner {
            Some((s, v, _)) => (s, Some(v.clone())),
            None => (src, None),
        }
    }

    /// Each source's problems: its own, the names another source wins, what the table refused.
    fn report_warnings(&self) {
        for (&s, st) in &self.sources {
            let mut w = st.warnings.clone();
            for ((owner, field), winner) in &self.shadowed {
                if *owner == s {
                    w.push(
                        &st.origin,
                        field,
                        format!("ignored: already declared by {winner}"),
                    );
                }
            }
            for (owner, errors) in self.refused.values().chain(self.dangling.values()) {
                if *owner == s {
                    w.extend(errors.clone());
                }
            }
            self.sink.warnings(s, &w);
        }
    }

    /// Applies updates until every sender is gone.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        while let Some(u) = updates.recv().await {
            self.apply(u);
        }
    }
}

#[cfg(test)]
mod tests;
