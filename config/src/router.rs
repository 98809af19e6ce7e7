//! Routers: which requests go to which service (matchers, priority, entrypoints, prefix
//! stripping, body limit, HTTPS redirect), validated from their raw shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::check_name;
use crate::error::Errors;
use crate::matcher::{
    Match, PathMatch, check_path, normalize_match, parse_header_match, parse_host_pattern, parse_method,
};
use crate::rule;
use crate::size::FileSize;

/// A rule that matches requests and names the service that handles them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Router {
    /// Entrypoints this router is attached to; empty means all of them.
    pub entrypoints: Vec<String>,
    #[serde(rename = "match")]
    pub matcher: Match,
    /// Higher wins. Routers of equal priority are ordered by specificity (see `routing`).
    pub priority: i32,
    /// Remove the matched `PathPrefix` before forwarding (`/api/users` -> `/users`).
    pub strip_prefix: bool,
    pub service: String,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: u64,
    /// On a plain-HTTP entrypoint, answer 308 with the https:// URL instead of proxying.
    pub redirect_https: bool,
    /// Requests of this router get access log lines (default true).
    pub access_log: bool,
    /// Middlewares run in this order (names; declared by any source).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<String>,
    /// Certificates for the router's hosts come from an ACME resolver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
}

/// `tls = { resolver = "le" }`: the router's hosts get certificates from that ACME resolver
/// (`None`: the default resolver, when one is configured).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
}

/// The default request-body limit of a router. Bodies are streamed, never held in memory, so the
/// limit protects backends rather than Gantry; it is on by default like every other limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 << 20;
/// A router as written. Either `rule` (Traefik-style expression) or the structured fields.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouter {
    pub entrypoints: Option<Vec<String>>,
    pub rule: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub query: Option<BTreeMap<String, String>>,
    pub priority: Option<i64>,
    pub strip_prefix: Option<bool>,
    pub service: Option<String>,
    pub max_body_bytes: Option<FileSize>,
    pub redirect_https: Option<bool>,
    pub access_log: Option<bool>,
    pub middlewares: Option<Vec<String>>,
    pub tls: Option<RouterTls>,
}

pub fn validate_router(
    r: FileRouter,
    origin: &str,
    field: &str,
    name: &str,
    errs: &mut Errors,
) -> Option<Router> {
    let before = errs.0.len();
    check_name(errs, origin, field, name);
    let structured = r.hosts.is_some()
        || r.path.is_some()
        || r.path_prefix.is_some()
        || r.methods.is_some()
        || r.headers.is_some()
        || r.query.is_some();
    let mut matcher = Match::default();
    if let Some(text) = &r.rule {
        if structured {
            errs.push(
                origin,
                format!("{field}.rule"),
                "use either `rule` or the fields hosts/path/path_prefix/methods/headers/query, not both",
            );
        }
        match rule::parse(text) {
            Ok(m) => matcher = m,
            Err(e) => errs.push(origin, format!("{field}.rule"), e),
        }
    } else {
        for (i, h) in r.hosts.iter().flatten().enumerate() {
            match parse_host_pattern(h) {
                Ok(p) => matcher.hosts.push(p),
                Err(e) => errs.push(origin, format!("{field}.hosts[{i}]"), e),
            }
        }
        match (&r.path, &r.path_prefix) {
            (Some(_), Some(_)) => errs.push(
                origin,
                format!("{field}.path"),
                "set either `path` or `path_prefix`, not both",
            ),
            (Some(p), None) => match check_path(p) {
                Ok(()) => matcher.path = Some(PathMatch::Exact(p.clone())),
                Err(e) => errs.push(origin, format!("{field}.path"), e),
            },
            (None, Some(p)) => match check_path(p) {
                Ok(()) => matcher.path = Some(PathMatch::Prefix(p.clone())),
                Err(e) => errs.push(origin, format!("{field}.path_prefix"), e),
            },
            (None, None) => {}
        }
        for (i, m) in r.methods.iter().flatten().enumerate() {
            match parse_method(m) {
                Ok(m) => matcher.methods.push(m),
                Err(e) => errs.push(origin, format!("{field}.methods[{i}]"), e),
            }
        }
        for (k, v) in r.headers.iter().flatten() {
            match parse_header_match(k, v) {
                Ok(h) => matcher.headers.push(h),
                Err(e) => errs.push(origin, format!("{field}.headers.{k}"), e),
            }
        }
        for (k, v) in r.query.iter().flatten() {
            if k.is_empty() {
                errs.push(origin, format!("{field}.query"), "empty query parameter name");
            } else {
                matcher.query.push((k.clone(), v.clone()));
            }
        }
    }
    normalize_match(&mut matcher);

    let priority = match r.priority {
        None => 0,
        Some(p) => match i32::try_from(p) {
            Ok(p) => p,
            Err(_) => {
                errs.push(
                    origin,
                    format!("{field}.priority"),
                    format!("{p} is out of range"),
                );
                0
            }
        },
    };
    let max_body_bytes = match &r.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(size) => match size.bytes() {
            Ok(n) => n,
            Err(e) => {
                errs.push(origin, format!("{field}.max_body_bytes"), e);
                0
            }
        },
    };
    let redirect_https = r.redirect_https.unwrap_or(false);
    let strip_prefix = r.strip_prefix.unwrap_or(false);
    if strip_prefix && !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
        errs.push(
            origin,
            format!("{field}.strip_prefix"),
            "strip_prefix needs a path prefix to strip",
        );
    }
    let mut entrypoints = Vec::new();
    for (i, ep) in r.entrypoints.iter().flatten().enumerate() {
        if check_name(errs, origin, &format!("{field}.entrypoints[{i}]"), ep) {
            entrypoints.push(ep.clone());
        }
    }
    entrypoints.sort();
    entrypoints.dedup();
    let service = match r.service {
        Some(s) => {
            check_name(errs, origin, &format!("{field}.service"), &s);
            s
        }
        None => {
            errs.push(
                origin,
                format!("{field}.service"),
                "missing: a router must name its service",
            );
            String::new()
        }
    };
    let mut middlewares = Vec::new();
    for (i, m) in r.middlewares.iter().flatten().enumerate() {
        let m = m.trim();
        if !check_name(errs, origin, &format!("{field}.middlewares[{i}]"), m) {
            continue;
        }
        if middlewares.iter().any(|x| x == m) {
            errs.push(
                origin,
                format!("{field}.middlewares[{i}]"),
                format!("{m:?} is listed twice"),
            );
        } else {
            middlewares.push(m.to_string());
        }
    }
    if let Some(resolver) = r.tls.as_ref().and_then(|t| t.resolver.as_deref()) {
        check_name(errs, origin, &format!("{field}.tls.resolver"), resolver);
    }
    (errs.0.len() == before).then_some(Router {
        tls: r.tls,
        middlewares,
        max_body_bytes,
        redirect_https,
        access_log: r.access_log.unwrap_or(true),
        entrypoints,
        matcher,
        priority,
        strip_prefix,
        service,
    })
}
