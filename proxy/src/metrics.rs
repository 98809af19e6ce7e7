//! Request-path metrics. Every handle the request path touches is resolved when a snapshot is
//! built (or once, lazily, per route and backend), so serving a request costs a few atomic adds
//! and never a label lookup.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Status classes, the `code` label of `gantry_requests_total`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub connect_errors: IntCounterVec,
    pub connections_opened: IntCounterVec,
    pub client_connections: IntCounterVec,
    pub client_connections_active: IntGaugeVec,
    pub refused_connections: IntCounter,
    /// Client connections closed because the client took nothing of a response for the send
    /// timeout.
    pub send_timeouts: IntCounter,
    pub tls_handshake_errors: IntCounter,
    pub health_checks: IntCounterVec,
    pub ejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub circuit_breaker: IntCounterVec,
    /// Per service and version: what rollouts gate on.
    pub version_requests: IntCounterVec,
    pub version_duration: HistogramVec,
    /// Mirrored requests (shadow traffic), per service and the version mirrored to: what shadow
    /// steps gate on; and the copies not sent, by reason.
    pub mirror_requests: IntCounterVec,
    pub mirror_duration: HistogramVec,
    pub mirror_dropped: IntCounterVec,
    /// Malformed requests refused before routing, by reason.
    pub refused_requests: IntCounterVec,
    /// Requests a router's middleware answered itself, by router, middleware and reason.
    pub middleware_refusals: IntCounterVec,
}

