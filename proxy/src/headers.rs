//! What the backend sees of a request: origin-form target (prefix stripped), Host, the
//! `X-Forwarded-*` headers, and no hop-by-hop headers (RFC 9110 section 7.6.1) either way.

use std::net::IpAddr;

use gantry_config::Scheme;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version, header};

use crate::body::UpstreamBody;
use crate::conn::ConnInfo;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Where and how a request goes upstream.
pub(crate) struct Target<'a> {
    /// The Host header, or the HTTP/2 :authority.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) host_is_header: bool,
    pub(crate) strip_prefix: Option<&'a str>,
    pub(crate) scheme: Scheme,
    /// The protocol of an upgrade (WebSocket) to pass on.
    pub(crate) upgrade: Option<HeaderValue>,
}

/// Turns a client request into the request for the backend: HTTP/1.1 with an origin-form URI
/// (prefix stripped if asked), or HTTP/2 with the client's host as :authority; hop-by-hop headers
/// removed (but an upgrade passed on); `X-Forwarded-*` set.
pub(crate) fn rewrite(req: Request<UpstreamBody>, conn: &ConnInfo, t: Target<'_>) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    let h2 = t.scheme == Scheme::H2c;
    if h2 {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let pq = match t.strip_prefix {
            Some(p) => origin_form(&parts.uri, Some(p)).to_string(),
            None => pq.to_string(),
        };
        let authority = t
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        parts.uri = format!("http://{authority}{pq}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
    } else {
        if parts.uri.scheme().is_some() || t.strip_prefix.is_some() {
            parts.uri = origin_form(&parts.uri, t.strip_prefix);
        }
        parts.version = Version::HTTP_11;
    }
    let h = &mut parts.headers;
    // What a client says about earlier hops is believed from trusted peers only; both go in
    // the same pass over the names.
    strip(h, true, !conn.trusted_peer);
    if let Some(host) = t.host {
        if h2 {
            h.remove(header::HOST);
        } else if !t.host_is_header {
            h.insert(header::HOST, host.clone());
        }
        if conn.trusted_peer {
            h.entry(X_FORWARDED_HOST.clone()).or_insert(host);
        } else {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    if let Some(proto) = t.upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
    }
    let proto = HeaderValue::from_static(conn.proto);
    if conn.trusted_peer {
        append_forwarded_for(h, &conn.client_ip_header);
        h.entry(X_FORWARDED_PROTO.clone()).or_insert(proto);
    } else {
        h.insert(X_FORWARDED_FOR.clone(), conn.client_ip_header.clone());
        h.insert(X_FORWARDED_PROTO.clone(), proto);
    }
    if let Some(p) = t.strip_prefix
        && let Ok(v) = HeaderValue::from_str(p)
    {
        h.insert(X_FORWARDED_PREFIX.clone(), v);
    }
    Request::from_parts(parts, body)
}

/// What a client says about earlier hops: every `X-Forwarded-*`, `X-Real-IP` and `Forwarded`.
#[inline]
fn is_forwarded(s: &[u8]) -> bool {
    // The first byte rules out almost every name at once.
    match s.first() {
        Some(b'x') => s.starts_with(b"x-forwarded-") || s == b"x-real-ip",
        Some(b'f') => s == b"forwarded",
        _ => false,
    }
}

/// The client's address as a trusted peer reports it: walking `X-Forwarded-For` from the
/// nearest hop back, the first address that is not itself trusted (or the farthest one when all
/// are). An entry that is not an address ends the walk: nothing before it can be believed.
pub(crate) fn client_address(h: &HeaderMap, conn: &ConnInfo) -> IpAddr {
    let mut client = conn.client_ip;
    let lines = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok());
    for entry in lines.flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !conn.trusted_ips.iter().any(|n| n.contains(&ip)) {
            break;
        }
    }
    client
}

fn origin_form(uri: &Uri, strip_prefix: Option<&str>) -> Uri {
    let path = uri.path();
    let path = match strip_prefix.and_then(|p| path.strip_prefix(p)) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        Some(rest) => return build_uri(&format!("/{rest}"), uri.query()),
        None => path,
    };
    build_uri(path, uri.query())
}

fn build_uri(path: &str, query: Option<&str>) -> Uri {
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    text.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn append_forwarded_for(h: &mut HeaderMap, client: &HeaderValue) {
    let mut existing = match h.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
            return;
        }
        header::Entry::Occupied(e) => e,
    };
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for v in existing.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(client.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        existing.insert(v);
    }
}

