//! Body types of the request path. Bodies are streamed frame by frame in both directions; nothing
//! here collects a whole body but the bounded copy of a mirrored request's (see `mirror`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The body of a request sent to a backend: the client's body streamed through, with the
/// router's size limit enforced as it streams.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Inner,
    limit: u64,
    seen: u64,
    /// Where the bytes read so far are told (for the access log), when it is on.
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// A copy of the body for a mirrored request, when this one is mirrored.
    tee: Option<Box<crate::mirror::Tee>>,
}

#[derive(Debug)]
enum Inner {
    Incoming(Incoming),
    /// A body whose first frame was read before forwarding (to validate its framing).
    Prefixed(Option<Frame<Bytes>>, Incoming),
    /// A whole body in memory (a mirrored copy).
    Full(Option<Bytes>),
    Empty,
}

/// Why a request body stopped: the client's fault, never the backend's.
#[derive(Debug)]
pub enum BodyError {
    /// The client's body was malformed (bad chunk framing) or the client went away.
    Client(hyper::Error),
    /// More than the router's `max_body_bytes`.
    TooLarge(u64),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Client(e) => write!(f, "client request body: {e}"),
            BodyError::TooLarge(limit) => write!(f, "request body larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Client(e) => Some(e),
            BodyError::TooLarge(_) => None,
        }
    }
}

impl UpstreamBody {
    pub fn new(body: Incoming, limit: u64) -> Self {
        Self {
            inner: Inner::Incoming(body),
            limit,
            seen: 0,
            counted: None,
            tee: None,
        }
    }

    /// This body, copying what it reads into `tee` (for a mirrored request).
    pub(crate) fn teed(mut self, tee: crate::mirror::Tee) -> Self {
        self.tee = Some(Box::new(tee));
        self
    }

    /// A body held whole in memory.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            limit: bytes.len() as u64,
            inner: if bytes.is_empty() {
                Inner::Empty
            } else {
                Inner::Full(Some(bytes))
            },
            seen: 0,
            counted: None,
            tee: None,
        }
    }

    /// This body, telling `counter` how many bytes it has read.
    pub fn counted(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        counter.store(self.seen, std::sync::atomic::Ordering::Relaxed);
        self.counted = Some(counter);
        self
    }

    /// A body whose first frame has already been read.
    pub fn prefixed(first: Option<Frame<Bytes>>, rest: Incoming, limit: u64) -> Self {
        let seen = first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        Self {
            inner: Inner::Prefixed(first, rest),
            limit,
            seen,
            counted: None,
            tee: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            inner: Inner::Empty,
            limit: 0,
            seen: 0,
            counted: None,
            tee: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Incoming(b) => Pin::new(b).poll_frame(cx),
            Inner::Prefixed(first, rest) => match first.take() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Empty => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if let Some(c) = &this.counted {
                        c.store(this.seen, std::sync::atomic::Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        this.tee = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    if let Some(t) = &mut this.tee {
                        t.copy(d);
                    }
                }
                if this.tee.is_some()
                    && this.is_end_stream()
                    && let Some(t) = this.tee.take()
                {
                    t.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.tee = None;
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Ready(None) => {
                if let Some(t) = this.tee.take() {
                    t.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Incoming(b) => b.is_end_stream(),
            Inner::Prefixed(first, rest) => first.is_none() && rest.is_end_stream(),
            Inner::Full(b) => b.is_none(),
            Inner::Empty => true,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Incoming(b) => b.size_hint(),
            Inner::Prefixed(..) => SizeHint::default(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Empty => SizeHint::with_exact(0),
        }
    }
}
