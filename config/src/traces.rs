//! `[tracing]`: request spans exported over OTLP/HTTP (JSON) to a collector. Read at start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{bounded, duration_or};
use crate::duration;
use crate::error::Errors;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tracing {
    /// `http://host:port/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// Spans waiting for export at most; beyond, spans are dropped and counted.
    pub queue: usize,
    /// Spans per request to the collector at most.
    pub batch: usize,
    /// How long spans may wait for a batch to fill.
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
    /// For one export: connect and answer.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub queue: Option<i64>,
    pub batch: Option<i64>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

pub fn validate_tracing(f: FileTracing, origin: &str, errs: &mut Errors) -> Tracing {
    let field = "tracing";
    let endpoint = f.endpoint.unwrap_or_default().trim().to_string();
    match endpoint.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
        _ => errs.push(
            origin,
            format!("{field}.endpoint"),
            format!(
                "{endpoint:?} is not a URL like http://collector:4318/v1/traces (https is not supported yet)"
            ),
        ),
    }
    let count = |v: Option<i64>, default: u32, max: i64, part: &str, errs: &mut Errors| {
        bounded(v, default, 1, max, origin, format!("{field}.{part}"), errs) as usize
    };
    let time = |v: &Option<String>, default: Duration, part: &str, errs: &mut Errors| {
        duration_or(v, default, origin, format!("{field}.{part}"), errs)
    };
    Tracing {
        endpoint,
        service_name: f.service_name.unwrap_or_else(|| "gantry".into()),
        queue: count(f.queue, 4096, 1 << 20, "queue", errs),
        batch: count(f.batch, 512, 65_536, "batch", errs),
        interval: time(&f.interval, Duration::from_secs(1), "interval", errs),
        timeout: time(&f.timeout, Duration::from_secs(2), "timeout", errs),
    }
}
