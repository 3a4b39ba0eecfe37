use backfill_core::{PartitionState, RowCounts, Value};
use backfill_store::{Outcome, Split, StoreError};

use serde_json::json;

use crate::{Backend, TestDb, create, key_partitions, time_partitions};

fn counts(read: u64, inserted: u64) -> RowCounts {
    RowCounts {
        read,
        inserted,
        updated: 1,
        unchanged: 2,
        deleted: 3,
        affected: 4,
    }
}

async fn attempt_checkpoint_and_finish_round_trip(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(2)).await;
    let pid = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();

    let attempt = store.start_attempt(&run.id, &pid, "w1").await.unwrap();
    assert_eq!(attempt, 1);
    let key = vec![
        Value::Text("é\"x".into()),
        Value::Blob(vec![0, 255, 7]),
        Value::Null,
        Value::Int(-5),
        Value::Float(1.5),
    ];
    store
        .checkpoint(&run.id, &pid, attempt, Some(&key), &counts(10, 5), 120)
        .await
        .unwrap();
    // Without a key, counters still add up and the checkpoint stays.
    store
        .checkpoint(&run.id, &pid, attempt, None, &counts(1, 1), 30)
        .await
        .unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.state, PartitionState::Running);
    assert_eq!(p.checkpoint.as_deref(), Some(key.as_slice()));
    assert_eq!(
        p.counts,
        RowCounts {
            read: 11,
            inserted: 6,
            updated: 2,
            unchanged: 4,
            deleted: 6,
            affected: 8
        }
    );
    assert_eq!(p.elapsed_ms, 150);
    assert!(p.started_at.is_some());

    store
        .finish_partition(&run.id, &pid, attempt, Outcome::Done, "w1")
        .await
        .unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.state, PartitionState::Done);
    assert!(p.finished_at.is_some());

    // A done partition cannot start again.
    assert!(matches!(
        store.start_attempt(&run.id, &pid, "w1").await,
        Err(StoreError::IllegalTransition { from, .. }) if from == "done"
    ));
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["run.created", "partition.running", "partition.done"]
    );
    assert_eq!(events[2].detail["counts"]["read"], 11);
    assert_eq!(events[2].partition_id.as_deref(), Some(pid.as_str()));
}

async fn stale_attempts_are_fenced_and_change_nothing(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(1)).await;
    let pid = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();

    let first = store.start_attempt(&run.id, &pid, "w1").await.unwrap();
    store
        .checkpoint(
            &run.id,
            &pid,
            first,
            Some(&[Value::Int(5)]),
            &counts(5, 5),
            10,
        )
        .await
        .unwrap();
    // The worker is presumed dead; the partition is reset and taken by a new attempt.
    assert_eq!(store.reset_interrupted(&run.id, "w2").await.unwrap(), 1);
    let second = store.start_attempt(&run.id, &pid, "w2").await.unwrap();
    assert_eq!(second, 2);
    let before = store.partition(&run.id, &pid).await.unwrap();
    let events_before = store.audit_events(None).await.unwrap().len();

    let stale = |r: Result<(), StoreError>| {
        assert!(
            matches!(&r, Err(StoreError::StaleAttempt { partition_id }) if *partition_id == pid),
            "{r:?}"
        )
    };
    stale(
        store
            .checkpoint(
                &run.id,
                &pid,
                first,
                Some(&[Value::Int(99)]),
                &counts(9, 9),
                9,
            )
            .await,
    );
    stale(store.reset_counts(&run.id, &pid, first).await);
    stale(
        store
            .finish_partition(&run.id, &pid, first, Outcome::Done, "w1")
            .await,
    );
    stale(
        store
            .finish_partition(
                &run.id,
                &pid,
                first,
                Outcome::Failed {
                    error: "x",
                    class: "permanent",
                },
                "w1",
            )
            .await,
    );

    let after = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(after.checkpoint, Some(vec![Value::Int(5)]));
    assert_eq!(after.counts, before.counts);
    assert_eq!(after.state, PartitionState::Running);
    assert_eq!(after.attempts, 2);
    assert_eq!(store.audit_events(None).await.unwrap().len(), events_before);

    // The current attempt still works, and after it finishes even it is stale.
    store
        .finish_partition(&run.id, &pid, second, Outcome::Done, "w2")
        .await
        .unwrap();
    stale(
        store
            .checkpoint(&run.id, &pid, second, None, &counts(1, 1), 1)
            .await,
    );
    assert!(matches!(
        store
            .checkpoint(&run.id, "no-such-partition", 1, None, &counts(1, 1), 1)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn retry_keeps_the_checkpoint_and_failure_records_a_redacted_error(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(1)).await;
    let pid = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();

    let a1 = store.start_attempt(&run.id, &pid, "w").await.unwrap();
    store
        .checkpoint(&run.id, &pid, a1, Some(&[Value::Int(7)]), &counts(7, 7), 5)
        .await
        .unwrap();
    store
        .finish_partition(
            &run.id,
            &pid,
            a1,
            Outcome::Retry {
                error: "timeout",
                class: "transient",
            },
            "w",
        )
        .await
        .unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.state, PartitionState::Pending);
    assert_eq!(p.checkpoint, Some(vec![Value::Int(7)]));
    assert_eq!(p.last_error.as_deref(), Some("timeout"));

    let a2 = store.start_attempt(&run.id, &pid, "w").await.unwrap();
    assert_eq!(a2, 2);
    let error = "connect to postgres://bob:hunter2@db/shop refused";
    store
        .finish_partition(
            &run.id,
            &pid,
            a2,
            Outcome::Failed {
                error,
                class: "permanent",
            },
            "w",
        )
        .await
        .unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.state, PartitionState::Failed);
    assert_eq!(
        p.last_error.as_deref(),
        Some("connect to postgres://bob:***@db/shop refused")
    );
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.action, "partition.failed");
    assert_eq!(last.detail["attempt"], 2);
    assert!(!last.detail.to_string().contains("hunter2"));
    assert_eq!(events[events.len() - 3].action, "partition.retry");
}

