//! Several processes on one store: each "process" is its own `Store` handle with its own pool.

use backfill_core::{PartitionState, RowCounts, RunState, Value};
use backfill_store::{Outcome, StoreError};
use serde_json::json;
use sqlx::{Connection, Executor};

use crate::{Backend, TestDb, create, key_partitions};

const HANDLES: usize = 4;
const PARTITIONS: usize = 8;
const CHECKPOINTS: i64 = 20;

/// Four handles race for the same run: all try to start it, all try to take every partition.
/// Exactly one wins each transition, every partition is done once with all its checkpoints,
/// and the audit chain verifies.
async fn four_processes_share_one_run(db: TestDb) {
    let first = db.open().await;
    let run = create(&first, "shared", &key_partitions(PARTITIONS)).await;
    let ids: Vec<String> = first
        .partitions(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.partition_id)
        .collect();

    let mut tasks = Vec::new();
    for worker in 0..HANDLES {
        let store = db.open().await;
        let run_id = run.id.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let actor = format!("process-{worker}");
            let mut started_run = 0;
            match store
                .set_run_state(&run_id, RunState::Running, &actor, json!({}))
                .await
            {
                Ok(()) => started_run += 1,
                Err(StoreError::IllegalTransition { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            // Each process walks the partitions from a different place, to collide.
            let mut done = 0;
            for i in 0..ids.len() {
                let id = &ids[(i + worker * 2) % ids.len()];
                let attempt = match store.start_attempt(&run_id, id, &actor).await {
                    Ok(attempt) => attempt,
                    Err(StoreError::IllegalTransition { .. }) => continue,
                    Err(e) => panic!("{e}"),
                };
                for key in 0..CHECKPOINTS {
                    let delta = RowCounts {
                        read: 1,
                        inserted: 1,
                        ..RowCounts::default()
                    };
                    store
                        .checkpoint(&run_id, id, attempt, Some(&[Value::Int(key)]), &delta, 1)
                        .await
                        .unwrap();
                }
                store
                    .finish_partition(&run_id, id, attempt, Outcome::Done, &actor)
                    .await
                    .unwrap();
                done += 1;
            }
            store.close().await;
            (started_run, done)
        }));
    }
    let mut started = 0;
    let mut done = 0;
    for task in tasks {
        let (s, d) = task.await.unwrap();
        started += s;
        done += d;
    }
    assert_eq!(started, 1, "exactly one process starts the run");
    assert_eq!(done, PARTITIONS, "every partition is done exactly once");

    first
        .set_run_state(&run.id, RunState::Succeeded, "process-0", json!({}))
        .await
        .unwrap();
    for p in first.partitions(&run.id).await.unwrap() {
        assert_eq!(p.state, PartitionState::Done);
        assert_eq!(p.attempts, 1);
        assert_eq!(p.counts.read, CHECKPOINTS as u64);
        assert_eq!(p.checkpoint, Some(vec![Value::Int(CHECKPOINTS - 1)]));
    }
    let check = first.verify_audit().await.unwrap();
    assert!(check.is_ok(), "{check:?}");
    // run.created, run.running, per partition running + done, run.succeeded.
    assert_eq!(check.events, (1 + 1 + PARTITIONS * 2 + 1) as u64);
    let events = first.audit_events(Some(&run.id)).await.unwrap();
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
}

/// Fencing holds across processes: after another process resets and retakes a partition, the
/// first process's attempt is stale everywhere.
async fn a_stale_process_is_fenced_by_another(db: TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let run = create(&a, "fence", &key_partitions(1)).await;
    let pid = a.partitions(&run.id).await.unwrap()[0].partition_id.clone();
    let old = a.start_attempt(&run.id, &pid, "a").await.unwrap();
    assert_eq!(b.reset_interrupted(&run.id, "b").await.unwrap(), 1);
    let new = b.start_attempt(&run.id, &pid, "b").await.unwrap();
    assert_eq!(new, old + 1);
    let stale = a
        .checkpoint(
            &run.id,
            &pid,
            old,
            Some(&[Value::Int(1)]),
            &RowCounts::default(),
            1,
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleAttempt { .. })),
        "{stale:?}"
    );
    let stale = a
        .finish_partition(&run.id, &pid, old, Outcome::Done, "a")
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleAttempt { .. })),
        "{stale:?}"
    );
    b.finish_partition(&run.id, &pid, new, Outcome::Done, "b")
        .await
        .unwrap();
    assert!(a.verify_audit().await.unwrap().is_ok());
}

crate::on_both_backends!(
    four_processes_share_one_run,
    a_stale_process_is_fenced_by_another
);

/// A PostgreSQL serialization failure is transient; a constraint violation is not.
#[tokio::test]
async fn postgres_errors_are_classified() {
    crate::run_on(Backend::Postgres, classify_errors).await;
}

async fn classify_errors(db: TestDb) {
    db.open().await.close().await; // creates the schema
    db.raw_exec("CREATE TABLE x (id INT PRIMARY KEY, v INT); INSERT INTO x VALUES (1, 0)")
        .await;
    let mut c1 = db.raw_postgres(true).await;
    let mut c2 = db.raw_postgres(true).await;
    let mut t1 = c1.begin().await.unwrap();
    let mut t2 = c2.begin().await.unwrap();
    for t in [&mut t1, &mut t2] {
        t.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await
            .unwrap();
        t.execute("SELECT v FROM x WHERE id = 1").await.unwrap();
    }
    let write = "UPDATE x SET v = v + 1 WHERE id = 1";
    t1.execute(write).await.unwrap();
    t1.commit().await.unwrap();
    let err = StoreError::from(t2.execute(write).await.unwrap_err());
    assert!(err.is_transient(), "{err:?}");
    drop(t2);

    let err = StoreError::from(c1.execute("INSERT INTO x VALUES (1, 0)").await.unwrap_err());
    assert!(!err.is_transient(), "{err:?}");
}
