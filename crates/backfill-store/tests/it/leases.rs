//! Leases: one holder per resource under concurrent claims, fencing of every write, takeover
//! of an expired or dead holder, and one unfinished run per spec.

use std::time::Duration;

use backfill_core::{RowCounts, RunState, Value};
use backfill_store::{Claim, LeaseOwner, NewRun, Outcome, StoreError, run_resource};
use serde_json::json;

use crate::{TestDb, create, key_partitions, on_both_backends};

fn owner(n: u64) -> LeaseOwner {
    LeaseOwner {
        host: "test-host".into(),
        pid: 1000 + n,
        token: format!("token-{n}"),
    }
}

const LONG: Duration = Duration::from_secs(60);

/// Eight handles (separate pools, like processes) claim one run at the same moment, 10 rounds:
/// exactly one claim wins each round, and every loser is told who won.
async fn one_claim_wins_among_many(db: TestDb) {
    let first = db.open().await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(db.open().await);
    }
    for round in 0..10u64 {
        let resource = format!("run:round-{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(handles.len()));
        let mut tasks = Vec::new();
        for (i, store) in handles.iter().enumerate() {
            let store = store.clone();
            let resource = resource.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_lease(&resource, &owner(i as u64), LONG, None)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = Vec::new();
        let mut held = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Claim::Claimed(lease) => winners.push(lease),
                Claim::Held(holder) => held.push(holder),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one claim wins");
        let winner = &winners[0];
        assert_eq!(winner.fence, 1);
        for holder in &held {
            assert_eq!(holder.token, winner.owner.token, "losers see the winner");
            assert_eq!(holder.pid, winner.owner.pid);
        }
        let stored = first.lease_holder(&resource).await.unwrap().unwrap();
        assert_eq!(stored.token, winner.owner.token);
    }
}

/// After another process claims the run (here: the first lease expired), every write of the
/// first holder's fenced handle is refused and changes nothing: checkpoint, finish, start of
/// an attempt, run state, heartbeat, rate change, renewal.
async fn a_stale_holder_cannot_write(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "fenced", &key_partitions(2)).await;
    let resource = run_resource(&run.id);
    let Claim::Claimed(old) = store
        .claim_lease(&resource, &owner(1), Duration::from_secs(2), None)
        .await
        .unwrap()
    else {
        panic!("first claim wins");
    };
    let stale = store.fenced(&old);
    stale
        .set_run_state(&run.id, RunState::Running, "old", json!({}))
        .await
        .unwrap();
    let partition = store.partitions(&run.id).await.unwrap()[0]
        .partition_id
        .clone();
    let attempt = stale
        .start_attempt(&run.id, &partition, "old")
        .await
        .unwrap();
    let one = RowCounts {
        read: 1,
        inserted: 1,
        ..RowCounts::default()
    };
    stale
        .checkpoint(
            &run.id,
            &partition,
            attempt,
            Some(&[Value::Int(1)]),
            &one,
            1,
        )
        .await
        .unwrap();

    // A live lease is not taken over by someone else…
    let other = db.open().await;
    assert!(matches!(
        other
            .claim_lease(&resource, &owner(2), LONG, None)
            .await
            .unwrap(),
        Claim::Held(h) if h.fence == 1 && h.pid == owner(1).pid
    ));
    // …until it expires.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let Claim::Claimed(new) = other
        .claim_lease(&resource, &owner(2), LONG, None)
        .await
        .unwrap()
    else {
        panic!("an expired lease is free");
    };
    assert_eq!(new.fence, 2, "every claim takes a larger fence");

    let lost = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::LeaseLost { fence: 1, .. })),
            "refused as lost: {r:?}"
        )
    };
    lost(
        stale
            .checkpoint(
                &run.id,
                &partition,
                attempt,
                Some(&[Value::Int(2)]),
                &one,
                1,
            )
            .await,
    );
    lost(
        stale
            .finish_partition(&run.id, &partition, attempt, Outcome::Done, "old")
            .await,
    );
    lost(stale.heartbeat(&run.id, 10, &json!({})).await);
    lost(
        stale
            .record_rate_change(&run.id, Some(1.0), "manual", &json!({}))
            .await,
    );
    lost(
        stale
            .set_run_state(&run.id, RunState::Paused, "old", json!({}))
            .await,
    );
    lost(
        stale
            .start_attempt(&run.id, &partition, "old")
            .await
            .map(drop),
    );
    lost(store.renew_lease(&old).await.map(drop));
    // The same statement the engine runs inside a target transaction is fenced too.
    let (sql, _) = stale.checkpoint_statement(&run.id, &partition, attempt, None, &one, 1);
    assert!(sql.contains("leases"), "{sql}");

    // Nothing moved: the checkpoint is the one written before the takeover.
    let record = store.partition(&run.id, &partition).await.unwrap();
    assert_eq!(record.checkpoint, Some(vec![Value::Int(1)]));
    assert_eq!(record.counts.read, 1);
    assert_eq!(record.state, backfill_core::PartitionState::Running);
    assert_eq!(
        store.get_run(&run.id).await.unwrap().state,
        RunState::Running
    );

    // The new holder writes freely.
    let fresh = other.fenced(&new);
    fresh.reset_interrupted(&run.id, "new").await.unwrap();
    fresh.renew_lease(&new).await.unwrap();
    fresh.release_lease(&new).await.unwrap();
    assert!(
        store
            .lease_holder(&resource)
            .await
            .unwrap()
            .unwrap()
            .is_free(chrono::Utc::now())
    );
}