async fn reset_counts_restarts_a_partition_from_scratch(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(1)).await;
    let pid = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();
    let a = store.start_attempt(&run.id, &pid, "w").await.unwrap();
    store
        .checkpoint(&run.id, &pid, a, Some(&[Value::Int(7)]), &counts(7, 7), 5)
        .await
        .unwrap();
    store.reset_counts(&run.id, &pid, a).await.unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.checkpoint, None);
    assert_eq!(p.counts, RowCounts::default());
    assert_eq!(p.elapsed_ms, 5);
}

async fn checkpoint_statement_in_a_sink_transaction_matches_checkpoint(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(3)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    let mut attempts = Vec::new();
    for id in &ids {
        attempts.push(store.start_attempt(&run.id, id, "w").await.unwrap());
    }
    let key = [Value::Text("k".into()), Value::Blob(vec![1, 2])];
    let delta = counts(3, 2);

    // Partition 0 through the store's own call.
    store
        .checkpoint(&run.id, &ids[0], attempts[0], Some(&key), &delta, 40)
        .await
        .unwrap();

    // Partition 1 through a "sink" that owns a transaction on the same database.
    let (sql, params) =
        store.checkpoint_statement(&run.id, &ids[1], attempts[1], Some(&key), &delta, 40);
    match db.backend {
        Backend::Sqlite => {
            assert_eq!(sql.matches('?').count(), params.len());
            assert!(sql.starts_with("UPDATE partitions SET"), "{sql}");
        }
        Backend::Postgres => {
            assert!(!sql.contains('?'), "{sql}");
            assert!(sql.contains(&format!("${}", params.len())), "{sql}");
            assert!(!sql.contains(&format!("${}", params.len() + 1)), "{sql}");
            let schema = store.pg_schema().unwrap();
            assert!(
                sql.starts_with(&format!("UPDATE \"{schema}\".partitions SET")),
                "{sql}"
            );
        }
    }
    assert_eq!(db.sink_exec(&sql, &params, true).await, 1);

    // Partition 2: the sink's transaction rolls back, so its checkpoint never moves.
    let (sql2, params2) =
        store.checkpoint_statement(&run.id, &ids[2], attempts[2], Some(&key), &delta, 40);
    assert_eq!(db.sink_exec(&sql2, &params2, false).await, 1);

    // A stale attempt affects no row.
    let (stale_sql, stale_params) =
        store.checkpoint_statement(&run.id, &ids[1], attempts[1] + 1, None, &delta, 1);
    assert_eq!(db.sink_exec(&stale_sql, &stale_params, true).await, 0);

    let parts = store.partitions(&run.id).await.unwrap();
    assert_eq!(parts[0].checkpoint, parts[1].checkpoint);
    assert_eq!(parts[0].counts, parts[1].counts);
    assert_eq!(parts[0].elapsed_ms, parts[1].elapsed_ms);
    assert_eq!(parts[1].counts, delta);
    assert_eq!(parts[2].checkpoint, None);
    assert_eq!(parts[2].counts, RowCounts::default());
}

