//! The pending work of a run, read from the store a page at a time.
//!
//! The engine never holds every partition of a run: a pass over the pending work reads pages
//! of [`PAGE`] partitions by plan index (a keyset on `(run_id, state, idx)`), so a run of a
//! million partitions costs the memory of a page, not of the run.
//!
//! Order of a pass:
//! - Split children (plan indexes past the plan's own, see `Store::split_partition`) come
//!   first, then the plan's partitions in `limits.order`. During a pass, children split off
//!   by a worker go to the front of the dispatcher's queue (`execute::run_partitions`); the
//!   pass reads only indexes below its horizon (the run's next index when it began), so it
//!   never reads them again.
//! - `oldest_first` / `newest_first` page by index, ascending or descending (the plan's
//!   indexes are in window order).
//! - `largest_first` and a priority list need the whole pending set to order it: the pass
//!   reads it in pages, orders it, and keeps only the ordered plan indexes (8 bytes per
//!   pending partition: 8 MB at a million; the windows held while ordering are dropped
//!   after it). The records are then read a page at a time by index.

use std::collections::VecDeque;
use std::ops::Range;

use backfill_connectors::AnySource;
use backfill_core::order::Order;
use backfill_core::{Partition, Spec};
use backfill_store::{PartitionRecord, Store, StoreError};

use crate::execute::Work;
use crate::patience;
use crate::shutdown::Shutdown;

/// Partitions read per page.
pub(crate) const PAGE: usize = 1000;

/// With `order = "largest_first"`, the source's rows of each pending partition are counted
/// for at most this long; partitions not counted by then (all of them without a source) run
/// after the counted ones.
const ESTIMATE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// One pass over the pending work of a run.
pub(crate) struct Pending {
    store: Store,
    run_id: String,
    /// Index ranges still to read, in order, each with its direction (true: descending).
    ranges: VecDeque<(Range<u64>, bool)>,
    /// For the orders the store cannot page: the plan indexes still to read, in order.
    ordered: Option<VecDeque<u64>>,
    /// Ends the store's patience with a failing read.
    shutdown: Shutdown,
}

impl Pending {
    /// A pass over the partitions of run `run_id` pending now, in `spec`'s order; `plan_end`
    /// is the number of the plan's own partitions (children's indexes start there).
    pub(crate) async fn start(
        spec: &Spec,
        store: &Store,
        run_id: &str,
        plan_end: u64,
        source: Option<&AnySource>,
        shutdown: &Shutdown,
    ) -> Result<Pending, StoreError> {
        let horizon = patience::store(shutdown, "read the run's last index", || {
            store.index_end(run_id)
        })
        .await?;
        let plan_end = plan_end.min(horizon);
        let mut pending = Pending {
            store: store.clone(),
            run_id: run_id.to_owned(),
            ranges: VecDeque::new(),
            ordered: None,
            shutdown: shutdown.clone(),
        };
        match &spec.limits.order {
            Order::OldestFirst => {
                pending.ranges.push_back((plan_end..horizon, false));
                pending.ranges.push_back((0..plan_end, false));
            }
            Order::NewestFirst => pending.ranges.push_back((0..horizon, true)),
            order => {
                pending.ranges.push_back((plan_end..horizon, false));
                let mut rest = Pending {
                    store: store.clone(),
                    run_id: run_id.to_owned(),
                    ranges: VecDeque::from([(0..plan_end, false)]),
                    ordered: None,
                    shutdown: shutdown.clone(),
                };
                pending.ordered = Some(rest.ordered_indexes(order, source).await?);
            }
        }
        Ok(pending)
    }

    /// A pass over only the partitions at plan `indexes` still pending, in that order (the
    /// canary's, see `crate::canary`).
    pub(crate) fn only(
        store: &Store,
        run_id: &str,
        indexes: Vec<u64>,
        shutdown: &Shutdown,
    ) -> Pending {
        Pending {
            store: store.clone(),
            run_id: run_id.to_owned(),
            ranges: VecDeque::new(),
            ordered: Some(indexes.into()),
            shutdown: shutdown.clone(),
        }
    }

    /// The next page of work; empty when the pass is over. A failed read (after the
    /// store's patience) leaves the pass where it was.
    pub(crate) async fn next_page(&mut self) -> Result<Vec<Work>, StoreError> {
        let what = "read pending partitions";
        while let Some((range, descending)) = self.ranges.front().cloned() {
            let page = patience::store(&self.shutdown, what, || {
                self.store
                    .pending_page(&self.run_id, range.clone(), descending, PAGE)
            })
            .await?;
            self.ranges.pop_front();
            if let Some(last) = page.last() {
                // Keyset: the rest of the range lies past the last index read.
                let rest = if descending {
                    range.start..last.index
                } else {
                    last.index + 1..range.end
                };
                if page.len() == PAGE {
                    self.ranges.push_front((rest, descending));
                }
                return Ok(page.iter().map(work).collect());
            }
        }
        let Some(ordered) = &mut self.ordered else {
            return Ok(Vec::new());
        };
        while !ordered.is_empty() {
            let n = PAGE.min(ordered.len());
            let slice: Vec<u64> = ordered.iter().take(n).copied().collect();
            let page = patience::store(&self.shutdown, what, || {
                self.store.pending_at(&self.run_id, &slice)
            })
            .await?;
            ordered.drain(..n);
            if !page.is_empty() {
                return Ok(page.iter().map(work).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Reads every pending partition of this pass's ranges, a page at a time, and returns
    /// their plan indexes in `order`.
    async fn ordered_indexes(
        &mut self,
        order: &Order,
        source: Option<&AnySource>,
    ) -> Result<VecDeque<u64>, StoreError> {
        let mut partitions = Vec::new();
        loop {
            let page = self.next_page().await?;
            if page.is_empty() {
                break;
            }
            // Only the window orders; the id is read again with the page.
            partitions.extend(page.into_iter().map(|w| Partition {
                id: String::new(),
                ..w.partition
            }));
        }
        let mut estimates = vec![None; partitions.len()];
        if *order == Order::LargestFirst
            && let Some(source) = source
        {
            let started = std::time::Instant::now();
            for (estimate, partition) in estimates.iter_mut().zip(&partitions) {
                if started.elapsed() > ESTIMATE_BUDGET {
                    break;
                }
                *estimate = source.count(&partition.window).await.ok();
            }
        }
        Ok(
            backfill_core::order::order_partitions(&partitions, order, &estimates)
                .into_iter()
                .map(|i| partitions[i].index as u64)
                .collect(),
        )
    }
}

/// The work of a pending partition: from its checkpoint; only the plan's own partitions split.
fn work(p: &PartitionRecord) -> Work {
    Work {
        partition: Partition {
            id: p.partition_id.clone(),
            index: usize::try_from(p.index).unwrap_or(usize::MAX),
            window: p.window,
        },
        checkpoint: p.checkpoint.clone(),
        splittable: p.parent_id.is_none(),
    }
}
