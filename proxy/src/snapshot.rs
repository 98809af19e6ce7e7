//! A snapshot: one compiled routing table plus everything the request path needs to serve it
//! (balancers, backend state, metric handles), built off the request path and published with one
//! store. A request loads one snapshot and uses it from start to finish.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gantry_config::routing::Id;
use gantry_config::{HashOn, Policy, RoutingTable, Service};
use http::{HeaderMap, HeaderValue, header};
use prometheus::Histogram;

use crate::backend::{BackendKey, BackendRegistry, BackendState};
use crate::balance::{self, Ring, SmoothWrr};
use crate::metrics::{ClassCounters, Metrics, VersionMetrics};
use crate::service::{ServiceRegistry, ServiceState};

/// Per-route and per-service runtime state, by the ids of the table (persistent vectors: the
/// next snapshot shares every entry a change did not touch).
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub table: Arc<RoutingTable>,
    services: imbl::Vector<Option<Arc<ServiceRuntime>>>,
    routes: imbl::Vector<Option<Arc<RouteRuntime>>>,
}

/// What a new snapshot replaced: the runtime state that left and the state that came in, so
/// that the proxy settles exactly that (health checks, retired backends, metric series).
#[derive(Debug, Default)]
pub struct Delta {
    pub old_services: Vec<Arc<ServiceRuntime>>,
    pub new_services: Vec<Arc<ServiceRuntime>>,
    pub old_routes: Vec<Arc<RouteRuntime>>,
    pub new_routes: Vec<Arc<RouteRuntime>>,
}

#[derive(Debug)]
pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub spec: Arc<Service>,
    /// Same order as `spec.backends`.
    pub backends: Vec<Arc<BackendState>>,
    /// In-flight count and retry budget, shared with every other snapshot of this service.
    pub state: Arc<ServiceState>,
    hash_on: Option<HashOn>,
    /// One group per version when the service splits traffic between versions, otherwise one
    /// group of every backend.
    groups: Vec<Group>,
    /// Chooses the version, by version weight.
    version_rr: SmoothWrr,
    /// The group of each backend (same order as `backends`).
    group_of: Vec<usize>,
    /// Sticky assignment: the bucket ranges of the groups, as (end, group), in bucket order.
    cuts: Vec<(u32, usize)>,
    /// Sticky sessions, when the service has them.
    sticky: Option<StickyCookie>,
    /// Shadow traffic, when the service mirrors requests to one of its versions.
    pub(crate) mirror: Option<crate::mirror::MirrorRuntime>,
}

/// A sticky service's cookie: its name, and per backend (same order as `backends`) the ID a
/// cookie carries and the `Set-Cookie` that names it.
#[derive(Debug)]
struct StickyCookie {
    name: Box<str>,
    ids: Box<[u64]>,
    /// `None` only if the header could not be made (config validation rules that out).
    set: Box<[Option<HeaderValue>]>,
}

impl StickyCookie {
    fn build(s: &gantry_config::service::Sticky, backends: &[gantry_config::Backend]) -> Self {
        // A backend's ID is a hash of its URL: the same in every snapshot and on every instance
        // of a fleet, and it does not reveal the address.
        let ids: Box<[u64]> = backends
            .iter()
            .map(|b| balance::hash_key(b.url.to_string().as_bytes()))
            .collect();
        let attrs = format!(
            "; Path=/{}{}; SameSite={}",
            if s.secure { "; Secure" } else { "" },
            if s.http_only { "; HttpOnly" } else { "" },
            s.same_site
        );
        let set = ids
            .iter()
            .map(|id| HeaderValue::from_str(&format!("{}={id:016x}{attrs}", s.cookie)).ok())
            .collect();
        Self {
            name: s.cookie.as_str().into(),
            ids,
            set,
        }
    }
}

/// Sticky assignment hashes a user into one of this many buckets.
pub const BUCKETS: u32 = 10_000;

