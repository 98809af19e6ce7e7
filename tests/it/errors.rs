//! Failures map to the right status with a body that says which failure it was.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_refused_backend_silent_backend_and_empty_service() {
    let ok = Backend::start("ok", Behavior::Name).await;
    // A port nobody listens on: bind, note, close.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A backend that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let config = format!(
        r#"
[routers.ok]
hosts = ["ok.test"]
service = "ok"
[routers.refused]
hosts = ["refused.test"]
service = "refused"
[routers.silent]
hosts = ["silent.test"]
service = "silent"
[routers.empty]
hosts = ["empty.test"]
service = "empty"
[services.ok]
backends = [{{ url = "{}" }}]
[services.refused]
backends = [{{ url = "http://{refused}" }}]
[services.silent]
backends = [{{ url = "http://{silent_addr}" }}]
timeouts = {{ response_header = "500ms" }}
[services.empty]
backends = []
"#,
        ok.url()
    );
    let g = Gantry::start(&config).await;
    let c = client();

    let a = get(&c, g.addr(), "ok.test", "/").await;
    assert_eq!((a.status, a.backend()), (200, "ok"));

    let a = get(&c, g.addr(), "unknown.test", "/").await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("no route"), "{}", a.body);

    let a = get(&c, g.addr(), "refused.test", "/").await;
    assert_eq!(a.status, 502);
    assert!(a.body.contains("refused the connection"), "{}", a.body);

    let t = Instant::now();
    let a = get(&c, g.addr(), "silent.test", "/").await;
    let took = t.elapsed();
    assert_eq!(a.status, 504);
    assert!(a.body.contains("did not answer within 500ms"), "{}", a.body);
    assert!(
        took >= Duration::from_millis(500),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the timeout did not fire: {took:?}"
    );

    let a = get(&c, g.addr(), "empty.test", "/").await;
    assert_eq!(a.status, 503);
    assert!(a.body.contains("no backend available"), "{}", a.body);

    // Every answer carries a request id, errors included.
    assert_eq!(a.headers["x-request-id"].len(), 32);

    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gantry_upstream_connect_errors_total{")
                && l.contains(&refused.to_string())
                && !l.ends_with(" 0")),
        "connect error not counted:\n{m}"
    );
    held.abort();
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_request_without_host_is_400() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&ok, 1)], "")).await;
    let mut s = TcpStream::connect(g.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("missing Host"), "{text}");
    assert_eq!(ok.requests(), 0);
    g.running.shutdown().await;
}
