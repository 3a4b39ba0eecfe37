//! Leases: time-limited, fenced claims on a named resource, shared by every process that uses
//! one store.
//!
//! Today one resource exists, `run:<id>` ([`run_resource`]): the right to execute a run. The
//! multi-worker design extends the same table to partitions. A claim is one compare-and-set
//! inside a serialised write transaction (SQLite's write lock, or the store's advisory lock on
//! PostgreSQL), so two processes claiming at the same moment can never both win.
//!
//! Invariants:
//! - Every successful claim of a resource gets a fence number larger than any before it
//!   (the fencing token). A lease is never handed back to the same number.
//! - A live lease (not released, not past `expires_at`) is only taken over by a claim that names
//!   its holder's token (`replacing`): the caller has proved that holder dead (a process of this
//!   host whose pid is gone). An expired or released lease may be claimed by anyone.
//! - A [`Store`] handle made with [`Store::fenced`] checks its lease's fence in every write
//!   transaction and in every single-statement write (checkpoints), in the same transaction or
//!   statement as the write itself, and refuses with [`StoreError::LeaseLost`] once another
//!   claim has happened, having changed nothing. Expiry alone does not fence: a holder whose
//!   lease expired but that nobody else claimed may still renew and go on.
//! - Expiry times come from the claiming process's clock; a skewed clock only moves *when* an
//!   abandoned lease can be taken over, never whether two holders can write.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::{DbRow, Stmt, WriteTxn, stmt};
use crate::{Store, StoreError, codec};

/// The resource name of the right to execute run `run_id`.
pub fn run_resource(run_id: &str) -> String {
    format!("run:{run_id}")
}

/// Who claims a lease: a process of a host, with a random token for this claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOwner {
    /// The host name (may be empty when unknown).
    pub host: String,
    /// The process id on that host.
    pub pid: u64,
    /// Random per claimant, so a takeover can name exactly the holder it replaces.
    pub token: String,
}

impl LeaseOwner {
    /// This process on `host`, with a fresh random token.
    pub fn this_process(host: &str) -> LeaseOwner {
        LeaseOwner {
            host: host.to_owned(),
            pid: u64::from(std::process::id()),
            token: uuid::Uuid::now_v7().simple().to_string(),
        }
    }
}

/// A lease held by this process: its resource, fence number and expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The resource claimed (`run:<id>`).
    pub resource: String,
    /// The fencing token: every write made under this lease carries it.
    pub fence: u64,
    /// Who holds it (this process).
    pub owner: LeaseOwner,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
    /// How long each claim or renewal lasts.
    pub ttl: Duration,
}

/// The current holder of a resource's lease, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The fence number of its claim.
    pub fence: u64,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u64,
    /// Its claim's token.
    pub token: String,
    /// When it claimed the resource.
    pub claimed_at: DateTime<Utc>,
    /// When it last renewed.
    pub renewed_at: DateTime<Utc>,
    /// When the lease lapses unless renewed.
    pub expires_at: DateTime<Utc>,
    /// Whether the holder let go.
    pub released: bool,
}

impl LeaseHolder {
    /// Whether anyone may claim the resource at `now`: released, or past its expiry.
    pub fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.released || now >= self.expires_at
    }
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours.
    Claimed(Lease),
    /// Someone else holds a live lease on the resource; nothing changed.
    Held(LeaseHolder),
}

const HOLDER_COLUMNS: &str = "SELECT fence, holder_host, holder_pid, holder_token, claimed_at, \
     renewed_at, expires_at, released FROM leases WHERE resource = ?";

fn holder_from_row(row: &DbRow) -> Result<LeaseHolder, StoreError> {
    let released: i64 = row.try_get("released")?;
    Ok(LeaseHolder {
        fence: codec::from_db(row.try_get("fence")?),
        host: row.try_get("holder_host")?,
        pid: codec::from_db(row.try_get("holder_pid")?),
        token: row.try_get("holder_token")?,
        claimed_at: codec::parse_time(&row.try_get::<String, _>("claimed_at")?, "claimed_at")?,
        renewed_at: codec::parse_time(&row.try_get::<String, _>("renewed_at")?, "renewed_at")?,
        expires_at: codec::parse_time(&row.try_get::<String, _>("expires_at")?, "expires_at")?,
        released: released != 0,
    })
}

fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now.checked_add_signed(chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The fence check a fenced handle runs first in every write transaction.
pub(crate) async fn check_fence(
    tx: &mut WriteTxn,
    resource: &str,
    fence: u64,
) -> Result<(), StoreError> {
    // The chain's head comes with the fence, so the transaction's first audit event needs no
    // query of its own.
    let row = stmt(format!(
        "SELECT (SELECT fence FROM leases WHERE resource = ?) AS fence, {}",
        crate::audit::LAST_EVENT_COLUMNS
    ))
    .bind(resource)
    .fetch_optional(tx)
    .await?
    .ok_or_else(|| StoreError::Corrupt("the fence check read no row".to_owned()))?;
    let current = row.try_get::<Option<i64>, _>("fence")?.map(codec::from_db);
    tx.last_audit = Some(crate::audit::last_event_of(&row)?);
    if current == Some(fence) {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            resource: resource.to_owned(),
            fence,
        })
    }
}

impl Store {
    /// Claims `resource` for `owner` for `ttl`, atomically: succeeds when nobody holds it,
    /// when its lease is released or expired, when `owner` already holds it (same token: a
    /// re-claim, which still takes a new fence), or when `replacing` names the current
    /// holder's token (the caller proved that holder dead). Otherwise returns
    /// [`Claim::Held`] with the holder, having changed nothing. Not an audit event: the run
    /// state changes the holder makes are.
    pub async fn claim_lease(
        &self,
        resource: &str,
        owner: &LeaseOwner,
        ttl: Duration,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.begin_write_unfenced().await?;
        let now = Utc::now();
        let current = stmt(format!("{HOLDER_COLUMNS}{}", tx.dialect().for_update()))
            .bind(resource)
            .fetch_optional(&mut tx)
            .await?
            .as_ref()
            .map(holder_from_row)
            .transpose()?;
        let expires_at = expiry(now, ttl);
        let fence = match &current {
            None => {
                stmt(
                    "INSERT INTO leases (resource, fence, holder_host, holder_pid, holder_token, \
                     claimed_at, renewed_at, expires_at, released) \
                     VALUES (?, 1, ?, ?, ?, ?, ?, ?, 0)",
                )
                .bind(resource)
                .bind(owner.host.as_str())
                .bind(codec::to_db(owner.pid))
                .bind(owner.token.as_str())
                .bind(codec::timestamp(now))
                .bind(codec::timestamp(now))
                .bind(codec::timestamp(expires_at))
                .execute(&mut tx)
                .await?;
                1
            }
            Some(holder) => {
                let takes_over = holder.is_free(now)
                    || holder.token == owner.token
                    || replacing == Some(holder.token.as_str());
                if !takes_over {
                    return Ok(Claim::Held(holder.clone()));
                }
                let fence = holder.fence + 1;
                let changed = stmt(
                    "UPDATE leases SET fence = ?, holder_host = ?, holder_pid = ?, \
                     holder_token = ?, claimed_at = ?, renewed_at = ?, expires_at = ?, \
                     released = 0 WHERE resource = ? AND fence = ?",
                )
                .bind(codec::to_db(fence))
                .bind(owner.host.as_str())
                .bind(codec::to_db(owner.pid))
                .bind(owner.token.as_str())
                .bind(codec::timestamp(now))
                .bind(codec::timestamp(now))
                .bind(codec::timestamp(expires_at))
                .bind(resource)
                .bind(codec::to_db(holder.fence))
                .execute(&mut tx)
                .await?;
                if changed != 1 {
                    return Err(StoreError::Corrupt(format!(
                        "lease {resource} changed under its write lock"
                    )));
                }
                fence
            }
        };
        tx.commit().await?;
        Ok(Claim::Claimed(Lease {
            resource: resource.to_owned(),
            fence,
            owner: owner.clone(),
            expires_at,
            ttl,
        }))
    }