/// Where a request goes between the versions of a service, decided once per request (retries
/// stay with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// By version weight, request by request.
    Weighted,
    /// An override pinned the request to this group: no other version takes it.
    Pinned(usize),
    /// The user's bucket falls in this group; when it has no backend to take the request, the
    /// request is placed by weight instead.
    Sticky(usize),
}

/// The backends of one version and how to balance among them.
#[derive(Debug)]
struct Group {
    version: Option<Arc<str>>,
    weight: u32,
    /// Indexes into `backends`.
    members: Vec<usize>,
    lb: Lb,
    /// Per-version metric handles (only when the service has versions).
    metrics: Option<VersionMetrics>,
}

#[derive(Debug)]
enum Lb {
    RoundRobin(SmoothWrr),
    LeastRequest,
    Hash(Ring),
}

/// What a balancer may look at besides backend state.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    /// The hash of the request's key, for hash policies (see [`ServiceRuntime::hash_of`]).
    pub hash: Option<u64>,
    /// The backend the request's sticky cookie names (see [`ServiceRuntime::sticky_backend`]).
    pub sticky: Option<usize>,
    pub placement: Placement,
    pub now: Instant,
}

/// A backend choice.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub index: usize,
    /// Too few backends were healthy, so health was ignored (the panic threshold).
    pub panic: bool,
}

/// Weights are scaled so that slow start can ramp them smoothly (10% of weight 1 is 10).
const WEIGHT_SCALE: f64 = 100.0;

impl ServiceRuntime {
    fn build(
        name: Arc<str>,
        spec: Arc<Service>,
        registry: &BackendRegistry,
        services: &ServiceRegistry,
        metrics: &Metrics,
    ) -> Self {
        let check = spec.health_check.as_ref();
        let (state, existed) = services.resolve(&name, metrics);
        let backends: Vec<Arc<BackendState>> = spec
            .backends
            .iter()
            .map(|b| {
                // Not ready until checked, unless the check trusts the source and it vouches.
                let checked = check.is_some_and(|c| !(c.trust_source_health && b.source_healthy));
                registry.resolve(
                    &BackendKey {
                        service: name.clone(),
                        url: b.url.clone(),
                    },
                    metrics,
                    checked,
                    existed,
                )
            })
            .collect();
        for b in &backends {
            b.health.set_slow_start(spec.slow_start);
        }
        let group_of = |members: Vec<usize>, version: Option<Arc<str>>, weight: u32| {
            let lb = match &spec.policy {
                Policy::RoundRobin => Lb::RoundRobin(SmoothWrr::new(members.len())),
                Policy::LeastRequest => Lb::LeastRequest,
                Policy::Hash(_) => Lb::Hash(Ring::build(
                    &members
                        .iter()
                        .map(|&i| (&*backends[i].label, spec.backends[i].weight))
                        .collect::<Vec<_>>(),
                )),
            };
            Group {
                metrics: version.as_deref().map(|v| metrics.version(&name, v)),
                version,
                weight,
                members,
                lb,
            }
        };
        let groups: Vec<Group> = if spec.versions.is_empty() {
            vec![group_of((0..backends.len()).collect(), None, 1)]
        } else {
            spec.versions
                .iter()
                .map(|(v, w)| {
                    let members = (0..backends.len())
                        .filter(|&i| spec.backends[i].version.as_deref() == Some(v.as_str()))
                        .collect();
                    group_of(members, Some(Arc::from(v.as_str())), *w)
                })
                .collect()
        };
        let hash_on = match &spec.policy {
            Policy::Hash(on) => Some(on.clone()),
            _ => None,
        };
        let version_rr = SmoothWrr::new(groups.len());
        let mut group_of = vec![0; backends.len()];
        for (g, group) in groups.iter().enumerate() {
            for &i in &group.members {
                group_of[i] = g;
            }
        }
        let cuts = sticky_cuts(&groups, spec.canary.stable.as_deref());
        let sticky = spec
            .sticky
            .as_ref()
            .map(|s| StickyCookie::build(s, &spec.backends));
        let mirror = spec.mirror.as_ref().and_then(|m| {
            let g = groups
                .iter()
                .position(|g| g.version.as_deref() == Some(m.version.as_str()))?;
            Some(crate::mirror::MirrorRuntime::build(m, &name, g, metrics))
        });
        Self {
            name,
            spec,
            backends,
            state,
            hash_on,
            groups,
            version_rr,
            group_of,
            cuts,
            sticky,
            mirror,
        }
    }

