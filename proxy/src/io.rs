//! The client connection's byte stream, as hyper reads and writes it, with one extra check: a
//! request head that carries both `Content-Length` and `Transfer-Encoding`; and one count: the
//! writes that succeeded, which tell the send timeout that the client is taking its response.
//!
//! hyper handles such a request safely (it uses the chunked framing and closes the connection
//! afterwards, as RFC 9112 section 6.1 allows) but removes the `Content-Length` header, so a
//! handler cannot see that it was there. Gantry answers such requests with 400, as nginx does
//! since 1.21.1: the [`FramingTracker`] follows request heads and bodies in the bytes read, and
//! records the index of a head with both headers for the request handler to refuse.
//!
//! The tracker reads heads line by line and skips `Content-Length` bodies by arithmetic. After a
//! chunked body, an upgrade or `CONNECT` it stops (the stream is then hyper's alone): a later
//! request on that connection with both headers is still handled safely by hyper, just not
//! refused with 400.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Activity;

/// Request heads seen so far and the first one that carried both framing headers.
#[derive(Debug, Default)]
pub struct FramingFlag {
    /// Index + 1 of the offending request head; 0 while there is none.
    violation: AtomicU64,
}

impl FramingFlag {
    /// Whether the request with this index (0-based, in arrival order) carried both
    /// `Content-Length` and `Transfer-Encoding`.
    #[inline]
    pub fn is_violation(&self, index: u64) -> bool {
        self.violation.load(Ordering::Acquire) == index + 1
    }
}

/// A client stream with framing tracking on the read side and progress counting on the write
/// side.
#[derive(Debug)]
pub struct ClientIo<S> {
    inner: S,
    tracker: Option<FramingTracker>,
    flag: Arc<FramingFlag>,
    activity: Arc<Activity>,
}

impl<S> ClientIo<S> {
    pub(crate) fn new(inner: S, flag: Arc<FramingFlag>, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            tracker: Some(FramingTracker::default()),
            flag,
            activity,
        }
    }

    /// The stream back, and where the tracker stands in it (see [`ClientIo::resume`]).
    pub(crate) fn into_parts(mut self) -> (S, Option<FramingTracker>) {
        if let Some(t) = &mut self.tracker
            && t.partial.is_empty()
        {
            t.partial = Vec::new();
        }
        (self.inner, self.tracker)
    }

    /// The same connection again after it was idle: the tracker goes on counting its requests.
    pub(crate) fn resume(
        inner: S,
        tracker: Option<FramingTracker>,
        flag: Arc<FramingFlag>,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            inner,
            tracker,
            flag,
            activity,
        }
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
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(t)) = (&res, &mut this.tracker) {
            if let Some(index) = t.feed(&buf.filled()[before..]) {
                this.flag.violation.store(index + 1, Ordering::Release);
            }
            if t.is_off() {
                this.tracker = None;
            }
        }
        res
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

/// Follows HTTP/1 request framing in a byte stream (see the module doc).
#[derive(Debug, Default)]
pub struct FramingTracker {
    state: State,
    /// The start of the current line when it spans reads (only its beginning matters).
    partial: Vec<u8>,
    head: Head,
    heads: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Head,
    Body(u64),
    Off,
}

#[derive(Debug, Default)]
struct Head {
    lines: u32,
    content_length: bool,
    length: u64,
    transfer_encoding: bool,
    opaque: bool,
}

/// Enough of a line to read the header names that matter and a Content-Length value.
const KEEP: usize = 64;

impl FramingTracker {
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Feeds bytes in the order they were read; returns the index of a request head that had both
    /// `Content-Length` and `Transfer-Encoding`, if one ended in them.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        let mut found = None;
        while !data.is_empty() {
            match self.state {
                State::Off => return found,
                State::Body(left) => {
                    let n = (left as usize).min(data.len());
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 { State::Head } else { State::Body(left) };
                }
                State::Head => match memchr::memchr(b'\n', data) {
                    None => {
                        let room = KEEP.saturating_sub(self.partial.len());
                        self.partial.extend_from_slice(&data[..room.min(data.len())]);
                        return found;
                    }
                    Some(nl) => {
                        let (line, rest) = data.split_at(nl);
                        data = &rest[1..];
                        if self.partial.is_empty() {
                            if let Some(i) = self.line(line) {
                                found = Some(i);
                            }
                        } else {
                            let room = KEEP.saturating_sub(self.partial.len());
                            self.partial.extend_from_slice(&line[..room.min(line.len())]);
                            let whole = std::mem::take(&mut self.partial);
                            if let Some(i) = self.line(&whole) {
                                found = Some(i);
                            }
                        }
                    }
                },
            }
        }
        found
    }

    fn line(&mut self, line: &[u8]) -> Option<u64> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let h = &mut self.head;
        if h.lines == 0 {
            // Empty lines before a request line are allowed (RFC 9112 section 2.2).
            if !line.is_empty() {
                h.lines = 1;
                h.opaque = line.starts_with(b"CONNECT ");
            }
            return None;
        }
        if !line.is_empty() {
            h.lines += 1;
            // Dispatch on the first letter: most lines (Host, Accept, User-Agent...) are
            // dismissed after one byte.
            match line[0] | 0x20 {
                b'c' if starts_with_ignore_case(line, b"content-length:") => {
                    h.content_length = true;
                    let v = line[15..].trim_ascii();
                    h.length = std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
                b't' if starts_with_ignore_case(line, b"transfer-encoding:") => h.transfer_encoding = true,
                b'u' if starts_with_ignore_case(line, b"upgrade:") => h.opaque = true,
                _ => {}
            }
            return None;
        }
        // The end of a head.
        let index = self.heads;
        self.heads += 1;
        let head = std::mem::take(&mut self.head);
        if head.content_length && head.transfer_encoding {
            self.state = State::Off;
            return Some(index);
        }
        self.state = if head.transfer_encoding || head.opaque {
            State::Off
        } else if head.length > 0 {
            State::Body(head.length)
        } else {
            State::Head
        };
        None
    }
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(stream: &[u8], piece: usize) -> (Option<u64>, FramingTracker) {
        let mut t = FramingTracker::default();
        let mut found = None;
        for chunk in stream.chunks(piece) {
            if let Some(i) = t.feed(chunk) {
                found = Some(i);
            }
        }
        (found, t)
    }

    #[test]
    fn finds_the_head_with_both_headers_at_any_read_boundary() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                       POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world\
                       POST /y HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for piece in [1, 2, 3, 7, 16, 1000] {
            let (found, t) = feed_in_pieces(stream, piece);
            assert_eq!(found, Some(2), "piece {piece}");
            assert!(t.is_off());
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_skipped() {
        let body = b"X\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (found, t) = feed_in_pieces(&stream, 5);
        assert_eq!(found, None);
        assert_eq!(t.heads, 2);
    }

    #[test]
    fn stops_after_chunked_bodies_upgrades_and_connect() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let (found, t) = feed_in_pieces(head, 4);
            assert_eq!(found, None);
            assert!(t.is_off());
        }
    }
}
