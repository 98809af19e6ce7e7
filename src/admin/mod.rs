//! The admin listener: metrics, health, readiness, and the JSON API under `/api/v1/`.
//!
//! It listens on loopback by default; a listener on a non-loopback address is logged as a warning
//! at start. Reads are open to whoever reaches the listener; writes (weights, drain, rollouts)
//! need `Authorization: Bearer <token>`, and without a configured token they are refused.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use gantry_config::rollout::RolloutSpec;
use gantry_control::publish::Publisher;
use gantry_proxy::{Proxy, Shutdown};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::rollout::{Command, RolloutError, Rollouts};

mod bodies;
mod views;

use views::{
    Drained, ErrorView, NotFound, RolloutStarted, RoutesView, ScalerView, ScalingView, ServiceVersions,
    ServiceView, StatusView, VersionFigures, VersionsView, WeightsSet,
};

#[derive(Debug)]
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub status: Arc<Publisher>,
    pub registry: Registry,
    pub rollouts: Arc<Rollouts>,
    pub scaling: Arc<crate::scaling::Scaling>,
    pub scaler: Option<Arc<crate::scaler::Scaler>>,
    /// The certificate manager, when ACME resolvers are configured.
    pub acme: Option<gantry_control::acme::Acme>,
    /// The bearer token of writes; `None`: writes are refused.
    pub token: Option<String>,
}

/// What `GET /` answers: the endpoints and what each is for.
const INDEX: &str = "\
Gantry admin API

GET  /metrics                Prometheus metrics
GET  /healthz                200 while the process runs
GET  /readyz                 200 once the first routing table is live (503 while draining)
GET  /api/v1/routes          the live routing table, each backend's state
GET  /api/v1/status          readiness, generation, each source's status, the last refused update
GET  /api/v1/versions        version weights and per-version requests, errors, p99
GET  /api/v1/rollouts        rollouts, their phase, step and decisions
GET  /api/v1/scaling         replica recommendations and the Docker scaler's actions
GET  /api/v1/certificates    TLS certificates: ACME state, issuer, expiry, last error, next attempt

Writes need Authorization: Bearer <token> (GANTRY_ADMIN_TOKEN or [admin] token_file):
PUT|DELETE /api/v1/services/<name>/weights
POST       /api/v1/services/<name>/drain
POST       /api/v1/rollouts/<service>[/pause|/resume|/abort]
";

/// Admin request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

