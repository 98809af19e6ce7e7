//! The admin listener: health, readiness, metrics and the live routing table.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_the_live_table() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Status(503)).await;
    let g = Gantry::start(&format!(
        r#"
[routers.ok]
hosts = ["ok.test"]
service = "ok"
[routers.bad]
hosts = ["bad.test"]
service = "bad"
[services.ok]
backends = [{{ url = "{}", weight = 2, version = "v1" }}]
[services.bad]
backends = [{{ url = "{}" }}]
"#,
        a.url(),
        b.url()
    ))
    .await;
    let admin = g.running.admin_addr;
    assert!(admin.ip().is_loopback());
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, g.addr(), "ok.test", "/").await.status, 200);
    }
    assert_eq!(get(&c, g.addr(), "bad.test", "/").await.status, 503);
    assert_eq!(get(&c, g.addr(), "nope.test", "/").await.status, 404);

    assert_eq!(admin_get(admin, "/healthz").await.status, 200);
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);
    let m = admin_get(admin, "/metrics").await.body;
    let ok = format!(
        "gantry_requests_total{{backend=\"{}\",code=\"2xx\",router=\"ok\",service=\"ok\"}} 3",
        a.url()
    );
    let bad = format!(
        "gantry_requests_total{{backend=\"{}\",code=\"5xx\",router=\"bad\",service=\"bad\"}} 1",
        b.url()
    );
    let none = "gantry_requests_total{backend=\"\",code=\"4xx\",router=\"\",service=\"\"} 1";
    for line in [ok.as_str(), bad.as_str(), none] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    assert!(
        m.contains("gantry_request_duration_seconds_bucket{router=\"ok\",service=\"ok\",le="),
        "{m}"
    );
    assert!(m.contains("gantry_backend_requests_in_flight{"), "{m}");

    let routes = admin_json(admin, "/api/v1/routes").await;
    assert_eq!(routes["generation"], g.running.generation());
    assert_eq!(routes["routers"]["ok"]["match"]["hosts"][0], "ok.test");
    assert_eq!(routes["services"]["ok"]["backends"][0]["url"], a.url());
    assert_eq!(routes["services"]["ok"]["backends"][0]["weight"], 2);
    assert_eq!(routes["services"]["ok"]["backends"][0]["version"], "v1");
    assert_eq!(admin_get(admin, "/api/v1/nothing").await.status, 404);
    g.running.shutdown().await;
}

#[tokio::test]
async fn the_admin_root_lists_the_endpoints() {
    let a = Backend::start("a", Behavior::Name).await;
    let g = Gantry::start(&format!(
        "[routers.a]\nhosts = [\"a.test\"]\nservice = \"a\"\n[services.a]\nbackends = [{{ url = \"{}\" }}]\n",
        a.url()
    ))
    .await;
    let index = admin_get(g.running.admin_addr, "/").await;
    assert_eq!(index.status, 200);
    for endpoint in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/routes",
        "/api/v1/status",
        "/api/v1/versions",
        "/api/v1/rollouts",
        "/api/v1/scaling",
    ] {
        assert!(
            index.body.contains(endpoint),
            "{endpoint} missing from\n{}",
            index.body
        );
        // Every read it names answers.
        assert_eq!(
            admin_get(g.running.admin_addr, endpoint).await.status,
            200,
            "{endpoint}"
        );
    }
    g.running.shutdown().await;
}
