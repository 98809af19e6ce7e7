//! The compiled routing table: built once per change, off the request path, then only read.
//!
//! For each entrypoint there is a host index: exact hosts in one hash map, wildcard suffixes in
//! another, and the routes without a host. Each bucket holds the indexes of every route that can
//! match a request for that host, already sorted in evaluation order, so a lookup is one or a few
//! hash probes plus a scan of the (short) bucket.
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
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::error::Errors;
use crate::model::{DesiredState, HostPattern, Match, PathMatch, Service};
use crate::tls::CertStore;

/// One router as the request path sees it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: Match,
    pub priority: i32,
    pub strip_prefix: bool,
    /// Index into [`RoutingTable::services`].
    pub service: usize,
    pub max_body_bytes: u64,
    pub redirect_https: bool,
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

#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<Box<str>, Box<[u32]>>,
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    any: Box<[u32]>,
}

/// An immutable, compiled view of a [`DesiredState`].
#[derive(Debug)]
pub struct RoutingTable {
    desired: Arc<DesiredState>,
    entrypoints: Vec<String>,
    routes: Vec<Route>,
    services: Vec<(Arc<str>, Arc<Service>)>,
    indexes: Vec<HostIndex>,
    certs: CertStore,
}

impl RoutingTable {
    /// The table that routes nothing: every request gets 404 until the first config lands.
    pub fn empty(entrypoints: &[String]) -> Self {
        Self {
            desired: Arc::new(DesiredState::default()),
            entrypoints: entrypoints.to_vec(),
            routes: Vec::new(),
            services: Vec::new(),
            indexes: entrypoints.iter().map(|_| HostIndex::default()).collect(),
            certs: CertStore::default(),
        }
    }

    /// Checks cross-references (router -> service, router -> entrypoint) and builds the indexes.
    /// `origin_of(router_name)` says where a router was declared, for error messages.
    pub fn compile(
        desired: Arc<DesiredState>,
        entrypoints: &[String],
        origin_of: &dyn Fn(&str) -> String,
    ) -> Result<Self, Errors> {
        let mut errs = Errors::new();
        let services: Vec<(Arc<str>, Arc<Service>)> = desired
            .services
            .iter()
            .map(|(n, s)| (Arc::from(n.as_str()), Arc::new(s.clone())))
            .collect();
        let service_idx: HashMap<&str, usize> = desired
            .services
            .keys()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();

        let mut routes = Vec::with_capacity(desired.routers.len());
        let mut route_eps: Vec<Vec<usize>> = Vec::with_capacity(desired.routers.len());
        for (name, r) in &desired.routers {
            let field = format!("routers.{name}");
            let Some(&service) = service_idx.get(r.service.as_str()) else {
                errs.push(
                    &origin_of(name),
                    format!("{field}.service"),
                    format!("unknown service {:?}", r.service),
                );
                continue;
            };
            let mut eps = Vec::new();
            if r.entrypoints.is_empty() {
                eps.extend(0..entrypoints.len());
            }
            for ep in &r.entrypoints {
                match entrypoints.iter().position(|e| e == ep) {
                    Some(i) => eps.push(i),
                    None => errs.push(
                        &origin_of(name),
                        format!("{field}.entrypoints"),
                        format!("unknown entrypoint {ep:?} (known: {})", entrypoints.join(", ")),
                    ),
                }
            }
            routes.push(Route {
                name: Arc::from(name.as_str()),
                matcher: r.matcher.clone(),
                priority: r.priority,
                strip_prefix: r.strip_prefix,
                service,
                max_body_bytes: r.max_body_bytes,
                redirect_https: r.redirect_https,
            });
            route_eps.push(eps);
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let indexes = (0..entrypoints.len())
            .map(|ep| {
                let members: Vec<u32> = (0..routes.len())
                    .filter(|&i| route_eps[i].contains(&ep))
                    .map(|i| i as u32)
                    .collect();
                build_index(&routes, &members)
            })
            .collect();
        let certs = CertStore::build(&desired.tls);
        Ok(Self {
            desired,
            entrypoints: entrypoints.to_vec(),
            routes,
            services,
            indexes,
            certs,
        })
    }

    pub fn desired(&self) -> &Arc<DesiredState> {
        &self.desired
    }

    pub fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn services(&self) -> &[(Arc<str>, Arc<Service>)] {
        &self.services
    }

    /// Certificates by server name, for TLS handshakes.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// The first route, in evaluation order, that matches the request on this entrypoint.
    pub fn lookup(&self, entrypoint: usize, req: &RequestView<'_>) -> Option<(usize, &Route)> {
        let index = self.indexes.get(entrypoint)?;
        let bucket = index.bucket(req.host);
        bucket
            .iter()
            .map(|&i| i as usize)
            .find(|&i| matches_rest(&self.routes[i].matcher, req))
            .map(|i| (i, &self.routes[i]))
    }
}

impl HostIndex {
    fn bucket(&self, host: &str) -> &[u32] {
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

fn sort_bucket(routes: &[Route], mut entries: Vec<(u32, OrderKey)>) -> Box<[u32]> {
    entries.sort_by(|(a, ka), (b, kb)| {
        kb.cmp(ka)
            .then_with(|| routes[*a as usize].name.cmp(&routes[*b as usize].name))
    });
    entries.dedup_by_key(|(i, _)| *i);
    entries.into_iter().map(|(i, _)| i).collect()
}

fn build_index(routes: &[Route], members: &[u32]) -> HostIndex {
    let mut exact_routes: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut wild_routes: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut any: Vec<u32> = Vec::new();
    for &i in members {
        let m = &routes[i as usize].matcher;
        if m.hosts.is_empty() {
            any.push(i);
        }
        for h in &m.hosts {
            match h {
                HostPattern::Exact(h) => exact_routes.entry(h.as_str()).or_default().push(i),
                HostPattern::Wildcard(s) => wild_routes.entry(s.as_str()).or_default().push(i),
            }
        }
    }
    let any_keyed: Vec<(u32, OrderKey)> = any
        .iter()
        .map(|&i| (i, order_key(&routes[i as usize], 0, 0)))
        .collect();
    // Wildcard routes that match `name.<suffix>` for every suffix of `host` (not `host` itself).
    let wildcards_covering = |host: &str, include_self: bool| -> Vec<(u32, OrderKey)> {
        let mut out = Vec::new();
        let mut rest = host;
        let mut first = true;
        loop {
            if (include_self || !first)
                && let Some(ids) = wild_routes.get(rest)
            {
                out.extend(
                    ids.iter()
                        .map(|&i| (i, order_key(&routes[i as usize], 1, rest.len()))),
                );
            }
            first = false;
            match rest.find('.') {
                Some(dot) => rest = &rest[dot + 1..],
                None => break,
            }
        }
        out
    };

    let mut index = HostIndex::default();
    for (host, ids) in &exact_routes {
        let mut entries: Vec<(u32, OrderKey)> = ids
            .iter()
            .map(|&i| (i, order_key(&routes[i as usize], 2, host.len())))
            .collect();
        entries.extend(wildcards_covering(host, false));
        entries.extend(any_keyed.iter().copied());
        index.exact.insert(Box::from(*host), sort_bucket(routes, entries));
    }
    for suffix in wild_routes.keys() {
        let mut entries = wildcards_covering(suffix, true);
        entries.extend(any_keyed.iter().copied());
        index
            .wildcard
            .insert(Box::from(*suffix), sort_bucket(routes, entries));
    }
    index.any = sort_bucket(routes, any_keyed);
    index
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
