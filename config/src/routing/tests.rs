use super::*;
use crate::file::load;
use crate::state::{Changes, DesiredState};
use http::HeaderValue;

fn table(toml: &str) -> RoutingTable {
    let v = load(toml, "t").unwrap();
    let eps: Vec<String> = v
        .static_config
        .entrypoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    RoutingTable::compile(&v.state, &eps, &|_| "t".into()).unwrap()
}

fn route<'a>(
    t: &'a RoutingTable,
    host: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let host = normalize_host(host);
    let req = RequestView {
        host: &host,
        path,
        method: &method,
        headers: &h,
        query,
    };
    t.lookup(0, &req).map(|r| &*r.name)
}

const SVC: &str = "\n[services.s]\nbackends = [{ url = \"http://127.0.0.1:1\" }]\n";

#[test]
fn exact_host_beats_wildcard_beats_catch_all() {
    let t = table(&format!(
        r#"
[routers.exact]
hosts = ["a.example.com"]
service = "s"
[routers.wild]
hosts = ["*.example.com"]
service = "s"
[routers.deeper]
hosts = ["*.b.example.com"]
service = "s"
[routers.any]
path_prefix = "/"
service = "s"
{SVC}"#
    ));
    assert_eq!(route(&t, "a.example.com", "GET", "/", &[]), Some("exact"));
    assert_eq!(route(&t, "A.Example.COM:8080", "GET", "/", &[]), Some("exact"));
    assert_eq!(route(&t, "x.example.com", "GET", "/", &[]), Some("wild"));
    assert_eq!(route(&t, "x.y.example.com", "GET", "/", &[]), Some("wild"));
    assert_eq!(route(&t, "x.b.example.com", "GET", "/", &[]), Some("deeper"));
    assert_eq!(route(&t, "example.com", "GET", "/", &[]), Some("any"));
    assert_eq!(route(&t, "other.org", "GET", "/", &[]), Some("any"));
}

#[test]
fn falls_through_to_less_specific_routes_when_the_rest_does_not_match() {
    let t = table(&format!(
        r#"
[routers.api_post]
hosts = ["a.example.com"]
path_prefix = "/api"
methods = ["POST"]
service = "s"
[routers.wild_api]
hosts = ["*.example.com"]
path_prefix = "/api"
service = "s"
{SVC}"#
    ));
    assert_eq!(
        route(&t, "a.example.com", "POST", "/api/x", &[]),
        Some("api_post")
    );
    assert_eq!(route(&t, "a.example.com", "GET", "/api/x", &[]), Some("wild_api"));
    assert_eq!(route(&t, "a.example.com", "GET", "/other", &[]), None);
    assert_eq!(route(&t, "nohost.org", "GET", "/api", &[]), None);
}

#[test]
fn path_kinds_and_lengths_order_by_specificity() {
    let t = table(&format!(
        r#"
[routers.root]
path_prefix = "/"
service = "s"
[routers.api]
path_prefix = "/api"
service = "s"
[routers.api_v2]
path_prefix = "/api/v2"
service = "s"
[routers.health]
path = "/api/v2/health"
service = "s"
{SVC}"#
    ));
    assert_eq!(route(&t, "h", "GET", "/api/v2/health", &[]), Some("health"));
    assert_eq!(route(&t, "h", "GET", "/api/v2/healthz", &[]), Some("api_v2"));
    assert_eq!(route(&t, "h", "GET", "/api/v1", &[]), Some("api"));
    assert_eq!(route(&t, "h", "GET", "/apix", &[]), Some("api"));
    assert_eq!(route(&t, "h", "GET", "/", &[]), Some("root"));
}

#[test]
fn explicit_priority_beats_specificity() {
    let t = table(&format!(
        r#"
[routers.specific]
hosts = ["a.example.com"]
path = "/x"
service = "s"
[routers.maintenance]
priority = 100
path_prefix = "/"
service = "s"
{SVC}"#
    ));
    assert_eq!(route(&t, "a.example.com", "GET", "/x", &[]), Some("maintenance"));
}

#[test]
fn header_and_query_conditions() {
    let t = table(&format!(
        r#"
[routers.canary]
headers = {{ "X-Env" = "canary" }}
service = "s"
[routers.debug]
query = {{ debug = "1", "who" = "John Doe" }}
service = "s"
[routers.default]
path_prefix = "/"
service = "s"
{SVC}"#
    ));
    assert_eq!(route(&t, "h", "GET", "/", &[("x-env", "canary")]), Some("canary"));
    assert_eq!(
        route(&t, "h", "GET", "/", &[("x-env", "stable")]),
        Some("default")
    );
    assert_eq!(
        route(&t, "h", "GET", "/?a=b&debug=1&who=John+Doe", &[]),
        Some("debug")
    );
    assert_eq!(
        route(&t, "h", "GET", "/?debug=1&who=John%20Doe", &[]),
        Some("debug")
    );
    assert_eq!(route(&t, "h", "GET", "/?debug=1", &[]), Some("default"));
}