async fn reset_interrupted_returns_running_partitions_to_pending(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(3)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    for id in &ids[..2] {
        let a = store.start_attempt(&run.id, id, "w").await.unwrap();
        store
            .checkpoint(&run.id, id, a, Some(&[Value::Int(1)]), &counts(1, 1), 1)
            .await
            .unwrap();
    }
    assert_eq!(store.reset_interrupted(&run.id, "resume").await.unwrap(), 2);
    assert_eq!(store.reset_interrupted(&run.id, "resume").await.unwrap(), 0);
    let parts = store.partitions(&run.id).await.unwrap();
    for p in &parts {
        assert_eq!(p.state, PartitionState::Pending);
    }
    assert_eq!(parts[0].checkpoint, Some(vec![Value::Int(1)]));
    assert_eq!(parts[0].attempts, 1);
    assert_eq!(parts[2].checkpoint, None);
    let interrupted: Vec<_> = store
        .audit_events(Some(&run.id))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "partition.interrupted")
        .map(|e| e.partition_id.unwrap())
        .collect();
    assert_eq!(interrupted, &ids[..2]);
    // The next attempt gets a fresh fencing token.
    assert_eq!(store.start_attempt(&run.id, &ids[0], "w").await.unwrap(), 2);
}

async fn reopen_failed_gives_failed_partitions_a_new_chance(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(3)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    let a = store.start_attempt(&run.id, &ids[0], "w").await.unwrap();
    store
        .finish_partition(
            &run.id,
            &ids[0],
            a,
            Outcome::Failed {
                error: "bad row",
                class: "permanent",
            },
            "w",
        )
        .await
        .unwrap();
    let a = store.start_attempt(&run.id, &ids[1], "w").await.unwrap();
    store
        .finish_partition(&run.id, &ids[1], a, Outcome::Done, "w")
        .await
        .unwrap();

    assert_eq!(store.reopen_failed(&run.id, "bob").await.unwrap(), 1);
    let parts = store.partitions(&run.id).await.unwrap();
    assert_eq!(parts[0].state, PartitionState::Pending);
    assert_eq!(parts[0].last_error.as_deref(), Some("bad row"));
    assert!(parts[0].finished_at.is_none());
    assert_eq!(parts[1].state, PartitionState::Done);
    let last = store
        .audit_events(Some(&run.id))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.action, "partition.reopened");
    assert_eq!(last.actor, "bob");
    assert!(store.verify_audit().await.unwrap().is_ok());
}

