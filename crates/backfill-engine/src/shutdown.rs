//! Cooperative stop requests (Ctrl-C, a future `pause` command).
//!
//! A request is a level, not an event: once requested, it stays requested, and every waiter
//! sees it. Workers check it between batches, so an in-flight batch always finishes and
//! checkpoints before the run pauses.

use tokio::sync::watch;

/// Handle that requests a graceful stop; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle with no stop requested.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// Requests a graceful stop. Idempotent.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// True once a stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when a stop is requested (immediately if it already was).
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while `self` holds one.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_is_seen_by_clones_and_waiters() {
        let s = Shutdown::new();
        let c = s.clone();
        assert!(!c.is_requested());
        let waiter = tokio::spawn(async move { c.requested().await });
        s.request();
        waiter.await.unwrap();
        assert!(s.clone().is_requested());
    }
}