type Answer = Response<Full<Bytes>>;

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json_response(
        status,
        &ErrorView {
            error: message.into(),
        },
    )
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
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
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

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return self.write(req).await;
        }
        let path = req.uri().path();
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
            "/" => text(StatusCode::OK, INDEX.into()),
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
            "/api/v1/routes" => self.routes(),
            "/api/v1/status" => json_response(StatusCode::OK, &self.status_view()),
            "/api/v1/versions" => self.versions(),
            "/api/v1/rollouts" => json_response(StatusCode::OK, &self.rollouts.view()),
            "/api/v1/scaling" => json_response(StatusCode::OK, &self.scaling_view()),
            "/api/v1/certificates" => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "acme": self.acme.is_some(),
                    "certificates": match &self.acme {
                        Some(a) => a.view(),
                        None => gantry_control::acme::configured(&self.proxy),
                    },
                }),
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &NotFound {
                    error: format!("no such endpoint {path:?}"),
                    endpoints: &[
                        "/metrics",
                        "/healthz",
                        "/readyz",
                        "/api/v1/routes",
                        "/api/v1/status",
                        "/api/v1/versions",
                        "/api/v1/rollouts",
                        "/api/v1/scaling",
                        "/api/v1/certificates",
                    ],
                },
            ),
        }
    }

    /// Writes: authenticated, validated in full before anything changes.
    async fn write(&self, req: Request<Incoming>) -> Answer {
        let Some(token) = &self.token else {
            return error(
                StatusCode::FORBIDDEN,
                "admin writes are disabled: set GANTRY_ADMIN_TOKEN or [admin] token_file",
            );
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "admin writes need Authorization: Bearer <token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (Method::PUT, ["api", "v1", "services", svc, "weights"]) => self.set_weights(svc, &body).await,
            (Method::DELETE, ["api", "v1", "services", svc, "weights"]) => {
                if self.proxy.snapshot().service_named(svc).is_none() {
                    return error(StatusCode::NOT_FOUND, format!("no service {svc:?}"));
                }
                match self.rollouts.set_weights(svc, None).await {
                    Ok(revision) => json_response(
                        StatusCode::OK,
                        &WeightsSet {
                            service: svc,
                            weights: None,
                            etcd_revision: revision,
                        },
                    ),
                    Err(e) => refused(&e),
                }
            }
            (Method::POST, ["api", "v1", "services", svc, "drain"]) => self.drain(svc, &body),
            (Method::POST, ["api", "v1", "rollouts", svc]) => {
                let svc = svc.to_string();
                let spec = match RolloutSpec::from_json(&svc, &body, "admin API") {
                    Ok(s) => s,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string().trim_end()),
                };
                if let Some(why) = self.check_versions(&svc, [spec.stable.as_str(), spec.canary.as_str()]) {
                    return why;
                }
                match self.rollouts.start(spec).await {
                    Ok(()) => json_response(
                        StatusCode::ACCEPTED,
                        &RolloutStarted {
                            service: &svc,
                            started: true,
                        },
                    ),
                    Err(e) => refused(&e),
                }
            }
            (Method::POST, ["api", "v1", "rollouts", svc, cmd]) => {
                let cmd = match *cmd {
                    "pause" => Command::Pause,
                    "resume" => Command::Resume,
                    "abort" => Command::Abort,
                    other => {
                        return error(
                            StatusCode::NOT_FOUND,
                            format!("no rollout command {other:?}: use pause, resume or abort"),
                        );
                    }
                };
                match self.rollouts.command(svc, cmd).await {
                    Ok(state) => json_response(StatusCode::OK, &state),
                    Err(e) => refused(&e),
                }
            }
            (m, _) => error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint: {m} {path} (writes: PUT|DELETE /api/v1/services/<name>/weights, POST /api/v1/services/<name>/drain, POST /api/v1/rollouts/<service>[/pause|/resume|/abort])"
                ),
            ),
        }
    }

    /// Whether the backends of `service` carry each version `wanted`; else the answer that
    /// refuses the request.
    fn check_versions<'a>(&self, service: &str, wanted: impl IntoIterator<Item = &'a str>) -> Option<Answer> {
        let snap = self.proxy.snapshot();
        let Some(svc) = snap.service_named(service) else {
            return Some(error(StatusCode::NOT_FOUND, format!("no service {service:?}")));
        };
        let known: std::collections::BTreeSet<&str> = svc
            .spec
            .backends
            .iter()
            .filter_map(|b| b.version.as_deref())
            .collect();
        for v in wanted {
            if !known.contains(v) {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    format!("{v:?} is not a version of {service} (its backends carry {known:?})"),
                ));
            }
        }
        None
    }

    async fn set_weights(&self, service: &str, body: &[u8]) -> Answer {
        let weights = match bodies::weights(body) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if let Some(refusal) = self.check_versions(service, weights.keys().map(String::as_str)) {
            return refusal;
        }
        match self.rollouts.set_weights(service, Some(weights.clone())).await {
            Ok(revision) => {
                info!(%service, ?weights, "weights set through the admin API");
                json_response(
                    StatusCode::OK,
                    &WeightsSet {
                        service,
                        weights: Some(weights),
                        etcd_revision: revision,
                    },
                )
            }
            Err(e) => refused(&e),
        }
    }

    fn drain(&self, service: &str, body: &[u8]) -> Answer {
        let wanted = match bodies::drain(body) {
            Ok(url) => url,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let snap = self.proxy.snapshot();
        let Some(svc) = snap.service_named(service) else {
            return error(StatusCode::NOT_FOUND, format!("no service {service:?}"));
        };
        let Some(b) = svc.backends.iter().find(|b| b.key.url.to_string() == wanted) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("{wanted:?} is not a backend of {service}"),
            );
        };
        b.drain("drained through the admin API");
        info!(%service, backend = %wanted, "backend drained through the admin API");
        json_response(
            StatusCode::OK,
            &Drained {
                service,
                backend: &wanted,
                state: "draining",
            },
        )
    }

    /// Every scaled service's recommendation with its inputs, and what the Docker scaler did.
    fn scaling_view(&self) -> ScalingView {
        ScalingView {
            services: self.scaling.recommendations().into_values().collect(),
            scaler: match &self.scaler {
                None => ScalerView {
                    enabled: false,
                    busy: None,
                    actions: None,
                },
                Some(s) => ScalerView {
                    enabled: true,
                    busy: Some(s.busy()),
                    actions: Some(s.history()),
                },
            },
        }
    }

    /// Each service with versions: its weights and each version's figures since start.
    fn versions(&self) -> Answer {
        let snap = self.proxy.snapshot();
        let services = snap
            .services()
            .filter(|s| s.versions().next().is_some())
            .map(|s| {
                let versions = s
                    .versions()
                    .map(|(v, w)| (v.to_string(), VersionFigures::of(&self.proxy, &s.name, v, w)))
                    .collect();
                (
                    s.name.to_string(),
                    ServiceVersions {
                        versions,
                        canary: &s.spec.canary,
                    },
                )
            })
            .collect();
        json_response(
            StatusCode::OK,
            &VersionsView {
                generation: snap.generation,
                services,
            },
        )
    }

    /// The live routing table: routers (their evaluation order is implied by their priority) and
    /// services with each backend's live state.
    fn routes(&self) -> Answer {
        let snap = self.proxy.snapshot();
        let now = std::time::Instant::now();
        let services = snap
            .services()
            .map(|svc| {
                (
                    svc.name.to_string(),
                    ServiceView::new(&svc.spec, &svc.backends, now),
                )
            })
            .collect();
        json_response(
            StatusCode::OK,
            &RoutesView {
                generation: snap.generation,
                entrypoints: snap.table.entrypoints(),
                routers: snap
                    .table
                    .routes()
                    .map(|r| (r.name.to_string(), r.router()))
                    .collect(),
                services,
                middlewares: snap.table.middlewares().map(|(n, m)| (&**n, &**m)).collect(),
            },
        )
    }

    fn status_view(&self) -> StatusView {
        let inner = self.status.snapshot();
        StatusView {
            ready: self.status.is_ready(),
            generation: self.proxy.snapshot().generation,
            reload_failures: self.status.reload_failures(),
            sources: inner.sources,
            last_error: inner.last_error,
        }
    }
}

/// Compares without stopping at the first difference (the time does not tell a guesser how
/// much of the token was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one place where a rollout error becomes a status code.
fn refused(e: &RolloutError) -> Answer {
    let code = match e {
        RolloutError::NotFound(_) => StatusCode::NOT_FOUND,
        RolloutError::Conflict(_) => StatusCode::CONFLICT,
        RolloutError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RolloutError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e.to_string())
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

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
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
