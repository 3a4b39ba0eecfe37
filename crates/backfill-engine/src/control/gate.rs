//! The live limiters: a rate (a pace that keeps its schedule when its limit changes) and the
//! resizable concurrency gate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How far ahead of the clock a [`Rate`]'s schedule may run: after an idle spell, at most
/// this much time's worth of cells is granted at once. It also absorbs a waiter's lateness
/// (timers fire in whole milliseconds, later on a loaded machine), which the schedule keeps
/// instead of losing, so small slices (one batch at thousands a second) still add up to the
/// limit.
const BURST: Duration = Duration::from_millis(100);

/// The most cells one grant carries: this share of a second's worth (at least one cell).
const SLICES_PER_SECOND: u32 = 20;

/// A limit of cells (rows, batches) per second that can change while workers wait on it.
///
/// One schedule is shared by every worker: each grant of a slice (at most a twentieth of a
/// second's worth of cells, at least one cell) moves it on by the slice's time at the limit
/// in force when it is granted, and a slice is granted once the schedule runs no more than
/// [`BURST`] ahead of the clock (a slice longer than that: once the schedule has caught up).
/// A change of the limit keeps the schedule, so it takes effect from the next slice, never
/// lets a burst through, and never leaves a worker drawing on the old limit; waiters are
/// woken to see it. The adaptive throttle changes the limit up to once an interval, and a
/// replaced token bucket (`governor`, before) granted a fresh bucket at every change while
/// workers already waiting kept drawing on the old one: its runs moved about twice the rows
/// per second it asked for.
///
/// Never more than the limit over any span, plus [`BURST`]'s worth; waiters are not served in
/// arrival order (whoever takes the lock when a slice is due gets it).
pub(super) struct Rate {
    pace: Mutex<Pace>,
    changed: Notify,
}

/// The schedule: the limit and how far its grants reach.
#[derive(Debug)]
struct Pace {
    per_second: u32,
    /// The end of the latest slice's time: where the next slice's starts, unless the clock
    /// is past it (an idle spell is not saved up).
    next: Instant,
}

impl Pace {
    /// Grants up to `left` cells at `now` (`Ok`, the cells granted), or says when the next
    /// slice fits (`Err`); `Ok(left)` without a limit.
    fn grant(&mut self, now: Instant, left: u64) -> Result<u64, Instant> {
        if self.per_second == 0 {
            return Ok(left);
        }
        let slice = u64::from((self.per_second / SLICES_PER_SECOND).max(1)).min(left);
        #[allow(clippy::cast_precision_loss)]
        let time = Duration::from_secs_f64(slice as f64 / f64::from(self.per_second));
        let ahead = BURST.max(time);
        let end = self.next.max(now) + time;
        if end <= now + ahead {
            self.next = end;
            Ok(slice)
        } else {
            Err(end - ahead)
        }
    }
}

impl Rate {
    pub(super) fn new(per_second: u32) -> Rate {
        Rate {
            pace: Mutex::new(Pace {
                per_second,
                next: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    /// Sets the limit (0: none), from the next slice on; waiters look again at once.
    pub(super) fn set(&self, per_second: u32) {
        self.lock().per_second = per_second;
        self.changed.notify_waiters();
    }

    /// The limit in force (0: none).
    pub(super) fn get(&self) -> u32 {
        self.lock().per_second
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `cells` more cells are granted, slice by slice, each under the limit in
    /// force when it is granted; returns at once while there is no limit.
    pub(super) async fn take(&self, cells: u64) {
        let mut left = cells;
        while left > 0 {
            // Registered before the schedule is read, so a change made after it wakes us.
            let changed = self.changed.notified();
            let granted = self.lock().grant(Instant::now(), left);
            match granted {
                Ok(n) => left -= n,
                Err(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = changed => {}
                    }
                }
            }
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
    use std::sync::atomic::Ordering;

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
        // The schedule may run BURST ahead at the fast rate when the cut comes (2,000 cells),
        // then 1,000/s.
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

    fn pace(per_second: u32, now: Instant) -> Pace {
        Pace {
            per_second,
            next: now,
        }
    }

    /// Grants one cell at a time from `pace` to a waiter that always wakes `late` after the
    /// time it was given, for `span` of the clock; returns the cells granted.
    fn one_cell_at_a_time(pace: &mut Pace, start: Instant, span: Duration, late: Duration) -> u64 {
        let (mut now, mut cells) = (start, 0);
        while now < start + span {
            match pace.grant(now, 1) {
                Ok(n) => cells += n,
                Err(due) => now = due + late,
            }
        }
        cells
    }

    #[test]
    fn a_waiter_woken_late_loses_no_time_and_idle_time_is_not_saved_up() {
        let start = Instant::now();
        // 2,000 a second, one cell (0.5 ms) per grant, each waiter woken 1 ms late (a timer
        // tick): the schedule keeps the lateness, so the second still holds 2,000 cells, plus
        // the BURST granted at once at the start.
        let mut p = pace(2000, start);
        let cells = one_cell_at_a_time(
            &mut p,
            start,
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        assert!(
            (2000..=2000 + 200 + 1).contains(&cells),
            "{cells} cells in 1 s at 2,000/s"
        );
        // An idle minute later: BURST's worth at once (200 cells), not a minute's.
        let later = start + Duration::from_secs(61);
        let mut burst = 0;
        while let Ok(n) = p.grant(later, 1) {
            burst += n;
        }
        assert_eq!(burst, 200);
    }

    #[test]
    fn a_slice_longer_than_the_burst_waits_for_the_schedule_and_a_change_applies_to_the_next() {
        let start = Instant::now();
        // 1 a second: one cell a second, never two at once.
        let mut p = pace(1, start);
        assert_eq!(p.grant(start, 5), Ok(1));
        assert_eq!(p.grant(start, 4), Err(start + Duration::from_secs(1)));
        assert_eq!(p.grant(start + Duration::from_secs(1), 4), Ok(1));
        // Raised to 1,000 a second: the next slice (50 cells, 50 ms) is due when it ends
        // within BURST of the clock, counted from where the last one ends, at the new rate.
        p.per_second = 1000;
        let due = start + Duration::from_millis(2050) - BURST;
        assert_eq!(p.grant(start + Duration::from_millis(1500), 500), Err(due));
        assert_eq!(p.grant(due, 500), Ok(50));
        // No limit: everything at once.
        p.per_second = 0;
        assert_eq!(p.grant(due, 1_000_000), Ok(1_000_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_wakes_the_waiters_at_once() {
        // 1 a second: the first cell at once, the next one due a second later.
        let rate = Arc::new(Rate::new(1));
        let start = Instant::now();
        rate.take(1).await;
        let waiter = {
            let rate = rate.clone();
            tokio::spawn(async move { rate.take(1).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Lifted: the waiter sees it now, not when its slice would have been due.
        rate.set(0);
        waiter.await.expect("waiter");
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "the waiter slept out its old slice: {:?}",
            start.elapsed()
        );
    }
}
