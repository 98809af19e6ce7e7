//! The compiled routing table: built off the request path, then only read.
//!
//! For each entrypoint there is a host index: exact hosts in one hash map, wildcard suffixes in
//! another, and the routes without a host. Each bucket holds every route that can match a
//! request for that host, already sorted in evaluation order, so a lookup is one or a few hash
//! probes plus a scan of the (short) bucket.
//!
//! # Changes cost what they change
//! A table is made of persistent maps (`imbl`): the next table is the previous one plus a
//! [`Changes`], sharing everything the change does not touch. A changed route costs the buckets
//! of its own hosts; a changed service costs nothing here. (A change to a route *without* a host,
//! or with a wildcard, rebuilds the buckets it appears in: those of every host, or every host
//! under the wildcard.) Routes and services keep a small numeric id for as long as their name
//! exists, so that the data plane can key its own per-route state by id and rebuild only what a
//! table says changed ([`RoutingTable::changed_routes`]).
//!
//! # Evaluation order
//! Within the routes that can match a host, the first route whose remaining conditions hold wins.
//! Routes are ordered by, in turn (higher first):
//! 1. explicit `priority` (default 0);
//! 2. host specificity: an exact host, then a wildcard (longer suffix first), then no host;
//! 3. path specificity: exact `path`, then `path_prefix` (longer first), then no path;
//! 4. the number of method, header and query conditions;
//! 5. the router name, alphabetically, so that the order never depends on input order.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, Method};

use crate::error::Errors;
use crate::middleware::Middleware;
use crate::tls::CertStore;
use crate::{Changes, DesiredState, HostPattern, Match, PathMatch, Router, Service};

/// A route's or a service's id: stable for as long as its name is in the table, reused after.
pub type Id = u32;

/// One router as the request path sees it.
#[derive(Debug)]
pub struct Route {
    pub id: Id,
    pub name: Arc<str>,
    pub matcher: Match,
    pub priority: i32,
    pub strip_prefix: bool,
    /// The id of the route's service (see [`RoutingTable::service`]).
    pub service: Id,
    pub service_name: Arc<str>,
    pub max_body_bytes: u64,
    pub redirect_https: bool,
    pub access_log: bool,
    /// As declared (empty: all of them).
    pub entrypoints: Vec<String>,
    /// Indexes of the entrypoints the route is attached to.
    attached: Box<[usize]>,
    /// The route's middlewares in order, each with its declaration (`None`: no source declares
    /// it, and the route answers 503 until one does).
    pub middlewares: Box<[UsedMiddleware]>,
    pub tls: Option<crate::router::RouterTls>,
}

/// A middleware a route names, and its declaration (`None`: nobody declares it).
pub type UsedMiddleware = (Arc<str>, Option<Arc<Middleware>>);

impl Route {
    /// The router this route was compiled from.
    pub fn router(&self) -> Router {
        Router {
            entrypoints: self.entrypoints.clone(),
            matcher: self.matcher.clone(),
            priority: self.priority,
            strip_prefix: self.strip_prefix,
            service: self.service_name.to_string(),
            max_body_bytes: self.max_body_bytes,
            redirect_https: self.redirect_https,
            tls: self.tls.clone(),
            access_log: self.access_log,
            middlewares: self.middlewares.iter().map(|(n, _)| n.to_string()).collect(),
        }
    }
}

/// One service of the table.
#[derive(Debug)]
pub struct ServiceEntry {
    pub id: Id,
    pub name: Arc<str>,
    pub spec: Arc<Service>,
}

/// What routing needs to know about a request. `host` must already be normalized with
/// [`normalize_host`].
#[derive(Debug)]
pub struct RequestView<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

type Bucket = Arc<[Arc<Route>]>;

#[derive(Debug, Clone, Default)]
struct HostIndex {
    exact: imbl::HashMap<Arc<str>, Bucket>,
    wildcard: imbl::HashMap<Arc<str>, Bucket>,
    any: Bucket,
    /// The routes that declare each exact host, each wildcard suffix, and no host.
    exact_members: imbl::HashMap<Arc<str>, imbl::OrdSet<Id>>,
    wild_members: imbl::HashMap<Arc<str>, imbl::OrdSet<Id>>,
    any_members: imbl::OrdSet<Id>,
}

