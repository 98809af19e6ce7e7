//! The `compress` middleware on the response path: the coding is chosen from `Accept-Encoding`
//! when the request is admitted, and the backend's body is encoded as it streams (never held
//! whole), with `async-compression`'s encoders.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use gantry_config::middleware::{Compress, Encoding};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, response::Parts};
use http_body::Body;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::response::ResponseBody;

/// The coding to use for a client that sent this `Accept-Encoding` (RFC 9110 section 12.5.3):
/// the highest q-value among ours, ties broken by our order; none that the client refuses
/// (`q=0`, or `*;q=0` for those it does not name).
pub fn negotiate(accept: Option<&HeaderValue>, ours: &[Encoding]) -> Option<Encoding> {
    let text = accept?.to_str().ok()?;
    let mut wildcard: Option<f32> = None;
    let mut named: Vec<(&str, f32)> = Vec::new();
    for item in text.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if name == "*" {
            wildcard = Some(q);
        } else {
            named.push((name, q));
        }
    }
    let q_of = |e: Encoding| {
        named
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(e.token()))
            .map(|(_, q)| *q)
            .or(wildcard)
            .unwrap_or(0.0)
    };
    let mut best: Option<(Encoding, f32)> = None;
    for &e in ours {
        let q = q_of(e);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// Whether this response may be compressed: a complete representation (not a range, not
/// already encoded, not `no-transform`) of a listed content type, and not known to be small.
pub fn compressible(c: &Compress, parts: &Parts) -> bool {
    let h = &parts.headers;
    if matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
    ) || parts.status.is_informational()
        || h.contains_key(header::CONTENT_ENCODING)
        || h.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    if h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-transform"))
    {
        return false;
    }
    if let Some(len) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len < c.min_bytes
    {
        return false;
    }
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let listed = |list: &[String]| {
        list.iter().any(|t| {
            if t.ends_with('/') {
                ct.starts_with(t.as_str())
            } else {
                ct == *t
            }
        })
    };
    listed(&c.content_types) && !listed(&c.exclude_content_types)
}

/// Marks the response as encoded (or, with `None`, as one that could have been).
pub fn set_headers(h: &mut HeaderMap, encoding: Option<Encoding>) {
    let varies = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*")
        });
    if !varies {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let Some(e) = encoding else { return };
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e.token()));
    // The bytes differ from the identity representation: a strong validator becomes weak.
    if let Some(etag) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}"))
    {
        h.insert(header::ETAG, weak);
    }
}

/// A response body encoded as it streams.
pub struct Encoded {
    out: ReaderStream<Pin<Box<dyn AsyncRead + Send>>>,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

impl Encoded {
    pub fn new(body: ResponseBody, encoding: Encoding) -> Self {
        let source = StreamReader::new(DataFrames(body));
        // Levels for on-the-fly compression: gzip 6 and zstd 3 (their defaults), brotli 4
        // (its default, 11, is for compressing once and serving many times). Windows of
        // 512 KiB keep each stream's encoder near a megabyte (brotli's and zstd's defaults
        // for large inputs take 4-8 MiB per response), as nginx's brotli module does.
        let reader: Pin<Box<dyn AsyncRead + Send>> = match encoding {
            Encoding::Gzip => Box::pin(GzipEncoder::with_quality(source, Level::Default)),
            Encoding::Zstd => Box::pin(ZstdEncoder::with_quality_and_params(
                source,
                Level::Default,
                &[async_compression::zstd::CParameter::window_log(19)],
            )),
            Encoding::Br => Box::pin(BrotliEncoder::with_params(
                source,
                async_compression::brotli::EncoderParams::default()
                    .quality(Level::Precise(4))
                    .window_size(19)
                    .block_size(16),
            )),
        };
        Encoded {
            out: ReaderStream::with_capacity(reader, 16 * 1024),
        }
    }

    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        futures_core::Stream::poll_next(Pin::new(&mut self.out), cx)
    }
}

/// The data of a body as a stream of byte chunks (trailers are dropped: an encoded
/// representation is a plain HTTP response).
struct DataFrames(ResponseBody);

impl futures_core::Stream for DataFrames {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io::Error::other(e)))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => Poll::Ready(Some(Ok(d))),
                    _ => continue,
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    fn pick(accept: &str) -> Option<Encoding> {
        negotiate(Some(&HeaderValue::from_str(accept).unwrap()), &OURS)
    }

    #[test]
    fn the_coding_follows_q_values_then_our_order() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(pick("gzip, br"), Some(Encoding::Br));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0.1"), Some(Encoding::Gzip));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("identity;q=0, gzip;q=0"), None);
        assert_eq!(pick("*"), Some(Encoding::Zstd));
        assert_eq!(pick("*;q=0.5, zstd;q=0"), Some(Encoding::Br));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("GZIP"), Some(Encoding::Gzip));
        assert_eq!(negotiate(None, &OURS), None);
    }
}
