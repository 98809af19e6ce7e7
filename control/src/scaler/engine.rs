//! Raw JSON exchanges with the engine API, for what bollard's typed models cannot carry through
//! unchanged: a Swarm service's spec, read and written back with one field changed. (bollard
//! reads a container spec's `Healthcheck` under another name and would drop it; Swarm takes the
//! spec without it as a new task template and replaces every task.)

use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// `method path` with `body` (JSON) on the engine at `endpoint` (`unix:///path` or
/// `tcp://host:port`; `None`: `DOCKER_HOST`, else the default socket); the JSON answer, or why
/// there is none.
pub(super) async fn exchange(
    endpoint: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let bytes = body.map(Value::to_string).unwrap_or_default();
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, "docker")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let resp = match endpoint.split_once("://") {
        Some(("unix", p)) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| format!("{endpoint}: {e}"))?;
            send(TokioIo::new(s), req).await?
        }
        Some(("tcp" | "http", a)) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(|e| format!("{endpoint}: {e}"))?;
            send(TokioIo::new(s), req).await?
        }
        _ => return Err(format!("{endpoint}: only unix:// and tcp:// engines")),
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| format!("{method} {path}: {e}"))?
    };
    if !status.is_success() {
        let why = value["message"].as_str().unwrap_or("no message");
        return Err(format!("{method} {path}: {status}: {why}"));
    }
    Ok(value)
}

async fn send<I>(
    io: I,
    req: Request<Full<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