/// Buckets a change made stale, per entrypoint.
#[derive(Debug, Default, Clone)]
struct Stale {
    exact: BTreeSet<Arc<str>>,
    wildcard: BTreeSet<Arc<str>>,
    any: bool,
}

/// Id slots: a persistent vector, so that a new table shares the untouched ones.
#[derive(Debug)]
struct Slots<T> {
    items: imbl::Vector<Option<Arc<T>>>,
    free: imbl::Vector<Id>,
    ids: imbl::OrdMap<Arc<str>, Id>,
}

impl<T> Clone for Slots<T> {
    fn clone(&self) -> Self {
        Self {
            items: self.items.clone(),
            free: self.free.clone(),
            ids: self.ids.clone(),
        }
    }
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            items: imbl::Vector::new(),
            free: imbl::Vector::new(),
            ids: imbl::OrdMap::new(),
        }
    }
}

impl<T> Slots<T> {
    fn get(&self, id: Id) -> Option<&Arc<T>> {
        self.items.get(id as usize).and_then(Option::as_ref)
    }

    fn id_of(&self, name: &str) -> Option<Id> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, allocated if it has none.
    fn id_for(&mut self, name: &Arc<str>) -> Id {
        if let Some(id) = self.id_of(name) {
            return id;
        }
        let id = match self.free.pop_back() {
            Some(id) => id,
            None => {
                self.items.push_back(None);
                (self.items.len() - 1) as Id
            }
        };
        self.ids.insert(name.clone(), id);
        id
    }

    fn set(&mut self, id: Id, value: Arc<T>) {
        self.items.set(id as usize, Some(value));
    }

    fn remove(&mut self, name: &str) -> Option<Arc<T>> {
        let id = self.ids.remove(name)?;
        self.free.push_back(id);
        std::mem::take(&mut self.items[id as usize])
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// In name order.
    fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.ids.values().filter_map(|&id| self.get(id))
    }
}

static TABLE_IDS: AtomicU64 = AtomicU64::new(1);

/// An immutable, compiled view of the merged desired state.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    id: u64,
    parent: u64,
    changed_routes: Vec<Id>,
    changed_services: Vec<Id>,
    entrypoints: Arc<[String]>,
    routes: Slots<Route>,
    services: Slots<ServiceEntry>,
    /// The routes of each service.
    users: imbl::HashMap<Id, imbl::OrdSet<Id>>,
    indexes: Vec<HostIndex>,
    certs: Arc<CertStore>,
    middlewares: imbl::OrdMap<Arc<str>, Arc<Middleware>>,
}

/// The outcome of [`RoutingTable::apply`]: the next table, and the changes it refused.
#[derive(Debug)]
pub struct Applied {
    pub table: RoutingTable,
    /// Per refused item (`routers.<name>` or `services.<name>`), why. A refused item keeps its
    /// previous value (or stays absent).
    pub refused: BTreeMap<String, Errors>,
    /// Per route built by this change (`routers.<name>`): the middlewares it names that nobody
    /// declares (`Some`; it answers 503), or `None` when it has them all.
    pub dangling: BTreeMap<String, Option<Errors>>,
}

impl RoutingTable {
    /// The table that routes nothing: every request gets 404 until the first config lands.
    pub fn empty(entrypoints: &[String]) -> Self {
        Self {
            id: TABLE_IDS.fetch_add(1, Ordering::Relaxed),
            parent: 0,
            changed_routes: Vec::new(),
            changed_services: Vec::new(),
            entrypoints: entrypoints.into(),
            routes: Slots::default(),
            services: Slots::default(),
            users: imbl::HashMap::new(),
            indexes: entrypoints.iter().map(|_| HostIndex::default()).collect(),
            certs: Arc::new(CertStore::default()),
            middlewares: imbl::OrdMap::new(),
        }
    }

