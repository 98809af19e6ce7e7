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
    pub tls_handshake_errors: IntCounter,
    pub health_checks: IntCounterVec,
    pub ejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub circuit_breaker: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "gantry_requests_total",
                "Requests answered, by router, service, backend and status class.",
            ),
            &["router", "service", "backend", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gantry_request_duration_seconds",
                "Time from a request's arrival to its response head being ready, by router and service.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["router", "service"],
        )?;
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "gantry_upstream_connect_errors_total",
                "Failed connection attempts to backends.",
            ),
            &["service", "backend"],
        )?;
        let connections_opened = IntCounterVec::new(
            Opts::new(
                "gantry_upstream_connections_opened_total",
                "Connections opened to backends; a low rate means the keep-alive pool is working.",
            ),
            &["service", "backend"],
        )?;
        let client_connections = IntCounterVec::new(
            Opts::new(
                "gantry_client_connections_total",
                "Client connections accepted, by entrypoint.",
            ),
            &["entrypoint"],
        )?;
        let client_connections_active = IntGaugeVec::new(
            Opts::new(
                "gantry_client_connections_active",
                "Client connections open now, by entrypoint.",
            ),
            &["entrypoint"],
        )?;
        let refused_connections = IntCounter::new(
            "gantry_client_connections_refused_total",
            "Client connections closed at accept because the connection limit was reached.",
        )?;
        let tls_handshake_errors = IntCounter::new(
            "gantry_tls_handshake_errors_total",
            "TLS handshakes that failed or timed out (no certificate, protocol version, bad client).",
        )?;
        let health_checks = IntCounterVec::new(
            Opts::new(
                "gantry_health_checks_total",
                "Active health checks, by backend and result (pass, fail).",
            ),
            &["service", "backend", "result"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "gantry_backend_ejections_total",
                "Backends ejected by passive outlier detection.",
            ),
            &["service", "backend"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "gantry_retries_total",
                "Retries on another backend (retried), and retries the budget refused (budget_exhausted).",
            ),
            &["service", "outcome"],
        )?;
        let circuit_breaker = IntCounterVec::new(
            Opts::new(
                "gantry_circuit_breaker_rejections_total",
                "Requests answered 503 at once because the service or backend had too many in flight.",
            ),
            &["service", "scope"],
        )?;
        for c in [&health_checks, &ejections, &retries, &circuit_breaker] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(refused_connections.clone()))?;
        registry.register(Box::new(tls_handshake_errors.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connect_errors.clone()))?;
        registry.register(Box::new(connections_opened.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(client_connections_active.clone()))?;
        Ok(Self {
            requests,
            duration,
            connect_errors,
            connections_opened,
            client_connections,
            client_connections_active,
            refused_connections,
            tls_handshake_errors,
            health_checks,
            ejections,
            retries,
            circuit_breaker,
        })
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

impl ClassCounters {
    #[inline]
    pub fn inc(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].inc();
    }
}
