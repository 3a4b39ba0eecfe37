//! The read-only views of a run: errors grouped by message, the heat strip of states, progress
//! over time, audit pages.

use backfill_core::PartitionState;
use backfill_store::{Bucket, Outcome};

use crate::{TestDb, create, key_partitions};

/// Six partitions: two failed with one error, one waiting for a retry with another, two done
/// (one as empty), one never started.
async fn views_group_errors_bin_states_and_count_progress(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "views", &key_partitions(6)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    let end = |i: usize, outcome: Outcome<'static>| {
        let (store, run_id, id) = (store.clone(), run.id.clone(), ids[i].clone());
        async move {
            let attempt = store.start_attempt(&run_id, &id, "w").await.unwrap();
            store
                .finish_partition(&run_id, &id, attempt, outcome, "w")
                .await
                .unwrap();
        }
    };
    let dup = Outcome::Failed {
        error: "duplicate key",
    };
    end(4, dup).await;
    end(1, dup).await;
    end(2, Outcome::Retry { error: "timeout" }).await;
    end(0, Outcome::Done).await;
    store.finish_empty(&run.id, &ids[3], "w").await.unwrap();

    let groups = store.error_groups(&run.id, 10).await.unwrap();
    let shape: Vec<(&str, u64, u64, &str)> = groups
        .iter()
        .map(|g| {
            (
                g.message.as_str(),
                g.partitions,
                g.failed,
                g.first_partition_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("duplicate key", 2, 2, ids[1].as_str()),
            ("timeout", 1, 0, ids[2].as_str())
        ]
    );
    assert_eq!(store.error_groups(&run.id, 1).await.unwrap().len(), 1);

    // Three bins of two partitions: [done, failed], [pending, done], [failed, pending].
    let strip = store.state_bins(&run.id, 3).await.unwrap();
    let starts: Vec<u64> = strip.iter().map(|b| b.start).collect();
    assert_eq!(starts, [0, 2, 4]);
    let count = |bin: usize, state: PartitionState| {
        strip[bin]
            .states
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        (
            count(0, PartitionState::Done),
            count(0, PartitionState::Failed)
        ),
        (1, 1)
    );
    assert_eq!(
        (
            count(1, PartitionState::Pending),
            count(1, PartitionState::Done)
        ),
        (1, 1)
    );
    assert_eq!(
        (
            count(2, PartitionState::Failed),
            count(2, PartitionState::Pending)
        ),
        (1, 1)
    );
    // More bins than partitions: one per partition.
    assert_eq!(store.state_bins(&run.id, 100).await.unwrap().len(), 6);

    for bucket in [Bucket::Minute, Bucket::Hour] {
        let points = store.progress(&run.id, bucket).await.unwrap();
        let done: u64 = points.iter().map(|p| p.partitions).sum();
        assert_eq!(done, 2, "{bucket:?}: {points:?}");
        let width = if bucket == Bucket::Minute { 16 } else { 13 };
        assert!(points.iter().all(|p| p.at.len() == width), "{points:?}");
    }

    // Audit pages of 3 cover the run's trail once, in order.
    let all = store.audit_events(Some(&run.id)).await.unwrap();
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit_page(&run.id, after, 3).await.unwrap();
        paged.extend(page.iter().map(|e| e.seq));
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|e| e.seq);
    }
    assert_eq!(paged, all.iter().map(|e| e.seq).collect::<Vec<_>>());
}

crate::on_both_backends!(views_group_errors_bin_states_and_count_progress);