    /// Checks cross-references (router -> service, router -> entrypoint) and builds the indexes.
    /// `origin_of("routers.<name>")` says where an item was declared, for error messages.
    pub fn compile(
        desired: &DesiredState,
        entrypoints: &[String],
        origin_of: &dyn Fn(&str) -> String,
    ) -> Result<Self, Errors> {
        let applied = Self::empty(entrypoints).apply(&Changes::all(desired), origin_of);
        if applied.refused.is_empty() {
            Ok(applied.table)
        } else {
            let mut errs = Errors::new();
            for e in applied.refused.into_values() {
                errs.extend(e);
            }
            Err(errs)
        }
    }

    /// The next table: this one with `changes` made, except those that would leave it
    /// inconsistent (a router naming an unknown service or entrypoint, the removal of a service
    /// a router still uses), which are refused and reported.
    pub fn apply(&self, changes: &Changes, origin_of: &dyn Fn(&str) -> String) -> Applied {
        let mut t = self.clone();
        t.id = TABLE_IDS.fetch_add(1, Ordering::Relaxed);
        t.parent = self.id;
        t.changed_routes.clear();
        t.changed_services.clear();
        let mut refused = BTreeMap::new();
        let mut stale = vec![Stale::default(); t.indexes.len()];
        let mut changed_routes = BTreeSet::new();
        let mut changed_services = BTreeSet::new();

        for (name, svc) in &changes.services {
            let Some(svc) = svc else { continue };
            let name: Arc<str> = Arc::from(name.as_str());
            let id = t.services.id_for(&name);
            t.services.set(
                id,
                Arc::new(ServiceEntry {
                    id,
                    name,
                    spec: Arc::new(svc.clone()),
                }),
            );
            changed_services.insert(id);
        }
        // Middlewares before routers, which resolve them. A route that uses a changed middleware
        // is built again (it is not in `changes`) so that it sees the change.
        let mut changed_middlewares = BTreeSet::new();
        for (name, m) in &changes.middlewares {
            let name: Arc<str> = Arc::from(name.as_str());
            match m {
                Some(m) => t.middlewares.insert(name.clone(), Arc::new(m.clone())),
                None => t.middlewares.remove(&name),
            };
            changed_middlewares.insert(name);
        }
        let users_of_changed: Vec<(String, Option<Router>)> = if changed_middlewares.is_empty() {
            Vec::new()
        } else {
            t.routes
                .iter()
                .filter(|r| !changes.routers.contains_key(&*r.name))
                .filter(|r| r.middlewares.iter().any(|(n, _)| changed_middlewares.contains(n)))
                .map(|r| (r.name.to_string(), Some(r.router())))
                .collect()
        };
        let mut dangling = BTreeMap::new();
        for (name, router) in changes
            .routers
            .iter()
            .chain(users_of_changed.iter().map(|(n, r)| (n, r)))
        {
            let field = format!("routers.{name}");
            let Some(r) = router else {
                dangling.insert(field.clone(), None);
                if let Some(id) = t.routes.id_of(name) {
                    t.unindex(id, &mut stale);
                    t.routes.remove(name);
                    changed_routes.insert(id);
                }
                continue;
            };
            let mut errs = Errors::new();
            let removed = matches!(changes.services.get(&r.service), Some(None));
            let service = t.services.id_of(&r.service).filter(|_| !removed);
            if service.is_none() {
                errs.push(
                    &origin_of(&field),
                    format!("{field}.service"),
                    format!("unknown service {:?}", r.service),
                );
            }
            let mut attached = Vec::new();
            if r.entrypoints.is_empty() {
                attached.extend(0..t.entrypoints.len());
            }
            for ep in &r.entrypoints {
                match t.entrypoints.iter().position(|e| e == ep) {
                    Some(i) => attached.push(i),
                    None => errs.push(
                        &origin_of(&field),
                        format!("{field}.entrypoints"),
                        format!("unknown entrypoint {ep:?} (known: {})", t.entrypoints.join(", ")),
                    ),
                }
            }
            let Some(service) = service.filter(|_| errs.is_empty()) else {
                refused.insert(field, errs);
                continue;
            };
            let middlewares: Box<[UsedMiddleware]> = r
                .middlewares
                .iter()
                .map(|m| (Arc::from(m.as_str()), t.middlewares.get(m.as_str()).cloned()))
                .collect();
            let mut missing = Errors::new();
            for (m, _) in middlewares.iter().filter(|(_, d)| d.is_none()) {
                missing.push(
                    &origin_of(&field),
                    format!("{field}.middlewares"),
                    format!("unknown middleware {m:?}: the router answers 503 until it is declared"),
                );
            }
            dangling.insert(field.clone(), (!missing.is_empty()).then_some(missing));
            let name: Arc<str> = Arc::from(name.as_str());
            let id = t.routes.id_for(&name);
            t.unindex(id, &mut stale);
            let route = Arc::new(Route {
                middlewares,
                id,
                name,
                matcher: r.matcher.clone(),
                priority: r.priority,
                strip_prefix: r.strip_prefix,
                service,
                service_name: Arc::from(r.service.as_str()),
                max_body_bytes: r.max_body_bytes,
                redirect_https: r.redirect_https,
                access_log: r.access_log,
                tls: r.tls.clone(),
                entrypoints: r.entrypoints.clone(),
                attached: attached.into(),
            });
            t.routes.set(id, route.clone());
            t.index(&route, &mut stale);
            changed_routes.insert(id);
        }
        for (name, svc) in &changes.services {
            if svc.is_some() {
                continue;
            }
            let Some(id) = t.services.id_of(name) else {
                continue;
            };
            let users: Vec<String> = t
                .users
                .get(&id)
                .into_iter()
                .flatten()
                .filter_map(|&r| t.routes.get(r).map(|r| format!("routers.{}", r.name)))
                .collect();
            if users.is_empty() {
                t.services.remove(name);
                t.users.remove(&id);
                changed_services.insert(id);
            } else {
                let field = format!("services.{name}");
                let mut errs = Errors::new();
                errs.push(
                    &origin_of(&field),
                    &field,
                    format!("cannot be removed: still used by {}", users.join(", ")),
                );
                refused.insert(field, errs);
            }
        }
        if let Some(tls) = &changes.tls {
            t.certs = Arc::new(CertStore::build(tls));
        }
        for (ep, stale) in stale.iter().enumerate() {
            t.rebuild(ep, stale);
        }
        t.changed_routes = changed_routes.into_iter().collect();
        t.changed_services = changed_services.into_iter().collect();
        Applied {
            table: t,
            refused,
            dangling,
        }
    }

