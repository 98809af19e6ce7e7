//! The `forward_auth` middleware.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::header_names;
use crate::duration;
use crate::error::Errors;

/// A sub-request to an authentication service decides: 2xx lets the request through (with the
/// listed headers of the answer copied onto it), anything else is the client's answer. A
/// failing or slow auth service is a 502/504, never a pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForwardAuth {
    /// `http://host:port/path` of the auth service.
    pub address: String,
    /// The client's headers sent along (empty: all but hop-by-hop and body framing).
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer copied onto the forwarded request. A client's own values for
    /// them are always removed, answer or not: a client cannot pose as authenticated.
    pub response_headers: Vec<String>,
    /// For the whole sub-request: connect and answer head.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    pub address: Option<String>,
    pub request_headers: Option<Vec<String>>,
    pub response_headers: Option<Vec<String>>,
    pub timeout: Option<String>,
}

pub(super) fn validate_forward_auth(
    f: FileForwardAuth,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> ForwardAuth {
    let address = f.address.unwrap_or_default().trim().to_string();
    match address.parse::<http::Uri>() {
        Ok(u)
            if u.scheme_str() == Some("http")
                && u.authority()
                    .is_some_and(|a| a.port_u16().is_some() || !a.host().is_empty()) => {}
        Ok(u) if u.scheme_str() == Some("https") => errs.push(
            origin,
            format!("{field}.address"),
            "https auth services are not supported yet: use http:// (on a private network)",
        ),
        _ => errs.push(
            origin,
            format!("{field}.address"),
            format!("{address:?} is not a URL like http://auth:9000/check"),
        ),
    }
    let timeout = match f.timeout.as_deref().map(duration::parse) {
        None => Duration::from_secs(5),
        Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(300) => d,
        Some(Ok(_)) => {
            errs.push(origin, format!("{field}.timeout"), "must be in 1ms..=5m");
            Duration::from_secs(5)
        }
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.timeout"), e);
            Duration::from_secs(5)
        }
    };
    ForwardAuth {
        address,
        request_headers: header_names(
            f.request_headers,
            origin,
            &format!("{field}.request_headers"),
            errs,
        ),
        response_headers: header_names(
            f.response_headers,
            origin,
            &format!("{field}.response_headers"),
            errs,
        ),
        timeout,
    }
}