/// Latency buckets of the per-version histogram: fine below 100 ms, where canary gates compare
/// p99s.
pub const VERSION_BUCKETS: [f64; 22] = [
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_requests_total",
                "Requests answered, by router, service, backend and status class.",
            ),
            &["router", "service", "backend", "code"],
            registry
        )?;
        let duration = prometheus::register_histogram_vec_with_registry!(
            HistogramOpts::new(
                "gantry_request_duration_seconds",
                "Time from a request's arrival to its response head being ready, by router and service.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["router", "service"],
            registry
        )?;
        let connect_errors = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_upstream_connect_errors_total",
                "Failed connection attempts to backends.",
            ),
            &["service", "backend"],
            registry
        )?;
        let connections_opened = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_upstream_connections_opened_total",
                "Connections opened to backends; a low rate means the keep-alive pool is working.",
            ),
            &["service", "backend"],
            registry
        )?;
        let client_connections = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_client_connections_total",
                "Client connections accepted, by entrypoint.",
            ),
            &["entrypoint"],
            registry
        )?;
        let client_connections_active = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_client_connections_active",
                "Client connections open now, by entrypoint.",
            ),
            &["entrypoint"],
            registry
        )?;
        let refused_connections = prometheus::register_int_counter_with_registry!(
            "gantry_client_connections_refused_total",
            "Client connections closed at accept because the connection limit was reached.",
            registry
        )?;
        let send_timeouts = prometheus::register_int_counter_with_registry!(
            "gantry_client_send_timeouts_total",
            "Client connections closed because the client took nothing of a response for the entrypoint's send_timeout (stopped reading, or an HTTP/2 flow-control window kept shut).",
            registry
        )?;
        let tls_handshake_errors = prometheus::register_int_counter_with_registry!(
            "gantry_tls_handshake_errors_total",
            "TLS handshakes that failed or timed out (no certificate, protocol version, bad client).",
            registry
        )?;
        let health_checks = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_health_checks_total",
                "Active health checks, by backend and result (pass, fail).",
            ),
            &["service", "backend", "result"],
            registry
        )?;
        let ejections = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_backend_ejections_total",
                "Backends ejected by passive outlier detection.",
            ),
            &["service", "backend"],
            registry
        )?;
        let retries = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_retries_total",
                "Retries on another backend (retried), and retries the budget refused (budget_exhausted).",
            ),
            &["service", "outcome"],
            registry
        )?;
        let circuit_breaker = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_circuit_breaker_rejections_total",
                "Requests answered 503 at once because the service or backend had too many in flight.",
            ),
            &["service", "scope"],
            registry
        )?;
        let version_requests = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_version_requests_total",
                "Requests answered by each version of a service, by status class (5xx includes Gantry's own 502/503/504).",
            ),
            &["service", "version", "code"],
            registry
        )?;
        let version_duration = prometheus::register_histogram_vec_with_registry!(
            HistogramOpts::new(
                "gantry_version_request_duration_seconds",
                "Time from a request's arrival to its response head, by service and version.",
            )
            .buckets(VERSION_BUCKETS.to_vec()),
            &["service", "version"],
            registry
        )?;
        let mirror_requests = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_mirror_requests_total",
                "Mirrored copies of requests answered by the version mirrored to, by status class (answers discarded; 5xx includes Gantry's own 502/504).",
            ),
            &["service", "version", "code"],
            registry
        )?;
        let mirror_duration = prometheus::register_histogram_vec_with_registry!(
            HistogramOpts::new(
                "gantry_mirror_request_duration_seconds",
                "Time from sending a mirrored copy to its response head, by service and version.",
            )
            .buckets(VERSION_BUCKETS.to_vec()),
            &["service", "version"],
            registry
        )?;
        let mirror_dropped = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_mirror_dropped_total",
                "Requests picked for mirroring whose copy was not sent, by reason (busy: max_in_flight copies out; body_too_large; body: the client's body did not arrive whole; no_backend).",
            ),
            &["service", "reason"],
            registry
        )?;
        let refused_requests = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_requests_refused_total",
                "Malformed requests refused before routing, by reason (repeated_host, invalid_host, bad_target, bad_framing, ...).",
            ),
            &["reason"],
            registry
        )?;
        let middleware_refusals = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_middleware_refusals_total",
                "Requests a router's middleware answered itself, by router, middleware and reason (forbidden, unauthorized, rate_limited, missing_middleware).",
            ),
            &["router", "middleware", "reason"],
            registry
        )?;
        Ok(Self {
            middleware_refusals,
            refused_requests,
            requests,
            duration,
            connect_errors,
            connections_opened,
            client_connections,
            client_connections_active,
            refused_connections,
            send_timeouts,
            tls_handshake_errors,
            health_checks,
            ejections,
            retries,
            circuit_breaker,
            version_requests,
            version_duration,
            mirror_requests,
            mirror_duration,
            mirror_dropped,
        })
    }

    pub fn version(&self, service: &str, version: &str) -> VersionMetrics {
        VersionMetrics {
            requests: ClassCounters(
                CLASSES.map(|c| self.version_requests.with_label_values(&[service, version, c])),
            ),
            latency: self.version_duration.with_label_values(&[service, version]),
        }
    }

    /// The metric handles of the copies mirrored to one version of a service.
    pub fn mirror_version(&self, service: &str, version: &str) -> VersionMetrics {
        VersionMetrics {
            requests: ClassCounters(
                CLASSES.map(|c| self.mirror_requests.with_label_values(&[service, version, c])),
            ),
            latency: self.mirror_duration.with_label_values(&[service, version]),
        }
    }

    /// What one version of a service has answered since Gantry started.
    pub fn version_stats(&self, service: &str, version: &str) -> VersionStats {
        Self::stats(&self.version(service, version))
    }

    /// What the copies mirrored to one version of a service got since Gantry started.
    pub fn mirror_stats(&self, service: &str, version: &str) -> VersionStats {
        Self::stats(&self.mirror_version(service, version))
    }

    fn stats(m: &VersionMetrics) -> VersionStats {
        let class = |i: usize| m.requests.0[i].get();
        let requests = (0..CLASSES.len()).map(class).sum();
        let h = prometheus::core::Metric::metric(&m.latency);
        let buckets = h
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        VersionStats {
            requests,
            errors: class(4),
            buckets,
        }
    }

    pub fn forget_version(&self, service: &str, version: &str) {
        for c in CLASSES {
            let _ = self.version_requests.remove_label_values(&[service, version, c]);
        }
        let _ = self.version_duration.remove_label_values(&[service, version]);
        for c in CLASSES {
            let _ = self.mirror_requests.remove_label_values(&[service, version, c]);
        }
        let _ = self.mirror_duration.remove_label_values(&[service, version]);
    }

    pub fn class_counters(&self, router: &str, service: &str, backend: &str) -> ClassCounters {
        ClassCounters(CLASSES.map(|c| self.requests.with_label_values(&[router, service, backend, c])))
    }

    pub fn route_histogram(&self, router: &str, service: &str) -> Histogram {
        self.duration.with_label_values(&[router, service])
    }

    /// Drops the series of a backend that is gone, so that a platform where containers come and
    /// go does not grow its metrics without bound.
    pub fn forget_backend(&self, routers: &[&str], service: &str, backend: &str) {
        for r in routers {
            for c in CLASSES {
                let _ = self.requests.remove_label_values(&[r, service, backend, c]);
            }
        }
        let _ = self.connect_errors.remove_label_values(&[service, backend]);
        let _ = self.connections_opened.remove_label_values(&[service, backend]);
        let _ = self.ejections.remove_label_values(&[service, backend]);
        for r in ["pass", "fail"] {
            let _ = self.health_checks.remove_label_values(&[service, backend, r]);
        }
    }

    pub fn forget_service(&self, service: &str) {
        for o in ["retried", "budget_exhausted"] {
            let _ = self.retries.remove_label_values(&[service, o]);
        }
        for s in ["service", "backend"] {
            let _ = self.circuit_breaker.remove_label_values(&[service, s]);
        }
        for r in crate::mirror::DROP_REASONS {
            let _ = self.mirror_dropped.remove_label_values(&[service, r]);
        }
    }

    pub fn forget_route(&self, router: &str, service: &str) {
        let _ = self.duration.remove_label_values(&[router, service]);
        for c in CLASSES {
            let _ = self.requests.remove_label_values(&[router, service, "", c]);
        }
    }
}

/// One counter per status class for one (router, service, backend).
#[derive(Clone, Debug)]
pub struct ClassCounters([IntCounter; 5]);

/// The metric handles of one version of a service.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    pub requests: ClassCounters,
    pub latency: Histogram,
}

impl VersionMetrics {
    pub fn observe(&self, status: u16, seconds: f64) {
        self.requests.inc(status);
        self.latency.observe(seconds);
    }
}

/// Counters of one version at one moment; two of them make a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VersionStats {
    pub requests: u64,
    /// Answers with a 5xx status (the backend's, or Gantry's 502/503/504).
    pub errors: u64,
    /// Cumulative latency buckets: (upper bound in seconds, requests at or below it).
    pub buckets: Vec<(f64, u64)>,
}

impl VersionStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &VersionStats) -> VersionStats {
        VersionStats {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &(le, n))| (le, n.saturating_sub(earlier.buckets.get(i).map_or(0, |b| b.1))))
                .collect(),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile of latency in seconds, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                let within = (n - lower.1) as f64;
                let frac = if within > 0.0 {
                    (rank - lower.1 as f64) / within
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac.clamp(0.0, 1.0));
            }
            lower = (le, n);
        }
        // Above the last bucket: report its bound (the histogram cannot say more).
        Some(lower.0)
    }
}

impl ClassCounters {
    #[inline]
    pub fn inc(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].inc();
    }
}