    /// Removes route `id` from the membership of its hosts and from its service's users.
    fn unindex(&mut self, id: Id, stale: &mut [Stale]) {
        let Some(old) = self.routes.get(id).cloned() else {
            return;
        };
        if let Some(users) = self.users.get(&old.service) {
            let mut users = users.clone();
            users.remove(&id);
            self.users.insert(old.service, users);
        }
        for &ep in &old.attached {
            let (index, stale) = (&mut self.indexes[ep], &mut stale[ep]);
            if old.matcher.hosts.is_empty() {
                index.any_members.remove(&id);
                stale.any = true;
            }
            for h in &old.matcher.hosts {
                let (members, stale_set, host) = match h {
                    HostPattern::Exact(h) => (&mut index.exact_members, &mut stale.exact, h),
                    HostPattern::Wildcard(s) => (&mut index.wild_members, &mut stale.wildcard, s),
                };
                if let Some(set) = members.get(host.as_str()) {
                    let mut set = set.clone();
                    set.remove(&id);
                    if set.is_empty() {
                        members.remove(host.as_str());
                    } else {
                        members.insert(Arc::from(host.as_str()), set);
                    }
                }
                stale_set.insert(Arc::from(host.as_str()));
            }
        }
    }

    fn index(&mut self, route: &Route, stale: &mut [Stale]) {
        let mut users = self.users.get(&route.service).cloned().unwrap_or_default();
        users.insert(route.id);
        self.users.insert(route.service, users);
        for &ep in &route.attached {
            let (index, stale) = (&mut self.indexes[ep], &mut stale[ep]);
            if route.matcher.hosts.is_empty() {
                index.any_members.insert(route.id);
                stale.any = true;
            }
            for h in &route.matcher.hosts {
                let (members, stale_set, host) = match h {
                    HostPattern::Exact(h) => (&mut index.exact_members, &mut stale.exact, h),
                    HostPattern::Wildcard(s) => (&mut index.wild_members, &mut stale.wildcard, s),
                };
                let host: Arc<str> = Arc::from(host.as_str());
                let mut set = members.get(&host).cloned().unwrap_or_default();
                set.insert(route.id);
                members.insert(host.clone(), set);
                stale_set.insert(host);
            }
        }
    }

