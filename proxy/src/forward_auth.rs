//! The `forward_auth` middleware: before a request is forwarded, the same method and headers go
//! to an authentication service (without the body). A 2xx lets the request through with the
//! configured headers of the answer copied onto it; any other answer is the client's, as the
//! auth service gave it (a login redirect, a 401 with its challenge). An auth service that
//! cannot be reached or does not answer in time is a 502/504: never a pass.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use gantry_config::middleware::ForwardAuth;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::middleware::RequestLine;
use crate::response::ResponseBody;

/// Idle connections kept to an auth service.
const MAX_IDLE: usize = 16;
/// A 2xx answer's body is read (and dropped) up to this size to keep its connection; a larger
/// one closes it.
const MAX_DRAIN: usize = 64 * 1024;

/// Headers never copied to the auth service: hop-by-hop, and framing of a body it does not get.
const NOT_SENT: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::HOST,
    header::EXPECT,
];

/// Headers of a refusal that are not passed to the client (hop-by-hop).
const NOT_RETURNED: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::UPGRADE,
];

#[derive(Debug)]
pub(crate) struct AuthClient {
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    path: Uri,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    timeout: Duration,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl AuthClient {
    pub(crate) fn new(f: &ForwardAuth) -> Option<Self> {
        let uri: Uri = f.address.parse().ok()?;
        let auth = uri.authority()?;
        let names = |l: &[String]| {
            l.iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        Some(AuthClient {
            authority: format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80)),
            host: HeaderValue::from_str(auth.as_str()).ok()?,
            path: uri.path_and_query().map_or("/", |p| p.as_str()).parse().ok()?,
            request_headers: names(&f.request_headers),
            response_headers: names(&f.response_headers),
            timeout: f.timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Asks the auth service about this request; `Ok` lets it through (its headers edited).
    pub(crate) async fn check(
        &self,
        headers: &mut HeaderMap,
        client_ip: IpAddr,
        line: &RequestLine<'_>,
    ) -> Result<(), ProxyError> {
        // A client's own values for the headers the auth service vouches for never pass.
        for n in &self.response_headers {
            headers.remove(n);
        }
        let req = self.request(headers, client_ip, line);
        let answer = tokio::time::timeout(self.timeout, async {
            let mut sender = self.sender().await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|_| ProxyError::AuthUnavailable("the auth service closed the connection"))?;
            Ok::<_, ProxyError>((resp, sender))
        })
        .await
        .map_err(|_| ProxyError::AuthTimeout(self.timeout))?;
        let (resp, sender) = answer?;
        if !resp.status().is_success() {
            return Err(ProxyError::Answered(
                "forward_auth_denied",
                Box::new(refusal(resp)),
            ));
        }
        let (parts, body) = resp.into_parts();
        for n in &self.response_headers {
            for v in parts.headers.get_all(n) {
                headers.append(n.clone(), v.clone());
            }
        }
        if drain(body, self.timeout).await {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(())
    }

    fn request(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        line: &RequestLine<'_>,
    ) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = line.method.clone();
        *req.uri_mut() = self.path.clone();
        let out = req.headers_mut();
        if self.request_headers.is_empty() {
            for (n, v) in headers {
                if !NOT_SENT.contains(n) {
                    out.append(n.clone(), v.clone());
                }
            }
        } else {
            for n in &self.request_headers {
                for v in headers.get_all(n) {
                    out.append(n.clone(), v.clone());
                }
            }
        }
        out.insert(header::HOST, self.host.clone());
        let text = |s: &str| HeaderValue::from_str(s).ok();
        for (n, v) in [
            ("x-forwarded-method", text(line.method.as_str())),
            ("x-forwarded-proto", text(line.scheme)),
            ("x-forwarded-host", text(line.host)),
            ("x-forwarded-uri", text(line.path_and_query)),
            ("x-forwarded-for", text(&client_ip.to_string())),
        ] {
            if let Some(v) = v {
                out.insert(HeaderName::from_static(n), v);
            }
        }
        req
    }

    /// A pooled connection that is still open, or a new one.
    async fn sender(&self) -> Result<SendRequest<Empty<Bytes>>, ProxyError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        connect(&self.authority).await.ok_or(ProxyError::AuthUnavailable(
            "the auth service could not be reached",
        ))
    }
}

/// A new HTTP/1.1 connection to a helper service (an auth service, a trace collector), its
/// connection task spawned.
pub(crate) async fn connect<B>(addr: &str) -> Option<SendRequest<B>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// The auth service's refusal as the client gets it.
fn refusal(resp: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    for n in &NOT_RETURNED {
        parts.headers.remove(n);
    }
    Response::from_parts(parts, ResponseBody::unleased(body))
}

/// Reads a 2xx answer's body to its end (small, in time): whether the connection can be reused.
async fn drain(mut body: Incoming, timeout: Duration) -> bool {
    use http_body::Body;
    if body.is_end_stream() {
        return true;
    }
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    seen += f.data_ref().map_or(0, Bytes::len);
                    if seen > MAX_DRAIN {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(timeout, read).await.unwrap_or(false)
}
