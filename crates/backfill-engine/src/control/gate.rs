//! The live limiters: a rate (a pace that keeps its schedule when its limit changes) and the
//! resizable concurrency gate.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A limit of cells (rows, batches) per second that can change while workers wait on it.
///
/// Cells are granted in slices of at most a tenth of a second's worth (at least one cell),
/// one slice at a time on one schedule shared by every worker: a slice is granted once the
/// previous one's time is over (when the run was idle, at once), and its own time is its
/// cells at the limit in force when it is granted. A change of the limit keeps that schedule,
/// so it takes effect from the next slice, never lets a burst through, and never leaves a
/// worker drawing on the old limit: the rate delivered is the rate asked for, however often
/// it changes (the adaptive throttle changes it up to ten times a second). A replaced
/// token bucket (`governor`, before) granted a fresh bucket at every change, and workers
/// already waiting kept drawing on the old one besides: the adaptive throttle's runs moved
/// about twice the rows per second it asked for.
///
/// Never faster than the limit; slower by at most a timer's lateness per slice (a waiter
/// woken late starts the next slice's time from when it is granted).
pub(super) struct Rate {
    pace: Mutex<Pace>,
    /// The current limit (0: none), readable without the lock.
    per_second: AtomicU32,
}

struct Pace {
    per_second: u32,
    /// When the latest slice's time ends: the next slice is granted from then on.
    next: Instant,
}

impl Rate {
    pub(super) fn new(per_second: u32) -> Rate {
        Rate {
            pace: Mutex::new(Pace {
                per_second,
                next: Instant::now(),
            }),
            per_second: AtomicU32::new(per_second),
        }
    }

    /// Sets the limit (0: none), from the next slice on.
    pub(super) fn set(&self, per_second: u32) {
        self.lock().per_second = per_second;
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u32 {
        self.per_second.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `cells` more cells are granted, slice by slice, each under the limit in
    /// force when it is granted; returns at once while there is no limit.
    pub(super) async fn take(&self, cells: u64) {
        let mut left = cells;
        while left > 0 {
            let due = {
                let mut pace = self.lock();
                if pace.per_second == 0 {
                    return;
                }
                let now = Instant::now();
                if pace.next <= now {
                    let slice = u64::from((pace.per_second / 10).max(1)).min(left);
                    #[allow(clippy::cast_precision_loss)]
                    let time = Duration::from_secs_f64(slice as f64 / f64::from(pace.per_second));
                    pace.next = now + time;
                    left -= slice;
                    continue;
                }
                pace.next
            };
            tokio::time::sleep_until(due).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Four workers take `slice`-cell steps from `rate` for `run`, while `change` (when given)
    /// sets the limit every 10 ms; returns the cells they were granted and the time it took.
    async fn granted(
        rate: Arc<Rate>,
        slice: u64,
        run: Duration,
        change: Option<fn(u32) -> u32>,
    ) -> (u64, Duration) {
        let start = Instant::now();
        let cells = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (rate, cells) = (rate.clone(), cells.clone());
                tokio::spawn(async move {
                    while start.elapsed() < run {
                        rate.take(slice).await;
                        cells.fetch_add(slice, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut tick = 0u32;
        while start.elapsed() < run {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(change) = change {
                tick += 1;
                rate.set(change(tick));
            }
        }
        for w in workers {
            w.await.expect("worker");
        }
        (cells.load(Ordering::Relaxed), start.elapsed())
    }

    fn at_most(per_second: f64, took: Duration, slices: f64) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = (per_second * took.as_secs_f64() + slices * per_second / 10.0).ceil() as u64;
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limit_changed_every_10_ms_still_delivers_the_rate_asked_for() {
        // 1,000 or 1,001 cells/s, alternating: a fresh bucket per change let ~10× through.
        let rate = Arc::new(Rate::new(1000));
        let (cells, took) = granted(
            rate,
            10,
            Duration::from_secs(1),
            Some(|tick| 1000 + tick % 2),
        )
        .await;
        // The slices in flight when the time was up (one per worker) may end after it.
        let limit = at_most(1001.0, took, 1.0) + 4 * 10;
        assert!(
            cells <= limit,
            "{cells} cells in {took:?} at 1,000/s (at most {limit})"
        );
        assert!(cells > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_holds_from_the_next_slice_and_no_limit_waits_for_nothing() {
        let rate = Arc::new(Rate::new(20_000));
        let (fast, took_fast) = granted(rate.clone(), 500, Duration::from_millis(300), None).await;
        rate.set(1000);
        let (slow, took_slow) = granted(rate.clone(), 50, Duration::from_millis(500), None).await;
        // At most the 2,000-cell slice granted before the cut still counts against the
        // slow phase's time, then 1,000/s.
        let limit = at_most(1000.0, took_slow, 1.0) + 4 * 50 + 2000;
        assert!(
            slow <= limit,
            "{slow} cells in {took_slow:?} after a cut to 1,000/s (at most {limit}); \
             {fast} in {took_fast:?} before"
        );
        rate.set(0);
        let unlimited = Instant::now();
        rate.take(1_000_000_000).await;
        assert!(
            unlimited.elapsed() < Duration::from_secs(1),
            "no limit waits"
        );
    }
}