    /// Rebuilds the stale buckets of entrypoint `ep`.
    fn rebuild(&mut self, ep: usize, stale: &Stale) {
        let index = &self.indexes[ep];
        let (mut exact, mut wildcard): (BTreeSet<Arc<str>>, BTreeSet<Arc<str>>) =
            (stale.exact.clone(), stale.wildcard.clone());
        if stale.any {
            // Host-less routes are in every bucket.
            exact.extend(index.exact_members.keys().cloned());
            wildcard.extend(index.wild_members.keys().cloned());
        } else if !stale.wildcard.is_empty() {
            // A wildcard is in the buckets of the hosts and wildcards under it.
            let under = |h: &str| {
                stale.wildcard.iter().any(|s| {
                    h.len() > s.len() && h.ends_with(&**s) && h.as_bytes()[h.len() - s.len() - 1] == b'.'
                })
            };
            exact.extend(index.exact_members.keys().filter(|h| under(h)).cloned());
            wildcard.extend(index.wild_members.keys().filter(|h| under(h)).cloned());
        }
        if exact.is_empty() && wildcard.is_empty() && !stale.any {
            return;
        }
        let routes = &self.routes;
        let index = &self.indexes[ep];
        let keyed = |ids: &imbl::OrdSet<Id>, rank: u8, len: usize, out: &mut Vec<(Arc<Route>, OrderKey)>| {
            out.extend(
                ids.iter()
                    .filter_map(|&id| routes.get(id))
                    .map(|r| (r.clone(), order_key(r, rank, len))),
            );
        };
        let any: Vec<(Arc<Route>, OrderKey)> = {
            let mut v = Vec::new();
            keyed(&index.any_members, 0, 0, &mut v);
            v
        };
        // Wildcard routes that match `name.<suffix>` for every suffix of `host`.
        let covering = |host: &str, include_self: bool, out: &mut Vec<(Arc<Route>, OrderKey)>| {
            let mut rest = host;
            let mut first = true;
            loop {
                if (include_self || !first)
                    && let Some(ids) = index.wild_members.get(rest)
                {
                    keyed(ids, 1, rest.len(), out);
                }
                first = false;
                match rest.find('.') {
                    Some(dot) => rest = &rest[dot + 1..],
                    None => break,
                }
            }
        };
        let mut new_exact = Vec::new();
        for host in &exact {
            let bucket = index.exact_members.get(host).map(|ids| {
                let mut entries = Vec::new();
                keyed(ids, 2, host.len(), &mut entries);
                covering(host, false, &mut entries);
                entries.extend(any.iter().cloned());
                sort_bucket(entries)
            });
            new_exact.push((host.clone(), bucket));
        }
        let mut new_wild = Vec::new();
        for suffix in &wildcard {
            let bucket = index.wild_members.get(suffix).map(|_| {
                let mut entries = Vec::new();
                covering(suffix, true, &mut entries);
                entries.extend(any.iter().cloned());
                sort_bucket(entries)
            });
            new_wild.push((suffix.clone(), bucket));
        }
        let any_bucket = stale.any.then(|| sort_bucket(any));
        let index = &mut self.indexes[ep];
        for (host, bucket) in new_exact {
            match bucket {
                Some(b) => index.exact.insert(host, b),
                None => index.exact.remove(&host),
            };
        }
        for (suffix, bucket) in new_wild {
            match bucket {
                Some(b) => index.wildcard.insert(suffix, b),
                None => index.wildcard.remove(&suffix),
            };
        }
        if let Some(b) = any_bucket {
            index.any = b;
        }
    }

