//! Malformed and smuggling requests, slowloris, and the listener limits that are on by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_are_refused_and_never_reach_the_backend() {
    let b = Backend::start("b", Behavior::CountBody).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            400,
        ),
        (
            "Transfer-Encoding before Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            400,
        ),
        (
            "chunked, chunked",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            400,
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{SMUGGLED}"
            ),
            400,
        ),
        (
            "a chunk size of Z",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
            ),
            400,
        ),
        ("a 70 KiB header", big_header, 431),
        ("200 headers", many_headers, 431),
        (
            "a space in the request target",
            format!("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a bad header name",
            format!("GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "an unknown transfer coding",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            501,
        ),
    ];
    for (what, bytes, want) in cases {
        let (raw, closed) = raw_exchange(g.addr(), bytes.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), want, "{what}: {raw}");
        assert!(closed, "{what}: the connection was left open");
        assert_eq!(
            raw.matches("HTTP/1.1").count(),
            1,
            "{what}: a second response came back: {raw}"
        );
    }
    assert_eq!(
        b.requests(),
        0,
        "a malformed or smuggled request reached the backend"
    );
    // The same listener still serves a well-formed request.
    let (raw, _) = raw_exchange(
        g.addr(),
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(
        raw.ends_with("\r\n\r\n5"),
        "the backend got the 5-byte chunked body: {raw}"
    );
    g.running.shutdown().await;
}

/// A keep-alive connection that has gone idle (Gantry then holds only its socket) and comes
/// back with both framing headers is refused as a fresh one would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_request_after_an_idle_pause_on_a_kept_connection_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b", Behavior::CountBody).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let mut s = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    let mut got = Vec::new();
    for round in 0..3 {
        s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        // Until this round's answer has arrived (the body is the byte count, "5").
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count() <= round {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        // Idle long enough to be released between requests (Gantry looks every 50 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let smuggling = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    s.write_all(smuggling.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(status_of(&rest), 400, "{rest}");
    assert_eq!(
        rest.matches("HTTP/1.1").count(),
        1,
        "a second response came back: {rest}"
    );
    assert_eq!(b.requests(), 3, "the smuggled request reached the backend");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout_while_others_are_served() {
    raise_fd_limit();
    let b = Backend::start("b", Behavior::Name).await;
    let mut config = one_service(&[(&b, 1)], "");
    config.insert_str(
        0,
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nlimits = { header_read_timeout = \"1s\" }\n\n",
    );
    let g = Gantry::start(&config).await;
    let addr = g.addr();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Never: finishes")
            .await
            .unwrap();
        slow.push(s);
    }
    // A normal client is served meanwhile.
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, addr, "h", "/").await.status, 200);
    }
    let closed = Arc::new(AtomicU64::new(0));
    let mut waits = Vec::new();
    for mut s in slow {
        let closed = closed.clone();
        waits.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // EOF (or a reset) means Gantry closed it.
            if let Ok(Ok(_) | Err(_)) = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await
            {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in waits {
        w.await.unwrap();
    }
    assert_eq!(
        closed.load(Ordering::Relaxed),
        500,
        "slowloris connections left open"
    );
    assert_eq!(b.requests(), 20);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_connections_are_refused_fast_and_counted() {
    let b = Backend::start("b", Behavior::Name).await;
    let mut config = one_service(&[(&b, 1)], "");
    config.insert_str(
        0,
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nlimits = { max_connections = 5 }\n\n",
    );
    let g = Gantry::start(&config).await;
    let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(g.addr()).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let (raw, closed) = raw_exchange(g.addr(), request, Duration::from_secs(5)).await;
    assert!(closed && raw.is_empty(), "the sixth connection got {raw:?}");
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    assert!(m.contains("gantry_client_connections_refused_total 1"), "{m}");
    // A slot frees up when a connection closes.
    drop(held.pop());
    eventually(Duration::from_secs(5), "a freed slot", || async {
        let (raw, _) = raw_exchange(
            g.addr(),
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        (status_of(&raw) == 200).then_some(())
    })
    .await;
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_router_limit_get_413() {
    let b = Backend::start("b", Behavior::CountBody).await;
    let g = Gantry::start(&format!(
        "[routers.small]\npath = \"/small\"\nmax_body_bytes = \"1KiB\"\nservice = \"s\"\n\
         [routers.default]\nservice = \"s\"\n[services.s]\nbackends = [{{ url = \"{}\" }}]\n",
        b.url()
    ))
    .await;
    let body = "x".repeat(2000);
    let (raw, _) = raw_exchange(
        g.addr(),
        format!("POST /small HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{body}").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert_eq!(
        b.requests(),
        0,
        "a body known to be too large is refused before forwarding"
    );
    // Chunked: the limit is enforced while streaming.
    let chunked = format!(
        "POST /small HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{}\r\n3e8\r\n{}\r\n0\r\n\r\n",
        &body[..1000],
        &body[..1000]
    );
    let (raw, _) = raw_exchange(g.addr(), chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    // Under the default limit (100 MiB) the same body passes.
    let (raw, _) = raw_exchange(
        g.addr(),
        format!("POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.ends_with("2000"), "{raw}");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let b = Backend::start("b", Behavior::Name).await;
    let mut config = one_service(&[(&b, 1)], "");
    config.insert_str(
        0,
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nlimits = { idle_timeout = \"1s\" }\n\n",
    );
    let g = Gantry::start(&config).await;
    let mut s = TcpStream::connect(g.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Closed within one to two idle periods.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(n, 0);
    g.running.shutdown().await;
}
