//! Active health checks: one task per checked backend, reconciled with every snapshot. A check
//! result lands in the backend's passive [`Health`](crate::backend::Health) state, which is all
//! the request path reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gantry_config::{HealthCheck, Scheme, SendProxyProtocol};
use http::{HeaderValue, Request, header};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backend::{BackendKey, BackendState};
use crate::body::UpstreamBody;
use crate::snapshot::ServiceRuntime;

/// The active checkers: one task per checked backend, reconciled with every snapshot.
#[derive(Debug, Default)]
pub struct Checkers {
    tasks: Mutex<HashMap<BackendKey, (Check, JoinHandle<()>)>>,
}

/// What a checker does: the check, and the PROXY header its connections start with when the
/// service sends them (a `LOCAL` one: the check is Gantry's own connection).
type Check = (HealthCheck, Option<SendProxyProtocol>);

impl Checkers {
    /// Follows a change of services: starts checks for the new services' backends that need
    /// them, restarts those whose check changed, and stops those of the old services' backends
    /// that no longer need one (they count as passing again).
    pub fn update(
        &self,
        old: &[Arc<ServiceRuntime>],
        new: &[Arc<ServiceRuntime>],
        metrics: &crate::metrics::Metrics,
    ) {
        let mut want: HashMap<BackendKey, (Check, Arc<BackendState>)> = HashMap::new();
        let mut unchecked = Vec::new();
        for svc in new {
            for b in &svc.backends {
                match &svc.spec.health_check {
                    Some(hc) => {
                        let check = (hc.clone(), svc.spec.proxy_protocol);
                        want.insert(b.key.clone(), (check, b.clone()));
                    }
                    None => unchecked.push(b.clone()),
                }
            }
        }
        let Ok(mut tasks) = self.tasks.lock() else { return };
        for key in old.iter().flat_map(|s| s.backends.iter().map(|b| &b.key)) {
            if !want
                .get(key)
                .is_some_and(|(w, _)| tasks.get(key).is_some_and(|(hc, _)| hc == w))
                && let Some((_, task)) = tasks.remove(key)
            {
                task.abort();
            }
        }
        for (key, (check, backend)) in want {
            if tasks.contains_key(&key) {
                continue;
            }
            let counters = [
                metrics
                    .health_checks
                    .with_label_values(&[&key.service, &backend.label, "pass"]),
                metrics
                    .health_checks
                    .with_label_values(&[&key.service, &backend.label, "fail"]),
            ];
            let task = tokio::spawn(run_checks(backend, check.clone(), counters));
            tasks.insert(key, (check, task));
        }
        for b in unchecked {
            b.health.set_check(true, "");
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for (_, task) in tasks.values() {
                task.abort();
            }
        }
    }
}

async fn run_checks(
    backend: Arc<BackendState>,
    (hc, proxy): Check,
    [pass, fail]: [prometheus::IntCounter; 2],
) {
    let preamble = proxy.map(|v| crate::proxy_protocol::header(v, None));
    let mut conn: Option<http1::SendRequest<UpstreamBody>> = None;
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut ever_passed = false;
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result =
            tokio::time::timeout(hc.timeout, probe(&backend, &hc, preamble.as_deref(), &mut conn)).await;
        let verdict = match result {
            Ok(Ok(status)) if hc.passes(status) => Ok(status),
            Ok(Ok(status)) => Err(format!("health check answered {status}")),
            Ok(Err(e)) => Err(format!("health check failed: {e}")),
            Err(_) => Err(format!(
                "health check timed out after {}",
                gantry_config::duration::format(hc.timeout)
            )),
        };
        match verdict {
            Ok(_) => {
                pass.inc();
                passes += 1;
                failures = 0;
                // A new backend needs one passing check; a failed one must prove itself longer.
                let needed = if ever_passed { hc.healthy_threshold } else { 1 };
                if passes >= needed {
                    if !ever_passed || !backend.health.eligible_by_check() {
                        info!(backend = %backend.label, service = %backend.key.service, "health check passes; backend ready");
                    }
                    ever_passed = true;
                    backend.health.set_check(true, "");
                }
            }
            Err(why) => {
                fail.inc();
                conn = None;
                failures += 1;
                passes = 0;
                if failures >= hc.unhealthy_threshold || !ever_passed {
                    if backend.health.eligible_by_check() {
                        warn!(backend = %backend.label, service = %backend.key.service, reason = %why, "backend failed its health check");
                    }
                    backend.health.set_check(false, &why);
                } else {
                    debug!(backend = %backend.label, reason = %why, failures, "health check failed");
                }
            }
        }
    }
}

/// One check request on the checker's own connection (not the traffic pool).
async fn probe(
    backend: &BackendState,
    hc: &HealthCheck,
    preamble: Option<&[u8]>,
    conn: &mut Option<http1::SendRequest<UpstreamBody>>,
) -> Result<u16, String> {
    let host = hc.host.clone().unwrap_or_else(|| backend.key.url.authority());
    let req = Request::builder()
        .method(hc.method.as_str())
        .uri(hc.path.as_str())
        .header(
            header::HOST,
            HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
        )
        .header(header::USER_AGENT, "gantry-health-check")
        .body(UpstreamBody::empty())
        .map_err(|e| e.to_string())?;
    if backend.key.url.scheme == Scheme::H2c {
        let mut sender = backend.h2_sender(hc.timeout).await.map_err(|e| e.to_string())?;
        let mut req = req;
        *req.uri_mut() = format!("http://{host}{}", hc.path)
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        *req.version_mut() = http::Version::HTTP_2;
        return sender
            .send_request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
    }
    let sender = match conn {
        Some(s) if !s.is_closed() => s,
        _ => {
            let stream = backend
                .tcp(hc.timeout, preamble)
                .await
                .map_err(|e| e.to_string())?;
            let (s, c) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            conn.insert(s)
        }
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // Read the body to its end so that the connection can be used again.
    let mut body = resp.into_body();
    while let Some(frame) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)).await
    {
        frame.map_err(|e| e.to_string())?;
    }
    Ok(status)
}
