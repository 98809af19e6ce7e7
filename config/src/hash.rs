//! What a request is keyed on, for consistent hashing (`policy`) and sticky canary assignment:
//! a header, a cookie or the client's address.

use std::fmt;

use http::HeaderName;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::Header(h) => write!(f, "header:{h}"),
            HashOn::Cookie(c) => write!(f, "cookie:{c}"),
            HashOn::ClientIp => f.write_str("client_ip"),
        }
    }
}

impl Serialize for HashOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub fn parse_hash_on(text: &str) -> Result<HashOn, String> {
    let t = text.trim();
    if t == "client_ip" {
        return Ok(HashOn::ClientIp);
    }
    if let Some(h) = t.strip_prefix("header:") {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(HashOn::Header)
            .map_err(|_| format!("{h:?} is not a valid header name"));
    }
    if let Some(c) = t.strip_prefix("cookie:") {
        let c = c.trim();
        if c.is_empty() || c.bytes().any(|b| b.is_ascii_whitespace() || b"=;,".contains(&b)) {
            return Err(format!("{c:?} is not a valid cookie name"));
        }
        return Ok(HashOn::Cookie(c.to_string()));
    }
    Err(format!(
        "{t:?}: use \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
    ))
}
