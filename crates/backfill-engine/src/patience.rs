//! Riding out a database that is briefly unreachable: a lost connection (the server was
//! restarted, an administrator ran `pg_terminate_backend`), a server shutting down or out of
//! connection slots, a busy SQLite file.
//!
//! State-store calls that move a partition between states are retried here, in place, so a
//! store hiccup costs a pause instead of leaving partitions behind in a `paused` run. The
//! same patience applies to opening the source and target when a run starts. Work inside an
//! attempt is not retried here: an attempt that fails transiently ends, and the partition's
//! retry policy starts a new one from the last checkpoint in the store.

use std::future::Future;
use std::time::Duration;

use backfill_core::retry::{ErrorClass, RetryDecision, RetryPolicy};
use backfill_store::StoreError;
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// How long a transiently failing call is retried before its error is returned: long enough
/// for a database restart.
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

/// Backoff between tries: full jitter, from 100 ms up to 5 s.
const BACKOFF: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
    max_attempts: u32::MAX,
};

/// Runs `call` until it succeeds, fails with an error `is_transient` says is not worth
/// retrying, [`PATIENCE`] runs out, or a stop is requested; returns the last result.
/// `what` names the call in the warning logged before each retry.
pub(crate) async fn retry_transient<T, E, F, Fut>(
    shutdown: &Shutdown,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    call: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_within(PATIENCE, shutdown, what, is_transient, call).await
}

/// [`retry_transient`] with another patience.
async fn retry_within<T, E, F, Fut>(
    patience: Duration,
    shutdown: &Shutdown,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + patience;
    let mut failures = 0u32;
    loop {
        let error = match call().await {
            Err(e) if is_transient(&e) && Instant::now() < deadline => e,
            other => return other,
        };
        failures += 1;
        let RetryDecision::RetryAfter(delay) =
            BACKOFF.decide(failures, ErrorClass::Transient, rand::random::<f64>())
        else {
            return Err(error);
        };
        tracing::warn!(
            what,
            error = %backfill_core::secret::redact(&error.to_string()),
            retry_in_ms = delay.as_millis() as u64,
            "transient failure; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.requested() => return Err(error),
        }
    }
}

/// A state-store call, retried while [`StoreError::is_transient`].
pub(crate) async fn store<T, F, Fut>(
    shutdown: &Shutdown,
    what: &str,
    call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_transient(shutdown, what, StoreError::is_transient, call).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn transient_failures_are_retried_and_others_returned_at_once() {
        let calls = AtomicU32::new(0);
        let shutdown = Shutdown::new();
        let result: Result<u32, String> = retry_transient(
            &shutdown,
            "test",
            |e: &String| e == "busy",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 4 { Err("busy".to_owned()) } else { Ok(n) }
            },
        )
        .await;
        assert_eq!(result, Ok(4));

        calls.store(0, Ordering::SeqCst);
        let result: Result<u32, String> = retry_transient(
            &shutdown,
            "test",
            |e: &String| e == "busy",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("broken".to_owned())
            },
        )
        .await;
        assert_eq!(result, Err("broken".to_owned()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn patience_runs_out_and_a_stop_ends_the_wait() {
        let shutdown = Shutdown::new();
        let patience = Duration::from_millis(300);
        let started = Instant::now();
        let result: Result<(), String> = retry_within(
            patience,
            &shutdown,
            "test",
            |_: &String| true,
            || async { Err("down".to_owned()) },
        )
        .await;
        assert_eq!(result, Err("down".to_owned()));
        assert!(started.elapsed() >= patience);

        shutdown.request();
        let started = Instant::now();
        let result: Result<(), String> = retry_transient(
            &shutdown,
            "test",
            |_: &String| true,
            || async { Err("down".to_owned()) },
        )
        .await;
        assert_eq!(result, Err("down".to_owned()));
        assert!(started.elapsed() < PATIENCE / 2);
    }
}
