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
        class: "data",
    };
    end(4, dup).await;
    end(1, dup).await;
    end(
        2,
        Outcome::Retry {
            error: "timeout",
            class: "transient",
        },
    )
    .await;
    end(0, Outcome::Done).await;
    store.finish_empty(&run.id, &ids[3], "w").await.unwrap();

    let groups = store.error_groups(&run.id, 10).await.unwrap();
    let shape: Vec<(Option<&str>, &str, u64, u64, &str)> = groups
        .iter()
        .map(|g| {
            (
                g.class.as_deref(),
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
            (Some("data"), "duplicate key", 2, 2, ids[1].as_str()),
            (Some("transient"), "timeout", 1, 0, ids[2].as_str())
        ]
    );
    assert_eq!(store.error_groups(&run.id, 1).await.unwrap().len(), 1);
    assert_eq!(
        store.failing_by_class(&run.id).await.unwrap(),
        [
            (Some("data".to_owned()), 2),
            (Some("transient".to_owned()), 1)
        ]
    );

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

/// Six partitions with different attempts, rows and durations (and ties): pages of two in
/// each order, followed by their cursor, list every partition once, largest first and ties
/// in plan order, with and without a state filter.
async fn sorted_pages_follow_attempts_rows_and_duration(db: TestDb) {
    use backfill_store::{PartitionRecord, PartitionSort};
    let store = db.open().await;
    let run = create(&store, "sorted", &key_partitions(6)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    // (attempts, rows read, milliseconds) per partition; the last one never starts.
    let shape = [(1, 50, 5), (3, 10, 1), (2, 10, 9), (2, 70, 5), (1, 0, 0)];
    for (i, (attempts, rows, ms)) in shape.into_iter().enumerate() {
        let (run_id, id) = (run.id.as_str(), ids[i].as_str());
        let mut attempt = 0;
        for n in 1..=attempts {
            attempt = store.start_attempt(run_id, id, "w").await.unwrap();
            if n < attempts {
                let retry = Outcome::Retry {
                    error: "again",
                    class: "transient",
                };
                store
                    .finish_partition(run_id, id, attempt, retry, "w")
                    .await
                    .unwrap();
            }
        }
        let counts = backfill_core::RowCounts {
            read: rows,
            ..Default::default()
        };
        store
            .checkpoint(run_id, id, attempt, None, &counts, ms)
            .await
            .unwrap();
    }
    let all = store
        .partitions_page(&run.id, None, None, 100)
        .await
        .unwrap();
    for sort in [
        PartitionSort::Attempts,
        PartitionSort::Rows,
        PartitionSort::Duration,
    ] {
        for state in [None, Some(PartitionState::Running)] {
            let mut want: Vec<&PartitionRecord> = all
                .iter()
                .filter(|p| state.is_none_or(|s| p.state == s))
                .collect();
            want.sort_by_key(|p| (std::cmp::Reverse(sort.value_of(p)), p.index));
            let want: Vec<u64> = want.iter().map(|p| p.index).collect();
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .partitions_sorted(&run.id, state, sort, after, 2)
                    .await
                    .unwrap();
                got.extend(page.iter().map(|p| p.index));
                if page.len() < 2 {
                    break;
                }
                after = page.last().map(|p| (sort.value_of(p), p.index));
            }
            assert_eq!(got, want, "{sort:?} {state:?}");
        }
    }
    // Distinct values really are sorted: 70 rows first, then 50, then the tie of 10 in plan
    // order.
    let rows = store
        .partitions_sorted(&run.id, None, PartitionSort::Rows, None, 4)
        .await
        .unwrap();
    let order: Vec<u64> = rows.iter().map(|p| p.index).collect();
    assert_eq!(order, [3, 0, 1, 2]);
}

crate::on_both_backends!(sorted_pages_follow_attempts_rows_and_duration);

/// Checks and quarantined rows come back in keyset pages: every one once, in key order, with
/// a status filter; `checks_of` finds a page's checks by partition id.
async fn checks_and_quarantine_are_paged(db: TestDb) {
    use backfill_core::fingerprint::Fingerprint;
    use backfill_store::{CheckStatus, PartitionCheck, Rejected};
    let store = db.open().await;
    let run = create(&store, "trust", &key_partitions(5)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    let fp = |rows| Fingerprint {
        rows,
        ..Fingerprint::default()
    };
    let checks: Vec<PartitionCheck> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| PartitionCheck {
            partition_id: id.clone(),
            status: if i % 2 == 0 {
                CheckStatus::Verified
            } else {
                CheckStatus::Mismatch
            },
            source: Some(fp(10)),
            target: Some(fp(10 + i as u64 % 2)),
            detail: serde_json::json!({}),
            checked_by: "validate".to_owned(),
        })
        .collect();
    store.record_checks(&run.id, &checks).await.unwrap();
    let page_all = |status| {
        let store = store.clone();
        let run_id = run.id.clone();
        async move {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store
                    .checks_page(&run_id, status, after.as_deref(), 2)
                    .await
                    .unwrap();
                got.extend(page.iter().map(|c| (c.partition_id.clone(), c.status)));
                if page.len() < 2 {
                    return got;
                }
                after = page.last().map(|c| c.partition_id.clone());
            }
        }
    };
    let mut sorted = ids.clone();
    sorted.sort();
    let all = page_all(None).await;
    assert_eq!(
        all.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        sorted
    );
    let mismatched = page_all(Some(CheckStatus::Mismatch)).await;
    assert_eq!(mismatched.len(), 2, "{mismatched:?}");
    assert!(mismatched.iter().all(|(_, s)| *s == CheckStatus::Mismatch));
    let some = store
        .checks_of(&run.id, &[ids[1].as_str(), ids[4].as_str(), "nope"])
        .await
        .unwrap();
    let mut found: Vec<String> = some.iter().map(|c| c.partition_id.clone()).collect();
    found.sort();
    let mut want = vec![ids[1].clone(), ids[4].clone()];
    want.sort();
    assert_eq!(found, want);
    assert_eq!(
        some.iter()
            .find(|c| c.partition_id == ids[1])
            .unwrap()
            .target,
        Some(fp(11))
    );

    // Quarantined rows over two partitions, paged by three.
    for (p, keys) in [
        (0, ["[1]", "[2]", "[3]"].as_slice()),
        (2, ["[7]", "[8]"].as_slice()),
    ] {
        let rows: Vec<Rejected> = keys
            .iter()
            .map(|k| Rejected {
                key: (*k).to_owned(),
                error: "refused".to_owned(),
                row: serde_json::json!({ "id": k }),
            })
            .collect();
        store.quarantine(&run.id, &ids[p], 1, &rows).await.unwrap();
    }
    let mut paged = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let cursor = after.as_ref().map(|(p, k)| (p.as_str(), k.as_str()));
        let page = store.quarantine_page(&run.id, cursor, 3).await.unwrap();
        paged.extend(page.iter().map(|q| (q.partition_id.clone(), q.key.clone())));
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|q| (q.partition_id.clone(), q.key.clone()));
    }
    let listed: Vec<(String, String)> = store
        .quarantined(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.partition_id, q.key))
        .collect();
    assert_eq!(paged.len(), 5);
    assert_eq!(paged, listed);
}

crate::on_both_backends!(checks_and_quarantine_are_paged);
