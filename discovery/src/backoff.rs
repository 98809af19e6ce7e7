//! Reconnection backoff shared by the sources that keep a session (Docker, etcd): 100 ms doubling
//! to 5 s, started over after a session that lasted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN }
    }
}

impl Backoff {
    /// A session that lasted longer than the longest wait was healthy: start over.
    pub fn session_lasted(&mut self, d: Duration) {
        if d > MAX {
            self.next = MIN;
        }
    }

    /// Waits the current delay and doubles it; false if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}
