//! Trust at the entry point: one reading of every request. Malformed targets and Hosts are
//! refused before a backend sees them; forwarded headers are believed from trusted peers only.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;

/// Sends raw bytes and returns the status of the answer.
async fn raw_status(g: &Gantry, bytes: &str) -> u16 {
    let (raw, _) = raw_exchange(g.addr(), bytes.as_bytes(), Duration::from_secs(5)).await;
    status_of(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_and_hosts_get_400_and_never_reach_a_backend() {
    let b = Backend::start("app", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let cases = [
        (
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
        ),
        (
            "no leading slash",
            "GET admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        ("asterisk with GET", "GET * HTTP/1.1\r\nHost: a.test\r\n\r\n", 400),
        (
            "authority-form with GET",
            "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (
            "a path in Host",
            "GET / HTTP/1.1\r\nHost: a.test/admin\r\n\r\n",
            400,
        ),
        ("a bad port", "GET / HTTP/1.1\r\nHost: a.test:80x\r\n\r\n", 400),
        ("no Host", "GET / HTTP/1.1\r\n\r\n", 400),
        (
            "CONNECT",
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            405,
        ),
    ];
    for (what, raw, want) in cases {
        assert_eq!(raw_status(&g, raw).await, want, "{what}");
    }
    assert_eq!(b.requests(), 0, "a malformed request reached the backend");
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    for reason in [
        "repeated_host",
        "bad_target",
        "invalid_host",
        "missing_host",
        "connect_not_allowed",
    ] {
        assert!(
            m.contains(&format!("gantry_requests_refused_total{{reason=\"{reason}\"}}")),
            "no refusal counted for {reason}:\n{m}"
        );
    }
    // Well-formed requests still pass: an IPv6 literal with a port, and OPTIONS *.
    assert_eq!(
        raw_status(&g, "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").await,
        200
    );
    assert_ne!(
        raw_status(&g, "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n").await,
        400
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_routed_on_its_authority_and_the_backend_gets_that_host() {
    let app = Backend::start("app", Behavior::Name).await;
    let other = Backend::start("other", Behavior::Name).await;
    let g = Gantry::start(&format!(
        r#"
[routers.app]
hosts = ["app.test"]
service = "app"
[routers.other]
hosts = ["other.test"]
service = "other"
[services.app]
backends = [{{ url = "{}" }}]
[services.other]
backends = [{{ url = "{}" }}]
"#,
        app.url(),
        other.url()
    ))
    .await;
    let raw = "GET http://app.test/x?y=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&g, raw).await, 200);
    assert_eq!(
        other.requests(),
        0,
        "routed on the Host header instead of the target"
    );
    let seen = app.last();
    assert_eq!(seen.uri, "/x?y=1", "the backend gets origin-form");
    assert_eq!(
        seen.headers["host"], "app.test",
        "the backend's Host agrees with the route"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let a = send(
        &client(),
        g.addr(),
        "GET",
        "h.test",
        "/",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4;proto=https"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let h = b.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "h.test");
    for gone in ["x-forwarded-port", "x-real-ip", "forwarded"] {
        assert!(
            !h.contains_key(gone),
            "{gone} from an untrusted client reached the backend"
        );
    }
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_forwarded_headers_are_kept_and_its_client_address_is_used() {
    let backends: Vec<Backend> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(Backend::start(&format!("b{i}"), Behavior::Name).await);
        }
        v
    };
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{}\" }}", b.url()))
        .collect();
    // The test's client connects from 127.0.0.1: a trusted balancer in front of Gantry.
    let g = Gantry::start(&format!(
        r#"
[entrypoints.web]
address = "127.0.0.1:0"
trusted_ips = ["127.0.0.0/8", "10.0.0.0/8"]
[routers.all]
path_prefix = "/"
service = "svc"
[services.svc]
policy = "hash"
hash_on = "client_ip"
backends = [{}]
"#,
        list.join(", ")
    ))
    .await;
    let c = client();
    let a = send(
        &c,
        g.addr(),
        "GET",
        "h.test",
        "/",
        &[
            ("x-forwarded-for", "1.2.3.4, 10.0.0.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let seen = backends
        .iter()
        .find(|b| b.requests() == 1)
        .expect("one backend answered")
        .last();
    assert_eq!(
        seen.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.9, 127.0.0.1",
        "extended"
    );
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "kept from a trusted peer"
    );

    // Hashing on the client address uses the resolved client (1.2.3.x behind the trusted hops),
    // not the balancer's address: one client always lands on one backend, clients spread.
    let mut chosen = HashSet::new();
    for client_no in 0..40 {
        let xff = format!("198.51.100.{client_no}, 10.0.0.9");
        let mut backends_of_client = HashSet::new();
        for _ in 0..3 {
            let a = send(&c, g.addr(), "GET", "h.test", "/", &[("x-forwarded-for", &xff)])
                .await
                .unwrap();
            backends_of_client.insert(a.backend().to_string());
        }
        assert_eq!(backends_of_client.len(), 1, "client {xff} moved between backends");
        chosen.extend(backends_of_client);
    }
    assert!(
        chosen.len() >= 3,
        "40 clients behind one balancer all hashed to {chosen:?}"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_whose_authority_and_host_disagree_is_refused() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let tcp = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let status = |req: http::Request<()>| {
        let h2c = h2c.clone();
        async move {
            let mut h2c = h2c.ready().await.unwrap();
            let (resp, _) = h2c.send_request(req, true).unwrap();
            resp.await.unwrap().status().as_u16()
        }
    };
    let agree = http::Request::get("http://a.test/").body(()).unwrap();
    assert_eq!(status(agree).await, 200);
    let disagree = http::Request::get("http://a.test/")
        .header("host", "b.test")
        .body(())
        .unwrap();
    assert_eq!(status(disagree).await, 400);
    assert_eq!(b.requests(), 1, "only the consistent request reached the backend");
    g.running.shutdown().await;
}

/// A PROXY v2 header for a TCP/IPv4 client.
fn proxy_v2(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0x00, 0x0c]); // v2 PROXY, TCP over IPv4, 12 address bytes
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(src_port.to_be_bytes());
    h.extend(80u16.to_be_bytes());
    h
}

async fn gantry_with_proxy_protocol(b: &Backend, trusted: &str) -> Gantry {
    Gantry::start(&format!(
        r#"
[entrypoints.web]
address = "127.0.0.1:0"
trusted_ips = [{trusted}]
proxy_protocol = true
[routers.all]
path_prefix = "/"
service = "svc"
[services.svc]
backends = [{{ url = "{}" }}]
"#,
        b.url()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_from_a_trusted_balancer_name_the_client() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = gantry_with_proxy_protocol(&b, r#""127.0.0.0/8""#).await;
    let request = "GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    let v1 = format!("PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\n{request}");
    let (raw, _) = raw_exchange(g.addr(), v1.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(b.last().headers["x-forwarded-for"], "192.0.2.1", "v1");

    let mut v2 = proxy_v2([198, 51, 100, 7], 40000);
    v2.extend(request.as_bytes());
    let (raw, _) = raw_exchange(g.addr(), &v2, Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(b.last().headers["x-forwarded-for"], "198.51.100.7", "v2");

    // Without a header the balancer's own connection is served as it is.
    let (raw, _) = raw_exchange(g.addr(), request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 200);

    // A malformed header closes the connection; nothing reaches the backend.
    let before = b.requests();
    let bad = format!("PROXY TCP4 not-an-address 127.0.0.1 5555 80\r\n{request}");
    let (raw, closed) = raw_exchange(g.addr(), bad.as_bytes(), Duration::from_secs(5)).await;
    assert!(closed && raw.is_empty(), "a malformed PROXY header got {raw:?}");
    assert_eq!(b.requests(), before);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_from_an_untrusted_peer_closes_the_connection() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = gantry_with_proxy_protocol(&b, r#""10.0.0.0/8""#).await;
    let request = "GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    for header in [
        b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\n".to_vec(),
        proxy_v2([192, 0, 2, 1], 5555),
    ] {
        let mut bytes = header;
        bytes.extend(request.as_bytes());
        let (raw, closed) = raw_exchange(g.addr(), &bytes, Duration::from_secs(5)).await;
        assert!(closed && raw.is_empty(), "an untrusted PROXY header got {raw:?}");
    }
    assert_eq!(b.requests(), 0);
    // The same peer without a header is an ordinary client.
    let (raw, _) = raw_exchange(g.addr(), request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 200);
    assert_eq!(b.last().headers["x-forwarded-for"], "127.0.0.1");
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    assert!(
        m.contains("gantry_requests_refused_total{reason=\"proxy_protocol_untrusted\"} 2"),
        "{m}"
    );
    g.running.shutdown().await;
}

/// A backend behind a PROXY protocol listener: every connection must open with a PROXY header
/// (decoded here by hand, v1 and v2 over IPv4 or `LOCAL`), and every answer names what that
/// connection's header said, e.g. `v2 127.0.0.1:40000 -> 127.0.0.1:8080`.
struct ProxyProtocolBackend {
    addr: std::net::SocketAddr,
    headers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ProxyProtocolBackend {
    async fn start() -> Self {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let headers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = headers.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 16];
                    if s.read_exact(&mut first[..6]).await.is_err() {
                        return;
                    }
                    let said = if &first[..6] == b"PROXY " {
                        let mut line = b"PROXY ".to_vec();
                        while !line.ends_with(b"\r\n") && line.len() < 108 {
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await.unwrap();
                            line.push(b[0]);
                        }
                        let words: Vec<String> = String::from_utf8_lossy(&line)
                            .split_whitespace()
                            .map(String::from)
                            .collect();
                        match words.as_slice() {
                            [_, proto, src, dst, sport, dport] if proto == "TCP4" => {
                                format!("v1 {src}:{sport} -> {dst}:{dport}")
                            }
                            [_, unknown] if unknown == "UNKNOWN" => "v1 UNKNOWN".into(),
                            other => format!("bad v1 header {other:?}"),
                        }
                    } else {
                        s.read_exact(&mut first[6..]).await.unwrap();
                        assert_eq!(&first[..12], b"\r\n\r\n\0\r\nQUIT\n", "no PROXY header");
                        let mut rest = vec![0u8; u16::from_be_bytes([first[14], first[15]]) as usize];
                        s.read_exact(&mut rest).await.unwrap();
                        match (first[12], first[13]) {
                            (0x20, _) => "v2 LOCAL".into(),
                            (0x21, 0x11) => {
                                let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                                format!(
                                    "v2 {}:{} -> {}:{}",
                                    ip(&rest[0..4]),
                                    port(&rest[8..10]),
                                    ip(&rest[4..8]),
                                    port(&rest[10..12])
                                )
                            }
                            other => format!("unexpected v2 command/family {other:?}"),
                        }
                    };
                    seen.lock().unwrap().push(said.clone());
                    let svc = hyper::service::service_fn(move |_req| {
                        let said = said.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(said),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        ProxyProtocolBackend { addr, headers }
    }

    fn headers(&self) -> Vec<String> {
        self.headers.lock().unwrap().clone()
    }
}

/// Sends one request on a new connection (after `prefix`, if any) and returns the connection's
/// local address and the answer's body.
async fn request_from_new_connection(
    addr: std::net::SocketAddr,
    prefix: &[u8],
    host: &str,
) -> (std::net::SocketAddr, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    s.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(status_of(&raw), 200, "{raw}");
    (me, raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_ask_get_a_proxy_header_naming_each_client() {
    let backend = ProxyProtocolBackend::start().await;
    let g = Gantry::start(&format!(
        r#"
[entrypoints.web]
address = "127.0.0.1:0"
trusted_ips = ["127.0.0.0/8"]
proxy_protocol = true
[routers.v1]
hosts = ["v1.test"]
service = "v1"
[routers.v2]
hosts = ["v2.test"]
service = "v2"
[services.v1]
proxy_protocol = "v1"
backends = [{{ url = "http://{addr}" }}]
[services.v2]
proxy_protocol = "v2"
health_check = {{ path = "/health", interval = "100ms" }}
backends = [{{ url = "http://{addr}" }}]
"#,
        addr = backend.addr
    ))
    .await;
    let gantry = g.addr();

    // Each client connection's request reaches the backend on a connection of its own whose
    // header names that client: connections are never shared between clients.
    for version in ["v1", "v2"] {
        for _ in 0..3 {
            let (me, said) = request_from_new_connection(gantry, b"", &format!("{version}.test")).await;
            assert_eq!(said, format!("{version} {me} -> {gantry}"));
        }
    }

    // Behind a trusted balancer, the header names the client the balancer named.
    let (_, said) =
        request_from_new_connection(gantry, b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n", "v2.test").await;
    assert_eq!(said, format!("v2 203.0.113.7:5555 -> {gantry}"));

    // Health checks are Gantry's own connections: LOCAL, and they pass.
    eventually(
        Duration::from_secs(5),
        "a health check with a LOCAL header",
        || async { backend.headers().contains(&"v2 LOCAL".to_string()).then_some(()) },
    )
    .await;
    let services = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    assert!(
        services.to_string().contains("\"proxy_protocol\":\"v2\""),
        "{services}"
    );
    g.running.shutdown().await;
}
