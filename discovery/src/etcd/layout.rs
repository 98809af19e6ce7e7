//! The etcd key layout -> desired state, kept up to date key by key. Pure: keys and values in,
//! changes and problems out.
//!
//! ```text
//! <prefix>routers/<name>            JSON router   (the fields of [routers.<name>] in the file)
//! <prefix>services/<name>           JSON service  (the fields of [services.<name>], backends optional)
//! <prefix>backends/<service>/<id>   JSON backend  {"url": ..., "weight": ..., "version": ...}
//! <prefix>weights/<service>         JSON version weights {"v1": 95, "v2": 5}, and a mirror share
//!                                   "mirror": {"version": "v2", "percent": 50} (shadow steps)
//! <prefix>middlewares/<name>        JSON middleware (the fields of [middlewares.<name>])
//! <prefix>instances/<id>            written by each Gantry instance (not configuration)
//! <prefix>rollouts/..., scaling/... reserved for rollouts and scaling decisions
//! ```
//!
//! A service exists when it has a `services/` key, a backend, or a router naming it; without a
//! `services/` key it has the defaults. `weights/<service>` applies to the service whichever
//! source declares it (the file, Docker or etcd): it is how a fleet moves a canary's weight. A bad key (invalid JSON, an unknown field, a
//! value out of range, a key outside this layout) is reported with its key and revision; a bad
//! value put on a key that had a good one leaves the good one in place, so that a typo never
//! takes anything down. Every other key still counts.
//!
//! A change costs what it touches: a key is parsed when it changes, and only the router or the
//! service it belongs to is assembled again.

use std::collections::{BTreeMap, BTreeSet};

use gantry_config::backend::{FileBackend, validate_backend};
use gantry_config::middleware::{FileMiddleware, Middleware, validate_middleware};
use gantry_config::mirror::Split;
use gantry_config::router::{FileRouter, validate_router};
use gantry_config::service::{FileService, validate_service};
use gantry_config::{Backend, Changes, DesiredState, Errors, Router, Service};
use serde::de::DeserializeOwned;

use super::keys::{Kind, kind};

/// One key's value and the revision it was last modified at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

pub fn origin(key: &str, rev: i64) -> String {
    format!("etcd key {key} @ rev {rev}")
}

fn json<T: DeserializeOwned>(e: &Entry, o: &str, problems: &mut Errors) -> Option<T> {
    match serde_json::from_slice::<T>(&e.value) {
        Ok(v) => Some(v),
        Err(err) => {
            problems.push(o, "value", format!("{err}"));
            None
        }
    }
}