    /// The group (version) of backend `i`.
    pub(crate) fn group_of_backend(&self, i: usize) -> Option<usize> {
        self.group_of.get(i).copied()
    }

    /// Where a request goes between versions: the first override that matches pins it; else
    /// the user's sticky bucket places it; else weights do, request by request.
    pub fn place(&self, headers: &HeaderMap, client_ip: IpAddr) -> Placement {
        if self.groups.len() < 2 {
            return Placement::Weighted;
        }
        let canary = &self.spec.canary;
        for o in &canary.overrides {
            let found = match &o.on {
                HashOn::Header(h) => headers.get(h).map(|v| v.as_bytes()),
                HashOn::Cookie(c) => cookie(headers, c),
                HashOn::ClientIp => None,
            };
            let Some(found) = found else { continue };
            if o.value.as_ref().is_some_and(|v| v.as_bytes() != found) {
                continue;
            }
            let wanted = o.version.as_ref().map_or(found, |v| v.as_bytes());
            if let Some(g) = self
                .groups
                .iter()
                .position(|g| g.version.as_deref().map(str::as_bytes) == Some(wanted))
            {
                return Placement::Pinned(g);
            }
        }
        match canary
            .sticky
            .as_ref()
            .and_then(|on| hash_input(on, headers, client_ip))
        {
            Some(h) => self
                .sticky_group(bucket(h))
                .map_or(Placement::Weighted, Placement::Sticky),
            None => Placement::Weighted,
        }
    }

    /// The group owning sticky bucket `b`.
    pub fn sticky_group(&self, b: u32) -> Option<usize> {
        self.cuts.iter().find(|(end, _)| b < *end).map(|&(_, g)| g)
    }

    /// The version of group `g`.
    pub fn version_name(&self, g: usize) -> Option<&str> {
        self.groups.get(g).and_then(|g| g.version.as_deref())
    }

    /// Counts a request's answer against the version of the backend that gave it.
    pub fn observe_version(&self, backend: usize, status: u16, seconds: f64) {
        self.state.record(status, seconds);
        if let Some(m) = self
            .group_of
            .get(backend)
            .and_then(|&g| self.groups[g].metrics.as_ref())
        {
            m.observe(status, seconds);
        }
    }

    /// The backend a request's sticky cookie names, when the service is sticky and that backend
    /// is still one of its own.
    pub fn sticky_backend(&self, headers: &HeaderMap) -> Option<usize> {
        let s = self.sticky.as_ref()?;
        let value = cookie(headers, &s.name)?;
        let id = u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()?;
        s.ids.iter().position(|&x| x == id)
    }

    /// The `Set-Cookie` that names backend `i`, for an answer it gave to a request whose cookie
    /// named another (`had`) or none.
    pub fn sticky_cookie(&self, i: usize, had: Option<usize>) -> Option<&HeaderValue> {
        let s = self.sticky.as_ref()?;
        (had != Some(i)).then(|| s.set.get(i)?.as_ref()).flatten()
    }

    /// The hash of a request's balancing key, for a hash policy (computed once per request,
    /// reused by retries).
    pub fn hash_of(&self, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
        self.hash_on
            .as_ref()
            .and_then(|on| hash_input(on, headers, client_ip))
    }

    /// The versions of this service and their weights, in order.
    pub fn versions(&self) -> impl Iterator<Item = (&str, u32)> {
        self.groups
            .iter()
            .filter_map(|g| g.version.as_deref().map(|v| (v, g.weight)))
    }

