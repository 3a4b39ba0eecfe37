use backfill_core::RunState;
use backfill_store::{AuditCheck, Outcome, Store};
use serde_json::json;

use crate::{TestDb, create, key_partitions};

/// A store with a handful of chained events: run.created, run.running, then per partition
/// partition.running and partition.done.
async fn store_with_events(db: &TestDb) -> Store {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(2)).await;
    store
        .set_run_state(&run.id, RunState::Running, "alice", json!({}))
        .await
        .unwrap();
    for p in store.partitions(&run.id).await.unwrap() {
        let a = store
            .start_attempt(&run.id, &p.partition_id, "w")
            .await
            .unwrap();
        store
            .finish_partition(&run.id, &p.partition_id, a, Outcome::Done, "w")
            .await
            .unwrap();
    }
    store
}

async fn tamper(db: &TestDb, store: &Store, sql: &str) -> AuditCheck {
    db.raw_exec(sql).await;
    store.verify_audit().await.unwrap()
}

async fn intact_chain_verifies(db: TestDb) {
    let store = store_with_events(&db).await;
    let check = store.verify_audit().await.unwrap();
    assert_eq!(
        check,
        AuditCheck {
            events: 6,
            first_bad_seq: None,
            problem: None
        }
    );
    let events = store.audit_events(None).await.unwrap();
    assert_eq!(events[0].prev_hash, "0".repeat(64));
    for pair in events.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert!(pair[1].at >= pair[0].at);
    }
}

async fn an_empty_store_verifies(db: TestDb) {
    let store = db.open().await;
    assert!(store.verify_audit().await.unwrap().is_ok());
    assert!(store.audit_events(None).await.unwrap().is_empty());
}

async fn an_edited_event_breaks_the_chain(db: TestDb) {
    let store = store_with_events(&db).await;
    let check = tamper(
        &db,
        &store,
        r#"UPDATE audit_events SET detail = '{"workers":99}' WHERE seq = 2"#,
    )
    .await;
    assert_eq!(check.first_bad_seq, Some(2), "{check:?}");
    assert!(check.problem.unwrap().contains("edited"));
}

async fn a_removed_event_breaks_the_chain(db: TestDb) {
    let store = store_with_events(&db).await;
    let check = tamper(&db, &store, "DELETE FROM audit_events WHERE seq = 3").await;
    assert_eq!(check.first_bad_seq, Some(4), "{check:?}");
    assert_eq!(check.events, 5);
}

async fn a_removed_and_renumbered_event_breaks_the_chain(db: TestDb) {
    let store = store_with_events(&db).await;
    let check = tamper(
        &db,
        &store,
        "DELETE FROM audit_events WHERE seq = 3; \
         UPDATE audit_events SET seq = seq - 1 WHERE seq > 3",
    )
    .await;
    assert_eq!(check.first_bad_seq, Some(3), "{check:?}");
}

async fn reordered_events_break_the_chain(db: TestDb) {
    let store = store_with_events(&db).await;
    // Swap the contents of events 3 and 4, keeping their sequence numbers.
    let check = tamper(
        &db,
        &store,
        "UPDATE audit_events SET \
           run_id = (SELECT run_id FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           partition_id = (SELECT partition_id FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           at = (SELECT at FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           actor = (SELECT actor FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           action = (SELECT action FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           detail = (SELECT detail FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           prev_hash = (SELECT prev_hash FROM audit_events x WHERE x.seq = 7 - audit_events.seq), \
           hash = (SELECT hash FROM audit_events x WHERE x.seq = 7 - audit_events.seq) \
         WHERE seq IN (3, 4)",
    )
    .await;
    assert_eq!(check.first_bad_seq, Some(3), "{check:?}");
    let actions: Vec<_> = store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions[2], "partition.done", "the swap happened");
}

async fn audit_events_can_be_filtered_by_run(db: TestDb) {
    let store = db.open().await;
    let a = create(&store, "a", &key_partitions(1)).await;
    let b = create(&store, "b", &key_partitions(1)).await;
    store
        .set_run_state(&b.id, RunState::Running, "alice", json!({}))
        .await
        .unwrap();
    assert_eq!(store.audit_events(Some(&a.id)).await.unwrap().len(), 1);
    assert_eq!(store.audit_events(Some(&b.id)).await.unwrap().len(), 2);
    assert_eq!(store.audit_events(None).await.unwrap().len(), 3);
}

crate::on_both_backends!(
    intact_chain_verifies,
    an_empty_store_verifies,
    an_edited_event_breaks_the_chain,
    a_removed_event_breaks_the_chain,
    a_removed_and_renumbered_event_breaks_the_chain,
    reordered_events_break_the_chain,
    audit_events_can_be_filtered_by_run,
);
