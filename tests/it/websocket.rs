//! Upgrades: WebSocket passes through both ways; `Upgrade: h2c` from a client does not.

use std::net::SocketAddr;
use std::time::Duration;

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

/// A thousand text messages and a binary one, each echoed back in order; then a clean close.
async fn echo_a_thousand_and_close<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_a_thousand_messages_through_gantry() {
    let backend = ws_echo_backend().await;
    let g = Gantry::start(&format!(
        "[access_log]\npath = \"access.log\"\n\
         [routers.ws]\npath_prefix = \"/ws\"\nservice = \"ws\"\n[services.ws]\nbackends = [{{ url = \"http://{backend}\" }}]\n"
    ))
    .await;
    let log = g.dir.path().join("access.log");
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", g.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    echo_a_thousand_and_close(&mut ws).await;
    let open = std::fs::read_to_string(&log).unwrap_or_default();
    drop(ws);
    // The tunnel counted as in flight on its backend while open, and no longer once closed.
    tunnel_closed(&g).await;
    // Its access log line is written when it closes, with what it carried.
    assert_eq!(open, "", "the line was written before the tunnel closed");
    let line: serde_json::Value = eventually(Duration::from_secs(5), "the tunnel's line", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().next().map(|l| serde_json::from_str(l).unwrap())
    })
    .await;
    assert_eq!(line["status"], 101);
    assert_eq!(line["upgraded"], true);
    assert_eq!(line["path"], "/ws/chat");
    assert!(line["bytes_sent"].as_u64().unwrap() > 10_000, "{line}");
    assert!(line["bytes_received"].as_u64().unwrap() > 10_000, "{line}");
    g.running.shutdown().await;
}

/// Waits until no tunnel is in flight on the backend.
async fn tunnel_closed(g: &Gantry) {
    let admin = g.running.admin_addr;
    eventually(Duration::from_secs(5), "the tunnel to close", || async {
        let m = admin_get(admin, "/metrics").await.body;
        m.lines()
            .any(|l| l.starts_with("gantry_backend_requests_in_flight{") && l.ends_with(" 0"))
            .then_some(())
    })
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_over_http2_echoes_a_thousand_messages_through_gantry() {
    let backend = ws_echo_backend().await;
    let g = Gantry::start(&format!(
        "[routers.ws]\npath_prefix = \"/ws\"\nservice = \"ws\"\n[services.ws]\nbackends = [{{ url = \"http://{backend}\" }}]\n"
    ))
    .await;
    // HTTP/2 with prior knowledge on the plain entrypoint, as an h2c client would (hyper's
    // client: it speaks extended CONNECT and hands back the stream as an upgraded connection).
    let tcp = tokio::net::TcpStream::connect(g.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (h2c, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS (which announce extended CONNECT) arrive on the connection task.
    let resp = eventually(
        Duration::from_secs(10),
        "Gantry to accept an extended CONNECT",
        || {
            let mut h2c = h2c.clone();
            let mut req = http::Request::builder()
                .method("CONNECT")
                .uri(format!("http://{}/ws/chat", g.addr()))
                .header("sec-websocket-version", "13")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            async move { h2c.send_request(req).await.ok() }
        },
    )
    .await;
    assert_eq!(resp.status(), 200, "RFC 8441: the CONNECT is answered 200");
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    echo_a_thousand_and_close(&mut ws).await;
    // The backend closed after the close handshake; the client still holds its stream open
    // (`ws` is alive), which must not keep the tunnel, its backend slot, or shutdown waiting.
    tunnel_closed(&g).await;
    g.running.shutdown().await;
    drop(ws);
}