    /// This table's identity, and that of the table it was made from (0: none): a consumer that
    /// holds state for the parent may update only what [`changed_routes`](Self::changed_routes)
    /// and [`changed_services`](Self::changed_services) name.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn parent(&self) -> u64 {
        self.parent
    }

    /// Ids of the routes added, changed or removed since the parent table.
    pub fn changed_routes(&self) -> &[Id] {
        &self.changed_routes
    }

    /// Ids of the services added, changed or removed since the parent table.
    pub fn changed_services(&self) -> &[Id] {
        &self.changed_services
    }

    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    /// Every route, by name.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    pub fn route(&self, id: Id) -> Option<&Arc<Route>> {
        self.routes.get(id)
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.iter()
    }

    pub fn service(&self, id: Id) -> Option<&Arc<ServiceEntry>> {
        self.services.get(id)
    }

    pub fn service_named(&self, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.id_of(name).and_then(|id| self.services.get(id))
    }

    /// Every declared middleware, by name.
    pub fn middlewares(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Middleware>)> {
        self.middlewares.iter()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Ids of the routes that use service `id`.
    pub fn routes_of(&self, id: Id) -> impl Iterator<Item = Id> + '_ {
        self.users.get(&id).into_iter().flatten().copied()
    }

    /// Certificates by server name, for TLS handshakes.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// The first route, in evaluation order, that matches the request on this entrypoint.
    #[inline]
    pub fn lookup(&self, entrypoint: usize, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        let index = self.indexes.get(entrypoint)?;
        index
            .bucket(req.host)
            .iter()
            .find(|r| matches_rest(&r.matcher, req))
    }
}

impl HostIndex {
    #[inline]
    fn bucket(&self, host: &str) -> &[Arc<Route>] {
        if !self.exact.is_empty()
            && let Some(b) = self.exact.get(host)
        {
            return b;
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(b) = self.wildcard.get(rest) {
                    return b;
                }
            }
        }
        &self.any
    }
}

/// Evaluation-order key, compared descending (see the module doc).
type OrderKey = (i32, u8, usize, u8, usize, usize);

fn order_key(r: &Route, host_rank: u8, host_len: usize) -> OrderKey {
    let (path_rank, path_len) = match &r.matcher.path {
        Some(PathMatch::Exact(p)) => (2, p.len()),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        None => (0, 0),
    };
    let extras = usize::from(!r.matcher.methods.is_empty()) + r.matcher.headers.len() + r.matcher.query.len();
    (r.priority, host_rank, host_len, path_rank, path_len, extras)
}

/// Sorts a bucket in evaluation order; a route that is there through several of its hosts keeps
/// its most specific place.
fn sort_bucket(mut entries: Vec<(Arc<Route>, OrderKey)>) -> Bucket {
    entries.sort_by(|(a, ka), (b, kb)| kb.cmp(ka).then_with(|| a.name.cmp(&b.name)));
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .filter(|(r, _)| seen.insert(r.id))
        .map(|(r, _)| r)
        .collect()
}

fn matches_rest(m: &Match, req: &RequestView<'_>) -> bool {
    match &m.path {
        Some(PathMatch::Exact(p)) if req.path != p => return false,
        Some(PathMatch::Prefix(p)) if !req.path.starts_with(p.as_str()) => return false,
        _ => {}
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method.as_str()) {
        return false;
    }
    for h in &m.headers {
        if !req
            .headers
            .get_all(&h.name)
            .iter()
            .any(|v| v.as_bytes() == h.value.as_bytes())
        {
            return false;
        }
    }
    for (k, v) in &m.query {
        let Some(q) = req.query else { return false };
        if !q.split('&').any(|pair| {
            let (pk, pv) = pair.split_once('=').unwrap_or((pair, ""));
            percent_decode(pk) == k.as_str() && percent_decode(pv) == v.as_str()
        }) {
            return false;
        }
    }
    true
}

/// Decodes `%XX` and `+` in a query component; leaves invalid escapes as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Lowercases a Host header or `:authority` value and drops its port and trailing dot, without
/// allocating when it is already in that form (the usual case).
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests;
