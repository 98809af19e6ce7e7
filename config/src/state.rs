//! Desired state: the routers and services one source declares, normalized and `Eq`, and
//! [`Changes`], what turns one desired state into another (applied name by name by the
//! reconciler and the routing table).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Errors;
use crate::middleware::{FileMiddleware, Middleware, validate_middleware};
use crate::router::{FileRouter, Router, validate_router};
use crate::service::{FileService, Service, validate_service};

/// Everything that can change at run time: routers, the services they send traffic to, and
/// TLS certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub routers: BTreeMap<String, Router>,
    pub services: BTreeMap<String, Service>,
    /// Declared once by name, used by routers of any source.
    pub middlewares: BTreeMap<String, Middleware>,
    pub tls: crate::tls::TlsCertificates,
    /// Version weights set over a service whichever source declares it (etcd `weights/` keys,
    /// the admin API, a rollout): service -> version -> weight. They replace the service's own
    /// `versions` (and, with a mirror share, its mirror) while set.
    pub weights: BTreeMap<String, crate::mirror::Split>,
}

/// A change to a desired state, by name: `Some` is the new value, `None` a removal. Sources that
/// see their own changes (the etcd watch) send these, so that the cost of a change follows its
/// size and not the size of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub routers: BTreeMap<String, Option<Router>>,
    pub services: BTreeMap<String, Option<Service>>,
    pub middlewares: BTreeMap<String, Option<Middleware>>,
    /// The new certificates, when they changed.
    pub tls: Option<crate::tls::TlsCertificates>,
    pub weights: BTreeMap<String, Option<crate::mirror::Split>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
            && self.services.is_empty()
            && self.middlewares.is_empty()
            && self.tls.is_none()
            && self.weights.is_empty()
    }

    /// Everything in `state`, as additions.
    pub fn all(state: &DesiredState) -> Self {
        Self {
            routers: state
                .routers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            services: state
                .services
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            middlewares: state
                .middlewares
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            tls: (state.tls != Default::default()).then(|| state.tls.clone()),
            weights: state
                .weights
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        }
    }

    /// What turns `old` into `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        Self {
            routers: diff(&old.routers, &new.routers),
            services: diff(&old.services, &new.services),
            middlewares: diff(&old.middlewares, &new.middlewares),
            tls: (old.tls != new.tls).then(|| new.tls.clone()),
            weights: diff(&old.weights, &new.weights),
        }
    }

    /// Makes the change to `state`.
    pub fn apply_to(&self, state: &mut DesiredState) {
        patch(&mut state.routers, &self.routers);
        patch(&mut state.services, &self.services);
        patch(&mut state.middlewares, &self.middlewares);
        patch(&mut state.weights, &self.weights);
        if let Some(tls) = &self.tls {
            state.tls = tls.clone();
        }
    }
}

fn diff<T: Clone + PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> BTreeMap<String, Option<T>> {
    let mut out = BTreeMap::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), None);
        }
    }
    out
}

fn patch<T: Clone>(map: &mut BTreeMap<String, T>, changes: &BTreeMap<String, Option<T>>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}
/// Validates routers, services and middlewares together (a router must name a service that
/// exists in the same input or, once merged, in another source; that cross-check happens at
/// compile time, as does the one for middlewares).
pub fn validate_state(
    routers: BTreeMap<String, FileRouter>,
    services: BTreeMap<String, FileService>,
    middlewares: BTreeMap<String, FileMiddleware>,
    origin: &str,
    read: crate::file::ReadFile<'_>,
) -> Result<DesiredState, Errors> {
    let mut errs = Errors::new();
    let mut state = DesiredState::default();
    for (name, r) in routers {
        let field = format!("routers.{name}");
        if let Some(router) = validate_router(r, origin, &field, &name, &mut errs) {
            state.routers.insert(name, router);
        }
    }
    for (name, s) in services {
        let field = format!("services.{name}");
        if let Some(service) = validate_service(s, origin, &field, &name, &mut errs) {
            state.services.insert(name, service);
        }
    }
    for (name, m) in middlewares {
        let field = format!("middlewares.{name}");
        if let Some(m) = validate_middleware(m, origin, &field, &name, read, &mut errs) {
            state.middlewares.insert(name, m);
        }
    }
    errs.into_result(state)
}