/// Removes the headers that describe one connection, not the message (RFC 9110 section 7.6.1):
/// the fixed list and every header the `Connection` header names. `TE: trailers` is kept, since
/// it is the one value with end-to-end meaning (gRPC needs it). With `expect`, also removes
/// `Expect` (Gantry answers `100 Continue` itself).
///
/// One pass over the names finds what is present, so the common message (no hop-by-hop header,
/// or only `Connection: keep-alive`) costs a scan and one or two removals, not a dozen hashed
/// lookups (which cost 10% of a proxied request).
pub fn strip_hop_by_hop(h: &mut HeaderMap, expect: bool) {
    strip(h, expect, false);
}

/// [`strip_hop_by_hop`], and with `forwarded` also the client's forwarded headers, in one pass
/// (a second one only when more names qualify than one pass holds: every one goes).
fn strip(h: &mut HeaderMap, expect: bool, forwarded: bool) {
    loop {
        // The names that qualify (usually none on a request, `connection` on a response), in a
        // fixed array: no allocation, and the map cannot change while its names are walked.
        let mut present: [Option<HeaderName>; 8] = Default::default();
        let mut n = 0;
        let mut full = false;
        for name in h.keys() {
            let s = name.as_str();
            if is_hop_by_hop(s)
                || (expect && name == header::EXPECT)
                || (forwarded && is_forwarded(s.as_bytes()))
            {
                if n == present.len() {
                    full = true;
                    break;
                }
                present[n] = Some(name.clone());
                n += 1;
            }
        }
        for slot in &mut present[..n] {
            let Some(name) = slot.take() else { continue };
            if name == header::CONNECTION {
                remove_connection(h);
            } else if name == header::TE
                && h.get(header::TE)
                    .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
            {
                // Kept: the next pass finds it again, but each full pass removes the other seven.
                continue;
            } else {
                h.remove(name);
            }
        }
        if !full {
            return;
        }
    }
}

/// Removes `Connection` and the headers it names (one lookup for the header and its values).
fn remove_connection(h: &mut HeaderMap) {
    let header::Entry::Occupied(e) = h.entry(header::CONNECTION) else {
        return;
    };
    let mut named: Vec<HeaderName> = Vec::new();
    for v in e.remove_entry_mult().1 {
        // The usual value is one connection option: no splitting needed.
        if is_connection_option(v.as_bytes()) {
            continue;
        }
        for token in v.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if token.is_empty() || is_connection_option(token.as_bytes()) {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                && n != header::TE
            {
                named.push(n);
            }
        }
    }
    for n in named {
        h.remove(n);
    }
}

/// `close` and `keep-alive` are connection options, not header names (and the Keep-Alive header
/// is removed anyway).
fn is_connection_option(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
}

#[inline]
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret, te"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        h.append(header::EXPECT, HeaderValue::from_static("100-continue"));
        let mut response = h.clone();
        strip_hop_by_hop(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["te", "x-kept"]);
        strip_hop_by_hop(&mut response, false);
        let mut left: Vec<&str> = response.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["expect", "te", "x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.is_empty());
    }

    #[test]
    fn every_forwarded_header_goes_however_many_names_come_before_it() {
        let mut h = HeaderMap::new();
        for i in 0..20 {
            h.insert(
                HeaderName::from_bytes(format!("x-forwarded-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("6.6.6.6"));
        h.insert(
            HeaderName::from_static("x-real-ip"),
            HeaderValue::from_static("6.6.6.6"),
        );
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        h.insert(HeaderName::from_static("x-kept"), HeaderValue::from_static("1"));
        strip(&mut h, true, true);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["te", "x-kept"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let client = HeaderValue::from_static("10.1.1.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &client);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, &client);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.1.1");
    }

    #[test]
    fn prefix_stripping_keeps_a_rooted_path_and_the_query() {
        let u: Uri = "/api/users?x=1".parse().unwrap();
        assert_eq!(origin_form(&u, Some("/api")), "/users?x=1");
        assert_eq!(origin_form(&"/api".parse().unwrap(), Some("/api")), "/");
        assert_eq!(origin_form(&"/apix".parse().unwrap(), Some("/api")), "/x");
        assert_eq!(origin_form(&"http://h/a?b".parse().unwrap(), None), "/a?b");
    }
}