    /// Chooses a backend for a request, skipping `exclude` (backends a retry already tried), or
    /// `None` when no backend can take it.
    ///
    /// A backend's weight counts only while it is eligible (checks pass, not ejected, not
    /// draining), scaled by its slow-start ramp. When fewer than the panic threshold of the
    /// backends are eligible, health is ignored: a broken health check must not take a whole
    /// service down. With versions, the version is chosen first, by version weight among the
    /// versions that have a backend to take the request.
    pub fn pick(&self, ctx: &PickContext, exclude: &[usize]) -> Option<Pick> {
        let now = crate::clock::nanos_since_epoch(ctx.now);
        let (mut candidates, mut eligible) = (0usize, 0usize);
        for (b, spec) in self.backends.iter().zip(&self.spec.backends) {
            if spec.weight > 0 && !b.health.is_draining() {
                candidates += 1;
                eligible += usize::from(b.health.eligible(now));
            }
        }
        let panic = eligible * 100 < candidates * self.spec.outlier.panic_threshold_percent as usize;
        let weight = |i: usize| -> u32 {
            let w = self.spec.backends[i].weight;
            let b = &self.backends[i];
            if w == 0 || exclude.contains(&i) || b.health.is_draining() || (!panic && !b.health.eligible(now))
            {
                return 0;
            }
            ((f64::from(w) * WEIGHT_SCALE * b.health.weight_factor(now)) as u32).max(1)
        };
        // The backend a sticky cookie names, while it can take the request.
        if let Some(i) = ctx.sticky
            && i < self.backends.len()
            && weight(i) > 0
        {
            return Some(Pick { index: i, panic });
        }
        let available = |g: usize| self.groups[g].members.iter().any(|&i| weight(i) > 0);
        let group = match (self.groups.len(), ctx.placement) {
            (1, _) => &self.groups[0],
            (_, Placement::Pinned(g)) => self.groups.get(g)?,
            (_, Placement::Sticky(g)) if g < self.groups.len() && available(g) => &self.groups[g],
            _ => {
                let g = self
                    .version_rr
                    .pick(|g| if available(g) { self.groups[g].weight } else { 0 })?;
                &self.groups[g]
            }
        };
        let m = &group.members;
        let chosen = match &group.lb {
            Lb::RoundRobin(rr) => rr.pick(|j| weight(m[j])),
            Lb::LeastRequest => {
                let mut rng = fastrand::Rng::new();
                balance::p2c(
                    m.len(),
                    |j| {
                        let w = weight(m[j]);
                        (w > 0).then(|| {
                            let b = &self.backends[m[j]];
                            // Latency floor of 1 us so that in-flight counts matter before the
                            // first samples arrive.
                            let latency = b.latency_ewma(ctx.now).max(1_000.0);
                            f64::from(b.in_flight() + 1) * latency / f64::from(w)
                        })
                    },
                    &mut rng,
                )
            }
            Lb::Hash(ring) => match ctx.hash {
                Some(h) => ring.pick(h, |j| weight(m[j]) > 0),
                None => balance::weighted_random(m.len(), |j| weight(m[j]), &mut fastrand::Rng::new()),
            },
        }?;
        Some(Pick {
            index: m[chosen],
            panic,
        })
    }
}

/// A user's sticky bucket.
pub fn bucket(hash: u64) -> u32 {
    (hash % u64::from(BUCKETS)) as u32
}

/// The sticky bucket ranges: every version but the stable one, newest name first, from bucket
/// 0, each as wide as its share of the weight; the stable version (named, or else the first by
/// name) takes the rest. The order does not depend on weights, so raising a canary's weight
/// only widens its range into stable's.
fn sticky_cuts(groups: &[Group], stable: Option<&str>) -> Vec<(u32, usize)> {
    let total: u64 = groups.iter().map(|g| u64::from(g.weight)).sum();
    if groups.len() < 2 || total == 0 {
        return Vec::new();
    }
    let stable = stable
        .and_then(|s| groups.iter().position(|g| g.version.as_deref() == Some(s)))
        .unwrap_or(0);
    let mut cuts = Vec::with_capacity(groups.len());
    let mut acc = 0u64;
    for g in (0..groups.len()).rev().filter(|&g| g != stable) {
        acc += u64::from(groups[g].weight);
        cuts.push(((acc * u64::from(BUCKETS) / total) as u32, g));
    }
    cuts.push((BUCKETS, stable));
    cuts
}

