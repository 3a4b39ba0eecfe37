//! Live controls: commands from other processes, their audit events, refusals on finished
//! runs, heartbeats and the rate time series.

use backfill_core::RunState;
use backfill_store::{BudgetExtra, ControlRequest, Controls, StoreError, ThrottleChange};
use serde_json::json;

use crate::{TestDb, create, time_partitions};

async fn an_untouched_run_has_default_controls(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(2)).await;
    assert_eq!(store.controls(&run.id).await.unwrap(), Controls::default());
}

async fn commands_from_another_handle_bump_the_version_and_are_audited(db: TestDb) {
    let engine = db.open().await;
    let operator = db.open().await;
    let run = create(&engine, "orders", &time_partitions(2)).await;

    let c = operator
        .request_control(&run.id, ControlRequest::Pause, "oncall", Some("db hot"))
        .await
        .unwrap();
    assert_eq!(c.version, 1);
    let seen = engine.controls(&run.id).await.unwrap();
    assert_eq!(seen.requested, Some(ControlRequest::Pause));
    assert_eq!(seen.requested_by.as_deref(), Some("oncall"));
    assert_eq!(seen.request_reason.as_deref(), Some("db hot"));

    let change = ThrottleChange {
        rows_per_second: Some(500),
        concurrency: Some(2),
        ..ThrottleChange::default()
    };
    let c = operator
        .set_throttle(&run.id, change, "oncall")
        .await
        .unwrap();
    assert_eq!(
        (c.version, c.rows_per_second, c.concurrency),
        (2, Some(500), Some(2))
    );
    // A later change keeps what it does not name; 0 lifts a rate limit.
    let change = ThrottleChange {
        rows_per_second: Some(0),
        ..ThrottleChange::default()
    };
    let c = operator
        .set_throttle(&run.id, change, "oncall")
        .await
        .unwrap();
    assert_eq!((c.rows_per_second, c.concurrency), (Some(0), Some(2)));

    let extra = BudgetExtra {
        rows: 1000,
        duration_ms: 60_000,
        ..BudgetExtra::default()
    };
    operator
        .request_resume(&run.id, "oncall", extra, false)
        .await
        .unwrap();
    let c = operator
        .request_resume(&run.id, "oncall", extra, false)
        .await
        .unwrap();
    assert_eq!(c.requested, None);
    assert_eq!(c.resumes, 2);
    assert_eq!(c.budget_extra.rows, 2000, "extensions add up");
    assert_eq!(c.budget_extra.duration_ms, 120_000);
    assert_eq!(c.version, 5);

    let events = engine.audit_events(Some(&run.id)).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "run.created",
            "run.pause_requested",
            "run.throttled",
            "run.throttled",
            "run.resume_requested",
            "run.resume_requested",
        ]
    );
    assert_eq!(events[2].detail["from"]["rows_per_second"], json!(null));
    assert_eq!(events[2].detail["to"]["rows_per_second"], json!(500));
    assert_eq!(events[4].detail["extend_budget"]["rows"], json!(1000));
    assert!(engine.verify_audit().await.unwrap().is_ok());
}

async fn a_cancel_is_not_undone_by_pause_or_plain_resume(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(2)).await;
    store
        .request_control(&run.id, ControlRequest::Cancel, "oncall", None)
        .await
        .unwrap();
    let c = store
        .request_control(&run.id, ControlRequest::Pause, "oncall", None)
        .await
        .unwrap();
    assert_eq!(c.requested, Some(ControlRequest::Cancel));
    let refused = store
        .request_resume(&run.id, "oncall", BudgetExtra::default(), false)
        .await;
    assert!(
        matches!(refused, Err(StoreError::IllegalTransition { .. })),
        "{refused:?}"
    );
    let c = store
        .request_resume(&run.id, "oncall", BudgetExtra::default(), true)
        .await
        .unwrap();
    assert_eq!(c.requested, None);
}

