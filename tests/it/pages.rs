//! What a browser sees: CORS (preflights answered by Gantry, allowed origins told so) and error
//! pages (from a file and from another service, over the backend's errors and Gantry's own),
//! declared in the config file.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_only_listed_origins_are_allowed() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&crate::middleware::config(
        &b,
        r#"
[middlewares.api-cors.headers.cors]
allow_origins = ["https://app.test"]
allow_methods = ["GET", "PUT"]
allow_headers = ["X-Token"]
expose_headers = ["X-Total"]
allow_credentials = true
max_age = 600
"#,
        &["api-cors"],
    ))
    .await;
    let c = client();
    let preflight = |origin: &'static str| {
        let c = c.clone();
        let addr = g.addr();
        async move {
            send(
                &c,
                addr,
                "OPTIONS",
                "api.test",
                "/items/1",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-token"),
                ],
            )
            .await
            .unwrap()
        }
    };
    let ok = preflight("https://app.test").await;
    assert_eq!(ok.status, 204);
    assert_eq!(ok.headers["access-control-allow-origin"], "https://app.test");
    assert_eq!(ok.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(ok.headers["access-control-allow-headers"], "X-Token");
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    assert_eq!(ok.headers["access-control-max-age"], "600");
    let other = preflight("https://evil.test").await;
    assert_eq!(other.status, 204);
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    assert_eq!(b.requests(), 0, "preflights are Gantry's to answer");

    let get_from = |origin: &'static str| {
        let c = c.clone();
        let addr = g.addr();
        async move {
            send(&c, addr, "GET", "api.test", "/items/1", &[("origin", origin)])
                .await
                .unwrap()
        }
    };
    let allowed = get_from("https://app.test").await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.headers["access-control-allow-origin"], "https://app.test");
    assert_eq!(allowed.headers["access-control-expose-headers"], "X-Total");
    assert_eq!(allowed.headers["vary"], "Origin");
    let refused = get_from("https://evil.test").await;
    assert_eq!(refused.status, 200, "CORS binds browsers: the request is served");
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_come_from_a_file_or_a_service_and_keep_the_status() {
    let failing = Backend::start("failing", Behavior::Status(503)).await;
    let fine = Backend::start("fine", Behavior::Name).await;
    let pages = Backend::start("pages", Behavior::Name).await;
    // A port nobody listens on: Gantry's own 502.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
[routers.shop]
hosts = ["shop.test"]
service = "failing"
middlewares = ["oops-file"]
[routers.gone]
hosts = ["gone.test"]
service = "nowhere"
middlewares = ["oops-service"]
[routers.fine]
hosts = ["fine.test"]
service = "fine"
middlewares = ["oops-service"]
[services.failing]
backends = [{{ url = "{}" }}]
[services.fine]
backends = [{{ url = "{}" }}]
[services.nowhere]
backends = [{{ url = "http://{refused}" }}]
[services.error-pages]
backends = [{{ url = "{}" }}]
[middlewares.oops-file.errors]
status = ["500-599"]
file = "oops.html"
[middlewares.oops-service.errors]
status = ["502", "504"]
service = "error-pages"
path = "/errors/{{status}}.html"
"#,
        failing.url(),
        fine.url(),
        pages.url()
    );
    let g = Gantry::start_with_files(&config, &[("oops.html", "<h1>We are on it</h1>\n")]).await;
    let c = client();

    let a = get(&c, g.addr(), "shop.test", "/cart").await;
    assert_eq!(a.status, 503, "the backend's status is kept");
    assert_eq!(a.body, "<h1>We are on it</h1>\n");
    assert_eq!(a.headers["content-type"], "text/html; charset=utf-8");

    let a = get(&c, g.addr(), "gone.test", "/").await;
    assert_eq!(a.status, 502, "Gantry's own status is kept");
    assert_eq!(a.body, "pages", "{:?}", a.headers);
    assert_eq!(pages.last().uri, "/errors/502.html");
    assert_eq!(pages.last().headers["host"], "gone.test");

    // Statuses the middleware does not cover pass as they are.
    let a = get(&c, g.addr(), "fine.test", "/").await;
    assert_eq!((a.status, a.body.as_str()), (200, "fine"));
    assert_eq!(pages.requests(), 1);

    // A page service that is down leaves Gantry's own answer.
    pages.stop();
    let a = get(&c, g.addr(), "gone.test", "/").await;
    assert_eq!(a.status, 502);
    assert!(a.body.starts_with("502 bad gateway"), "{}", a.body);
    g.running.shutdown().await;
}
