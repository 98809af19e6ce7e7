//! The `compress` middleware: gzip, brotli and zstd chosen from `Accept-Encoding`, streamed
//! (Gantry's memory stays flat while a 10 MB body goes through), and responses that must not be
//! touched passed as they are. Decoded by the tests with `async-compression` and by curl.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

const BIG: usize = 10 << 20;

/// Deterministic text that compresses, but not to nothing: lines with a counter.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i:08} of the compress test, {}\n", i * 7919 % 10007).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A backend with one path per case: `/big` (10 MB of text/plain, streamed in 64 KiB chunks, no
/// Content-Length), `/small` (100 bytes), `/encoded` (already gzip), `/image` (image/png),
/// `/no-transform`, `/range` (a 206).
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let (status, ctype, extra, body): (u16, &str, Option<(&str, &str)>, Vec<u8>) =
                        match path.as_str() {
                            "/big" => (
                                200,
                                "text/plain; charset=utf-8",
                                Some(("etag", "\"v1\"")),
                                text(BIG),
                            ),
                            "/small" => (200, "text/plain", None, text(100)),
                            "/encoded" => (
                                200,
                                "text/plain",
                                Some(("content-encoding", "gzip")),
                                b"\x1f\x8bnot really".to_vec(),
                            ),
                            "/image" => (200, "image/png", None, text(4096)),
                            "/no-transform" => (
                                200,
                                "text/plain",
                                Some(("cache-control", "public, no-transform")),
                                text(4096),
                            ),
                            "/range" => (
                                206,
                                "text/plain",
                                Some(("content-range", "bytes 0-4095/8192")),
                                text(4096),
                            ),
                            _ => (404, "text/plain", None, b"no".to_vec()),
                        };
                    let length = body.len();
                    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = Bytes::from(body)
                        .chunks(64 << 10)
                        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(chunks)));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    resp.headers_mut().insert("content-type", ctype.parse().unwrap());
                    if let Some((k, v)) = extra {
                        resp.headers_mut().insert(k, v.parse().unwrap());
                    }
                    if path != "/big" {
                        resp.headers_mut().insert("content-length", length.into());
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(backend: SocketAddr) -> String {
    format!(
        "[routers.web]\npath_prefix = \"/\"\nservice = \"svc\"\nmiddlewares = [\"squeeze\"]\n\
         [services.svc]\nbackends = [{{ url = \"http://{backend}\" }}]\n\
         [middlewares.squeeze.compress]\nmin_bytes = 1024\n"
    )
}

async fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match encoding {
        "gzip" => GzipDecoder::new(bytes).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(bytes).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(bytes).read_to_end(&mut out).await,
        other => panic!("unexpected coding {other}"),
    }
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coding_streams_10_mb_that_decode_to_the_backends_bytes_with_flat_memory() {
    let b = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, config(b)).unwrap();
    let c = client();
    let expected = text(BIG);
    // Memory: one 10 MB response per coding, each through a fresh process; a proxy that held
    // the body (or its encoding) whole would grow by at least its 10 MB.
    for coding in ["gzip", "br", "zstd"] {
        let p = GantryProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
        let before = p.status_kib("VmHWM");
        let raw = raw_body(&c, p.addr, "/big", coding).await;
        let grown = p.status_kib("VmHWM").saturating_sub(before);
        eprintln!("{coding}: {} bytes, peak RSS +{grown} KiB", raw.len());
        assert!(
            grown < 16 * 1024,
            "{coding}: peak RSS grew by {grown} KiB while streaming"
        );
        assert!(raw.len() < BIG / 3, "{coding}: {} bytes", raw.len());
        assert!(
            decode(coding, &raw).await == expected,
            "{coding} decodes to other bytes"
        );
    }
    let p = GantryProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("zstd;q=0, gzip", "gzip"),
    ] {
        let a = send(&c, p.addr, "GET", "h", "/big", &[("accept-encoding", accept)])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-encoding"], coding, "{accept}");
        assert_eq!(a.headers["vary"], "accept-encoding");
        assert_eq!(a.headers["etag"], "W/\"v1\"", "a strong validator becomes weak");
        assert!(!a.headers.contains_key("content-length"));
    }
    // Identity when the client asks for nothing or refuses what Gantry has.
    for accept in ["", "identity", "gzip;q=0, br;q=0, zstd;q=0", "*;q=0"] {
        let raw = raw_body(&c, p.addr, "/big", accept).await;
        assert!(raw == expected, "{accept:?}: not sent as it is");
    }
}

/// The body of `GET path` with this Accept-Encoding, as bytes.
async fn raw_body(
    c: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    addr: SocketAddr,
    path: &str,
    accept: &str,
) -> Vec<u8> {
    let mut req = Request::get(format!("http://{addr}{path}")).header("host", "h");
    if !accept.is_empty() {
        req = req.header("accept-encoding", accept);
    }
    let resp = c.request(req.body(TestBody::full("")).unwrap()).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_must_not_be_compressed_pass_untouched() {
    let b = backend().await;
    let g = Gantry::start(&config(b)).await;
    let c = client();
    for path in ["/small", "/encoded", "/image", "/no-transform", "/range"] {
        let a = send(
            &c,
            g.addr(),
            "GET",
            "h",
            path,
            &[("accept-encoding", "gzip, br, zstd")],
        )
        .await
        .unwrap();
        let coding = a
            .headers
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let expected = if path == "/encoded" {
            Some("gzip".to_string())
        } else {
            None
        };
        assert_eq!(coding, expected, "{path}");
    }
    // A HEAD is answered as the GET would be, without encoding a body.
    let head = send(&c, g.addr(), "HEAD", "h", "/big", &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert!(!head.headers.contains_key("content-encoding"));
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_compressed_gets_the_backends_bytes() {
    let b = backend().await;
    let g = Gantry::start(&config(b)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big");
    let status = std::process::Command::new("curl")
        .args(["-sS", "--compressed", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", "-H", "Host: h"])
        .arg(format!("http://{}/big", g.addr()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200", "{status:?}");
    assert!(
        std::fs::read(&out).unwrap() == text(BIG),
        "curl --compressed saw other bytes"
    );
    g.running.shutdown().await;
}