fn hash_input(on: &HashOn, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| balance::hash_key(v.as_bytes())),
        HashOn::Cookie(name) => cookie(headers, name).map(balance::hash_key),
        HashOn::ClientIp => Some(match client_ip {
            IpAddr::V4(a) => balance::hash_key(&a.octets()),
            IpAddr::V6(a) => balance::hash_key(&a.octets()),
        }),
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

/// Metric handles of one route.
#[derive(Debug)]
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub service: Arc<str>,
    pub histogram: Histogram,
    /// One set per backend of the route's service, resolved on first use: a table of 10,000
    /// routes does not create 50,000 series up front.
    per_backend: Box<[OnceLock<ClassCounters>]>,
    pub no_backend: ClassCounters,
    /// The router's middlewares; `None` when it has none (the request path pays one check).
    pub chain: Option<crate::middleware::Chain>,
}

impl RouteRuntime {
    pub fn counters(
        &self,
        metrics: &Metrics,
        route: &str,
        service: &ServiceRuntime,
        backend: usize,
    ) -> &ClassCounters {
        self.per_backend[backend]
            .get_or_init(|| metrics.class_counters(route, &service.name, &service.backends[backend].label))
    }
}

impl Snapshot {
    pub fn empty(table: Arc<RoutingTable>) -> Self {
        Self {
            generation: 0,
            table,
            services: imbl::Vector::new(),
            routes: imbl::Vector::new(),
        }
    }

    #[inline]
    pub fn service(&self, id: Id) -> Option<&Arc<ServiceRuntime>> {
        self.services.get(id as usize).and_then(Option::as_ref)
    }

    /// A service by name (the table's index, not a scan).
    pub fn service_named(&self, name: &str) -> Option<&Arc<ServiceRuntime>> {
        self.service(self.table.service_named(name)?.id)
    }

    #[inline]
    pub fn route(&self, id: Id) -> Option<&Arc<RouteRuntime>> {
        self.routes.get(id as usize).and_then(Option::as_ref)
    }

    /// Every service, in id order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRuntime>> {
        self.services.iter().flatten()
    }

    /// The snapshot for `table`. When `table` was made from the previous snapshot's table, only
    /// what it says changed is rebuilt (a service, and the routes that use it); otherwise
    /// everything is. Backend and service state is carried over by the registries either way.
    pub fn build(
        generation: u64,
        table: Arc<RoutingTable>,
        previous: &Snapshot,
        registry: &BackendRegistry,
        service_states: &ServiceRegistry,
        metrics: &Metrics,
    ) -> (Self, Delta) {
        let mut delta = Delta::default();
        let incremental = table.parent() == previous.table.id();
        let (mut services, mut routes, service_ids, mut route_ids) = if incremental {
            (
                previous.services.clone(),
                previous.routes.clone(),
                table.changed_services().to_vec(),
                table.changed_routes().to_vec(),
            )
        } else {
            delta.old_services = previous.services.iter().flatten().cloned().collect();
            delta.old_routes = previous.routes.iter().flatten().cloned().collect();
            (
                imbl::Vector::new(),
                imbl::Vector::new(),
                table.services().map(|s| s.id).collect(),
                table.routes().map(|r| r.id).collect(),
            )
        };
        for id in service_ids {
            let new = table.service(id).map(|e| {
                Arc::new(ServiceRuntime::build(
                    e.name.clone(),
                    e.spec.clone(),
                    registry,
                    service_states,
                    metrics,
                ))
            });
            if let Some(new) = &new {
                delta.new_services.push(new.clone());
            }
            if let Some(old) = put(&mut services, id, new) {
                delta.old_services.push(old);
            }
            if incremental {
                // Their per-backend handles follow the service's backends.
                route_ids.extend(table.routes_of(id));
            }
        }
        route_ids.sort_unstable();
        route_ids.dedup();
        for id in route_ids {
            let new = table.route(id).and_then(|r| {
                let svc = services.get(r.service as usize)?.as_ref()?;
                let previous = routes
                    .get(id as usize)
                    .and_then(Option::as_ref)
                    .filter(|p| p.name == r.name)
                    .and_then(|p| p.chain.as_ref());
                Some(Arc::new(RouteRuntime {
                    name: r.name.clone(),
                    service: svc.name.clone(),
                    histogram: metrics.route_histogram(&r.name, &svc.name),
                    per_backend: (0..svc.backends.len()).map(|_| OnceLock::new()).collect(),
                    no_backend: metrics.class_counters(&r.name, &svc.name, ""),
                    chain: crate::middleware::Chain::new(&r.middlewares, previous),
                }))
            });
            if let Some(new) = &new {
                delta.new_routes.push(new.clone());
            }
            if let Some(old) = put(&mut routes, id, new) {
                delta.old_routes.push(old);
            }
        }
        let snapshot = Self {
            generation,
            table,
            services,
            routes,
        };
        (snapshot, delta)
    }
}

