//! TLS termination: SNI, the default certificate, ALPN, protocol versions, reload, redirects.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes certs into the Gantry directory and returns a config with a plain and a TLS
/// entrypoint, one router for everything.
fn tls_config(backend: &Backend, extra_router: &str) -> String {
    format!(
        r#"
[entrypoints.web]
address = "127.0.0.1:0"
[entrypoints.websecure]
address = "127.0.0.1:0"
tls = {{}}

[[tls.certificates]]
cert = "a.pem"
key = "a.key"
[[tls.certificates]]
cert = "b.pem"
key = "b.key"
[tls.default]
cert = "default.pem"
key = "default.key"

[routers.all]
service = "svc"
{extra_router}
[services.svc]
backends = [{{ url = "{}" }}]
"#,
        backend.url()
    )
}

/// Handshakes with `sni` (None: no SNI extension) and returns the server's leaf certificate and
/// the ALPN protocol, using a verifier that accepts anything (what is checked is which
/// certificate came back).
pub(crate) async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_sni = sni.is_some();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, conn) = tls.get_ref();
    (
        conn.peer_certificates().unwrap()[0].clone(),
        conn.alpn_protocol().map(|p| p.to_vec()),
    )
}

#[derive(Debug)]
pub(crate) struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.1 ClientHello (legacy_version 0x0302, no supported_versions extension), as an old
/// client would send it.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    // Suites that TLS 1.2 servers accept, so that the version is the only thing wrong.
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13]);
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    // signature_algorithms (what a TLS 1.2-capable stack sends; without it rustls fails the
    // handshake before looking at the version): ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256.
    hello.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificates_alpn_negotiates_h2_and_tls_1_1_is_refused() {
    let backend = Backend::start("b", Behavior::Name).await;
    let ca = TestCa::new();
    let (a, b, d) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["*.b.test"]),
        ca.leaf(&["default.test"]),
    );
    let g = Gantry::start_with_files(
        &format!(
            "[access_log]\npath = \"access.log\"\n{}",
            tls_config(&backend, "")
        ),
        &[
            ("a.pem", &a.cert_pem),
            ("a.key", &a.key_pem),
            ("b.pem", &b.cert_pem),
            ("b.key", &b.key_pem),
            ("default.pem", &d.cert_pem),
            ("default.key", &d.key_pem),
        ],
    )
    .await;
    let tls_addr = g.addr_of("websecure");

    assert_eq!(handshake(tls_addr, Some("a.test"), &[]).await.0, a.der);
    assert_eq!(handshake(tls_addr, Some("api.b.test"), &[]).await.0, b.der);
    assert_eq!(
        handshake(tls_addr, None, &[]).await.0,
        d.der,
        "no SNI gets the default certificate"
    );
    assert_eq!(handshake(tls_addr, Some("unknown.test"), &[]).await.0, d.der);

    // ALPN h2, then a real HTTP/2 request over it, verified against the CA.
    let connector = ca.client(&[b"h2", b"http/1.1"]);
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://a.test/over-h2")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "b");
    let seen = backend.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "a.test");
    // The access log names the TLS version and the SNI.
    let log = g.dir.path().join("access.log");
    let line: serde_json::Value = eventually(Duration::from_secs(5), "the h2 request's line", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["path"] == "/over-h2")
    })
    .await;
    assert_eq!(
        (&line["tls_version"], &line["tls_sni"], &line["protocol"]),
        (&"TLSv1.3".into(), &"a.test".into(), &"HTTP/2.0".into())
    );

    // HTTP/1.1 when the client offers only that.
    assert_eq!(
        handshake(tls_addr, Some("a.test"), &[b"http/1.1"]).await.1,
        Some(b"http/1.1".to_vec())
    );

    // TLS 1.1 gets a protocol_version alert, never a ServerHello.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(
        answer.len() >= 7 && answer[0] == 0x15,
        "expected an alert record, got {answer:02x?}"
    );
    assert_eq!(answer[6], 70, "alert description protocol_version");
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gantry_tls_handshake_errors_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_and_a_mismatched_key_is_refused_while_the_old_one_serves() {
    let backend = Backend::start("b", Behavior::Name).await;
    let ca = TestCa::new();
    let (a, b, d) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["*.b.test"]),
        ca.leaf(&["default.test"]),
    );
    let files = [
        ("a.pem", a.cert_pem.as_str()),
        ("a.key", &a.key_pem),
        ("b.pem", &b.cert_pem),
        ("b.key", &b.key_pem),
        ("default.pem", &d.cert_pem),
        ("default.key", &d.key_pem),
    ];
    let g = Gantry::start_with_files(&tls_config(&backend, ""), &files).await;
    let tls_addr = g.addr_of("websecure");
    assert_eq!(handshake(tls_addr, Some("a.test"), &[]).await.0, a.der);

    // A renewed certificate for a.test: the files change, SIGHUP (here: reload) picks them up.
    let renewed = ca.leaf(&["a.test", "www.a.test"]);
    write(g.dir.path(), "a.pem", &renewed.cert_pem);
    write(g.dir.path(), "a.key", &renewed.key_pem);
    let generation = g.running.generation();
    g.running.reload();
    eventually(
        Duration::from_secs(10),
        "the renewed certificate to be live",
        || async { (g.running.generation() > generation).then_some(()) },
    )
    .await;
    assert_eq!(handshake(tls_addr, Some("a.test"), &[]).await.0, renewed.der);
    assert_eq!(handshake(tls_addr, Some("www.a.test"), &[]).await.0, renewed.der);

    // A key that belongs to another certificate: refused, and the renewed one keeps serving.
    write(g.dir.path(), "a.key", &b.key_pem);
    g.running.reload();
    let status = eventually(Duration::from_secs(10), "the bad key to be refused", || async {
        let s = admin_json(g.running.admin_addr, "/api/v1/status").await;
        (s["reload_failures"] == 1).then_some(s)
    })
    .await;
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tls.certificates[0]: the key in a.key does not match the certificate in a.pem"),
        "{message}"
    );
    assert_eq!(handshake(tls_addr, Some("a.test"), &[]).await.0, renewed.der);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_per_router() {
    let backend = Backend::start("b", Behavior::Name).await;
    let ca = TestCa::new();
    let (a, b, d) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["*.b.test"]),
        ca.leaf(&["default.test"]),
    );
    let extra = "redirect_https = true\n[routers.open]\npath = \"/.well-known/acme\"\nservice = \"svc\"\n";
    let g = Gantry::start_with_files(
        &tls_config(&backend, extra),
        &[
            ("a.pem", &a.cert_pem),
            ("a.key", &a.key_pem),
            ("b.pem", &b.cert_pem),
            ("b.key", &b.key_pem),
            ("default.pem", &d.cert_pem),
            ("default.key", &d.key_pem),
        ],
    )
    .await;
    let c = client();
    let r = get(&c, g.addr(), "a.test", "/shop?item=1").await;
    assert_eq!(r.status, 308);
    let port = g.addr_of("websecure").port();
    assert_eq!(
        r.headers["location"],
        format!("https://a.test:{port}/shop?item=1").as_str()
    );
    assert_eq!(backend.requests(), 0);
    // A router without the flag still serves plain HTTP.
    assert_eq!(get(&c, g.addr(), "a.test", "/.well-known/acme").await.status, 200);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_over_tls_and_h2c_through_gantry() {
    let backend = Backend::start("b", Behavior::Name).await;
    let ca = TestCa::new();
    let (a, b, d) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["*.b.test"]),
        ca.leaf(&["default.test"]),
    );
    let g = Gantry::start_with_files(
        &tls_config(&backend, ""),
        &[
            ("a.pem", &a.cert_pem),
            ("a.key", &a.key_pem),
            ("b.pem", &b.cert_pem),
            ("b.key", &b.key_pem),
            ("default.pem", &d.cert_pem),
            ("default.key", &d.key_pem),
            ("ca.pem", &ca.cert_pem),
        ],
    )
    .await;
    let port = g.addr_of("websecure").port();
    let ca_path = g.dir.path().join("ca.pem");
    let curl = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || std::process::Command::new("curl").args(&args).output())
            .await
            .unwrap()
            .expect("curl is installed by .ci/run")
    };
    let out = curl(vec![
        "-sS".into(),
        "--http2".into(),
        "--cacert".into(),
        ca_path.display().to_string(),
        "--resolve".into(),
        format!("a.test:{port}:127.0.0.1"),
        "-w".into(),
        " %{http_version} %{http_code}".into(),
        format!("https://a.test:{port}/curl"),
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b 2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = curl(vec![
        "-sS".into(),
        "--http2-prior-knowledge".into(),
        "-w".into(),
        " %{http_version} %{http_code}".into(),
        format!("http://{}/h2c", g.addr()),
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b 2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.running.shutdown().await;
}
