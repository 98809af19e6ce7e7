//! What the data plane serves for ACME: certificates issued to Gantry (consulted after the
//! configured ones, which always win), answers to the CA's challenges (HTTP-01 tokens on
//! plain-HTTP entrypoints, TLS-ALPN-01 certificates on TLS entrypoints), and the default
//! certificate served to names that have none yet. The control plane fills it (see
//! `gantry_control::acme`); the request path and the TLS handshake only read it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use rustls::sign::CertifiedKey;

use crate::response::ResponseBody;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where HTTP-01 challenges are fetched (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug)]
pub struct AcmeCerts {
    /// HTTP-01 is answered on plain-HTTP entrypoints (before any routing).
    pub http01: bool,
    /// `acme-tls/1` is offered on TLS entrypoints.
    pub tls_alpn01: bool,
    tokens: RwLock<HashMap<String, String>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    issued: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl AcmeCerts {
    /// `fallback`: served to names without a certificate when no default is configured.
    pub fn new(http01: bool, tls_alpn01: bool, fallback: Option<Arc<CertifiedKey>>) -> Self {
        Self {
            http01,
            tls_alpn01,
            tokens: RwLock::default(),
            alpn: RwLock::default(),
            issued: ArcSwap::default(),
            fallback,
        }
    }

    pub fn set_token(&self, token: &str, key_authorization: &str) {
        write(&self.tokens).insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_token(&self, token: &str) {
        write(&self.tokens).remove(token);
    }

    pub fn set_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        write(&self.alpn).insert(name.to_string(), cert);
    }

    pub fn remove_alpn(&self, name: &str) {
        write(&self.alpn).remove(name);
    }

    /// Makes `cert` the one served for `name` from the next handshake on.
    pub fn install(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.issued.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_string(), cert.clone());
            m
        });
    }

    pub fn remove(&self, name: &str) {
        self.issued.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name);
            m
        });
    }

    /// The issued certificate for a name (lowercase, no trailing dot).
    pub fn issued(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(name).cloned()
    }

    pub fn challenge_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.alpn).get(name).cloned()
    }

    pub fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.fallback.clone()
    }

    /// The answer to an HTTP-01 challenge request: the key authorization for a token Gantry is
    /// waiting on, else 404.
    pub(crate) fn answer(&self, path: &str) -> Response<ResponseBody> {
        let token = &path[CHALLENGE_PREFIX.len()..];
        let found = read(&self.tokens).get(token).cloned();
        let (status, body) = match found {
            Some(k) => (StatusCode::OK, Bytes::from(k)),
            None => (
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"no such ACME challenge\n"),
            ),
        };
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        resp
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
