use super::*;
use crate::file::load;
use http::HeaderValue;

fn table(toml: &str) -> RoutingTable {
    let v = load(toml, "t").unwrap();
    let eps: Vec<String> = v
        .static_config
        .entrypoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    RoutingTable::compile(Arc::new(v.state), &eps, &|_| "t".into()).unwrap()
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
    t.lookup(0, &req).map(|(_, r)| &*r.name)
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
    let t = RoutingTable::compile(Arc::new(v.state), &eps, &|_| "t".into()).unwrap();
    let h = HeaderMap::new();
    let req = RequestView {
        host: "h",
        path: "/",
        method: &Method::GET,
        headers: &h,
        query: None,
    };
    assert_eq!(&*t.lookup(0, &req).unwrap().1.name, "private");
    assert_eq!(&*t.lookup(1, &req).unwrap().1.name, "public");
}

#[test]
fn dangling_references_are_reported_with_origin() {
    let v = load(
        "[routers.r]\npath = \"/\"\nservice = \"nope\"\nentrypoints = [\"x\"]\n",
        "t",
    )
    .unwrap();
    let err = RoutingTable::compile(Arc::new(v.state), &["web".into()], &|r| format!("file:{r}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("file:r: routers.r.service: unknown service \"nope\""),
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
