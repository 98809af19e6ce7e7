//! The PROXY protocol (HAProxy's v1 text and v2 binary headers, parsed and built with `ppp`): an
//! L4 balancer in front of Gantry says who the client is before the connection's first byte of
//! HTTP or TLS. Accepted only on entrypoints that enable it and only from their trusted peers;
//! a PROXY header from anyone else, or a malformed one, closes the connection before anything
//! reaches a backend. Gantry sends one in turn to the backends of services that ask for it.

use std::net::SocketAddr;
use std::time::Duration;

use gantry_config::SendProxyProtocol;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::io::{peek_start, wait_for_more};

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers carry TLVs; more than this is not a balancer talking.
const V2_MAX: usize = 16 + 1024;

/// What the start of a connection said.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// No PROXY header: the connection starts with HTTP or TLS.
    Absent,
    /// A PROXY header naming the client (`None`: the balancer's own connection, `LOCAL` or
    /// `UNKNOWN`, e.g. its health check: the peer is the client).
    Client(Option<SocketAddr>),
}

/// Why a connection was closed at its PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Untrusted,
    Malformed,
    /// Closed or silent before the header was complete.
    Incomplete,
}

impl Refused {
    /// The reason label of `gantry_requests_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Untrusted => "proxy_protocol_untrusted",
            Refused::Malformed => "proxy_protocol_malformed",
            Refused::Incomplete => "proxy_protocol_incomplete",
        }
    }
}

/// Reads a PROXY header at the start of `stream`, consuming exactly its bytes, within `deadline`.
pub async fn read(stream: &mut TcpStream, trusted: bool, deadline: Duration) -> Result<Header, Refused> {
    let until = Instant::now() + deadline;
    let mut buf = [0u8; V1_MAX];
    // Peek (never consume) until the start says what it is and how long the header is.
    let len = loop {
        let n = peek(stream, &mut buf, until).await?;
        let head = &buf[..n];
        let maybe_v1 = V1_PREFIX.starts_with(&head[..n.min(V1_PREFIX.len())]);
        let maybe_v2 = V2_SIGNATURE.starts_with(&head[..n.min(V2_SIGNATURE.len())]);
        if !maybe_v1 && !maybe_v2 {
            return Ok(Header::Absent);
        }
        let v1 = maybe_v1 && n >= V1_PREFIX.len();
        let v2 = maybe_v2 && n >= V2_SIGNATURE.len();
        if (v1 || v2) && !trusted {
            return Err(Refused::Untrusted);
        }
        if v1 {
            if let Some(i) = head.windows(2).position(|w| w == b"\r\n") {
                break i + 2;
            }
            if n >= V1_MAX {
                return Err(Refused::Malformed);
            }
        }
        if v2 && n >= 16 {
            let len = 16 + usize::from(u16::from_be_bytes([head[14], head[15]]));
            if len > V2_MAX {
                return Err(Refused::Malformed);
            }
            break len;
        }
        wait(until).await?;
    };
    let mut header = vec![0u8; len];
    tokio::time::timeout_at(until, stream.read_exact(&mut header))
        .await
        .map_err(|_| Refused::Incomplete)?
        .map_err(|_| Refused::Incomplete)?;
    parse(&header)
}

fn parse(header: &[u8]) -> Result<Header, Refused> {
    if header.starts_with(V2_SIGNATURE) {
        let h = v2::Header::try_from(header).map_err(|_| Refused::Malformed)?;
        if h.command == v2::Command::Local {
            return Ok(Header::Client(None));
        }
        return Ok(Header::Client(match h.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
        }));
    }
    let h = v1::Header::try_from(header).map_err(|_| Refused::Malformed)?;
    Ok(Header::Client(match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }))
}

async fn peek(stream: &TcpStream, buf: &mut [u8], until: Instant) -> Result<usize, Refused> {
    peek_start(stream, buf, until).await.ok_or(Refused::Incomplete)
}

async fn wait(until: Instant) -> Result<(), Refused> {
    wait_for_more(until).await.ok_or(Refused::Incomplete)
}

/// The header that opens a backend connection: the client and the address it connected to, or
/// (`None`) a connection of Gantry's own, such as a health check (`LOCAL` / `UNKNOWN`).
pub fn header(version: SendProxyProtocol, conn: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    // Both ends in one family: an IPv4 client on a dual-stack listener is IPv4-mapped there.
    let conn = conn.map(|(src, dst)| match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) => (mapped(src), dst),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => (src, mapped(dst)),
        _ => (src, dst),
    });
    match version {
        SendProxyProtocol::V1 => match conn {
            Some(c) => v1::Addresses::from(c).to_string().into_bytes(),
            None => v1::Addresses::Unknown.to_string().into_bytes(),
        },
        SendProxyProtocol::V2 => {
            let builder = match conn {
                Some(c) => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    c,
                ),
                None => v2::Builder::new(
                    v2::Version::Two | v2::Command::Local,
                    v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
                ),
            };
            // Building from addresses alone cannot fail (it writes to a Vec).
            builder.build().unwrap_or_default()
        }
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_name_the_client_and_garbage_is_malformed() {
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"),
            Ok(Header::Client(Some("192.0.2.1:56324".parse().unwrap())))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n"),
            Ok(Header::Client(Some("[2001:db8::1]:4000".parse().unwrap())))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Header::Client(None)));
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "192.0.2.9:1234".parse::<SocketAddr>().unwrap(),
                "198.51.100.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&v2),
            Ok(Header::Client(Some("192.0.2.9:1234".parse().unwrap())))
        );
        assert_eq!(
            parse(b"PROXY TCP4 not-an-address 1.2.3.4 1 2\r\n"),
            Err(Refused::Malformed)
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\r\n"), Err(Refused::Malformed));
    }

    #[test]
    fn headers_sent_to_backends_parse_back_to_the_client() {
        let v4: SocketAddr = "192.0.2.9:1234".parse().unwrap();
        let local4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let local6: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        for version in [SendProxyProtocol::V1, SendProxyProtocol::V2] {
            for (client, local) in [(v4, local4), (v6, local6), (v4, local6)] {
                let got = parse(&header(version, Some((client, local))));
                let want = match client {
                    SocketAddr::V4(_) if local.is_ipv6() => mapped(client),
                    _ => client,
                };
                assert_eq!(
                    got,
                    Ok(Header::Client(Some(want))),
                    "{version:?} {client} {local}"
                );
            }
            assert_eq!(
                parse(&header(version, None)),
                Ok(Header::Client(None)),
                "{version:?}"
            );
        }
        assert_eq!(
            header(SendProxyProtocol::V1, Some((v4, local4))),
            b"PROXY TCP4 192.0.2.9 10.0.0.1 1234 80\r\n"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, failure_persistence: None, ..Default::default() })]

        /// Any bytes after a signature parse to a client or are refused; none panics.
        #[test]
        fn any_header_parses_or_is_refused(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            v2 in proptest::prelude::any::<bool>(),
        ) {
            let mut h = if v2 { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
            h.extend(tail);
            let _ = parse(&h);
        }
    }
}
