//! Health settings of a service: active HTTP checks and passive outlier ejection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{bounded, duration_or};
use crate::error::Errors;
use crate::matcher::parse_method;

/// An active HTTP check, run against every backend of a service on its own connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub method: String,
    /// Path and optional query, e.g. `/healthz`.
    pub path: String,
    /// Host header of the check; the backend's address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as passing, as inclusive ranges (default 200-399).
    pub expected_statuses: Vec<(u16, u16)>,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub interval: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub timeout: Duration,
    /// Consecutive passes to become ready again after failing (a new backend needs one).
    pub healthy_threshold: u32,
    /// Consecutive failures to stop receiving traffic.
    pub unhealthy_threshold: u32,
    /// A backend whose source already reports it healthy (a Docker HEALTHCHECK) takes traffic
    /// before its first check here.
    pub trust_source_health: bool,
}

impl HealthCheck {
    pub fn passes(&self, status: u16) -> bool {
        self.expected_statuses
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Passive outlier ejection, driven by the answers of real traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Outlier {
    /// Consecutive 5xx answers or connection failures that eject a backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each further one longer (times the ejection count).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub max_ejection_time: Duration,
    /// Never eject more than this share of a service's backends at once.
    pub max_ejection_percent: u32,
    /// Below this share of eligible backends, a service ignores health and balances across all
    /// its backends: a broken check must not black-hole the service.
    pub panic_threshold_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub expected_statuses: Option<Vec<FileStatus>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub trust_source_health: Option<bool>,
}

/// `200` or `"200-399"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FileStatus {
    Code(i64),
    Range(String),
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    pub consecutive_failures: Option<i64>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub panic_threshold_percent: Option<i64>,
}

pub fn validate_health_check(
    h: FileHealthCheck,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> HealthCheck {
    let path = h.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        errs.push(
            origin,
            format!("{field}.path"),
            format!("{path:?} must start with '/' and contain no spaces"),
        );
    }
    let method = match h.method.as_deref().map(parse_method) {
        None => "GET".to_string(),
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.method"), e);
            "GET".into()
        }
    };
    let mut expected_statuses = Vec::new();
    for (i, s) in h.expected_statuses.unwrap_or_default().into_iter().enumerate() {
        let range = match s {
            FileStatus::Code(c) => u16::try_from(c).ok().map(|c| (c, c)),
            FileStatus::Range(r) => r
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        };
        match range {
            Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                expected_statuses.push((lo, hi))
            }
            _ => errs.push(
                origin,
                format!("{field}.expected_statuses[{i}]"),
                "expected a status code (200) or a range (\"200-399\") within 100..=599",
            ),
        }
    }
    if expected_statuses.is_empty() {
        expected_statuses.push((200, 399));
    }
    HealthCheck {
        method,
        path,
        host: h.host,
        expected_statuses,
        interval: duration_or(
            &h.interval,
            Duration::from_secs(5),
            origin,
            format!("{field}.interval"),
            errs,
        ),
        timeout: duration_or(
            &h.timeout,
            Duration::from_secs(2),
            origin,
            format!("{field}.timeout"),
            errs,
        ),
        healthy_threshold: bounded(
            h.healthy_threshold,
            2,
            1,
            100,
            origin,
            format!("{field}.healthy_threshold"),
            errs,
        ),
        unhealthy_threshold: bounded(
            h.unhealthy_threshold,
            3,
            1,
            100,
            origin,
            format!("{field}.unhealthy_threshold"),
            errs,
        ),
        trust_source_health: h.trust_source_health.unwrap_or(false),
    }
}

pub fn validate_outlier(o: FileOutlier, origin: &str, field: &str, errs: &mut Errors) -> Outlier {
    let d = Outlier::default();
    let out = Outlier {
        consecutive_failures: bounded(
            o.consecutive_failures,
            d.consecutive_failures,
            0,
            1000,
            origin,
            format!("{field}.consecutive_failures"),
            errs,
        ),
        base_ejection_time: duration_or(
            &o.base_ejection_time,
            d.base_ejection_time,
            origin,
            format!("{field}.base_ejection_time"),
            errs,
        ),
        max_ejection_time: duration_or(
            &o.max_ejection_time,
            d.max_ejection_time,
            origin,
            format!("{field}.max_ejection_time"),
            errs,
        ),
        max_ejection_percent: bounded(
            o.max_ejection_percent,
            d.max_ejection_percent,
            0,
            100,
            origin,
            format!("{field}.max_ejection_percent"),
            errs,
        ),
        panic_threshold_percent: bounded(
            o.panic_threshold_percent,
            d.panic_threshold_percent,
            0,
            100,
            origin,
            format!("{field}.panic_threshold_percent"),
            errs,
        ),
    };
    if out.max_ejection_time < out.base_ejection_time {
        errs.push(
            origin,
            format!("{field}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        );
    }
    out
}