/// Sets slot `id`, growing the vector as needed; returns what was there.
fn put<T: Clone>(v: &mut imbl::Vector<Option<T>>, id: Id, value: Option<T>) -> Option<T> {
    while v.len() <= id as usize {
        v.push_back(None);
    }
    v.set(id as usize, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; sid=abc ; b=2".parse().unwrap());
        h.append(header::COOKIE, "other=3".parse().unwrap());
        assert_eq!(cookie(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "other"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "id"), None);
    }

    fn groups(weights: &[(&str, u32)]) -> Vec<Group> {
        weights
            .iter()
            .map(|&(v, w)| Group {
                version: Some(Arc::from(v)),
                weight: w,
                members: Vec::new(),
                lb: Lb::LeastRequest,
                metrics: None,
            })
            .collect()
    }

    fn owner(cuts: &[(u32, usize)], b: u32) -> usize {
        cuts.iter().find(|(end, _)| b < *end).unwrap().1
    }

    #[test]
    fn raising_the_canary_only_moves_users_from_stable_to_canary() {
        let users: Vec<u32> = (0..10_000u32)
            .map(|u| bucket(balance::hash_key(&u.to_le_bytes())))
            .collect();
        let mut was: Option<Vec<usize>> = None;
        for canary in [0, 10, 25, 50, 90, 100] {
            let cuts = sticky_cuts(&groups(&[("v1", 100 - canary), ("v2", canary)]), None);
            let now: Vec<usize> = users.iter().map(|&b| owner(&cuts, b)).collect();
            let share = now.iter().filter(|&&g| g == 1).count() as f64 / users.len() as f64;
            assert!(
                (share - f64::from(canary) / 100.0).abs() < 0.02,
                "{canary}%: {share}"
            );
            if let Some(was) = &was {
                assert!(
                    was.iter().zip(&now).all(|(&a, &b)| !(a == 1 && b == 0)),
                    "a user left the canary at {canary}%"
                );
            }
            was = Some(now);
        }
    }

    #[test]
    fn the_stable_version_takes_the_top_buckets_whatever_its_name() {
        let cuts = sticky_cuts(&groups(&[("blue", 90), ("green", 10)]), Some("green"));
        assert_eq!(cuts, vec![(9_000, 0), (BUCKETS, 1)]);
        let cuts = sticky_cuts(&groups(&[("a", 50), ("b", 25), ("c", 25)]), None);
        assert_eq!(cuts, vec![(2_500, 2), (5_000, 1), (BUCKETS, 0)]);
    }
}
