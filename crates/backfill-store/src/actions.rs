//! Audit events of user actions that change no run or partition state in the store (issue
//! 11: `rollback`, `cleanup`), appended to the same hash chain in their own transaction.
//!
//! Invariant: an action's event is appended under the store's write lock like every other
//! event, so it takes its place in the one chain.

use crate::{Store, StoreError, audit};

impl Store {
    /// Appends the event `action` (e.g. `rollback.started`) for `run_id` (and
    /// `partition_id`) by `actor` with `detail` (secrets masked by the chain's writer).
    pub async fn record_action(
        &self,
        run_id: &str,
        partition_id: Option<&str>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write_unfenced().await?;
        audit::append(&mut tx, Some(run_id), partition_id, actor, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