async fn concurrent_checkpoints_and_transitions_do_not_fail(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(8)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let store = store.clone();
        let run_id = run.id.clone();
        tasks.push(tokio::spawn(async move {
            let attempt = store.start_attempt(&run_id, &id, "w").await?;
            for i in 0..50 {
                store
                    .checkpoint(
                        &run_id,
                        &id,
                        attempt,
                        Some(&[Value::Int(i)]),
                        &counts(1, 1),
                        1,
                    )
                    .await?;
            }
            store
                .finish_partition(&run_id, &id, attempt, Outcome::Done, "w")
                .await?;
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for p in store.partitions(&run.id).await.unwrap() {
        assert_eq!(p.state, PartitionState::Done);
        assert_eq!(p.counts.read, 50);
        assert_eq!(p.checkpoint, Some(vec![Value::Int(49)]));
    }
    let check = store.verify_audit().await.unwrap();
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(check.events, 1 + 8 * 2);
}

async fn split_replaces_a_running_partition_by_children_that_inherit_its_checkpoint(db: TestDb) {
    let store = db.open().await;
    let parts = time_partitions(3);
    let run = create(&store, "orders", &parts).await;
    let parent = &parts[1];
    let attempt = store.start_attempt(&run.id, &parent.id, "w").await.unwrap();
    let key = vec![Value::Int(41)];
    store
        .checkpoint(
            &run.id,
            &parent.id,
            attempt,
            Some(&key),
            &RowCounts {
                read: 41,
                ..RowCounts::default()
            },
            5,
        )
        .await
        .unwrap();
    let windows = backfill_core::split::split_window(&parent.window, 4);
    let children = backfill_core::split::children(parent, &windows, 0);
    // A stale attempt cannot split.
    let stale = store
        .split_partition(
            &run.id,
            &parent.id,
            attempt + 1,
            Split {
                children: &children,
                checkpoint: Some(&key),
                reason: json!("slow"),
            },
            "w",
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleAttempt { .. })),
        "{stale:?}"
    );
    let stored = store
        .split_partition(
            &run.id,
            &parent.id,
            attempt,
            Split {
                children: &children,
                checkpoint: Some(&key),
                reason: json!({"why": "slow"}),
            },
            "w",
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[0].id, format!("{}.1", parent.id));
    assert_eq!(
        stored.iter().map(|c| c.index).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );

    let all = store.partitions(&run.id).await.unwrap();
    assert_eq!(all.len(), 7);
    let p = all.iter().find(|p| p.partition_id == parent.id).unwrap();
    assert_eq!(p.state, PartitionState::Split);
    assert_eq!(p.counts.read, 41, "the parent keeps what it wrote");
    for (child, window) in all[3..].iter().zip(&windows) {
        assert_eq!(child.state, PartitionState::Pending);
        assert_eq!(child.window, *window);
        assert_eq!(child.checkpoint.as_deref(), Some(&key[..]));
        assert_eq!(child.parent_id.as_deref(), Some(parent.id.as_str()));
    }
    // A child runs like any partition.
    let a = store
        .start_attempt(&run.id, &stored[2].id, "w")
        .await
        .unwrap();
    store
        .finish_partition(&run.id, &stored[2].id, a, Outcome::Done, "w")
        .await
        .unwrap();
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    let split = events
        .iter()
        .find(|e| e.action == "partition.split")
        .unwrap();
    assert_eq!(split.detail["children"].as_array().unwrap().len(), 4);
    assert_eq!(split.detail["reason"]["why"], json!("slow"));
    assert_eq!(split.detail["from_checkpoint"], json!(true));
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// Every pending partition of `indexes`, read in keyset pages of `page` the way the engine
/// reads them; after the first page, `split` (if any) is started and split into 3 children,
/// as a worker would.
async fn read_in_pages(
    store: &backfill_store::Store,
    run_id: &str,
    indexes: std::ops::Range<u64>,
    descending: bool,
    page: usize,
    mut split: Option<&backfill_core::Partition>,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut range = indexes;
    loop {
        let records = store
            .pending_page(run_id, range.clone(), descending, page)
            .await
            .unwrap();
        assert!(records.len() <= page);
        assert!(records.iter().all(|r| r.state == PartitionState::Pending));
        seen.extend(records.iter().map(|r| r.index));
        let Some(last) = records.last() else { break };
        range = if descending {
            range.start..last.index
        } else {
            last.index + 1..range.end
        };
        if let Some(parent) = split.take() {
            split_running(store, run_id, parent, 3).await;
        }
    }
    seen
}

/// Starts `parent` and splits it into `n` children.
async fn split_running(
    store: &backfill_store::Store,
    run_id: &str,
    parent: &backfill_core::Partition,
    n: u32,
) {
    let a = store.start_attempt(run_id, &parent.id, "w").await.unwrap();
    let windows = backfill_core::split::split_window(&parent.window, n);
    let children = backfill_core::split::children(parent, &windows, 0);
    store
        .split_partition(
            run_id,
            &parent.id,
            a,
            Split {
                children: &children,
                checkpoint: None,
                reason: json!("slow"),
            },
            "w",
        )
        .await
        .unwrap();
}

/// Starts partition `p` and checkpoints some counts; returns the attempt.
async fn started(store: &backfill_store::Store, run_id: &str, p: &backfill_core::Partition) -> u32 {
    let a = store.start_attempt(run_id, &p.id, "w").await.unwrap();
    let read = 10 + p.index as u64;
    store
        .checkpoint(run_id, &p.id, a, None, &counts(read, 5), 7)
        .await
        .unwrap();
    a
}

async fn pending_pages_cover_every_pending_partition_once_with_children_split_mid_way(db: TestDb) {
    let store = db.open().await;
    let parts = key_partitions(25);
    let run = create(&store, "orders", &parts).await;
    // Two partitions are no longer pending before the pass starts.
    for p in [&parts[3], &parts[4]] {
        let a = store.start_attempt(&run.id, &p.id, "w").await.unwrap();
        store
            .finish_partition(&run.id, &p.id, a, Outcome::Done, "w")
            .await
            .unwrap();
    }
    let horizon = store.index_end(&run.id).await.unwrap();
    assert_eq!(horizon, 25);
    // Mid-way through the pass (after the first page), a partition of a later page is
    // started and split into 3 children, as a worker would.
    let first = read_in_pages(&store, &run.id, 0..horizon, false, 4, Some(&parts[20])).await;
    // Each partition pending throughout, once, in plan order; the split parent is gone and
    // its children (indexes past the horizon) are not in this pass.
    let expected: Vec<u64> = (0..25).filter(|i| ![3, 4, 20].contains(i)).collect();
    assert_eq!(first, expected);
    // The next pass reads the children, and only them, past the plan's indexes.
    let end = store.index_end(&run.id).await.unwrap();
    assert_eq!(end, 28);
    let children = read_in_pages(&store, &run.id, 25..end, false, 2, None).await;
    assert_eq!(children, vec![25, 26, 27]);
    let rest = read_in_pages(&store, &run.id, 0..25, false, 2, None).await;
    assert_eq!(rest, expected);
    // Newest first: the same partitions, children first, each once.
    let newest = read_in_pages(&store, &run.id, 0..end, true, 4, None).await;
    let mut all: Vec<u64> = expected.iter().copied().chain(25..28).collect();
    all.reverse();
    assert_eq!(newest, all);
    // By index, for the orders the store cannot page: only those still pending, in the
    // order asked.
    let at = store
        .pending_at(&run.id, &[27, 3, 0, 20, 26])
        .await
        .unwrap();
    let at: Vec<u64> = at.iter().map(|r| r.index).collect();
    assert_eq!(at, vec![27, 0, 26]);
}

async fn partition_totals_from_the_store_equal_the_per_record_computation(db: TestDb) {
    let store = db.open().await;
    let parts = key_partitions(12);
    let run = create(&store, "orders", &parts).await;
    let empty = store.partition_totals(&run.id).await.unwrap();
    assert_eq!(
        empty,
        backfill_store::PartitionTotals::of(&store.partitions(&run.id).await.unwrap())
    );
    assert_eq!(empty.count(PartitionState::Pending), 12);
    // A mix of every state: done with counts, retried, failed, running, split, and pending
    // with an error on record.
    let attempt = |i: usize| started(&store, &run.id, &parts[i]);
    for p in &parts[..4] {
        let a = started(&store, &run.id, p).await;
        store
            .finish_partition(&run.id, &p.id, a, Outcome::Done, "w")
            .await
            .unwrap();
    }
    let a = attempt(4).await;
    store
        .finish_partition(
            &run.id,
            &parts[4].id,
            a,
            Outcome::Retry {
                error: "busy",
                class: "transient",
            },
            "w",
        )
        .await
        .unwrap();
    let a = attempt(4).await;
    store
        .finish_partition(
            &run.id,
            &parts[4].id,
            a,
            Outcome::Failed {
                error: "bad row",
                class: "permanent",
            },
            "w",
        )
        .await
        .unwrap();
    let a = attempt(5).await;
    store
        .finish_partition(
            &run.id,
            &parts[5].id,
            a,
            Outcome::Retry {
                error: "timeout",
                class: "transient",
            },
            "w",
        )
        .await
        .unwrap();
    attempt(6).await;
    split_running(&store, &run.id, &parts[7], 2).await;
    // Failed while waiting for its source: no attempt started, yet failing.
    store
        .wait_for_source(&run.id, &parts[8].id, "w", json!({}))
        .await
        .unwrap();
    store
        .end_source_wait(
            &run.id,
            &parts[8].id,
            backfill_store::SourceWaitEnd::Failed {
                error: "source not ready",
            },
            "w",
            json!({}),
        )
        .await
        .unwrap();
    let records = store.partitions(&run.id).await.unwrap();
    let reference = backfill_store::PartitionTotals::of(&records);
    let totals = store.partition_totals(&run.id).await.unwrap();
    assert_eq!(totals, reference);
    assert_eq!(totals.all(), 14);
    assert_eq!(totals.total(), 13);
    assert_eq!(totals.count(PartitionState::Done), 4);
    assert_eq!(totals.started, 8);
    assert_eq!(totals.retries, 1);
    assert_eq!(totals.errors, 3);
    assert_eq!(totals.failing, 3);
    let failing = store.failing_partitions(&run.id, 10).await.unwrap();
    let failing: Vec<u64> = failing.iter().map(|r| r.index).collect();
    let expected: Vec<u64> = records
        .iter()
        .filter(|p| backfill_store::is_failing(p))
        .map(|p| p.index)
        .collect();
    assert_eq!(failing, expected);
    assert_eq!(store.failing_partitions(&run.id, 1).await.unwrap().len(), 1);
    let failed = store
        .partitions_in_state(&run.id, PartitionState::Failed, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].partition_id, parts[4].id);
    let groups = store.error_groups(&run.id, 10).await.unwrap();
    let mut messages: Vec<&str> = groups.iter().map(|g| g.message.as_str()).collect();
    messages.sort_unstable();
    assert_eq!(messages, ["bad row", "source not ready", "timeout"]);
}

/// `finish_empty` moves a fresh pending partition to done in one transaction, with its two
/// events chained after what another handle appended in the meantime and the audit anchor on
/// the last event; any other partition is refused and left as it was. Through a fenced handle,
/// whose transactions read the fence and the chain's head together.
async fn finish_empty_finishes_only_a_fresh_pending_partition(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "empty", &key_partitions(4)).await;
    let owner = backfill_store::LeaseOwner {
        host: "test-host".into(),
        pid: 4242,
        token: "token-empty".into(),
    };
    let backfill_store::Claim::Claimed(lease) = store
        .claim_lease(
            &backfill_store::run_resource(&run.id),
            &owner,
            std::time::Duration::from_secs(60),
            None,
        )
        .await
        .unwrap()
    else {
        panic!("the only claim wins");
    };
    let fenced = store.fenced(&lease);
    let ids = crate::partition_ids(&store, &run.id).await;

    assert_eq!(
        fenced.finish_empty(&run.id, &ids[0], "w1").await.unwrap(),
        1
    );
    // Another handle appends an event; the next fenced transaction must chain after it.
    store
        .set_run_state(
            &run.id,
            backfill_core::RunState::Running,
            "other",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        fenced.finish_empty(&run.id, &ids[1], "w1").await.unwrap(),
        1
    );
    let done = store.partition(&run.id, &ids[1]).await.unwrap();
    assert_eq!(done.state, PartitionState::Done);
    assert_eq!(done.attempts, 1);
    assert!(done.started_at.is_some() && done.finished_at.is_some());

    // Refused, changing nothing: a done partition, one with a checkpoint, an unknown one.
    let first = fenced.start_attempt(&run.id, &ids[2], "w1").await.unwrap();
    fenced
        .checkpoint(
            &run.id,
            &ids[2],
            first,
            Some(&[Value::Int(7)]),
            &counts(1, 1),
            5,
        )
        .await
        .unwrap();
    fenced
        .finish_partition(
            &run.id,
            &ids[2],
            first,
            Outcome::Retry {
                error: "x",
                class: "transient",
            },
            "w1",
        )
        .await
        .unwrap();
    let events_before = store.audit_events(None).await.unwrap();
    let retried = store.partition(&run.id, &ids[2]).await.unwrap();
    assert!(matches!(
        fenced.finish_empty(&run.id, &ids[0], "w1").await,
        Err(StoreError::IllegalTransition { from, .. }) if from == "done"
    ));
    assert!(matches!(
        fenced.finish_empty(&run.id, &ids[2], "w1").await,
        Err(StoreError::IllegalTransition { from, .. }) if from == "pending"
    ));
    assert!(matches!(
        fenced
            .finish_empty(&run.id, "no-such-partition", "w1")
            .await,
        Err(StoreError::NotFound(_))
    ));
    let after = store.partition(&run.id, &ids[2]).await.unwrap();
    assert_eq!(
        (after.state, after.attempts, after.checkpoint),
        (retried.state, retried.attempts, retried.checkpoint)
    );
    let events = store.audit_events(None).await.unwrap();
    assert_eq!(events.len(), events_before.len());

    let of_first: Vec<_> = events
        .iter()
        .filter(|e| e.partition_id.as_deref() == Some(ids[0].as_str()))
        .map(|e| (e.action.as_str(), e.detail["attempt"].clone()))
        .collect();
    assert_eq!(
        of_first,
        [
            ("partition.running", json!(1)),
            ("partition.done", json!(1))
        ]
    );
    let done_event = events
        .iter()
        .find(|e| e.action == "partition.done" && e.partition_id.as_deref() == Some(&ids[1]))
        .unwrap();
    assert_eq!(done_event.detail["empty"], json!(true));
    assert_eq!(done_event.detail["counts"]["read"], json!(0));
    // Chained in order, the anchor on the last event: the whole chain verifies.
    let check = store.verify_audit().await.unwrap();
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(check.events, events.len() as u64);
    // The anchor is on the last event: without it, its removal would go unseen.
    let last = events.last().unwrap().seq;
    db.raw_exec(&format!("DELETE FROM audit_events WHERE seq = {last}"))
        .await;
    let check = store.verify_audit().await.unwrap();
    assert_eq!(check.first_bad_seq, Some(last), "{check:?}");

    // Once another process holds the run, the fenced handle's lease is lost: refused,
    // nothing changed.
    let backfill_store::Claim::Claimed(_) = store
        .claim_lease(
            &backfill_store::run_resource(&run.id),
            &backfill_store::LeaseOwner {
                token: "token-other".into(),
                ..owner.clone()
            },
            std::time::Duration::from_secs(60),
            Some(&owner.token),
        )
        .await
        .unwrap()
    else {
        panic!("a claim replacing the holder wins");
    };
    let events_before = store.audit_events(None).await.unwrap().len();
    for result in [
        fenced.finish_empty(&run.id, &ids[3], "w1").await,
        fenced.start_attempt(&run.id, &ids[3], "w1").await,
    ] {
        assert!(
            matches!(result, Err(StoreError::LeaseLost { .. })),
            "{result:?}"
        );
    }
    let untouched = store.partition(&run.id, &ids[3]).await.unwrap();
    assert_eq!(
        (untouched.state, untouched.attempts),
        (PartitionState::Pending, 0)
    );
    assert_eq!(store.audit_events(None).await.unwrap().len(), events_before);
}

