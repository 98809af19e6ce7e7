//! The HTTP client the ACME protocol runs over: instant-acme's, plus what it does not keep for
//! its caller, the `Retry-After` of an error answer (a CA's rate limits say when to come back).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The latest `Retry-After` a CA sent with an error, shared with the manager.
pub(crate) type RetryAfter = Arc<Mutex<Option<SystemTime>>>;

pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
}

impl Http {
    /// A client that trusts the roots in `ca_pem` (a test CA), or the system's.
    pub(crate) fn new(ca_pem: Option<&[u8]>, retry_after: RetryAfter) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("not a PEM certificate: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("unusable root certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("no certificate found in the file".into());
                }
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(cfg)
            }
            None => builder
                .with_provider_and_platform_verifier(provider)
                .map_err(|e| format!("cannot use the system's root certificates: {e}"))?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { client, retry_after })
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let fut = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = fut.await.map_err(|e| Error::Other(Box::new(e)))?;
            if (rsp.status().is_client_error() || rsp.status().is_server_error())
                && let Some(at) = parse_retry_after(rsp.headers().get(http::header::RETRY_AFTER))
            {
                *retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// `Retry-After: <seconds>` or an HTTP date.
fn parse_retry_after(v: Option<&http::HeaderValue>) -> Option<SystemTime> {
    let v = v?.to_str().ok()?.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let now = SystemTime::now();
        let at = parse_retry_after(Some(&http::HeaderValue::from_static("120"))).unwrap();
        assert!(at >= now + Duration::from_secs(119));
        let at = parse_retry_after(Some(&http::HeaderValue::from_static(
            "Fri, 31 Dec 2049 23:59:59 GMT",
        )))
        .unwrap();
        assert!(at > now + Duration::from_secs(3600 * 24 * 365));
        assert!(parse_retry_after(Some(&http::HeaderValue::from_static("soon"))).is_none());
        assert!(parse_retry_after(None).is_none());
    }
}
