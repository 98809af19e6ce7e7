//! Upgrades: WebSocket passes through both ways; `Upgrade: h2c` from a client does not.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket echo server (real tungstenite on a real socket).
async fn ws_echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_a_thousand_messages_through_gantry() {
    let backend = ws_echo_backend().await;
    let g = Gantry::start(&format!(
        "[routers.ws]\npath_prefix = \"/ws\"\nservice = \"ws\"\n[services.ws]\nbackends = [{{ url = \"http://{backend}\" }}]\n"
    ))
    .await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", g.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..1000 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), text),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
    drop(ws);
    // The tunnel counted as in flight on its backend while open, and no longer once closed.
    let admin = g.running.admin_addr;
    eventually(
        std::time::Duration::from_secs(5),
        "the tunnel to close",
        || async {
            let m = admin_get(admin, "/metrics").await.body;
            m.lines()
                .any(|l| l.starts_with("gantry_backend_requests_in_flight{") && l.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_from_a_client_is_not_forwarded() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let (raw, _) = raw_exchange(
        g.addr(),
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        std::time::Duration::from_millis(500),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = b.last();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached the backend");
    }
    g.running.shutdown().await;
}

/// An HTTP/2 stream (a CONNECT tunnel) as a byte stream, for a WebSocket client to run over.
struct H2Tunnel {
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
    pending: bytes::Bytes,
}

impl tokio::io::AsyncRead for H2Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.pending.is_empty() {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for H2Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        self.send.reserve_capacity(data.len());
        match self.send.poll_capacity(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(std::io::Error::other(e))),
            Poll::Ready(Some(Ok(n))) => {
                let n = n.min(data.len());
                let chunk = bytes::Bytes::copy_from_slice(&data[..n]);
                Poll::Ready(
                    self.send
                        .send_data(chunk, false)
                        .map(|()| n)
                        .map_err(std::io::Error::other),
                )
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let _ = self.send.send_data(bytes::Bytes::new(), true);
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_over_http2_echoes_a_thousand_messages_through_gantry() {
    let backend = ws_echo_backend().await;
    let g = Gantry::start(&format!(
        "[routers.ws]\npath_prefix = \"/ws\"\nservice = \"ws\"\n[services.ws]\nbackends = [{{ url = \"http://{backend}\" }}]\n"
    ))
    .await;
    // HTTP/2 with prior knowledge on the plain entrypoint, as an h2c client would.
    let tcp = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    assert!(
        h2c.is_extended_connect_protocol_enabled(),
        "Gantry offers extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)"
    );
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("http://{}/ws/chat", g.addr()))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, send) = h2c.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "RFC 8441: the CONNECT is answered 200");
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let tunnel = H2Tunnel {
        send,
        recv: resp.into_body(),
        pending: bytes::Bytes::new(),
    };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tunnel,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    for i in 0..1000 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), text),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
    g.running.shutdown().await;
}
