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
    /// The instances sharing etcd, when there is etcd.
    pub fleet: Option<crate::fleet::FleetView>,
}

/// What `GET /api/v1/` answers (and `GET /` to a client that does not ask for HTML): the
/// endpoints and what each is for.
const INDEX: &str = "\
Gantry admin API

GET  /                       the dashboard (to a browser; this text to other clients)

GET  /metrics                Prometheus metrics
GET  /healthz                200 while the process runs
GET  /readyz                 200 once the first routing table is live (503 while draining)
GET  /api/v1/routes          the live routing table, each backend's state
GET  /api/v1/status          readiness, generation, each source's status, the last refused update
GET  /api/v1/versions        version weights and per-version requests, errors, p99
GET  /api/v1/rollouts        rollouts, their phase, step and decisions
GET  /api/v1/scaling         replica recommendations and the Docker scaler's actions
GET  /api/v1/certificates    TLS certificates: ACME state, issuer, expiry, last error, next attempt
GET  /api/v1/fleet           with etcd: the instances sharing it, the revision each serves, what each drives

Writes need Authorization: Bearer <token> (GANTRY_ADMIN_TOKEN or [admin] token_file):
PUT|DELETE /api/v1/services/<name>/weights
POST       /api/v1/services/<name>/drain
POST       /api/v1/rollouts/<service>[/pause|/resume|/abort]
POST       /api/v1/token              checks a token, changes nothing
";

/// The dashboard: plain HTML, CSS and JavaScript, embedded in the binary (no CDN, works offline).
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/app.css");
const DASHBOARD_ICON: &str = include_str!("dashboard/icon.svg");

/// Every admin answer's policy: scripts and styles only from the admin listener's own files (no
/// inline script), data only from its own API, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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
        let mut r = if req.method() != Method::GET && req.method() != Method::HEAD {
            self.write(req).await
        } else if req.uri().path() == "/api/v1/fleet" {
            self.fleet().await
        } else {
            self.read(&req)
        };
        let h = r.headers_mut();
        for (name, value) in [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ] {
            h.insert(name, header::HeaderValue::from_static(value));
        }
        r
    }

    /// `GET /api/v1/fleet`: read from etcd when asked; without etcd, this instance alone.
    async fn fleet(&self) -> Answer {
        match &self.fleet {
            Some(f) => json_response(StatusCode::OK, &f.view().await),
            None => json_response(
                StatusCode::OK,
                &serde_json::json!({"etcd": false, "instance": self.rollouts.view().instance, "instances": []}),
            ),
        }
    }

    fn read(&self, req: &Request<Incoming>) -> Answer {
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
            "/" if wants_html(req) => asset(DASHBOARD_HTML, "text/html; charset=utf-8"),
            "/" | "/api/v1" | "/api/v1/" => text(StatusCode::OK, INDEX.into()),
            "/dashboard/" => asset(DASHBOARD_HTML, "text/html; charset=utf-8"),
            "/dashboard" => {
                let mut r = text(StatusCode::PERMANENT_REDIRECT, "/dashboard/\n".into());
                r.headers_mut()
                    .insert(header::LOCATION, header::HeaderValue::from_static("/dashboard/"));
                r
            }
            "/dashboard/app.js" => asset(DASHBOARD_JS, "text/javascript; charset=utf-8"),
            "/dashboard/app.css" => asset(DASHBOARD_CSS, "text/css; charset=utf-8"),
            "/dashboard/icon.svg" | "/favicon.ico" => asset(DASHBOARD_ICON, "image/svg+xml"),
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
                        "/",
                        "/dashboard/",
                        "/metrics",
                        "/healthz",
                        "/readyz",
                        "/api/v1/routes",
                        "/api/v1/status",
                        "/api/v1/versions",
                        "/api/v1/rollouts",
                        "/api/v1/scaling",
                        "/api/v1/certificates",
                        "/api/v1/fleet",
                    ],
                },
            ),
        }
    }

    /// Writes: authenticated, validated in full before anything changes.
    async fn write(&self, req: Request<Incoming>) -> Answer {
        // A browser sends Origin with every cross-site write; the dashboard's own are same-origin.
        // (A cross-site page cannot send the bearer header without a CORS preflight, which this
        // API never answers; refusing by Origin as well makes that explicit.)
        if let Some(origin) = cross_origin(&req) {
            return error(
                StatusCode::FORBIDDEN,
                format!("cross-origin admin writes are refused (Origin: {origin})"),
            );
        }
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
            (Method::POST, ["api", "v1", "token"]) => {
                json_response(StatusCode::OK, &serde_json::json!({"token": "accepted"}))
            }
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
                    "no such endpoint: {m} {path} (writes: POST /api/v1/token, PUT|DELETE /api/v1/services/<name>/weights, POST /api/v1/services/<name>/drain, POST /api/v1/rollouts/<service>[/pause|/resume|/abort])"
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
                    ServiceView::new(&svc.spec, &svc.backends, svc.state.in_flight(), now),
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

/// Whether the client prefers HTML (a browser opening the admin address).
fn wants_html(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The `Origin` of a request from another site than the admin listener's own, if any: its
/// host and port differ from the `Host` the request was sent to.
fn cross_origin(req: &Request<Incoming>) -> Option<String> {
    let origin = req.headers().get(header::ORIGIN)?;
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let same = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
        .is_some_and(|o| Some(o) == host);
    (!same).then(|| String::from_utf8_lossy(origin.as_bytes()).into_owned())
}

fn asset(body: &'static str, content_type: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
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