async fn commands_on_finished_runs_are_refused_and_change_nothing(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(1)).await;
    store
        .set_run_state(&run.id, RunState::Running, "a", json!(null))
        .await
        .unwrap();
    store
        .set_run_state(&run.id, RunState::Succeeded, "a", json!(null))
        .await
        .unwrap();
    let before = store.audit_events(Some(&run.id)).await.unwrap().len();
    for result in [
        store
            .request_control(&run.id, ControlRequest::Pause, "a", None)
            .await,
        store
            .set_throttle(&run.id, ThrottleChange::default(), "a")
            .await,
        store
            .request_resume(&run.id, "a", BudgetExtra::default(), true)
            .await,
    ] {
        assert!(
            matches!(result, Err(StoreError::IllegalTransition { .. })),
            "{result:?}"
        );
    }
    assert_eq!(
        store.audit_events(Some(&run.id)).await.unwrap().len(),
        before
    );
    let missing = store
        .set_throttle("nope", ThrottleChange::default(), "a")
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn heartbeats_add_running_time_and_publish_live_telemetry(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(1)).await;
    store
        .heartbeat(&run.id, 1500, &json!({ "rate": 10.0 }))
        .await
        .unwrap();
    store
        .heartbeat(&run.id, 500, &json!({ "rate": 5.0 }))
        .await
        .unwrap();
    let c = store.controls(&run.id).await.unwrap();
    assert_eq!(c.active_ms, 2000);
    assert_eq!(c.live, Some(json!({ "rate": 5.0 })));
    let now = chrono::Utc::now();
    assert!(c.is_live(now, std::time::Duration::from_secs(5)));
    assert!(!c.is_live(
        now + chrono::Duration::seconds(60),
        std::time::Duration::from_secs(5)
    ));
    // Telemetry is not a state change: nothing audited.
    assert_eq!(store.audit_events(Some(&run.id)).await.unwrap().len(), 1);
}

async fn rate_changes_are_a_time_series(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(1)).await;
    store
        .record_rate_change(&run.id, Some(1000.0), "start", &json!({}))
        .await
        .unwrap();
    store
        .record_rate_change(&run.id, Some(500.0), "latency", &json!({ "p90_ms": 4.2 }))
        .await
        .unwrap();
    store
        .record_rate_change(&run.id, None, "manual", &json!({}))
        .await
        .unwrap();
    let all = store.rate_changes(&run.id, 10).await.unwrap();
    let seen: Vec<(u64, Option<f64>, &str)> = all
        .iter()
        .map(|c| (c.seq, c.rate, c.cause.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Some(1000.0), "start"),
            (2, Some(500.0), "latency"),
            (3, None, "manual")
        ]
    );
    assert_eq!(all[1].detail["p90_ms"], json!(4.2));
    let last = store.rate_changes(&run.id, 1).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].seq, 3);
}

async fn a_paused_run_records_why(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "orders", &time_partitions(1)).await;
    store
        .set_run_state(&run.id, RunState::Running, "a", json!(null))
        .await
        .unwrap();
    store
        .set_run_state(
            &run.id,
            RunState::Paused,
            "a",
            json!({ "pause_reason": "budget_exhausted" }),
        )
        .await
        .unwrap();
    let r = store.get_run(&run.id).await.unwrap();
    assert_eq!(r.pause_reason.as_deref(), Some("budget_exhausted"));
    store
        .set_run_state(&run.id, RunState::Running, "a", json!(null))
        .await
        .unwrap();
    assert_eq!(store.get_run(&run.id).await.unwrap().pause_reason, None);
    store
        .set_run_state(&run.id, RunState::Paused, "a", json!(null))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_run(&run.id)
            .await
            .unwrap()
            .pause_reason
            .as_deref(),
        Some("stopped")
    );
}

crate::on_both_backends!(
    an_untouched_run_has_default_controls,
    commands_from_another_handle_bump_the_version_and_are_audited,
    a_cancel_is_not_undone_by_pause_or_plain_resume,
    commands_on_finished_runs_are_refused_and_change_nothing,
    heartbeats_add_running_time_and_publish_live_telemetry,
    rate_changes_are_a_time_series,
    a_paused_run_records_why,
);
