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
    // Gantry's own answers carry a current Date (RFC 9110 section 6.6.1), and it moves on with
    // the clock (it is cached per second).
    // The answer's Date, checked to be within 5 s of the test's clock.
    let current_date = |a: &Answer| {
        let d = httpdate::parse_http_date(a.headers["date"].to_str().unwrap()).expect("an HTTP date");
        let now = std::time::SystemTime::now();
        let skew = now.duration_since(d).or_else(|_| d.duration_since(now)).unwrap();
        assert!(
            skew < Duration::from_secs(5),
            "stale Date: {:?}",
            a.headers["date"]
        );
        d
    };
    let first = current_date(&a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get(&c, g.addr(), "unknown.test", "/").await;
        if current_date(&a) > first {
            break;
        }
        assert!(Instant::now() < deadline, "Date stuck at {:?}", a.headers["date"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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

/// A backend on raw TCP that answers the requests of each connection in turn with `answers`
/// (`None`: never answer that one), and counts the connections it accepted.
async fn scripted_backend(
    answers: Vec<(Duration, Option<&'static str>)>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let answers = std::sync::Arc::new(answers);
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for (delay, answer) in answers.iter() {
                    // One request head (the proxy sends these GETs without a body).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    tokio::time::sleep(*delay).await;
                    let Some(answer) = answer else {
                        // Hold the connection, never answer.
                        let _ = s.read(&mut chunk).await;
                        return;
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

/// A config that sends every request to the one backend at `addr`, with `service` (lines of the
/// service's table) added.
fn everything_to(addr: std::net::SocketAddr, service: &str) -> String {
    format!(
        "[routers.r]\nservice = \"s\"\npath_prefix = \"/\"\n[services.s]\nbackends = [{{ url = \"http://{addr}\" }}]\n{service}\n"
    )
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The response-header timeout runs per request on a kept (pooled) backend connection: three
/// answers that each take 300 ms of a 500 ms allowance all arrive (900 ms in all on one
/// connection), and a fourth that never comes is a 504 after 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_runs_per_request_on_a_kept_connection() {
    let slow = Duration::from_millis(300);
    let (addr, accepted, task) = scripted_backend(vec![
        (Duration::ZERO, Some(OK)),
        (slow, Some(OK)),
        (slow, Some(OK)),
        (slow, Some(OK)),
        (Duration::ZERO, None),
    ])
    .await;
    let g = Gantry::start(&everything_to(addr, "timeouts = { response_header = \"500ms\" }")).await;
    let c = client();
    for i in 0..4 {
        let a = get(&c, g.addr(), "h", "/").await;
        assert_eq!((i, a.status, a.body.as_str()), (i, 200, "ok"));
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the backend connection was not kept"
    );
    let t = Instant::now();
    let a = get(&c, g.addr(), "h", "/").await;
    let took = t.elapsed();
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "the timeout fired after {took:?}"
    );
    task.abort();
    g.running.shutdown().await;
}

/// A backend that closes a kept-alive connection while it sits in Gantry's pool: Gantry lets it
/// go without a request having to try it first (the backend's open and idle connection counts
/// fall to 0), and the next request is answered on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closes_is_let_go() {
    // One answer per connection, then the backend closes it.
    let (addr, accepted, task) = scripted_backend(vec![(Duration::ZERO, Some(OK))]).await;
    let g = Gantry::start(&everything_to(addr, "")).await;
    let c = client();
    let a = get(&c, g.addr(), "h", "/").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    let counts = || async {
        let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
        let b = &routes["services"]["s"]["backends"][0];
        (b["open_connections"].clone(), b["idle_connections"].clone())
    };
    eventually(
        Duration::from_secs(10),
        "the closed connection to leave the pool",
        || async { (counts().await == (0.into(), 0.into())).then_some(()) },
    )
    .await;
    let a = get(&c, g.addr(), "h", "/").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    task.abort();
    g.running.shutdown().await;
}

/// The response-header timeout runs from when the request goes to the backend, not from when
/// its head arrived: a client that sends its chunked body's first chunk 400 ms after the head
/// gets the answer a backend gives 300 ms later, under a 500 ms allowance (700 ms after the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_starts_when_the_request_is_sent() {
    let (addr, _, task) = scripted_backend(vec![(Duration::from_millis(300), Some(OK))]).await;
    let g = Gantry::start(&everything_to(addr, "timeouts = { response_header = \"500ms\" }")).await;
    let mut s = TcpStream::connect(g.addr()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The client's own pause before its body, the case under test (not a wait for Gantry).
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"2\r\nok\r\n0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    task.abort();
    g.running.shutdown().await;
}

/// A backend's response whose length could be read two ways is refused with 502, never passed
/// on; agreeing repeats of one length and a chunked body are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_framing_is_checked() {
    let cases: [(&'static str, u16, &str); 6] = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", 200, "ok"),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            200,
            "ok",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            200,
            "ok",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            502,
            "",
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!", 502, ""),
        ("HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", 502, ""),
    ];
    for (answer, status, body) in cases {
        let (addr, _, task) = scripted_backend(vec![(Duration::ZERO, Some(answer))]).await;
        let g = Gantry::start(&everything_to(addr, "")).await;
        let a = get(&client(), g.addr(), "h", "/").await;
        assert_eq!(a.status, status, "{answer:?}: {}", a.body);
        if status == 200 {
            assert_eq!(a.body, body, "{answer:?}");
        }
        task.abort();
        g.running.shutdown().await;
    }
}
