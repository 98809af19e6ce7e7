//! `[acme.<name>]`: certificate resolvers that obtain certificates from an ACME CA (RFC 8555)
//! for the hosts of routers that ask for them (`tls = { resolver = "<name>" }`), and the checks a
//! host passes before Gantry orders a certificate for it. Read at start, like entrypoints.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::check_name;
use crate::duration;
use crate::error::Errors;

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "staging"`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// One certificate resolver.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcmeResolver {
    pub name: String,
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address given to the CA (expiry notices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A PEM file of roots to trust for the CA's own HTTPS (test CAs such as pebble); without
    /// it, the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// External account binding (CAs such as ZeroSSL require one).
    #[serde(skip)]
    pub eab: Option<Eab>,
    pub key_type: KeyType,
    pub http01: bool,
    pub tls_alpn01: bool,
    /// When not empty, only these domains and their subdomains are ordered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<String>,
    /// Where the account key and certificates are kept (relative to the config file).
    /// `None`: in etcd when Gantry runs with etcd, else refused at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Used by routers that ask for TLS without naming a resolver (and compact `https://`
    /// routes).
    pub default: bool,
    /// The first wait after a failed order; it doubles with each failure up to `retry_max`.
    #[serde(serialize_with = "duration::serialize")]
    pub retry_initial: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub retry_max: Duration,
}

/// An external account binding: the key id and the base64url HMAC key the CA gave.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub agree_tos: Option<bool>,
    pub ca: Option<String>,
    pub eab: Option<FileEab>,
    pub key_type: Option<KeyType>,
    pub challenges: Option<Vec<String>>,
    pub allowed_domains: Option<Vec<String>>,
    pub storage: Option<String>,
    pub default: Option<bool>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEab {
    pub kid: String,
    pub hmac_key: String,
}

pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(24 * 3600);

pub fn validate_acme(
    resolvers: std::collections::BTreeMap<String, FileAcme>,
    origin: &str,
    errs: &mut Errors,
) -> Vec<AcmeResolver> {
    let mut out = Vec::new();
    for (name, a) in resolvers {
        let field = format!("acme.{name}");
        check_name(errs, origin, &field, &name);
        let directory = match a.directory.as_deref() {
            None | Some("production") => LETS_ENCRYPT.to_string(),
            Some("staging") => LETS_ENCRYPT_STAGING.to_string(),
            Some(url) if url.starts_with("https://") => url.to_string(),
            Some(other) => {
                errs.push(
                    origin,
                    format!("{field}.directory"),
                    format!("{other:?} is not an https:// directory URL (or \"production\", \"staging\")"),
                );
                String::new()
            }
        };
        if a.agree_tos != Some(true) {
            errs.push(
                origin,
                format!("{field}.agree_tos"),
                "a CA issues certificates only to accounts that agree to its terms of service: read them, then set agree_tos = true",
            );
        }
        if let Some(e) = &a.email
            && (!e.contains('@') || e.contains(char::is_whitespace))
        {
            errs.push(
                origin,
                format!("{field}.email"),
                format!("{e:?} is not an email address"),
            );
        }
        let eab = a.eab.as_ref().and_then(|e| match decode_base64url(&e.hmac_key) {
            Some(k) if !k.is_empty() && !e.kid.is_empty() => Some(Eab {
                kid: e.kid.clone(),
                hmac_key: k,
            }),
            _ => {
                errs.push(
                    origin,
                    format!("{field}.eab"),
                    "needs the kid and the base64url hmac_key the CA gave",
                );
                None
            }
        });
        let (mut http01, mut tls_alpn01) = (false, false);
        match &a.challenges {
            None => (http01, tls_alpn01) = (true, true),
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    match c.as_str() {
                        "http-01" => http01 = true,
                        "tls-alpn-01" => tls_alpn01 = true,
                        "dns-01" => errs.push(
                            origin,
                            format!("{field}.challenges[{i}]"),
                            "dns-01 is not supported by Gantry (use http-01 or tls-alpn-01)",
                        ),
                        other => errs.push(
                            origin,
                            format!("{field}.challenges[{i}]"),
                            format!("unknown challenge {other:?} (http-01, tls-alpn-01)"),
                        ),
                    }
                }
                if list.is_empty() {
                    errs.push(
                        origin,
                        format!("{field}.challenges"),
                        "name at least one challenge",
                    );
                }
            }
        }
        let mut allowed_domains = Vec::new();
        for (i, d) in a.allowed_domains.iter().flatten().enumerate() {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            match dns_name(&d, false) {
                Ok(()) => allowed_domains.push(d),
                Err(e) => errs.push(origin, format!("{field}.allowed_domains[{i}]"), e),
            }
        }
        let mut time = |key: &str, v: &Option<String>, default: Duration| match v.as_deref() {
            None => default,
            Some(t) => match duration::parse(t) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errs.push(origin, format!("{field}.{key}"), "must be more than zero");
                    default
                }
                Err(e) => {
                    errs.push(origin, format!("{field}.{key}"), e);
                    default
                }
            },
        };
        let retry_initial = time("retry_initial", &a.retry_initial, DEFAULT_RETRY_INITIAL);
        let retry_max = time("retry_max", &a.retry_max, DEFAULT_RETRY_MAX).max(retry_initial);
        out.push(AcmeResolver {
            name,
            directory,
            email: a.email,
            ca: a.ca,
            eab,
            key_type: a.key_type.unwrap_or(KeyType::EcdsaP256),
            http01,
            tls_alpn01,
            allowed_domains,
            storage: a.storage,
            default: a.default.unwrap_or(false),
            retry_initial,
            retry_max,
        });
    }
    let defaults: Vec<&str> = out
        .iter()
        .filter(|r| r.default)
        .map(|r| r.name.as_str())
        .collect();
    if defaults.len() > 1 {
        errs.push(
            origin,
            "acme",
            format!(
                "only one resolver can be the default; {} all say default = true",
                defaults.join(", ")
            ),
        );
    }
    // A single resolver is the default.
    if out.len() == 1 {
        out[0].default = true;
    }
    out
}

