//! Entrypoints (the addresses Gantry listens on), their TLS settings and their connection and
//! request limits: the validated types and their raw TOML shapes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::error::Errors;
use crate::size::FileSize;

/// A listening socket that accepts client traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    pub name: String,
    pub address: SocketAddr,
    /// TLS termination on this entrypoint (certificates come from `[tls]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EntrypointTls>,
    pub limits: ListenerLimits,
    /// Peers trusted to set forwarded headers (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`):
    /// from them such headers are kept and extended, and the client address is read from
    /// `X-Forwarded-For`; from anyone else they are replaced. Empty (the default): trust nobody.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_ips: Vec<IpNet>,
    /// Connections from `trusted_ips` may start with a PROXY protocol header (v1 or v2) that
    /// names the client; from anyone else such a header closes the connection.
    pub proxy_protocol: bool,
}

impl Entrypoint {
    pub fn new(name: &str, address: SocketAddr) -> Self {
        Self {
            name: name.to_string(),
            address,
            tls: None,
            limits: ListenerLimits::default(),
            trusted_ips: Vec::new(),
            proxy_protocol: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntrypointTls {
    /// "1.2" (TLS 1.2 and 1.3, the default) or "1.3" (1.3 only). Older versions are never offered.
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: bool,
}

impl Default for EntrypointTls {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::V1_2,
            http2: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// Limits and timeouts of a listener; all on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerLimits {
    /// Client connections open at once; more are closed at accept.
    pub max_connections: u32,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: u32,
    /// Most header fields in one request; more gets 431.
    pub max_headers: u32,
    /// A new connection must complete its TLS handshake and first request head in this time
    /// (slowloris).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub idle_timeout: Duration,
    /// A response the client takes nothing of for this long closes its connection: a client
    /// that stops reading, or an HTTP/2 client that never opens its flow-control window, cannot
    /// hold a backend connection and buffers forever (nginx's `send_timeout`).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub send_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 256,
        }
    }
}
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntrypoint {
    pub address: String,
    /// Present (even empty: `tls = {}`) means TLS is terminated on this entrypoint.
    pub tls: Option<FileEntrypointTls>,
    pub limits: Option<FileListenerLimits>,
    /// Networks (`10.0.0.0/8`) or addresses (`192.0.2.7`) trusted to set forwarded headers.
    pub trusted_ips: Option<Vec<String>>,
    /// Accept PROXY protocol headers from `trusted_ips`.
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntrypointTls {
    pub min_version: Option<String>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerLimits {
    pub max_connections: Option<i64>,
    pub max_header_bytes: Option<FileSize>,
    pub max_headers: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub h2_max_concurrent_streams: Option<i64>,
}

/// Parses trusted peers: CIDR networks, or single addresses (a /32 or /128).
pub(crate) fn validate_trusted_ips(
    ips: &[String],
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in ips.iter().enumerate() {
        let t = text.trim();
        match t.parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => match t.parse::<IpAddr>() {
                Ok(ip) => out.push(IpNet::from(ip)),
                Err(_) => errs.push(
                    origin,
                    format!("{field}[{i}]"),
                    format!("{text:?} is not an IP network (\"10.0.0.0/8\") or address (\"192.0.2.7\")"),
                ),
            },
        }
    }
    out
}

pub(crate) fn validate_entrypoint_tls(
    t: &FileEntrypointTls,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> EntrypointTls {
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(v) => {
            errs.push(
                origin,
                format!("{field}.min_version"),
                format!("{v:?} is not supported: use \"1.2\" or \"1.3\" (older versions are insecure)"),
            );
            TlsVersion::V1_2
        }
    };
    EntrypointTls {
        min_version,
        http2: t.http2.unwrap_or(true),
    }
}

pub(crate) fn validate_listener_limits(
    l: &FileListenerLimits,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> ListenerLimits {
    let mut out = ListenerLimits::default();
    let mut int = |name: &str, v: Option<i64>, slot: &mut u32, min: i64, max: i64| {
        if let Some(v) = v {
            if (min..=max).contains(&v) {
                *slot = v as u32;
            } else {
                errs.push(
                    origin,
                    format!("{field}.{name}"),
                    format!("{v} is out of range {min}..={max}"),
                );
            }
        }
    };
    int(
        "max_connections",
        l.max_connections,
        &mut out.max_connections,
        1,
        1_000_000,
    );
    int("max_headers", l.max_headers, &mut out.max_headers, 1, 1000);
    int(
        "h2_max_concurrent_streams",
        l.h2_max_concurrent_streams,
        &mut out.h2_max_concurrent_streams,
        1,
        10_000,
    );
    if let Some(size) = &l.max_header_bytes {
        // hyper needs room for at least 8 KiB of head.
        match size.bytes() {
            Ok(n) if (8192..=16 << 20).contains(&n) => out.max_header_bytes = n as u32,
            Ok(n) => errs.push(
                origin,
                format!("{field}.max_header_bytes"),
                format!("{n} is out of range 8KiB..=16MiB"),
            ),
            Err(e) => errs.push(origin, format!("{field}.max_header_bytes"), e),
        }
    }
    for (name, text, slot) in [
        (
            "header_read_timeout",
            &l.header_read_timeout,
            &mut out.header_read_timeout,
        ),
        ("idle_timeout", &l.idle_timeout, &mut out.idle_timeout),
        ("send_timeout", &l.send_timeout, &mut out.send_timeout),
    ] {
        if let Some(text) = text {
            match duration::parse(text) {
                Ok(d) if d.is_zero() => {
                    errs.push(origin, format!("{field}.{name}"), "must be greater than zero")
                }
                Ok(d) => *slot = d,
                Err(e) => errs.push(origin, format!("{field}.{name}"), e),
            }
        }
    }
    out
}
