//! Backends: one address of a service (URL, weight, version), and the backend URL grammar.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canary::check_version;
use crate::error::Errors;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub url: BackendUrl,
    /// Relative share of traffic; 0 takes the backend out of rotation without removing it.
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The source vouches for the backend's health (Docker reported `healthy`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub source_healthy: bool,
}

/// Weights are bounded so that sums never overflow and so that typos such as `weight = 10000000`
/// are caught.
pub const MAX_WEIGHT: u32 = 10_000;

/// Where a backend is reached. Only the origin: a path in a backend URL is refused, because
/// proxies that silently drop or prepend it surprise people.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendUrl {
    pub scheme: Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    /// `host:port` as a connect target (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

impl Serialize for BackendUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/2 over TCP with prior knowledge (gRPC backends).
    H2c,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::H2c => "h2c",
        }
    }
}
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub url: String,
    pub weight: Option<i64>,
    pub version: Option<String>,
}

pub fn validate_backend(b: FileBackend, origin: &str, field: &str, errs: &mut Errors) -> Option<Backend> {
    let before = errs.0.len();
    let url = match parse_backend_url(&b.url) {
        Ok(u) => Some(u),
        Err(e) => {
            errs.push(origin, format!("{field}.url"), e);
            None
        }
    };
    let weight = match b.weight {
        None => 1,
        Some(w) if (0..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
        Some(w) => {
            errs.push(
                origin,
                format!("{field}.weight"),
                format!("{w} is out of range 0..={MAX_WEIGHT}"),
            );
            0
        }
    };
    let version = match b.version {
        Some(v) => match check_version(&v) {
            Ok(()) => Some(v),
            Err(e) => {
                errs.push(origin, format!("{field}.version"), e);
                None
            }
        },
        None => None,
    };
    match url {
        Some(url) if errs.0.len() == before => Some(Backend {
            url,
            weight,
            version,
            source_healthy: false,
        }),
        _ => None,
    }
}

/// `http://host[:port][/]`. The port defaults to 80.
pub fn parse_backend_url(text: &str) -> Result<BackendUrl, String> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("h2c") => Scheme::H2c,
        Some(other) => {
            return Err(format!(
                "{text:?}: scheme {other:?} is not supported (use http or h2c)"
            ));
        }
        None => return Err(format!("{text:?} needs a scheme, e.g. http://{text}")),
    };
    let authority = uri.authority().ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{text:?}: credentials in backend URLs are not supported"));
    }
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => {}
        Some(p) => {
            return Err(format!(
                "{text:?}: a backend URL cannot carry a path or query ({p:?})"
            ));
        }
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(format!("{text:?}: port 0 is not a port"));
    }
    Ok(BackendUrl { scheme, host, port })
}
