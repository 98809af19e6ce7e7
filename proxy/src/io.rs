//! The client connection's byte stream, as hyper reads and writes it, with one count: the
//! writes that succeeded, which tell the send timeout that the client is taking its response.
//! And the peeks that sniff a connection's start (HTTP/2 preface, PROXY header).
//!
//! A request head with both `Content-Length` and `Transfer-Encoding` is handled safely by hyper
//! (it uses the chunked framing and closes the connection afterwards, as RFC 9112 section 6.1
//! allows) but hyper removes the `Content-Length` header; Gantry's hyper marks such a request
//! with `hyper::ext::AmbiguousFraming` (third_party/hyper/GANTRY.md) and the request handler
//! refuses it with 400, as nginx does since 1.21.1.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Activity;

/// A client stream with progress counting on the write side.
#[derive(Debug)]
pub struct ClientIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> ClientIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    /// The stream back.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    #[inline]
    fn count(&self, res: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.activity.wrote();
        }
        res
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        this.count(res)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count(res)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Looks at the start of a connection without consuming it: the bytes there now (at least one),
/// or `None` once the peer closed, the socket failed or `until` passed. The connection sniffers
/// (HTTP/2 preface, PROXY header) decide on these bytes and leave them for whoever reads next.
pub(crate) async fn peek_start(
    stream: &tokio::net::TcpStream,
    buf: &mut [u8],
    until: tokio::time::Instant,
) -> Option<usize> {
    match tokio::time::timeout_at(until, stream.peek(buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => None,
        Ok(Ok(n)) => Some(n),
    }
}

/// After a peek that saw only part of what it needs: `peek` returns at once with the same bytes
/// until more arrive, and nothing signals "more than these", so a short pause is the wait.
/// Rare: clients send a preface, and balancers a PROXY header, in one segment. `None` once
/// `until` has passed.
pub(crate) async fn wait_for_more(until: tokio::time::Instant) -> Option<()> {
    if tokio::time::Instant::now() >= until {
        return None;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    Some(())
}