/// `partitions_page` walks a run in plan order by keyset pages, with or without a state, each
/// partition once.
async fn partition_pages_follow_the_plan_with_or_without_a_state(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "pages", &key_partitions(5)).await;
    let ids = crate::partition_ids(&store, &run.id).await;
    for id in [&ids[1], &ids[3], &ids[4]] {
        store.finish_empty(&run.id, id, "w").await.unwrap();
    }
    let walk = |state: Option<PartitionState>| {
        let store = store.clone();
        let run_id = run.id.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .partitions_page(&run_id, state, after, 2)
                    .await
                    .unwrap();
                seen.extend(page.iter().map(|p| p.index));
                if page.len() < 2 {
                    return seen;
                }
                after = page.last().map(|p| p.index);
            }
        }
    };
    assert_eq!(walk(None).await, [0, 1, 2, 3, 4]);
    assert_eq!(walk(Some(PartitionState::Done)).await, [1, 3, 4]);
    assert_eq!(walk(Some(PartitionState::Pending)).await, [0, 2]);
    assert_eq!(walk(Some(PartitionState::Failed)).await, Vec::<u64>::new());
    let last = store
        .partitions_page(&run.id, None, Some(3), 10)
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].partition_id, ids[4]);
}

crate::on_both_backends!(
    partition_pages_follow_the_plan_with_or_without_a_state,
    finish_empty_finishes_only_a_fresh_pending_partition,
    pending_pages_cover_every_pending_partition_once_with_children_split_mid_way,
    partition_totals_from_the_store_equal_the_per_record_computation,
    split_replaces_a_running_partition_by_children_that_inherit_its_checkpoint,
    attempt_checkpoint_and_finish_round_trip,
    stale_attempts_are_fenced_and_change_nothing,
    retry_keeps_the_checkpoint_and_failure_records_a_redacted_error,
    reset_counts_restarts_a_partition_from_scratch,
    checkpoint_statement_in_a_sink_transaction_matches_checkpoint,
    reset_interrupted_returns_running_partitions_to_pending,
    reopen_failed_gives_failed_partitions_a_new_chance,
    concurrent_checkpoints_and_transitions_do_not_fail,
);