#[test]
fn ties_break_by_name_whatever_the_input_order() {
    let t = table(&format!(
        "[routers.b]\npath_prefix = \"/\"\nservice = \"s\"\n[routers.a]\npath_prefix = \"/\"\nservice = \"s\"\n{SVC}"
    ));
    assert_eq!(route(&t, "h", "GET", "/", &[]), Some("a"));
}

#[test]
fn entrypoints_scope_routers() {
    let v = load(
        &format!(
            r#"
[entrypoints.web]
address = "127.0.0.1:80"
[entrypoints.internal]
address = "127.0.0.1:81"
[routers.public]
path_prefix = "/"
entrypoints = ["web"]
service = "s"
[routers.private]
path_prefix = "/"
entrypoints = ["internal"]
service = "s"
{SVC}"#
        ),
        "t",
    )
    .unwrap();
    let eps: Vec<String> = v
        .static_config
        .entrypoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(eps, ["internal", "web"]);
    let t = RoutingTable::compile(&v.state, &eps, &|_| "t".into()).unwrap();
    let h = HeaderMap::new();
    let req = RequestView {
        host: "h",
        path: "/",
        method: &Method::GET,
        headers: &h,
        query: None,
    };
    assert_eq!(&*t.lookup(0, &req).unwrap().name, "private");
    assert_eq!(&*t.lookup(1, &req).unwrap().name, "public");
}

#[test]
fn dangling_references_are_reported_with_origin() {
    let v = load(
        "[routers.r]\npath = \"/\"\nservice = \"nope\"\nentrypoints = [\"x\"]\n",
        "t",
    )
    .unwrap();
    let err = RoutingTable::compile(&v.state, &["web".into()], &|r| format!("file:{r}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("file:routers.r: routers.r.service: unknown service \"nope\""),
        "{err}"
    );
}

#[test]
fn normalize_host_strips_port_and_case() {
    assert_eq!(normalize_host("Example.COM:443"), "example.com");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
}

/// A random router over a small pool of hosts, wildcards, paths and priorities, so that random
/// changes collide in buckets.
fn random_router(rng: &mut fastrand::Rng, services: &[&str]) -> crate::router::Router {
    let hosts = ["a.example.com", "b.example.com", "x.a.example.com", "other.org"];
    let wild = ["example.com", "a.example.com", "org"];
    let mut m = crate::matcher::Match::default();
    match rng.u8(0..4) {
        0 => {}
        1 => m
            .hosts
            .push(HostPattern::Exact(hosts[rng.usize(0..hosts.len())].into())),
        2 => m
            .hosts
            .push(HostPattern::Wildcard(wild[rng.usize(0..wild.len())].into())),
        _ => {
            m.hosts
                .push(HostPattern::Exact(hosts[rng.usize(0..hosts.len())].into()));
            m.hosts
                .push(HostPattern::Wildcard(wild[rng.usize(0..wild.len())].into()));
        }
    }
    m.path = match rng.u8(0..3) {
        0 => None,
        1 => Some(PathMatch::Prefix(
            ["/", "/api", "/api/v2"][rng.usize(0..3)].into(),
        )),
        _ => Some(PathMatch::Exact(["/", "/api", "/health"][rng.usize(0..3)].into())),
    };
    if rng.bool() {
        m.methods.push("POST".into());
    }
    crate::router::Router {
        entrypoints: if rng.u8(0..4) == 0 {
            vec!["internal".into()]
        } else {
            Vec::new()
        },
        matcher: m,
        priority: rng.i32(0..2),
        strip_prefix: false,
        service: services[rng.usize(0..services.len())].into(),
        max_body_bytes: 1,
        redirect_https: false,
        access_log: true,
        middlewares: Vec::new(),
        tls: None,
    }
}

/// Every request of a fixed set, routed by both tables on both entrypoints.
fn answers(t: &RoutingTable) -> Vec<Option<(String, String)>> {
    let h = HeaderMap::new();
    let mut out = Vec::new();
    for host in [
        "a.example.com",
        "b.example.com",
        "x.a.example.com",
        "y.a.example.com",
        "z.example.com",
        "other.org",
        "w.org",
        "none.net",
    ] {
        for path in ["/", "/api", "/api/v2/x", "/health", "/other"] {
            for method in [Method::GET, Method::POST] {
                for ep in 0..2 {
                    let req = RequestView {
                        host,
                        path,
                        method: &method,
                        headers: &h,
                        query: None,
                    };
                    out.push(
                        t.lookup(ep, &req)
                            .map(|r| (r.name.to_string(), r.service_name.to_string())),
                    );
                }
            }
        }
    }
    out
}

