//! The `cors` rule of a `headers` middleware.

use serde::{Deserialize, Serialize};

use crate::error::Errors;

/// Cross-origin resource sharing: preflights answered by Gantry, allowed origins told so on
/// every response (with `Vary: Origin`). A request from an origin not listed gets no CORS
/// headers, so the browser refuses it; the backend still sees it (CORS binds browsers only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cors {
    /// `scheme://host[:port]` origins, or `*` for any.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// Seconds a browser may cache a preflight's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    pub fn allowed<'a>(&self, origin: &'a str) -> Option<&'a str> {
        if self.allow_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            Some(origin)
        } else if self.allow_origins.iter().any(|o| o == "*") {
            // With credentials a browser refuses `*`: the origin itself is echoed.
            Some(if self.allow_credentials { origin } else { "*" })
        } else {
            None
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    pub allow_origins: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<i64>,
}

pub(super) fn validate_cors(c: FileCors, origin: &str, field: &str, errs: &mut Errors) -> Cors {
    let allow_origins: Vec<String> = c
        .allow_origins
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .collect();
    if allow_origins.is_empty() {
        errs.push(
            origin,
            format!("{field}.allow_origins"),
            "needs at least one origin (or \"*\")",
        );
    }
    for (i, o) in allow_origins.iter().enumerate() {
        let ok = o == "*"
            || o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '?', '#', ' '])
            });
        if !ok {
            errs.push(
                origin,
                format!("{field}.allow_origins[{i}]"),
                format!("{o:?} is not an origin like https://app.example.com (or *)"),
            );
        }
    }
    let allow_credentials = c.allow_credentials.unwrap_or(false);
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        errs.push(
            origin,
            format!("{field}.allow_credentials"),
            "not with \"*\" in allow_origins: any site could make credentialed requests; list the origins",
        );
    }
    let names = |list: Option<Vec<String>>, part: &str, errs: &mut Errors| -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in list.into_iter().flatten().enumerate() {
            let n = n.trim().to_string();
            if n == "*" || http::HeaderName::from_bytes(n.as_bytes()).is_ok() {
                out.push(n);
            } else {
                errs.push(
                    origin,
                    format!("{field}.{part}[{i}]"),
                    format!("{n:?} is not a header name"),
                );
            }
        }
        out
    };
    let allow_headers = names(c.allow_headers, "allow_headers", errs);
    let expose_headers = names(c.expose_headers, "expose_headers", errs);
    let mut allow_methods = Vec::new();
    for (i, m) in c
        .allow_methods
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()])
        .into_iter()
        .enumerate()
    {
        let m = m.trim().to_ascii_uppercase();
        if http::Method::from_bytes(m.as_bytes()).is_ok() || m == "*" {
            allow_methods.push(m);
        } else {
            errs.push(
                origin,
                format!("{field}.allow_methods[{i}]"),
                format!("{m:?} is not a method"),
            );
        }
    }
    let max_age = match c.max_age {
        None => None,
        Some(a) if (0..=86_400).contains(&a) => Some(a as u32),
        Some(a) => {
            errs.push(
                origin,
                format!("{field}.max_age"),
                format!("{a} is out of range 0..=86400 seconds"),
            );
            None
        }
    };
    Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
    }
}