    /// Extends `lease` by its ttl from now. [`StoreError::LeaseLost`] when another claim
    /// replaced it (nothing changed); an expired lease nobody else claimed is renewed.
    /// Returns the new expiry.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.begin_write_unfenced().await?;
        let now = Utc::now();
        let expires_at = expiry(now, lease.ttl);
        let changed = stmt(
            "UPDATE leases SET renewed_at = ?, expires_at = ?, released = 0 \
             WHERE resource = ? AND fence = ?",
        )
        .bind(codec::timestamp(now))
        .bind(codec::timestamp(expires_at))
        .bind(lease.resource.as_str())
        .bind(codec::to_db(lease.fence))
        .execute(&mut tx)
        .await?;
        if changed != 1 {
            return Err(StoreError::LeaseLost {
                resource: lease.resource.clone(),
                fence: lease.fence,
            });
        }
        tx.commit().await?;
        Ok(expires_at)
    }

    /// Lets go of `lease`, so anyone may claim the resource at once. Does nothing when another
    /// claim already replaced it.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut tx = self.begin_write_unfenced().await?;
        stmt("UPDATE leases SET released = 1 WHERE resource = ? AND fence = ?")
            .bind(lease.resource.as_str())
            .bind(codec::to_db(lease.fence))
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The current (or last) holder of `resource`'s lease; `None` if it was never claimed.
    pub async fn lease_holder(&self, resource: &str) -> Result<Option<LeaseHolder>, StoreError> {
        stmt(HOLDER_COLUMNS)
            .bind(resource)
            .fetch_optional(&mut self.conn().await?)
            .await?
            .as_ref()
            .map(holder_from_row)
            .transpose()
    }

    /// A handle on the same store whose every write is fenced by `lease`: each write
    /// transaction first checks that the resource's fence is still `lease.fence`, and each
    /// single-statement write (checkpoint, counter reset) carries the same condition, so once
    /// another process has claimed the resource every write fails with
    /// [`StoreError::LeaseLost`] having changed nothing. Reads are not fenced.
    pub fn fenced(&self, lease: &Lease) -> Store {
        Store {
            fence: Some(std::sync::Arc::new(Fence {
                resource: lease.resource.clone(),
                number: lease.fence,
            })),
            ..self.clone()
        }
    }

    /// The fence of this handle, if it is fenced.
    pub(crate) fn fence(&self) -> Option<&Fence> {
        self.fence.as_deref()
    }

    /// What a fenced handle's single-statement write adds to its `WHERE` so that it changes
    /// nothing once another process has claimed the resource; empty on an unfenced handle.
    /// Bind its parameters with [`Store::bind_fence`], after those before it.
    pub(crate) fn fence_clause(&self) -> &'static str {
        match self.fence() {
            Some(_) => " AND EXISTS (SELECT 1 FROM leases WHERE resource = ? AND fence = ?)",
            None => "",
        }
    }

    /// Binds the parameters of [`Store::fence_clause`] (none on an unfenced handle).
    pub(crate) fn bind_fence(&self, query: Stmt) -> Stmt {
        match self.fence() {
            Some(fence) => query
                .bind(fence.resource.as_str())
                .bind(codec::to_db(fence.number)),
            None => query,
        }
    }

    /// A write transaction whose first statement checks the fence itself with
    /// [`Store::fence_clause`], one statement fewer than [`Store::begin_write`]: for the
    /// hottest transactions (an attempt's start, an empty partition). When that statement
    /// matches no row, [`Store::fence_still_held`] tells a lost lease from a row in another
    /// state.
    pub(crate) async fn begin_write_fenced_by_statement(&self) -> Result<WriteTxn, StoreError> {
        self.begin_write_unfenced().await
    }

    /// In `tx`, [`StoreError::LeaseLost`] when this handle's lease was claimed by another
    /// process; `Ok` on an unfenced handle.
    pub(crate) async fn fence_still_held(&self, tx: &mut WriteTxn) -> Result<(), StoreError> {
        match self.fence() {
            Some(fence) => check_fence(tx, &fence.resource, fence.number).await,
            None => Ok(()),
        }
    }
}

/// The lease a fenced handle writes under.
#[derive(Debug)]
pub(crate) struct Fence {
    pub(crate) resource: String,
    pub(crate) number: u64,
}
