//! The `errors` middleware: error pages.

use serde::{Deserialize, Serialize, Serializer};

use crate::error::Errors;

/// Error pages: responses (the backend's, or Gantry's own 502/503/504) with a status in
/// `status` get their body from a page, keeping their status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorPages {
    /// Inclusive status ranges.
    #[serde(serialize_with = "status_ranges")]
    pub status: Vec<(u16, u16)>,
    #[serde(flatten)]
    pub page: ErrorPage,
}

impl ErrorPages {
    pub fn covers(&self, status: u16) -> bool {
        self.status.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ErrorPage {
    /// A GET to a Gantry service at `path` (`{status}` replaced by the status).
    Service { service: String, path: String },
    /// A file read when the config is loaded (config file only).
    File {
        file: String,
        #[serde(skip)]
        content_type: String,
        #[serde(skip)]
        content: bytes::Bytes,
    },
}

fn status_ranges<S: Serializer>(ranges: &[(u16, u16)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ranges.iter().map(|&(lo, hi)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    }))
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileErrors {
    /// `"500-599"`, `"404"`, or a number.
    pub status: Option<Vec<StatusText>>,
    pub service: Option<String>,
    pub path: Option<String>,
    pub file: Option<String>,
}

/// A status or range as written (a label value `404` arrives as a number).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StatusText {
    N(i64),
    S(String),
}

pub(super) fn validate_errors(
    e: FileErrors,
    origin: &str,
    field: &str,
    read: crate::file::ReadFile<'_>,
    errs: &mut Errors,
) -> ErrorPages {
    let mut status = Vec::new();
    for (i, s) in e.status.into_iter().flatten().enumerate() {
        let text = match s {
            StatusText::N(n) => n.to_string(),
            StatusText::S(s) => s.trim().to_string(),
        };
        match crate::check::status_range(&text, 400..=599) {
            Some(r) => status.push(r),
            None => errs.push(
                origin,
                format!("{field}.status[{i}]"),
                format!("{text:?} is not a status or range in 400..=599 (e.g. \"500-599\")"),
            ),
        }
    }
    if status.is_empty() {
        errs.push(
            origin,
            format!("{field}.status"),
            "needs the statuses to cover (e.g. [\"500-599\"])",
        );
    }
    let page = match (e.service, e.file) {
        (Some(service), None) => {
            let path = e.path.unwrap_or_else(|| "/{status}.html".into());
            if !path.starts_with('/')
                || path
                    .replace("{status}", "500")
                    .parse::<http::uri::PathAndQuery>()
                    .is_err()
            {
                errs.push(
                    origin,
                    format!("{field}.path"),
                    format!("{path:?} is not a path like /{{status}}.html"),
                );
            }
            if service.trim().is_empty() {
                errs.push(origin, format!("{field}.service"), "empty");
            }
            ErrorPage::Service { service, path }
        }
        (None, Some(file)) => {
            if e.path.is_some() {
                errs.push(
                    origin,
                    format!("{field}.path"),
                    "path goes with service, not file",
                );
            }
            let content = match read(&file) {
                Ok(bytes) => bytes::Bytes::from(bytes),
                Err(why) => {
                    errs.push(origin, format!("{field}.file"), why);
                    bytes::Bytes::new()
                }
            };
            let content_type = match file.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()) {
                Some(e) if e == "html" || e == "htm" => "text/html; charset=utf-8",
                Some(e) if e == "json" => "application/json",
                _ => "text/plain; charset=utf-8",
            }
            .to_string();
            ErrorPage::File {
                file,
                content_type,
                content,
            }
        }
        _ => {
            errs.push(origin, field, "give either service (and path) or file");
            ErrorPage::Service {
                service: String::new(),
                path: String::new(),
            }
        }
    };
    ErrorPages { status, page }
}
