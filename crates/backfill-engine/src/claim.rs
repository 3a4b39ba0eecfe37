//! The claim on a run: the one process allowed to execute it.
//!
//! A process executes a run only while it holds the run's lease in the state store
//! ([`backfill_store::run_resource`]). The claim is one compare-and-set in the store, so of
//! any number of processes starting the same run at the same moment exactly one wins; the
//! others learn who holds it ([`EngineError::Held`]) or, when asked to, wait for it.
//!
//! Invariants:
//! - Every write of the executing process goes through a handle fenced by its lease
//!   ([`backfill_store::Store::fenced`]), so once another process has claimed the run (after
//!   this one's lease expired) none of its writes lands.
//! - A holder is taken for dead when its lease expires (it stopped renewing), and at once when
//!   it is a process of this host whose pid no longer exists (killed).

use std::time::Duration;

use backfill_store::{Claim, Lease, LeaseHolder, LeaseOwner, Store, run_resource};

use crate::control::{POLL, host, process_exists};
use crate::{EngineError, Shutdown, patience};

/// How long a claim lasts without renewal unless the caller says otherwise: the executing
/// process renews it every second, so this is how long a stopped or cut-off holder keeps
/// everyone else waiting.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// Claims run `run_id` for this process for `ttl`. When another process holds it: with
/// `wait`, waits (polling) until it is free or `shutdown` is requested; without, fails with
/// [`EngineError::Held`] naming the holder.
pub(crate) async fn claim_run(
    store: &Store,
    run_id: &str,
    ttl: Duration,
    wait: bool,
    shutdown: &Shutdown,
) -> Result<(Lease, bool), EngineError> {
    let resource = run_resource(run_id);
    let owner = LeaseOwner::this_process(&host());
    let mut waited = false;
    loop {
        let holder = match try_claim(store, &resource, &owner, ttl, shutdown).await? {
            Claim::Claimed(lease) => return Ok((lease, waited)),
            Claim::Held(holder) => holder,
        };
        if !wait || shutdown.is_requested() {
            return Err(held(run_id, holder));
        }
        if !waited {
            tracing::info!(
                run_id,
                host = holder.host,
                pid = holder.pid,
                "waiting for the process executing the run to finish or stop"
            );
        }
        waited = true;
        tokio::select! {
            () = tokio::time::sleep(POLL * 2) => {}
            () = shutdown.requested() => return Err(held(run_id, holder)),
        }
    }
}

/// One claim, taking over a dead holder of this host at once.
async fn try_claim(
    store: &Store,
    resource: &str,
    owner: &LeaseOwner,
    ttl: Duration,
    shutdown: &Shutdown,
) -> Result<Claim, EngineError> {
    let claim = patience::store(shutdown, "claim the run", || {
        store.claim_lease(resource, owner, ttl, None)
    })
    .await?;
    let Claim::Held(holder) = &claim else {
        return Ok(claim);
    };
    if holder.host == owner.host && !process_exists(holder.pid) {
        tracing::info!(
            resource,
            pid = holder.pid,
            "the process that held the run is gone: taking it over"
        );
        let token = holder.token.clone();
        return Ok(patience::store(shutdown, "claim the run", || {
            store.claim_lease(resource, owner, ttl, Some(&token))
        })
        .await?);
    }
    Ok(claim)
}

/// Fails with [`EngineError::Held`] when another live process holds run `run_id` now (not one
/// of this host that is gone). Only for telling the user early: the claim [`crate::execute`]
/// makes is what decides.
pub async fn ensure_unclaimed(store: &Store, run_id: &str) -> Result<(), EngineError> {
    let Some(holder) = store.lease_holder(&run_resource(run_id)).await? else {
        return Ok(());
    };
    let dead_here = holder.host == host() && !process_exists(holder.pid);
    if holder.is_free(chrono::Utc::now()) || dead_here {
        return Ok(());
    }
    Err(held(run_id, holder))
}

fn held(run_id: &str, holder: LeaseHolder) -> EngineError {
    EngineError::Held {
        run_id: run_id.to_owned(),
        host: holder.host,
        pid: holder.pid,
        since: holder.claimed_at,
        expires_at: holder.expires_at,
    }
}

/// A claim kept alive by a background task that renews it every third of its time to live,
/// for work that holds a run without the executor's heartbeat (`rollback`, `cleanup`).
/// Dropping it stops the renewals; [`KeptClaim::release`] also lets go of the lease at once.
pub(crate) struct KeptClaim {
    store: Store,
    lease: Lease,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When the lease lapses unless renewed again (Unix milliseconds): past it, another
    /// process may hold the run even if no renewal said so (the store was unreachable).
    expires_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl KeptClaim {
    /// Starts renewing `lease`.
    pub(crate) fn keep(store: &Store, lease: Lease) -> KeptClaim {
        use std::sync::atomic::Ordering::SeqCst;
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let expires_ms = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
            lease.expires_at.timestamp_millis(),
        ));
        let renewer = tokio::spawn({
            let (store, lease) = (store.clone(), lease.clone());
            let (lost, expires_ms) = (lost.clone(), expires_ms.clone());
            async move {
                let every = lease.ttl / 3;
                loop {
                    tokio::time::sleep(every).await;
                    match store.renew_lease(&lease).await {
                        Ok(until) => expires_ms.store(until.timestamp_millis(), SeqCst),
                        Err(e) => {
                            tracing::warn!(resource = lease.resource, error = %e, "claim not renewed");
                            if matches!(e, backfill_store::StoreError::LeaseLost { .. }) {
                                lost.store(true, SeqCst);
                                return;
                            }
                        }
                    }
                }
            }
        });
        KeptClaim {
            store: store.clone(),
            lease,
            lost,
            expires_ms,
            renewer,
        }
    }

    /// True once another process has claimed the resource, or could have: the lease was taken
    /// over, or it lapsed without a renewal (the store unreachable for its whole time to
    /// live).
    pub(crate) fn lost(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.lost.load(SeqCst)
            || chrono::Utc::now().timestamp_millis() > self.expires_ms.load(SeqCst)
    }

    /// Stops renewing and lets go of the lease (a failure to release only delays the next
    /// claimer until the lease expires).
    pub(crate) async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.store.release_lease(&self.lease).await {
            tracing::warn!(resource = self.lease.resource, error = %e, "claim not released");
        }
    }
}

impl Drop for KeptClaim {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
