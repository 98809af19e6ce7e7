//! Routing by host (exact and wildcard), path, method, header and query, with priority.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_wildcard_path_method_and_header_with_priority() {
    let names = [
        "exact", "wild", "api", "post", "canary", "fallback", "health", "maint",
    ];
    let mut bs = Vec::new();
    for n in names {
        bs.push(Backend::start(n, Behavior::Name).await);
    }
    let services: String = bs
        .iter()
        .map(|b| {
            format!(
                "[services.{}]\nbackends = [{{ url = \"{}\" }}]\n",
                b.name,
                b.url()
            )
        })
        .collect();
    let config = format!(
        r#"
[routers.exact]
hosts = ["shop.example.com"]
service = "exact"
[routers.wild]
hosts = ["*.example.com"]
service = "wild"
[routers.api]
rule = "Host(`shop.example.com`) && PathPrefix(`/api/`)"
service = "api"
[routers.post]
rule = "Host(`shop.example.com`) && PathPrefix(`/api/`) && Method(`POST`)"
service = "post"
[routers.canary]
hosts = ["shop.example.com"]
headers = {{ "X-Canary" = "always" }}
service = "canary"
[routers.fallback]
service = "fallback"
[routers.health]
path = "/healthz"
service = "health"
[routers.maint]
hosts = ["shop.example.com"]
path_prefix = "/admin"
priority = 100
service = "maint"
[routers.maint_wins_over_everything]
path_prefix = "/admin/maintenance"
priority = 200
service = "maint"
{services}"#
    );
    let g = Gantry::start(&config).await;
    let c = client();
    let cases = [
        ("GET", "shop.example.com", "/", vec![], "exact"),
        ("GET", "SHOP.example.com:8080", "/", vec![], "exact"),
        ("GET", "a.example.com", "/", vec![], "wild"),
        ("GET", "a.b.example.com", "/api/x", vec![], "wild"),
        ("GET", "shop.example.com", "/api/items", vec![], "api"),
        ("POST", "shop.example.com", "/api/items", vec![], "post"),
        (
            "GET",
            "shop.example.com",
            "/",
            vec![("x-canary", "always")],
            "canary",
        ),
        (
            "GET",
            "shop.example.com",
            "/api/items",
            vec![("x-canary", "always")],
            "api",
        ),
        ("GET", "other.org", "/", vec![], "fallback"),
        ("GET", "other.org", "/healthz", vec![], "health"),
        ("GET", "shop.example.com", "/admin/users", vec![], "maint"),
        ("GET", "anything.org", "/admin/maintenance", vec![], "maint"),
    ];
    for (method, host, path, headers, want) in cases {
        let a = send(&c, g.addr(), method, host, path, &headers).await.unwrap();
        assert_eq!(a.status, 200, "{method} {host}{path}: {}", a.body);
        assert_eq!(a.backend(), want, "{method} {host}{path} {headers:?}");
    }
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_query_conditions() {
    let b = Backend::start("b", Behavior::Name).await;
    let d = Backend::start("debug", Behavior::Name).await;
    let config = format!(
        r#"
[routers.api]
path_prefix = "/api"
strip_prefix = true
service = "b"
[routers.debug]
path_prefix = "/api"
query = {{ debug = "1" }}
service = "d"
[services.b]
backends = [{{ url = "{}" }}]
[services.d]
backends = [{{ url = "{}" }}]
"#,
        b.url(),
        d.url()
    );
    let g = Gantry::start(&config).await;
    let c = client();
    let a = get(&c, g.addr(), "h", "/api/users/7?x=1").await;
    assert_eq!(a.backend(), "b");
    assert_eq!(b.last().uri, "/users/7?x=1");
    assert_eq!(b.last().headers["x-forwarded-prefix"], "/api");
    let a = get(&c, g.addr(), "h", "/api?debug=1").await;
    assert_eq!(a.backend(), "debug");
    assert_eq!(d.last().uri, "/api?debug=1");
    g.running.shutdown().await;
}
