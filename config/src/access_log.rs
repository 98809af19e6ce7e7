//! `[access_log]`: one line per request, where it goes, in which format, which requests and
//! which fields. Read at start (like entrypoints); routers opt out with `access_log = false`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{header_names, status_range};
use crate::duration;
use crate::error::Errors;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccessLog {
    pub target: LogTarget,
    pub format: LogFormat,
    /// Whether the path is logged with its query (which may carry secrets).
    pub query: bool,
    pub user_agent: bool,
    pub referer: bool,
    /// Request headers added to JSON lines (lowercase names), as `header_<name>`.
    pub headers: Vec<String>,
    /// Of those, the ones whose values are written as `"REDACTED"`.
    pub redact: Vec<String>,
    pub filters: LogFilters,
    /// Lines waiting to be written at most; beyond, lines are dropped and counted.
    pub queue: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    /// The Common Log Format.
    Common,
    /// The Combined Log Format (Common, then referer and user agent).
    Combined,
}

/// Which requests get a line: those whose status is in `status`, or that took at least
/// `min_duration`; the rest with probability `sample`. Without filters, every request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogFilters {
    pub status: Vec<(u16, u16)>,
    #[serde(serialize_with = "duration::serialize_opt")]
    pub min_duration: Option<Duration>,
    pub sample: f64,
}

impl LogFilters {
    /// Whether a request with this status and duration is logged, `draw` a uniform number in
    /// `[0, 1)` (used only when the filters alone do not decide).
    pub fn keeps(&self, status: u16, took: Duration, draw: impl FnOnce() -> f64) -> bool {
        self.status.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
            || self.min_duration.is_some_and(|m| took >= m)
            || (self.sample >= 1.0 || (self.sample > 0.0 && draw() < self.sample))
    }
}

/// Headers redacted unless the config says otherwise.
pub const DEFAULT_REDACTED: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
/// The default queue: lines waiting for the writer.
pub const DEFAULT_QUEUE: usize = 16_384;

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// `"stdout"` (default), `"stderr"` or a file path.
    pub path: Option<String>,
    /// `"json"` (default), `"common"` or `"combined"`.
    pub format: Option<String>,
    pub query: Option<bool>,
    pub user_agent: Option<bool>,
    pub referer: Option<bool>,
    pub headers: Option<Vec<String>>,
    pub redact: Option<Vec<String>>,
    pub filters: Option<FileLogFilters>,
    pub queue: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLogFilters {
    pub status: Option<Vec<String>>,
    pub min_duration: Option<String>,
    pub sample: Option<f64>,
}

impl AccessLog {
    /// The `--access-log` and `--access-log-format` flags over the file's `[access_log]` (or
    /// the defaults, when the file has none).
    pub fn with_flags(
        file: Option<AccessLog>,
        path: Option<&str>,
        format: Option<LogFormat>,
    ) -> Option<AccessLog> {
        if path.is_none() && format.is_none() {
            return file;
        }
        let mut a =
            file.unwrap_or_else(|| validate_access_log(FileAccessLog::default(), "", &mut Errors::new()));
        if let Some(p) = path {
            a.target = LogTarget::parse(p);
        }
        if let Some(f) = format {
            a.format = f;
        }
        Some(a)
    }
}

impl LogTarget {
    /// `stdout` (or `-`), `stderr`, or a file path.
    pub fn parse(s: &str) -> LogTarget {
        match s.trim() {
            "stdout" | "-" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            p => LogTarget::File(p.to_string()),
        }
    }
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim() {
            "json" => Some(LogFormat::Json),
            "common" | "clf" => Some(LogFormat::Common),
            "combined" => Some(LogFormat::Combined),
            _ => None,
        }
    }
}

pub fn validate_access_log(f: FileAccessLog, origin: &str, errs: &mut Errors) -> AccessLog {
    let field = "access_log";
    let target = match f.path.as_deref().map(str::trim) {
        None => LogTarget::Stdout,
        Some("") => {
            errs.push(
                origin,
                format!("{field}.path"),
                "empty: use stdout, stderr or a file path",
            );
            LogTarget::Stdout
        }
        Some(p) => LogTarget::parse(p),
    };
    let format = match f.format.as_deref().map(|f| (f, LogFormat::parse(f))) {
        None => LogFormat::Json,
        Some((_, Some(f))) => f,
        Some((other, None)) => {
            errs.push(
                origin,
                format!("{field}.format"),
                format!("{other:?}: use json, common or combined"),
            );
            LogFormat::Json
        }
    };
    let headers = header_names(f.headers, origin, &format!("{field}.headers"), errs);
    let redact = match f.redact {
        None => DEFAULT_REDACTED.iter().map(|h| h.to_string()).collect(),
        Some(list) => header_names(Some(list), origin, &format!("{field}.redact"), errs),
    };
    let filters = f.filters.unwrap_or_default();
    let mut status = Vec::new();
    for (i, s) in filters.status.into_iter().flatten().enumerate() {
        match status_range(&s, 100..=599) {
            Some(r) => status.push(r),
            None => errs.push(
                origin,
                format!("{field}.filters.status[{i}]"),
                format!("{s:?} is not a status or range like \"500-599\""),
            ),
        }
    }
    let min_duration = match filters.min_duration.as_deref().map(duration::parse) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.filters.min_duration"), e);
            None
        }
    };
    let filtered = !status.is_empty() || min_duration.is_some();
    let sample = match filters.sample {
        // With filters, the rest is dropped unless a sample is asked for; without, all is kept.
        None => {
            if filtered {
                0.0
            } else {
                1.0
            }
        }
        Some(s) if (0.0..=1.0).contains(&s) => s,
        Some(s) => {
            errs.push(
                origin,
                format!("{field}.filters.sample"),
                format!("{s} is not in 0..=1"),
            );
            1.0
        }
    };
    let queue = crate::check::bounded(
        f.queue,
        DEFAULT_QUEUE as u32,
        1,
        1_048_576,
        origin,
        format!("{field}.queue"),
        errs,
    ) as usize;
    AccessLog {
        target,
        format,
        query: f.query.unwrap_or(false),
        user_agent: f.user_agent.unwrap_or(true),
        referer: f.referer.unwrap_or(true),
        headers,
        redact,
        filters: LogFilters {
            status,
            min_duration,
            sample,
        },
        queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_listed_statuses_slow_requests_and_a_sample_of_the_rest() {
        let f = LogFilters {
            status: vec![(500, 599)],
            min_duration: Some(Duration::from_millis(100)),
            sample: 0.25,
        };
        let fast = Duration::from_millis(1);
        assert!(f.keeps(502, fast, || 0.9));
        assert!(f.keeps(200, Duration::from_millis(150), || 0.9));
        assert!(!f.keeps(200, fast, || 0.3));
        assert!(f.keeps(200, fast, || 0.2));

        let mut errs = Errors::new();
        let v = validate_access_log(
            FileAccessLog {
                format: Some("xml".into()),
                filters: Some(FileLogFilters {
                    status: Some(vec!["600".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "g.toml",
            &mut errs,
        );
        let text = errs.to_string();
        assert!(text.contains("access_log.format"), "{text}");
        assert!(text.contains("access_log.filters.status[0]"), "{text}");
        assert_eq!(v.redact, DEFAULT_REDACTED);
    }
}
