//! TLS certificates: validated from PEM files into rustls keys, and compiled into an SNI map.
//!
//! Certificates are dynamic state, like routers: they are re-read with every config reload, a
//! bad file or a key that does not match its certificate is refused with an error that names
//! both files, and the certificate that was live keeps serving.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

/// One certificate chain and its key, with the DNS names it is valid for.
#[derive(Clone, Serialize)]
pub struct Certificate {
    pub cert_path: String,
    pub key_path: String,
    /// DNS names from the certificate's subjectAltName, lowercase (`*.example.com` allowed).
    pub names: Vec<String>,
    /// The PEM texts: what "did this change" compares.
    #[serde(skip)]
    pem: Arc<(Vec<u8>, Vec<u8>)>,
    #[serde(skip)]
    pub key: Arc<CertifiedKey>,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.key_path == other.key_path && self.pem == other.pem
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .finish()
    }
}

impl Certificate {
    /// Parses a PEM certificate chain and a PEM private key, and checks that they belong
    /// together. The paths are only used in messages and the admin API.
    pub fn from_pem(
        cert_path: &str,
        cert_pem: Vec<u8>,
        key_path: &str,
        key_pem: Vec<u8>,
    ) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{cert_path}: not a PEM certificate: {e}"))?;
        if chain.is_empty() {
            return Err(format!("{cert_path}: no certificate found in the file"));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{key_path}: not a PEM private key: {e}"))?;
        // from_der also checks that the key belongs to the certificate.
        let certified =
            CertifiedKey::from_der(chain.clone(), key, &default_provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("the key in {key_path} does not match the certificate in {cert_path}")
                }
                e => format!("{key_path}: unusable private key: {e}"),
            })?;
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| format!("{cert_path}: cannot parse the certificate: {e:?}"))?;
        let mut names: Vec<String> = leaf.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        Ok(Self {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            names,
            pem: Arc::new((cert_pem, key_pem)),
            key: Arc::new(certified),
        })
    }
}

/// The validated TLS part of the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsCertificates {
    pub certificates: Vec<Certificate>,
    /// Served to clients without SNI and for names no certificate covers; defaults to the first
    /// certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Certificate>,
}

/// The compiled SNI map.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com` and matches exactly one more label (RFC 6125).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Every configured certificate once (for the admin API and metrics).
    all: Vec<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn build(tls: &TlsCertificates) -> Self {
        let mut store = CertStore::default();
        for c in &tls.certificates {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => store
                        .wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| c.key.clone()),
                    None => store.exact.entry(n.clone()).or_insert_with(|| c.key.clone()),
                };
            }
        }
        store.default = tls
            .default
            .as_ref()
            .or(tls.certificates.first())
            .map(|c| c.key.clone());
        for c in tls.certificates.iter().chain(&tls.default) {
            if !store.all.iter().any(|k| Arc::ptr_eq(k, &c.key)) {
                store.all.push(c.key.clone());
            }
        }
        store
    }

    pub fn certificates(&self) -> impl Iterator<Item = &Arc<CertifiedKey>> {
        self.all.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none()
    }

    /// The certificate for a TLS ClientHello's server name (or its absence).
    pub fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        server_name
            .and_then(|n| self.find(&n.trim_end_matches('.').to_ascii_lowercase()))
            .or_else(|| self.default.clone())
    }

    /// The configured certificate that covers `name` (lowercase, no trailing dot), exactly or
    /// by wildcard; not the default.
    pub fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(k) = self.exact.get(name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }

    pub fn default_cert(&self) -> Option<Arc<CertifiedKey>> {
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        (
            c.cert.pem().into_bytes(),
            c.signing_key.serialize_pem().into_bytes(),
        )
    }

    #[test]
    fn names_come_from_the_certificate_and_sni_picks_exact_then_wildcard_then_default() {
        let (ca, ka) = self_signed(&["a.test", "www.a.test"]);
        let (cb, kb) = self_signed(&["*.b.test"]);
        let a = Certificate::from_pem("a.pem", ca, "a.key", ka).unwrap();
        let b = Certificate::from_pem("b.pem", cb, "b.key", kb).unwrap();
        assert_eq!(a.names, ["a.test", "www.a.test"]);
        assert_eq!(b.names, ["*.b.test"]);
        let store = CertStore::build(&TlsCertificates {
            certificates: vec![a.clone(), b.clone()],
            default: None,
        });
        let is = |k: Option<Arc<CertifiedKey>>, c: &Certificate| k.is_some_and(|k| Arc::ptr_eq(&k, &c.key));
        assert!(is(store.resolve(Some("A.test")), &a));
        assert!(is(store.resolve(Some("x.b.test")), &b));
        assert!(
            is(store.resolve(Some("x.y.b.test")), &a),
            "a wildcard covers one label; the default is a"
        );
        assert!(is(store.resolve(None), &a));
    }

    #[test]
    fn a_key_that_does_not_match_or_bad_pem_is_refused_naming_the_files() {
        let (ca, _) = self_signed(&["a.test"]);
        let (_, kb) = self_signed(&["b.test"]);
        let err = Certificate::from_pem("a.pem", ca.clone(), "b.key", kb.clone()).unwrap_err();
        assert_eq!(err, "the key in b.key does not match the certificate in a.pem");
        let err = Certificate::from_pem("x.pem", b"garbage".to_vec(), "b.key", kb).unwrap_err();
        assert!(err.starts_with("x.pem: no certificate found"), "{err}");
        let err = Certificate::from_pem("a.pem", ca, "x.key", b"not a key".to_vec()).unwrap_err();
        assert!(err.starts_with("x.key: not a PEM private key"), "{err}");
    }

    #[test]
    fn the_file_loader_reports_unreadable_files_with_their_field() {
        let (ca, ka) = self_signed(&["a.test"]);
        let files = move |p: &str| match p {
            "a.pem" => Ok(ca.clone()),
            "a.key" => Ok(ka.clone()),
            other => Err(format!("cannot read {other}: no such file")),
        };
        let text = "[entrypoints.websecure]\naddress = \"127.0.0.1:8443\"\ntls = {}\n\
                    [[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n";
        let v = crate::file::load_with(text, "g.toml", &files).unwrap();
        assert_eq!(v.state.tls.certificates[0].names, ["a.test"]);
        assert!(v.static_config.entrypoints[0].tls.is_some());
        let err = crate::file::load_with(&text.replace("a.key", "missing.key"), "g.toml", &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.toml: tls.certificates[0].key: cannot read missing.key"),
            "{err}"
        );
        let err = crate::file::load("[entrypoints.w]\naddress = \"127.0.0.1:1\"\ntls = {}\n", "g.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entrypoints.w.tls: TLS needs at least one certificate"),
            "{err}"
        );
    }
}
