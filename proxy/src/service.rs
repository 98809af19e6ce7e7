//! Per-service state that outlives routing-table swaps: requests in flight (for circuit
//! breaking) and the retry budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;

use crate::metrics::Metrics;

#[derive(Debug)]
pub struct ServiceState {
    in_flight: AtomicU32,
    /// Mirrored copies outstanding (shadow traffic), bounded by the mirror's `max_in_flight`.
    mirror_in_flight: AtomicU32,
    /// Requests answered, 5xx among them, and the time they took: the demand the scaling
    /// recommender reads (next to `in_flight`, on the cache line the request already touches).
    answered: AtomicU64,
    errors: AtomicU64,
    busy_micros: AtomicU64,
    /// Retry tokens in thousandths: every request deposits `budget_percent` tenths, a retry
    /// withdraws a thousand, and `min_per_second` whole tokens trickle in per second.
    tokens: AtomicI64,
    refilled_at: AtomicU64,
    pub(crate) retried: IntCounter,
    pub(crate) retries_refused: IntCounter,
    pub(crate) breaker_service: IntCounter,
    pub(crate) breaker_backend: IntCounter,
}

/// A service's demand counters at one moment: requests in flight now, and totals since the
/// service appeared (two readings make a window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub in_flight: u32,
    pub answered: u64,
    pub errors: u64,
    /// The sum of answered requests' durations, in microseconds.
    pub busy_micros: u64,
}

/// Counts a request against its service until dropped.
#[derive(Debug)]
pub struct ServiceInFlight(Arc<ServiceState>);

impl Drop for ServiceInFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a mirrored copy against its service until dropped.
#[derive(Debug)]
pub struct MirrorInFlight(Arc<ServiceState>);

impl Drop for MirrorInFlight {
    fn drop(&mut self) {
        self.0.mirror_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServiceState {
    fn new(name: &str, metrics: &Metrics) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            mirror_in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            // A second's worth of the default floor, so that a service can retry from the start.
            tokens: AtomicI64::new(10_000),
            refilled_at: AtomicU64::new(crate::clock::nanos_since_epoch(std::time::Instant::now())),
            retried: metrics.retries.with_label_values(&[name, "retried"]),
            retries_refused: metrics.retries.with_label_values(&[name, "budget_exhausted"]),
            breaker_service: metrics.circuit_breaker.with_label_values(&[name, "service"]),
            breaker_backend: metrics.circuit_breaker.with_label_values(&[name, "backend"]),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request of this service was answered with `status` after `seconds`.
    #[inline]
    pub fn record(&self, status: u16, seconds: f64) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.busy_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The demand counters now.
    pub fn demand(&self) -> Demand {
        Demand {
            in_flight: self.in_flight(),
            answered: self.answered.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            busy_micros: self.busy_micros.load(Ordering::Relaxed),
        }
    }

    /// Counts a new request, unless the service already has `limit` in flight.
    pub fn try_begin(self: &Arc<Self>, limit: u32) -> Option<ServiceInFlight> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.breaker_service.inc();
            return None;
        }
        Some(ServiceInFlight(self.clone()))
    }

    /// Counts a new mirrored copy, unless `limit` are already out.
    pub fn try_begin_mirror(self: &Arc<Self>, limit: u32) -> Option<MirrorInFlight> {
        if self.mirror_in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
            self.mirror_in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(MirrorInFlight(self.clone()))
    }

    /// A request arrived: it earns the service `percent` hundredths of a retry.
    #[inline]
    pub fn deposit(&self, percent: u32) {
        self.tokens.fetch_add(i64::from(percent) * 10, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one. The balance is capped, so that a long
    /// quiet period does not save up a retry storm.
    pub fn withdraw(&self, now: u64, min_per_second: u32) -> bool {
        let last = self.refilled_at.swap(now, Ordering::Relaxed);
        let trickle = (now.saturating_sub(last) as i64 / 1_000_000) * i64::from(min_per_second);
        let cap = 1000 * i64::from(min_per_second.max(10)) * 10;
        let balance = (self.tokens.fetch_add(trickle, Ordering::Relaxed) + trickle).min(cap);
        if balance >= 1000 {
            self.tokens.store(balance - 1000, Ordering::Relaxed);
            self.retried.inc();
            true
        } else {
            self.tokens.store(balance, Ordering::Relaxed);
            self.retries_refused.inc();
            false
        }
    }
}

/// Service state by name.
#[derive(Debug, Default)]
pub struct ServiceRegistry {
    services: Mutex<HashMap<Arc<str>, Arc<ServiceState>>>,
}

impl ServiceRegistry {
    /// The state of a service, and whether it already existed.
    pub fn resolve(&self, name: &Arc<str>, metrics: &Metrics) -> (Arc<ServiceState>, bool) {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let existed = map.contains_key(name);
        let state = map
            .entry(name.clone())
            .or_insert_with(|| Arc::new(ServiceState::new(name, metrics)))
            .clone();
        (state, existed)
    }

    /// Forgets the state of services that are gone.
    pub fn forget<'a>(&self, names: impl Iterator<Item = &'a Arc<str>>, metrics: &Metrics) {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            if map.remove(name).is_some() {
                metrics.forget_service(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_traffic_plus_a_trickle() {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let s = ServiceState::new("s", &metrics);
        let t0 = s.refilled_at.load(Ordering::Relaxed);
        // It starts with ten.
        assert_eq!((0..50).filter(|_| s.withdraw(t0, 0)).count(), 10);
        // 100 requests at 20% earn 20 retries.
        for _ in 0..100 {
            s.deposit(20);
        }
        let granted = (0..50).filter(|_| s.withdraw(t0, 0)).count();
        assert_eq!(granted, 20);
        // A second later, the 10/s trickle allows 10 more, and no more.
        let granted = (0..50).filter(|_| s.withdraw(t0 + 1_000_000_000, 10)).count();
        assert_eq!(granted, 10);
    }
}
