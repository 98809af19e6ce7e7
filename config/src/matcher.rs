//! What a router matches on (hosts, path, methods, headers, query) and how each matcher is parsed
//! and normalized. The rule grammar (`rule`) and every source build matchers through here.

use std::fmt;

use http::HeaderName;
use serde::Serialize;

/// The conditions a request must meet, all of them (a conjunction). Each list is a disjunction:
/// `hosts = ["a", "b"]` matches either host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostPattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
}

/// `example.com` (exact) or `*.example.com` (any name ending in `.example.com`, at any depth,
/// as nginx does). Stored lowercase, without port or trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`: `*.example.com` is stored as `example.com`.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path equals this, byte for byte.
    Exact(String),
    /// The path starts with this string (as nginx, Traefik and Envoy do: `/api` also matches
    /// `/apix`; write `/api/` to match a segment).
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: String,
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.name.as_str())?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}
/// Sorts and dedups every list so that the same meaning compares equal. A path prefix of `/`
/// matches every request, so it is the same as no path condition and ranks like one.
pub fn normalize_match(m: &mut Match) {
    if matches!(&m.path, Some(PathMatch::Prefix(p)) if p == "/") {
        m.path = None;
    }
    m.hosts.sort();
    m.hosts.dedup();
    m.methods.sort();
    m.methods.dedup();
    m.headers
        .sort_by(|a, b| (a.name.as_str(), &a.value).cmp(&(b.name.as_str(), &b.value)));
    m.headers.dedup();
    m.query.sort();
    m.query.dedup();
}

pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let h = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, h.clone()),
    };
    if name.is_empty() {
        return Err(format!("host {text:?} is empty"));
    }
    if name.contains('*') {
        return Err(format!(
            "host {text:?}: a wildcard is only allowed as a leading `*.`"
        ));
    }
    let is_ipv6 = name.starts_with('[') && name.ends_with(']');
    if !is_ipv6 && name.contains(':') {
        return Err(format!(
            "host {text:?} must not carry a port: hosts match without it"
        ));
    }
    let ok = is_ipv6
        || name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!("host {text:?} is not a valid host name"));
    }
    Ok(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    if p.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
    {
        return Err(format!(
            "path {p:?} must not contain spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

pub fn parse_method(m: &str) -> Result<String, String> {
    let up = m.trim().to_ascii_uppercase();
    if up.is_empty() || http::Method::from_bytes(up.as_bytes()).is_err() {
        return Err(format!("{m:?} is not an HTTP method"));
    }
    Ok(up)
}

pub fn parse_header_match(name: &str, value: &str) -> Result<HeaderMatch, String> {
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    Ok(HeaderMatch {
        name,
        value: value.to_string(),
    })
}
