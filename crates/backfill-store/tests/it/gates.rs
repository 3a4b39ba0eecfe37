//! Issue 11's gates in the store: the `waiting_source` protocol (one event when the wait
//! starts, one when it ends; refused out of order; a dead process's wait reset on resume) and
//! the canary record with its approval (refused unless the run awaits approval).

use backfill_core::{PartitionState, RunState};
use backfill_store::{SourceWaitEnd, StoreError};
use serde_json::json;

use crate::{TestDb, create, key_partitions};

fn actions(events: &[backfill_store::AuditEvent], partition: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.partition_id.as_deref() == Some(partition))
        .map(|e| e.action.clone())
        .collect()
}

async fn source_waits_are_audited_once_each_way(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "w", &key_partitions(1)).await;
    let pid = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();
    store
        .wait_for_source(&run.id, &pid, "w1", json!({ "window": "x" }))
        .await
        .unwrap();
    assert_eq!(
        store.partition(&run.id, &pid).await.unwrap().state,
        PartitionState::WaitingSource
    );
    // Out of order: no second wait, no attempt while waiting.
    assert!(matches!(
        store.wait_for_source(&run.id, &pid, "w1", json!({})).await,
        Err(StoreError::IllegalTransition { .. })
    ));
    assert!(matches!(
        store.start_attempt(&run.id, &pid, "w1").await,
        Err(StoreError::IllegalTransition { .. })
    ));
    store
        .end_source_wait(
            &run.id,
            &pid,
            SourceWaitEnd::Ready,
            "w1",
            json!({ "checks": 3 }),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .end_source_wait(&run.id, &pid, SourceWaitEnd::Ready, "w1", json!({}))
            .await,
        Err(StoreError::IllegalTransition { .. })
    ));
    // A wait a dead process left is reset by the next resume.
    store
        .wait_for_source(&run.id, &pid, "w1", json!({}))
        .await
        .unwrap();
    assert_eq!(store.reset_interrupted(&run.id, "w2").await.unwrap(), 1);
    // Timed out: failed with its reason and error.
    store
        .wait_for_source(&run.id, &pid, "w2", json!({}))
        .await
        .unwrap();
    let error = "source not ready: postgres://u:hunter2@h/db";
    store
        .end_source_wait(
            &run.id,
            &pid,
            SourceWaitEnd::Failed { error },
            "w2",
            json!({ "checks": 9 }),
        )
        .await
        .unwrap();
    let p = store.partition(&run.id, &pid).await.unwrap();
    assert_eq!(p.state, PartitionState::Failed);
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| !e.contains("hunter2"))
    );
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    assert_eq!(
        actions(&events, &pid),
        [
            "partition.waiting_source",
            "partition.source_ready",
            "partition.waiting_source",
            "partition.interrupted",
            "partition.waiting_source",
            "partition.failed",
        ]
    );
    let failed = events.last().unwrap();
    assert_eq!(failed.detail["reason"], "source_not_ready");
    assert!(store.verify_audit().await.unwrap().is_ok());
}

async fn approval_only_for_a_run_awaiting_it(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "c", &key_partitions(2)).await;
    store
        .record_canary(
            &run.id,
            &json!({ "seed": 5, "outcome": "passed" }),
            "canary.passed",
            json!({}),
            "w1",
        )
        .await
        .unwrap();
    assert_eq!(store.canary(&run.id).await.unwrap().unwrap()["seed"], 5);
    // A planned run does not await approval.
    assert!(matches!(
        store.approve_run(&run.id, "alice", Some("ok")).await,
        Err(StoreError::IllegalTransition { .. })
    ));
    for to in [RunState::Running, RunState::AwaitingApproval] {
        store
            .set_run_state(&run.id, to, "w1", json!({}))
            .await
            .unwrap();
    }
    store
        .approve_run(&run.id, "alice", Some("canary rows checked"))
        .await
        .unwrap();
    let back = store.get_run(&run.id).await.unwrap();
    assert_eq!(back.state, RunState::Running);
    let canary = store.canary(&run.id).await.unwrap().unwrap();
    assert_eq!(canary["approved_by"], "alice");
    assert_eq!(canary["approval_reason"], "canary rows checked");
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    let approved = events.iter().find(|e| e.action == "run.approved").unwrap();
    assert_eq!(approved.actor, "alice");
    assert_eq!(approved.detail["reason"], "canary rows checked");
    // Once approved it no longer awaits approval.
    assert!(matches!(
        store.approve_run(&run.id, "bob", None).await,
        Err(StoreError::IllegalTransition { .. })
    ));
    // An awaiting run is an unfinished one: `run SPEC` resumes it.
    store
        .set_run_state(&run.id, RunState::AwaitingApproval, "w1", json!({}))
        .await
        .unwrap();
    assert_eq!(
        store.find_unfinished_run("c").await.unwrap().map(|r| r.id),
        Some(run.id.clone())
    );
}

crate::on_both_backends!(
    source_waits_are_audited_once_each_way,
    approval_only_for_a_run_awaiting_it
);
