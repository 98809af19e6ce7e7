//! The body of a response sent to a client: Gantry's own short answers, or a backend's body
//! streamed through with the [`Lease`] that keeps its connection and in-flight count accounted
//! for until the body's end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLogger, Line};
use crate::backend::{BackendState, InFlight, Upstream};
use crate::conn::ActiveRequest;

/// What keeps a backend exchange accounted for until the response body is finished: the
/// in-flight count, and the connection, which the body moves on as it is read (it has no task
/// of its own) and which goes back to the pool only once the backend's response has been read
/// to its end.
#[derive(Debug)]
pub struct Lease {
    pub(crate) in_flight: InFlight,
    pub(crate) sender: Option<Upstream>,
    pub(crate) max_idle: usize,
}

impl Lease {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.backend().put_idle(sender, self.max_idle);
        }
    }

    fn backend(&self) -> &Arc<BackendState> {
        self.in_flight.backend()
    }
}

/// The body of a response sent to a client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// Marks the client connection busy until this body is dropped (see `server`).
    active: Option<ActiveRequest>,
    /// The request's access log line, sent when the body ends or is dropped.
    log: Option<(Box<Line>, Arc<AccessLogger>)>,
}

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
    },
    Full(Option<Bytes>),
    /// A backend's body encoded by the `compress` middleware as it streams.
    Encoded(Box<crate::compress::Encoded>),
}

/// What can end a response body early: the backend's connection, or an encoder.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            active: None,
            log: None,
        }
    }

    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
            active: None,
            log: None,
        }
    }

    pub fn upstream(body: Incoming, lease: Lease) -> Self {
        let mut b = Self {
            kind: Kind::Upstream {
                body,
                lease: Some(lease),
            },
            active: None,
            log: None,
        };
        b.check_end();
        b
    }

    /// A body streamed from a connection that is not a backend's (an auth service's answer).
    pub(crate) fn unleased(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream { body, lease: None },
            active: None,
            log: None,
        }
    }

    /// This body, encoded as it streams.
    pub(crate) fn encoded(self, encoding: gantry_config::middleware::Encoding) -> Self {
        let active = None;
        Self {
            kind: Kind::Encoded(Box::new(crate::compress::Encoded::new(self, encoding))),
            active,
            log: None,
        }
    }

    pub(crate) fn set_log(&mut self, line: Box<Line>, log: Arc<AccessLogger>) {
        self.log = Some((line, log));
    }

    pub(crate) fn set_active(&mut self, active: ActiveRequest) {
        self.active = Some(active);
    }

    /// Returns the connection to the pool as soon as the backend's body is known to be complete.
    #[inline]
    fn check_end(&mut self) {
        if let Kind::Upstream { body, lease } = &mut self.kind
            && body.is_end_stream()
            && let Some(mut l) = lease.take()
        {
            l.release();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((line, log)) = self.log.take() {
            log.finish(line);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(a) = &mut this.active {
            a.polled();
        }
        let res = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, lease } => {
                let up = lease.as_mut().and_then(|l| l.sender.as_mut());
                let res = Upstream::poll_body(up, body, cx);
                match &res {
                    Poll::Ready(None) => {
                        if let Some(mut l) = lease.take() {
                            l.release();
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => this.check_end(),
                    // An error leaves the connection unusable: dropping the lease drops it.
                    Poll::Ready(Some(Err(_))) => *lease = None,
                    Poll::Pending => {}
                }
                res.map(|f| f.map(|r| r.map_err(BodyError::from)))
            }
            Kind::Encoded(e) => e
                .poll_data(cx)
                .map(|d| d.map(|r| r.map(Frame::data).map_err(BodyError::from))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(a) = &mut this.active {
                a.yielded();
            }
            if let (Some((line, _)), Some(data)) = (&mut this.log, frame.data_ref()) {
                line.sent(data.len());
            }
        }
        res
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Encoded(_) => false,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Encoded(_) => SizeHint::default(),
        }
    }
}