#[test]
fn a_table_changed_step_by_step_routes_like_one_compiled_at_once() {
    let eps = vec!["internal".to_string(), "web".to_string()];
    let svc = load(SVC, "t").unwrap().state.services["s"].clone();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut state = DesiredState::default();
    let mut table = RoutingTable::empty(&eps);
    for step in 0..400 {
        let mut changes = Changes::default();
        for _ in 0..rng.usize(1..4) {
            let name = format!("r{}", rng.usize(0..12));
            if rng.u8(0..4) == 0 {
                changes.routers.insert(name, None);
            } else {
                changes
                    .routers
                    .insert(name, Some(random_router(&mut rng, &["s", "t"])));
            }
        }
        if rng.u8(0..5) == 0 {
            // Services come and go; removing one that is in use must be refused.
            let t = if rng.bool() { Some(svc.clone()) } else { None };
            changes.services.insert("t".into(), t);
        }
        if step == 0 {
            changes.services.insert("s".into(), Some(svc.clone()));
        }
        let applied = table.apply(&changes, &|f| format!("test:{f}"));
        // What was accepted goes into the reference state; a refused item keeps its old value.
        let mut accepted = changes.clone();
        for field in applied.refused.keys() {
            if let Some(name) = field.strip_prefix("routers.") {
                accepted.routers.remove(name);
            } else if let Some(name) = field.strip_prefix("services.") {
                accepted.services.remove(name);
            }
        }
        accepted.apply_to(&mut state);
        table = applied.table;
        let fresh = RoutingTable::compile(&state, &eps, &|_| String::new())
            .unwrap_or_else(|e| panic!("step {step}: the reference state does not compile: {e}"));
        assert_eq!(answers(&table), answers(&fresh), "step {step}: {changes:?}");
        assert_eq!(table.route_count(), state.routers.len());
        assert_eq!(table.service_count(), state.services.len());
        for r in table.routes() {
            assert_eq!(table.service(r.service).map(|s| &*s.name), Some(&*r.service_name));
            assert!(table.routes_of(r.service).any(|id| id == r.id));
        }
    }
}

#[test]
fn a_change_names_what_it_touched_and_refuses_what_would_dangle() {
    let eps = vec!["web".to_string()];
    let v = load(&format!("[routers.a]\nhosts = [\"a.test\"]\nservice = \"s\"\n[routers.b]\nhosts = [\"b.test\"]\nservice = \"s\"\n{SVC}"), "t").unwrap();
    let t0 = RoutingTable::compile(&v.state, &eps, &|_| "t".into()).unwrap();
    let a = t0.routes().find(|r| &*r.name == "a").unwrap().id;
    let mut changes = Changes::default();
    let mut moved = v.state.routers["a"].clone();
    moved.matcher.path = Some(PathMatch::Prefix("/v2".into()));
    moved.service = "u".into();
    changes.routers.insert("a".into(), Some(moved));
    changes.services.insert("s".into(), None);
    changes
        .services
        .insert("u".into(), Some(v.state.services["s"].clone()));
    changes.routers.insert(
        "c".into(),
        Some(crate::router::Router {
            service: "nope".into(),
            ..v.state.routers["b"].clone()
        }),
    );
    let applied = t0.apply(&changes, &|f| format!("src:{f}"));
    assert_eq!(applied.table.parent(), t0.id());
    assert_eq!(applied.table.changed_routes(), [a]);
    let u = applied.table.service_named("u").unwrap().id;
    assert_eq!(applied.table.changed_services(), [u]);
    assert_eq!(applied.table.routes_of(u).collect::<Vec<_>>(), [a]);
    let refused: Vec<String> = applied.refused.values().map(ToString::to_string).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].contains("src:routers.c: routers.c.service: unknown service \"nope\""),
        "{refused:?}"
    );
    assert!(
        refused[1].contains("src:services.s: services.s: cannot be removed: still used by routers.b"),
        "{refused:?}"
    );
    // Route b's bucket was not touched: it is the very same route.
    let b_before = t0.routes().find(|r| &*r.name == "b").unwrap();
    let b_after = applied.table.routes().find(|r| &*r.name == "b").unwrap();
    assert!(Arc::ptr_eq(b_before, b_after));
}
