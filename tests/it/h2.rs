//! HTTP/2 inbound (h2c with prior knowledge) and gRPC end to end. Attacks on HTTP/2
//! connections are in `abuse`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// A body fed from a channel: data frames, then optionally trailers.
struct ChanBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Reads gRPC messages from a body as they complete, and its trailers at the end.
struct GrpcReader {
    body: Incoming,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
}

impl GrpcReader {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Some(self.buf.split_to(len).to_vec());
                }
            }
            let frame = self.body.frame().await?.unwrap();
            match frame.into_data() {
                Ok(d) => self.buf.extend_from_slice(&d),
                Err(f) => {
                    self.trailers = f.into_trailers().ok();
                    return None;
                }
            }
        }
    }
}

/// A gRPC server over h2c: `/echo.Echo/Chat` answers every message with it uppercased, as it
/// arrives (a bidirectional stream), then `grpc-status: 0`; `/echo.Echo/Missing` fails with
/// `grpc-status: 5`.
async fn grpc_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let (tx, rx) = mpsc::channel(16);
                    let path = req.uri().path().to_string();
                    let te = req.headers().get("te").cloned();
                    tokio::spawn(async move {
                        let mut reader = GrpcReader {
                            body: req.into_body(),
                            buf: BytesMut::new(),
                            trailers: None,
                        };
                        let mut trailers = HeaderMap::new();
                        if path == "/echo.Echo/Chat" && te.as_ref().is_some_and(|v| v == "trailers") {
                            while let Some(m) = reader.next().await {
                                let _ = tx.send(Frame::data(grpc_frame(&m.to_ascii_uppercase()))).await;
                            }
                            trailers.insert("grpc-status", "0".parse().unwrap());
                        } else {
                            while reader.next().await.is_some() {}
                            trailers.insert("grpc-status", "5".parse().unwrap());
                            trailers.insert("grpc-message", "no such method".parse().unwrap());
                        }
                        let _ = tx.send(Frame::trailers(trailers)).await;
                    });
                    let mut resp = Response::new(ChanBody(rx));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ChanBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn grpc_request(path: &str, body: ChanBody) -> Request<ChanBody> {
    Request::post(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_bidirectional_streams_keep_their_trailers() {
    let backend = grpc_backend().await;
    let g = Gantry::start(&format!(
        "[routers.grpc]\nhosts = [\"grpc.test\"]\nservice = \"grpc\"\n[services.grpc]\nbackends = [{{ url = \"h2c://{backend}\" }}]\n"
    ))
    .await;
    let mut client = h2c_client(g.addr()).await;

    // Unary: one message, one answer, grpc-status 0.
    let (tx, rx) = mpsc::channel(4);
    tx.send(Frame::data(grpc_frame(b"hello"))).await.unwrap();
    drop(tx);
    let resp = client
        .send_request(grpc_request("/echo.Echo/Chat", ChanBody(rx)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut r = GrpcReader {
        body: resp.into_body(),
        buf: BytesMut::new(),
        trailers: None,
    };
    assert_eq!(r.next().await.unwrap(), b"HELLO");
    assert_eq!(r.next().await, None);
    assert_eq!(r.trailers.unwrap()["grpc-status"], "0");

    // Bidirectional: each answer arrives before the next message is sent.
    let (tx, rx) = mpsc::channel(4);
    let resp = client
        .send_request(grpc_request("/echo.Echo/Chat", ChanBody(rx)))
        .await
        .unwrap();
    let mut r = GrpcReader {
        body: resp.into_body(),
        buf: BytesMut::new(),
        trailers: None,
    };
    for i in 0..20 {
        tx.send(Frame::data(grpc_frame(format!("message {i}").as_bytes())))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), r.next())
            .await
            .expect("answer streamed back");
        assert_eq!(answer.unwrap(), format!("MESSAGE {i}").as_bytes());
    }
    drop(tx);
    assert_eq!(r.next().await, None);
    assert_eq!(r.trailers.unwrap()["grpc-status"], "0");

    // An error status travels in the trailers too.
    let (tx, rx) = mpsc::channel(1);
    drop(tx);
    let resp = client
        .send_request(grpc_request("/echo.Echo/Missing", ChanBody(rx)))
        .await
        .unwrap();
    let mut r = GrpcReader {
        body: resp.into_body(),
        buf: BytesMut::new(),
        trailers: None,
    };
    assert_eq!(r.next().await, None);
    let t = r.trailers.unwrap();
    assert_eq!(
        (
            t["grpc-status"].to_str().unwrap(),
            t["grpc-message"].to_str().unwrap()
        ),
        ("5", "no such method")
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_on_one_connection_reach_an_http1_backend() {
    let backend = Backend::start("b", Behavior::Delay(Duration::from_millis(300))).await;
    let g = Gantry::start(&one_service(&[(&backend, 1)], "")).await;
    let sender = h2c_client(g.addr()).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(1);
            drop(tx);
            let resp = s
                .send_request(
                    Request::get(format!("http://h2.test/{i}"))
                        .body(ChanBody(rx))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"b"[..]));
    }
    assert_eq!(backend.requests(), 100);
    assert!(
        backend.max_in_flight() >= 50,
        "the streams were not concurrent: {}",
        backend.max_in_flight()
    );
    g.running.shutdown().await;
}