/// A live lease is taken over at once only by a claim naming its holder's token (the caller
/// proved that holder dead); a released lease is free for anyone.
async fn takeover_needs_the_dead_holders_token(db: TestDb) {
    let store = db.open().await;
    let resource = "run:takeover";
    let Claim::Claimed(first) = store
        .claim_lease(resource, &owner(1), LONG, None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(
        store
            .claim_lease(resource, &owner(2), LONG, Some("not-the-token"))
            .await
            .unwrap(),
        Claim::Held(_)
    ));
    let Claim::Claimed(second) = store
        .claim_lease(resource, &owner(2), LONG, Some(&first.owner.token))
        .await
        .unwrap()
    else {
        panic!("the named holder is replaced")
    };
    assert_eq!(second.fence, 2);
    store.release_lease(&second).await.unwrap();
    let Claim::Claimed(third) = store
        .claim_lease(resource, &owner(3), LONG, None)
        .await
        .unwrap()
    else {
        panic!("a released lease is free")
    };
    assert_eq!(third.fence, 3);
    // Releasing a lease someone else replaced changes nothing.
    store.release_lease(&first).await.unwrap();
    let holder = store.lease_holder(resource).await.unwrap().unwrap();
    assert!(!holder.released);
    assert_eq!(holder.fence, 3);
}

/// Eight handles start the same spec at the same moment: one run is created, and all of them
/// get it.
async fn one_unfinished_run_per_spec(db: TestDb) {
    let partitions = key_partitions(3);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = db.open().await;
        let barrier = barrier.clone();
        let partitions = partitions.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .find_or_create_run(NewRun {
                    spec_name: "same-spec",
                    spec_hash: "s",
                    plan_hash: "p",
                    normalized_spec: "{}",
                    spec_text: "name = \"same-spec\"",
                    owner: "t@h",
                    reason: "test",
                    partitions: &partitions,
                    guarantee: backfill_core::Guarantee::Idempotent,
                    undo_log: false,
                })
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for task in tasks {
        let (run, new) = task.await.unwrap();
        created += usize::from(new);
        ids.push(run.id);
    }
    ids.dedup();
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "everyone got the same run");
    let store = db.open().await;
    assert_eq!(store.list_runs(10).await.unwrap().len(), 1);
}

on_both_backends!(
    one_claim_wins_among_many,
    a_stale_holder_cannot_write,
    takeover_needs_the_dead_holders_token,
    one_unfinished_run_per_spec,
);
