//! A snapshot: one compiled routing table plus everything the request path needs to serve it
//! (balancers, backend state, metric handles), built off the request path and published with one
//! store. A request loads one snapshot and uses it from start to finish.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gantry_config::{HashOn, Policy, RoutingTable, Service};
use http::{HeaderMap, header};
use prometheus::Histogram;

use crate::backend::{BackendKey, BackendRegistry, BackendState};
use crate::balance::{self, Ring, SmoothWrr};
use crate::metrics::{ClassCounters, Metrics};

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub table: Arc<RoutingTable>,
    pub services: Vec<ServiceRuntime>,
    pub routes: Vec<RouteRuntime>,
}

#[derive(Debug)]
pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub spec: Arc<Service>,
    /// Same order as `spec.backends`.
    pub backends: Vec<Arc<BackendState>>,
    lb: Lb,
}

#[derive(Debug)]
enum Lb {
    RoundRobin(SmoothWrr),
    LeastRequest,
    Hash(HashOn, Ring),
}

/// What a balancer may look at besides backend state.
#[derive(Debug)]
pub struct PickContext<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub now: Instant,
}

impl ServiceRuntime {
    fn build(name: Arc<str>, spec: Arc<Service>, registry: &BackendRegistry, metrics: &Metrics) -> Self {
        let backends: Vec<Arc<BackendState>> = spec
            .backends
            .iter()
            .map(|b| {
                registry.resolve(
                    &BackendKey {
                        service: name.clone(),
                        url: b.url.clone(),
                    },
                    metrics,
                )
            })
            .collect();
        let lb = match &spec.policy {
            Policy::RoundRobin => Lb::RoundRobin(SmoothWrr::new(backends.len())),
            Policy::LeastRequest => Lb::LeastRequest,
            Policy::Hash(on) => Lb::Hash(
                on.clone(),
                Ring::build(
                    &backends
                        .iter()
                        .zip(&spec.backends)
                        .map(|(s, b)| (&*s.label, b.weight))
                        .collect::<Vec<_>>(),
                ),
            ),
        };
        Self {
            name,
            spec,
            backends,
            lb,
        }
    }

    /// The weight a backend gets now; 0 means "do not send it anything".
    #[inline]
    fn weight(&self, i: usize) -> u32 {
        self.spec.backends[i].weight
    }

    /// Chooses a backend for a request, or `None` when no backend can take it.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        match &self.lb {
            Lb::RoundRobin(rr) => rr.pick(|i| self.weight(i)),
            Lb::LeastRequest => {
                let mut rng = fastrand::Rng::new();
                balance::p2c(
                    self.backends.len(),
                    |i| {
                        let w = self.weight(i);
                        (w > 0).then(|| {
                            let b = &self.backends[i];
                            // Latency floor of 1 us so that in-flight counts matter before the
                            // first samples arrive.
                            let latency = b.latency_ewma(ctx.now).max(1_000.0);
                            f64::from(b.in_flight() + 1) * latency / f64::from(w)
                        })
                    },
                    &mut rng,
                )
            }
            Lb::Hash(on, ring) => match hash_input(on, ctx) {
                Some(h) => ring.pick(h, |i| self.weight(i) > 0),
                None => balance::weighted_random(
                    self.backends.len(),
                    |i| self.weight(i),
                    &mut fastrand::Rng::new(),
                ),
            },
        }
    }
}

fn hash_input(on: &HashOn, ctx: &PickContext<'_>) -> Option<u64> {
    match on {
        HashOn::Header(name) => ctx.headers.get(name).map(|v| balance::hash_key(v.as_bytes())),
        HashOn::Cookie(name) => cookie(ctx.headers, name).map(balance::hash_key),
        HashOn::ClientIp => Some(match ctx.client_ip {
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
    pub histogram: Histogram,
    /// One set per backend of the route's service, resolved on first use: a table of 10,000
    /// routes does not create 50,000 series up front.
    per_backend: Box<[OnceLock<ClassCounters>]>,
    pub no_backend: ClassCounters,
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
            services: Vec::new(),
            routes: Vec::new(),
        }
    }

    pub fn build(
        generation: u64,
        table: Arc<RoutingTable>,
        registry: &BackendRegistry,
        metrics: &Metrics,
    ) -> Self {
        let services: Vec<ServiceRuntime> = table
            .services()
            .iter()
            .map(|(name, spec)| ServiceRuntime::build(name.clone(), spec.clone(), registry, metrics))
            .collect();
        let routes = table
            .routes()
            .iter()
            .map(|r| {
                let svc = &services[r.service];
                RouteRuntime {
                    histogram: metrics.route_histogram(&r.name, &svc.name),
                    per_backend: (0..svc.backends.len()).map(|_| OnceLock::new()).collect(),
                    no_backend: metrics.class_counters(&r.name, &svc.name, ""),
                }
            })
            .collect();
        Self {
            generation,
            table,
            services,
            routes,
        }
    }
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
}
