//! The live limiters: a rate (GCRA, replaceable while the run goes) and the resizable
//! concurrency gate.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A rate limiter that can be replaced while workers wait on it.
pub(super) struct Rate {
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// The current limit (0: none), for slicing waits.
    per_second: AtomicU32,
}

impl Rate {
    pub(super) fn new(per_second: u32) -> Rate {
        let rate = Rate {
            limiter: RwLock::new(None),
            per_second: AtomicU32::new(0),
        };
        rate.set(per_second);
        rate
    }

    /// Sets the limit (0: none). The new bucket holds a tenth of a second of cells, so a
    /// change never lets a whole second's burst through.
    pub(super) fn set(&self, per_second: u32) {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new((per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        *self.limiter.write().unwrap_or_else(|e| e.into_inner()) = limiter;
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u32 {
        self.per_second.load(Ordering::Relaxed)
    }

    /// Waits until `cells` more cells are allowed, in slices no larger than the bucket, each
    /// from the limiter in force at that moment.
    pub(super) async fn take(&self, cells: u64) {
        let mut left = cells;
        while left > 0 {
            let limiter = self
                .limiter
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(limiter) = limiter else { return };
            let slice = u64::from((self.get() / 10).max(1)).min(left);
            if let Some(n) = NonZeroU32::new(u32::try_from(slice).unwrap_or(u32::MAX)) {
                let _ = limiter.until_n_ready(n).await;
            }
            left -= slice;
        }
    }
}

/// The number of batches in flight at once, resizable while workers wait.
pub(super) struct Gate {
    semaphore: Arc<Semaphore>,
    size: Mutex<u32>,
}

impl Gate {
    pub(super) fn new(size: u32) -> Gate {
        Gate {
            semaphore: Arc::new(Semaphore::new(size as usize)),
            size: Mutex::new(size),
        }
    }

    /// Resizes to `to` (at least 1): grows at once; shrinks as permits come back.
    pub(super) fn resize(&self, to: u32) {
        let to = to.max(1);
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if to > *size {
            self.semaphore.add_permits((to - *size) as usize);
        } else if to < *size {
            let shrink = *size - to;
            let semaphore = self.semaphore.clone();
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(shrink).await {
                    permits.forget();
                }
            });
        }
        *size = to;
    }

    pub(super) async fn permit(&self) -> OwnedSemaphorePermit {
        match self.semaphore.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("the concurrency gate is never closed"),
        }
    }
}
