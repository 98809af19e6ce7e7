//! SIGTERM: stop accepting, close idle connections (and those that have not sent a request) at
//! once, GOAWAY on HTTP/2, let in-flight requests finish, exit 0.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_two_hundred_in_flight_requests_and_exits_0() {
    raise_fd_limit();
    let slow = Backend::start("slow", Behavior::Delay(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(
        &path,
        format!(
            "[lifecycle]\ndrain_timeout = \"20s\"\n{}",
            one_service(&[(&slow, 1)], "")
        ),
    )
    .unwrap();
    let mut p = GantryProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    let addr = p.addr;

    // An idle keep-alive connection (one request done) and an idle HTTP/2 connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (_h2, h2_conn) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    // A connection that has sent nothing yet (a client's spare pooled connection, say).
    let mut silent = TcpStream::connect(addr).await.unwrap();

    // 200 slow requests in flight, each on its own connection.
    let mut in_flight = Vec::new();
    for _ in 0..200 {
        in_flight.push(tokio::spawn(async move {
            let (raw, _) = raw_exchange(
                addr,
                b"GET /slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                Duration::from_secs(30),
            )
            .await;
            status_of(&raw)
        }));
    }
    eventually(
        Duration::from_secs(20),
        "200 requests in flight at the backend",
        || async { (slow.in_flight() == 200).then_some(()) },
    )
    .await;

    p.signal(rustix::process::Signal::TERM);
    // New connections are refused.
    eventually(
        Duration::from_secs(5),
        "new connections to be refused",
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;
    // The idle connections close at once, while the slow requests are still running.
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("idle connection closed")
        .unwrap();
    assert_eq!(n, 0);
    // So does the one that never sent a request: it does not hold the drain until its header
    // timeout.
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("silent connection closed")
        .unwrap();
    assert_eq!(n, 0);
    let h2_end = tokio::time::timeout(Duration::from_secs(5), h2_conn)
        .await
        .expect("the HTTP/2 connection ended");
    assert!(
        h2_end.unwrap().is_ok(),
        "GOAWAY ends an HTTP/2 connection cleanly"
    );
    assert!(
        slow.in_flight() > 0,
        "the idle connections were not closed ahead of the in-flight requests"
    );

    for t in in_flight {
        assert_eq!(t.await.unwrap(), 200, "an in-flight request was cut off");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gantry did not exit within its drain deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