/// Whether Gantry may order a certificate for `host` (lowercase, no trailing dot): a DNS name,
/// not an IP address, no wildcard (that needs DNS-01), and inside `allowed` when it is not
/// empty. A hostile label must not make Gantry ask a CA for anything it likes.
pub fn check_host(host: &str, allowed: &[String]) -> Result<(), String> {
    dns_name(host, true)?;
    let inside = |d: &String| host == d || host.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.'));
    if !allowed.is_empty() && !allowed.iter().any(inside) {
        return Err(format!(
            "{host} is not under allowed_domains ({})",
            allowed.join(", ")
        ));
    }
    Ok(())
}

/// A DNS name (of at least two labels when `qualified`), not a wildcard, not an IP address.
fn dns_name(host: &str, qualified: bool) -> Result<(), String> {
    if host.starts_with("*.") {
        return Err(
            "a wildcard certificate needs the dns-01 challenge, which Gantry does not support".into(),
        );
    }
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Err(format!(
            "{host} is an IP address: CAs issue certificates for DNS names"
        ));
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label) || (qualified && !host.contains('.')) {
        return Err(format!("{host:?} is not a fully qualified DNS name"));
    }
    Ok(())
}

fn decode_base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_before_anything_is_ordered() {
        assert!(check_host("a.example.com", &[]).is_ok());
        let e = check_host("*.example.com", &[]).unwrap_err();
        assert!(e.contains("dns-01"), "{e}");
        assert!(check_host("127.0.0.1", &[]).unwrap_err().contains("IP address"));
        assert!(check_host("::1", &[]).unwrap_err().contains("IP address"));
        assert!(
            check_host("localhost", &[])
                .unwrap_err()
                .contains("fully qualified")
        );
        assert!(check_host("a..b", &[]).is_err());
        assert!(check_host("a_b.example.com", &[]).is_err());
        let allowed = vec!["example.com".to_string()];
        assert!(
            check_host("a.test", &["test".to_string()]).is_ok(),
            "a top-level domain may be allowed"
        );
        assert!(check_host("example.com", &allowed).is_ok());
        assert!(check_host("www.example.com", &allowed).is_ok());
        let e = check_host("badexample.com", &allowed).unwrap_err();
        assert!(e.contains("not under allowed_domains"), "{e}");
        assert!(check_host("example.org", &allowed).is_err());
    }

    #[test]
    fn resolvers_are_validated_with_their_fields() {
        let text = r#"
            [acme.le]
            email = "ops@example.com"
            agree_tos = true
            storage = "acme"
            [acme.test]
            directory = "http://insecure/dir"
            challenges = ["dns-01", "tls-alpn-01"]
            eab = { kid = "k", hmac_key = "!!" }
            retry_initial = "0s"
        "#;
        let err = crate::file::load(text, "g.toml").unwrap_err().to_string();
        for part in [
            "acme.test.directory: \"http://insecure/dir\" is not an https:// directory URL",
            "acme.test.agree_tos: a CA issues certificates only to accounts that agree",
            "acme.test.challenges[0]: dns-01 is not supported",
            "acme.test.eab: needs the kid",
            "acme.test.retry_initial: must be more than zero",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        assert!(!err.contains("acme.le"), "{err}");
        let v = crate::file::load(
            "[acme.le]\nagree_tos = true\nchallenges = [\"http-01\"]\neab = { kid = \"k\", hmac_key = \"aGk\" }\n",
            "g.toml",
        )
        .unwrap();
        let r = &v.static_config.acme[0];
        assert_eq!(r.directory, LETS_ENCRYPT);
        assert!(r.default, "a single resolver is the default");
        assert!(r.http01 && !r.tls_alpn01);
        assert_eq!(r.eab.as_ref().map(|e| e.hmac_key.as_slice()), Some(&b"hi"[..]));
        assert_eq!(r.key_type, KeyType::EcdsaP256);
    }
}
