//! The admin listener: metrics, health, readiness, and the JSON API under `/api/v1/`.
//!
//! It listens on loopback by default. It is read-only here; a listener on a non-loopback address
//! is logged as a warning at start.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::debug;

use crate::status::Status;
use gantry_proxy::{Proxy, Shutdown};

#[derive(Debug)]
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub status: Arc<Status>,
    pub registry: Registry,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req)) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin connection error") },
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                    }
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "only GET is supported here"}),
            );
        }
        match path {
            "/metrics" => {
                let mut buf = Vec::new();
                let encoder = TextEncoder::new();
                if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics failed: {e}\n"),
                    );
                }
                let mut r = Response::new(Full::new(Bytes::from(buf)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                if self.status.is_ready() {
                    text(StatusCode::OK, "ready\n".into())
                } else if self.status.is_draining() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: shutting down\n".into(),
                    )
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no routing table yet\n".into(),
                    )
                }
            }
            "/api/v1/routes" => json_response(StatusCode::OK, &self.routes()),
            "/api/v1/status" => json_response(StatusCode::OK, &self.status_json()),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no such endpoint {path:?}"), "endpoints": [
                    "/metrics", "/healthz", "/readyz", "/api/v1/routes", "/api/v1/status"
                ]}),
            ),
        }
    }

    /// The live routing table: routers in evaluation order per entrypoint is implied by their
    /// priority; services with each backend's live state.
    fn routes(&self) -> Value {
        let snap = self.proxy.snapshot();
        let services: serde_json::Map<String, Value> = snap
            .services()
            .map(|svc| {
                let mut v = serde_json::to_value(&*svc.spec).unwrap_or(Value::Null);
                if let Some(backends) = v.get_mut("backends").and_then(Value::as_array_mut) {
                    for (b, state) in backends.iter_mut().zip(&svc.backends) {
                        if let Some(o) = b.as_object_mut() {
                            let now = gantry_proxy::backend::nanos_since_epoch(std::time::Instant::now());
                            o.insert("state".into(), json!(state.health.phase(now).as_str()));
                            let reason = state.health.reason();
                            if !reason.is_empty() {
                                o.insert("reason".into(), json!(reason));
                            }
                            o.insert("ejections".into(), json!(state.health.ejections()));
                            o.insert(
                                "ejected_for_ms".into(),
                                json!(state.health.ejected_for(now).as_millis() as u64),
                            );
                            o.insert("in_flight".into(), json!(state.in_flight()));
                            o.insert("open_connections".into(), json!(state.open_connections()));
                            o.insert("idle_connections".into(), json!(state.idle_connections()));
                        }
                    }
                }
                (svc.name.to_string(), v)
            })
            .collect();
        json!({
            "generation": snap.generation,
            "entrypoints": snap.table.entrypoints(),
            "routers": snap.table.routes().map(|r| (r.name.to_string(), r.router())).collect::<BTreeMap<_, _>>(),
            "services": services,
        })
    }

    fn status_json(&self) -> Value {
        let inner = self.status.snapshot();
        json!({
            "ready": self.status.is_ready(),
            "generation": self.proxy.snapshot().generation,
            "reload_failures": self.status.reload_failures(),
            "sources": inner.sources,
            "last_error": inner.last_error,
        })
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
