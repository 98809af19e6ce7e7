//! Request mirroring (shadow traffic): a share of the requests that go to a service's other
//! versions is copied to one version; the copies' answers are read and dropped, and counted in
//! `gantry_mirror_*` (what a rollout's shadow steps gate on).
//!
//! A copy never delays or fails the user's request: it is sent from a task of its own, a body
//! once the user's has been read through to the backend (copied as it streams, up to the
//! mirror's `max_body`), and at most `max_in_flight` copies per service are out at once; a copy
//! that cannot be sent is dropped and counted by reason. Copies carry `x-gantry-mirror: 1`, do
//! not count against the version's live figures, the backend's health or the retry budget, and
//! are never retried. Upgrades (WebSocket) and, unless `non_idempotent` is set, methods that are
//! not idempotent are not mirrored.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use gantry_config::mirror::Mirror;
use http::{HeaderValue, Request};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::backend::Upstream;
use crate::body::UpstreamBody;
use crate::conn::ConnInfo;
use crate::metrics::{Metrics, VersionMetrics};
use crate::snapshot::{PickContext, Placement, ServiceRuntime};
use crate::upstream::{is_idempotent, send};

/// Why a copy picked for mirroring was not sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dropped {
    /// `max_in_flight` copies are out.
    Busy,
    BodyTooLarge,
    /// The client's body did not arrive whole.
    Body,
    /// No backend of the version can take it.
    NoBackend,
}

/// The `reason` label of each [`Dropped`], in its order.
pub const DROP_REASONS: [&str; 4] = ["busy", "body_too_large", "body", "no_backend"];

const X_GANTRY_MIRROR: http::HeaderName = http::HeaderName::from_static("x-gantry-mirror");

/// A service's mirror in a snapshot: the settings, the group of the version mirrored to, and
/// the metric handles.
#[derive(Debug)]
pub struct MirrorRuntime {
    pub spec: Mirror,
    group: usize,
    metrics: VersionMetrics,
    /// By [`DROP_REASONS`].
    dropped: [IntCounter; 4],
}

impl MirrorRuntime {
    /// The runtime of `spec` on service `name`, whose version `spec.version` is group `group`.
    pub(crate) fn build(spec: &Mirror, name: &str, group: usize, metrics: &Metrics) -> Self {
        Self {
            spec: spec.clone(),
            group,
            metrics: metrics.mirror_version(name, &spec.version),
            dropped: DROP_REASONS.map(|r| metrics.mirror_dropped.with_label_values(&[name, r])),
        }
    }

    fn drop_for(&self, reason: Dropped) {
        self.dropped[reason as usize].inc();
    }
}

/// The copy of a mirrored request's body, taken as the user's body streams to its backend.
#[derive(Debug)]
pub struct Tee {
    buf: BytesMut,
    max: u64,
    done: Option<oneshot::Sender<Result<Bytes, Dropped>>>,
}

impl Tee {
    pub(crate) fn copy(&mut self, data: &Bytes) {
        if self.buf.len() as u64 + data.len() as u64 > self.max {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(Err(Dropped::BodyTooLarge));
            }
            self.buf = BytesMut::new();
            return;
        }
        if self.done.is_some() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The body has ended: the copy goes out.
    pub(crate) fn finish(self) {
        if let Some(tx) = self.done {
            let _ = tx.send(Ok(self.buf.freeze()));
        }
    }
}

impl ServiceRuntime {
    /// Mirrors `req` (on its way to backend `picked`) when the service's mirror picks it: the
    /// copy is sent by a task of its own; the request goes on as it was, its body copied as it
    /// streams when it has one.
    pub(crate) fn mirror(
        self: &Arc<Self>,
        picked: usize,
        req: Request<UpstreamBody>,
        conn: &Arc<ConnInfo>,
    ) -> Request<UpstreamBody> {
        let Some(m) = &self.mirror else { return req };
        if self.group_of_backend(picked) == Some(m.group)
            || (!m.spec.non_idempotent && !is_idempotent(req.method()))
            || fastrand::u32(0..100) >= m.spec.percent
        {
            return req;
        }
        let has_body = !http_body::Body::is_end_stream(req.body());
        if has_body && crate::forward::content_length(req.headers()).is_some_and(|n| n > m.spec.max_body) {
            m.drop_for(Dropped::BodyTooLarge);
            return req;
        }
        let Some(slot) = self.state.try_begin_mirror(m.spec.max_in_flight) else {
            m.drop_for(Dropped::Busy);
            return req;
        };
        let ctx = PickContext {
            hash: None,
            sticky: None,
            placement: Placement::Pinned(m.group),
            now: Instant::now(),
        };
        let Some(pick) = self.pick(&ctx, &[]) else {
            m.drop_for(Dropped::NoBackend);
            return req;
        };
        let mut copy = Request::new(());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy.headers_mut()
            .insert(X_GANTRY_MIRROR, HeaderValue::from_static("1"));
        let (req, body) = if has_body {
            let (tx, rx) = oneshot::channel();
            let tee = Tee {
                buf: BytesMut::new(),
                max: m.spec.max_body,
                done: Some(tx),
            };
            let (parts, body) = req.into_parts();
            (Request::from_parts(parts, body.teed(tee)), Some(rx))
        } else {
            (req, None)
        };
        let (service, conn) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let body = match body {
                None => UpstreamBody::empty(),
                Some(rx) => match rx.await {
                    Ok(Ok(bytes)) => UpstreamBody::full(bytes),
                    Ok(Err(reason)) => return service.dropped(reason),
                    Err(_) => return service.dropped(Dropped::Body),
                },
            };
            service.send_copy(pick.index, copy.map(|()| body), &conn).await;
        });
        req
    }

    fn dropped(&self, reason: Dropped) {
        if let Some(m) = &self.mirror {
            m.drop_for(reason);
        }
    }

    /// Sends a copy to backend `i`, reads its answer through and counts it.
    async fn send_copy(&self, i: usize, req: Request<UpstreamBody>, conn: &ConnInfo) {
        let Some(m) = &self.mirror else { return };
        let backend = &self.backends[i];
        let _in_flight = backend.begin();
        let start = Instant::now();
        let timeouts = self.spec.timeouts;
        let (status, sender) = match send(backend, self, req, conn, start).await {
            Ok((resp, sender)) => (resp.status().as_u16(), Some((resp.into_body(), sender))),
            Err(e) => (e.error.status().as_u16(), None),
        };
        m.metrics.observe(status, start.elapsed().as_secs_f64());
        // The answer is read through (so that the connection can serve again) and dropped.
        if let Some((mut body, mut sender)) = sender {
            let drained = tokio::time::timeout(timeouts.response_header, async {
                // The connection moves on as its body is read (it has no task of its own).
                while let Some(frame) =
                    std::future::poll_fn(|cx| Upstream::poll_body(sender.as_mut(), &mut body, cx)).await
                {
                    if frame.is_err() {
                        return false;
                    }
                }
                true
            })
            .await;
            if let (Ok(true), Some(sender)) = (drained, sender) {
                backend.put_idle(sender, self.spec.limits.max_idle_per_backend as usize);
            }
        }
    }
}
