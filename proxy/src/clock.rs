//! The process's monotonic clock for timestamps kept in atomics (backend health, EWMA ages,
//! retry budgets): nanoseconds since a process-wide epoch, so a `u64` can hold an `Instant`.

use std::sync::OnceLock;
use std::time::Instant;

/// Process-wide monotonic epoch for timestamps stored in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}