/// The keys under a prefix, parsed, and the desired state they add up to.
#[derive(Debug, Default)]
pub struct Layout {
    prefix: String,
    routers: BTreeMap<String, Router>,
    /// Where each router came from (its key and revision).
    router_origins: BTreeMap<String, String>,
    /// `services/<name>`: the service's settings (and inline backends).
    settings: BTreeMap<String, (Service, String)>,
    backends: BTreeMap<String, BTreeMap<String, (Backend, String)>>,
    weights: BTreeMap<String, (Split, String)>,
    middlewares: BTreeMap<String, Middleware>,
    /// How many routers name each service.
    named: BTreeMap<String, usize>,
    /// Problems of single keys, and of assembling each service from its keys.
    key_problems: BTreeMap<String, Errors>,
    service_problems: BTreeMap<String, Errors>,
    /// What the keys add up to, as last reported.
    state: DesiredState,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            ..Self::default()
        }
    }

    /// A layout of these keys (a fresh read of the prefix).
    pub fn from_kvs<'a>(prefix: &str, kvs: impl IntoIterator<Item = (&'a str, Entry)>) -> Self {
        let mut l = Self::new(prefix);
        l.apply(kvs.into_iter().map(|(k, e)| (k, Some(e))));
        l
    }

    /// Applies the puts (`Some`) and deletes (`None`) of one watch response, and returns what
    /// they changed in the desired state.
    pub fn apply<'a>(&mut self, events: impl IntoIterator<Item = (&'a str, Option<Entry>)>) -> Changes {
        let mut routers = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut weights = BTreeSet::new();
        let mut middlewares = BTreeSet::new();
        for (key, entry) in events {
            self.set(
                key,
                entry.as_ref(),
                &mut routers,
                &mut services,
                &mut weights,
                &mut middlewares,
            );
        }
        let mut changes = Changes::default();
        for name in middlewares {
            let new = self.middlewares.get(&name);
            if self.state.middlewares.get(&name) != new {
                changes.middlewares.insert(name.clone(), new.cloned());
                match new {
                    Some(m) => self.state.middlewares.insert(name, m.clone()),
                    None => self.state.middlewares.remove(&name),
                };
            }
        }
        for name in weights {
            let new = self.weights.get(&name).map(|(w, _)| w);
            if self.state.weights.get(&name) != new {
                changes.weights.insert(name.clone(), new.cloned());
                match new {
                    Some(w) => self.state.weights.insert(name, w.clone()),
                    None => self.state.weights.remove(&name),
                };
            }
        }
        for name in routers {
            let new = self.routers.get(&name);
            if self.state.routers.get(&name) != new {
                changes.routers.insert(name.clone(), new.cloned());
                match new {
                    Some(r) => self.state.routers.insert(name, r.clone()),
                    None => self.state.routers.remove(&name),
                };
            }
        }
        for name in services {
            let new = self.assemble(&name);
            if self.state.services.get(&name) != new.as_ref() {
                match &new {
                    Some(s) => self.state.services.insert(name.clone(), s.clone()),
                    None => self.state.services.remove(&name),
                };
                changes.services.insert(name, new);
            }
        }
        changes
    }

    fn set(
        &mut self,
        key: &str,
        entry: Option<&Entry>,
        routers: &mut BTreeSet<String>,
        services: &mut BTreeSet<String>,
        weights: &mut BTreeSet<String>,
        middlewares: &mut BTreeSet<String>,
    ) {
        let kind = kind(&self.prefix, key);
        if kind == Kind::Ignored {
            return;
        }
        let mut problems = Errors::new();
        let o = entry.map(|e| origin(key, e.mod_revision)).unwrap_or_default();
        match (kind, entry) {
            (Kind::Router(name), e) => {
                let new = e.and_then(|e| json::<FileRouter>(e, &o, &mut problems)).and_then(|r| validate_router(r, &o, "value", &name, &mut problems));
                if e.is_none() || new.is_some() {
                    if let Some(old) = self.routers.remove(&name) {
                        self.unname(&old.service, services);
                    }
                    self.router_origins.remove(&name);
                    if let Some(r) = new {
                        self.router_origins.insert(name.clone(), o.clone());
                        *self.named.entry(r.service.clone()).or_default() += 1;
                        services.insert(r.service.clone());
                        self.routers.insert(name.clone(), r);
                    }
                    routers.insert(name);
                }
            }
            (Kind::Service(name), e) => {
                let new = e
                    .and_then(|e| json::<FileService>(e, &o, &mut problems))
                    .and_then(|s| validate_service(s, &o, "value", &name, &mut problems));
                match (e, new) {
                    (None, _) => {
                        self.settings.remove(&name);
                    }
                    (Some(_), Some(s)) => {
                        self.settings.insert(name.clone(), (s, o));
                    }
                    (Some(_), None) => return self.problems(key, problems),
                }
                services.insert(name);
            }
            (Kind::Backend(service, id), e) => {
                let new = e.and_then(|e| json::<FileBackend>(e, &o, &mut problems)).and_then(|b| validate_backend(b, &o, "value", &mut problems));
                match (e, new) {
                    (None, _) => {
                        if let Some(m) = self.backends.get_mut(&service) {
                            m.remove(&id);
                            if m.is_empty() {
                                self.backends.remove(&service);
                            }
                        }
                    }
                    (Some(_), Some(b)) => {
                        self.backends.entry(service.clone()).or_default().insert(id, (b, o));
                    }
                    (Some(_), None) => return self.problems(key, problems),
                }
                services.insert(service);
            }
            (Kind::Weights(service), e) => {
                match e.map(|e| Split::from_json(&e.value, &o)) {
                    None => {
                        self.weights.remove(&service);
                    }
                    Some(Err(errs)) => {
                        problems.extend(errs);
                        return self.problems(key, problems);
                    }
                    Some(Ok(split)) => {
                        self.weights.insert(service.clone(), (split, o));
                    }
                }
                weights.insert(service);
            }
            (Kind::Middleware(name), e) => {
                let new = e
                    .and_then(|e| json::<FileMiddleware>(e, &o, &mut problems))
                    .and_then(|m| validate_middleware(m, &o, "value", &name, &gantry_config::file::no_files, &mut problems));
                match (e, new) {
                    (None, _) => {
                        self.middlewares.remove(&name);
                    }
                    (Some(_), Some(m)) => {
                        self.middlewares.insert(name.clone(), m);
                    }
                    (Some(_), None) => return self.problems(key, problems),
                }
                middlewares.insert(name);
            }
            (Kind::Stray, Some(_)) => problems.push(
                &o,
                "",
                format!(
                    "key outside the layout (expected {p}routers/<name>, {p}services/<name>, {p}backends/<service>/<id>, {p}weights/<service> or {p}middlewares/<name>)",
                    p = self.prefix
                ),
            ),
            (Kind::Stray, None) | (Kind::Ignored, _) => {}
        }
        self.problems(key, problems);
    }

    /// Records (or clears) the problems of one key.
    fn problems(&mut self, key: &str, problems: Errors) {
        if problems.is_empty() {
            self.key_problems.remove(key);
        } else {
            self.key_problems.insert(key.to_string(), problems);
        }
    }

    fn unname(&mut self, service: &str, services: &mut BTreeSet<String>) {
        if let Some(n) = self.named.get_mut(service) {
            *n -= 1;
            if *n == 0 {
                self.named.remove(service);
            }
        }
        services.insert(service.to_string());
    }

    /// Service `name` from its keys, or `None` when nothing declares or names it.
    fn assemble(&mut self, name: &str) -> Option<Service> {
        let backends = self.backends.get(name);
        let settings = self.settings.get(name);
        if settings.is_none() && backends.is_none() && !self.named.contains_key(name) {
            self.service_problems.remove(name);
            return None;
        }
        let mut problems = Errors::new();
        let mut service = match settings {
            Some((s, _)) => s.clone(),
            None => validate_service(FileService::default(), "", "", name, &mut problems)?,
        };
        // In URL order, so that the result does not depend on the ids.
        let mut registered: Vec<&(Backend, String)> = backends.into_iter().flat_map(|m| m.values()).collect();
        registered.sort_by(|a, b| a.0.url.cmp(&b.0.url));
        for (b, bo) in registered {
            if !service.versions.is_empty()
                && !b
                    .version
                    .as_ref()
                    .is_some_and(|v| service.versions.contains_key(v))
            {
                problems.push(
                    bo,
                    "value.version",
                    format!(
                        "{:?} is not one of the service's versions {:?}",
                        b.version,
                        service.versions.keys().collect::<Vec<_>>()
                    ),
                );
                continue;
            }
            if service.backends.iter().any(|x| x.url == b.url) {
                problems.push(
                    bo,
                    "value.url",
                    format!("{} is already a backend of {name}", b.url),
                );
                continue;
            }
            if let Some(first) = service.backends.first()
                && first.url.scheme != b.url.scheme
            {
                problems.push(
                    bo,
                    "value.url",
                    format!("{}: all backends of a service must use the same scheme", b.url),
                );
                continue;
            }
            service.backends.push(b.clone());
        }
        if problems.is_empty() {
            self.service_problems.remove(name);
        } else {
            self.service_problems.insert(name.to_string(), problems);
        }
        Some(service)
    }

    /// The whole desired state.
    pub fn desired(&self) -> DesiredState {
        self.state.clone()
    }

    /// Where these routers and services came from (`routers.<name>` -> key and revision).
    pub fn origins<'a>(
        &self,
        routers: impl Iterator<Item = &'a String>,
        services: impl Iterator<Item = &'a String>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for name in routers {
            if let Some(o) = self.router_origins.get(name) {
                out.insert(format!("routers.{name}"), o.clone());
            }
        }
        for name in services {
            let o = match self.settings.get(name) {
                Some((_, o)) => o.clone(),
                None => format!("etcd service {name} (no {}services/{name} key)", self.prefix),
            };
            out.insert(format!("services.{name}"), o);
        }
        out
    }

    /// Every current problem, by key, then by service.
    pub fn warnings(&self) -> Errors {
        let mut all = Errors::new();
        for e in self.key_problems.values().chain(self.service_problems.values()) {
            all.extend(e.clone());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::keys::is_config;

    fn desired(prefix: &str, kvs: &BTreeMap<String, Entry>) -> (DesiredState, Errors) {
        let l = Layout::from_kvs(prefix, kvs.iter().map(|(k, e)| (k.as_str(), e.clone())));
        (l.desired(), l.warnings())
    }

    fn put(l: &mut Layout, key: &str, value: &str, rev: i64) -> Changes {
        l.apply([(
            key,
            Some(Entry {
                value: value.as_bytes().to_vec(),
                mod_revision: rev,
            }),
        )])
    }

    fn kvs(items: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        items
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                (
                    k.to_string(),
                    Entry {
                        value: v.as_bytes().to_vec(),
                        mod_revision: 10 + i as i64,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn every_object_has_its_key() {
        let (s, problems) = desired(
            "/gantry/",
            &kvs(&[
                (
                    "/gantry/routers/api",
                    r#"{"hosts": ["api.test"], "path_prefix": "/v1", "service": "api"}"#,
                ),
                (
                    "/gantry/services/api",
                    r#"{"policy": "least_request", "timeouts": {"connect": "1s"}}"#,
                ),
                (
                    "/gantry/backends/api/a",
                    r#"{"url": "http://10.0.0.1:80", "version": "v1"}"#,
                ),
                (
                    "/gantry/backends/api/b",
                    r#"{"url": "http://10.0.0.2:80", "version": "v2", "weight": 3}"#,
                ),
                ("/gantry/weights/api", r#"{"v1": 95, "v2": 5}"#),
                ("/gantry/instances/gantry-1", r#"{"revision": 3}"#),
                ("/other/key", "x"),
            ]),
        );
        assert!(problems.is_empty(), "{problems}");
        let api = &s.services["api"];
        assert_eq!(api.backends.len(), 2);
        // Weights are set over the service, whichever source declares it.
        assert!(api.versions.is_empty());
        assert_eq!(
            s.weights["api"].versions,
            [("v1".to_string(), 95), ("v2".to_string(), 5)].into()
        );
        assert_eq!(api.timeouts.connect, std::time::Duration::from_secs(1));
        assert_eq!(s.routers["api"].service, "api");
    }

    #[test]
    fn registered_backends_and_routers_create_their_service() {
        let (s, _) = desired(
            "/g/",
            &kvs(&[
                ("/g/backends/blog/x", r#"{"url": "http://10.0.0.1:2368"}"#),
                ("/g/routers/web", r#"{"service": "web"}"#),
            ]),
        );
        assert_eq!(s.services["blog"].backends.len(), 1);
        assert!(
            s.services["web"].backends.is_empty(),
            "a router's service exists (and answers 503)"
        );
    }

    #[test]
    fn bad_values_are_reported_with_key_and_revision_and_the_rest_kept() {
        let (s, problems) = desired(
            "/gantry/",
            &kvs(&[
                (
                    "/gantry/backends/api/a",
                    r#"{"url": "http://10.0.0.1:80", "weight": 20000}"#,
                ),
                ("/gantry/backends/api/b", r#"{"url": "http://10.0.0.2:80"}"#),
                ("/gantry/routers/bad", r#"{"hosts": ["x"], "service": "api""#),
                (
                    "/gantry/routers/good",
                    r#"{"hosts": ["good.test"], "service": "api"}"#,
                ),
                ("/gantry/routers/typo", r#"{"hostz": ["x"], "service": "api"}"#),
                ("/gantry/stray", "1"),
            ]),
        );
        let text = problems.to_string();
        for expected in [
            "etcd key /gantry/backends/api/a @ rev 10: value.weight: 20000 is out of range",
            "etcd key /gantry/routers/bad @ rev 12: value: EOF while parsing",
            "etcd key /gantry/routers/typo @ rev 14: value: unknown field `hostz`",
            "etcd key /gantry/stray @ rev 15: key outside the layout",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(s.services["api"].backends.len(), 1);
        assert!(s.routers.contains_key("good"));
    }

    #[test]
    fn a_change_reports_only_what_it_touched() {
        let mut l = Layout::new("/g/");
        put(
            &mut l,
            "/g/routers/a",
            r#"{"hosts": ["a.test"], "service": "a"}"#,
            2,
        );
        put(
            &mut l,
            "/g/routers/b",
            r#"{"hosts": ["b.test"], "service": "b"}"#,
            3,
        );
        let c = put(&mut l, "/g/backends/a/1", r#"{"url": "http://10.0.0.1:80"}"#, 4);
        assert!(c.routers.is_empty());
        assert_eq!(c.services.keys().collect::<Vec<_>>(), ["a"]);
        // The same value again changes nothing.
        assert!(put(&mut l, "/g/backends/a/1", r#"{"url": "http://10.0.0.1:80"}"#, 5).is_empty());
        // The last router naming an otherwise undeclared service goes: so does the service.
        let c = l.apply([("/g/routers/b", None)]);
        assert_eq!(c.routers, [("b".to_string(), None)].into());
        assert_eq!(c.services, [("b".to_string(), None)].into());
        // Instance records are not configuration.
        assert!(put(&mut l, "/g/instances/x", "{}", 7).is_empty());
        assert!(!is_config("/g/", "/g/instances/x") && is_config("/g/", "/g/routers/a"));
    }

    #[test]
    fn a_bad_value_leaves_the_last_good_one_and_its_report_goes_with_the_next_good_one() {
        let mut l = Layout::new("/g/");
        put(
            &mut l,
            "/g/backends/a/1",
            r#"{"url": "http://10.0.0.1:80", "weight": 3}"#,
            2,
        );
        let c = put(
            &mut l,
            "/g/backends/a/1",
            r#"{"url": "http://10.0.0.1:80", "weight": -1}"#,
            3,
        );
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(l.desired().services["a"].backends[0].weight, 3);
        assert!(
            l.warnings()
                .to_string()
                .contains("etcd key /g/backends/a/1 @ rev 3: value.weight"),
            "{}",
            l.warnings()
        );
        put(
            &mut l,
            "/g/backends/a/1",
            r#"{"url": "http://10.0.0.1:80", "weight": 5}"#,
            4,
        );
        assert_eq!(l.desired().services["a"].backends[0].weight, 5);
        assert!(l.warnings().is_empty());
        // Versions declared with the service are versions its backends must have.
        put(&mut l, "/g/services/a", r#"{"versions": {"v1": 100}}"#, 5);
        assert!(l.desired().services["a"].backends.is_empty());
        assert!(
            l.warnings()
                .to_string()
                .contains("etcd key /g/backends/a/1 @ rev 4: value.version: None is not one of"),
            "{}",
            l.warnings()
        );
    }
}
