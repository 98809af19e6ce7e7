//! The shutdown signal shared by listeners and background tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A cancellation token plus a flag that is set before the token is cancelled.
///
/// Connection tasks wake several times per request; asking the token on each wake whether it was
/// cancelled takes a mutex shared by every connection. Every task woken by the cancellation
/// instead sees the flag with one atomic load.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    triggered: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown: every `cancelled()` future completes.
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::Release);
        self.token.cancel();
    }

    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// The underlying token, for tasks off the request path (and crates that do not know this
    /// type).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Completes when the shutdown starts.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}
