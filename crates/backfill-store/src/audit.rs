//! The append-only, hash-chained audit log.
//!
//! Each event's hash is blake3 over a length-prefixed encoding of its sequence number, run,
//! partition, time, actor, action, detail (the JSON text exactly as stored) and the previous
//! event's hash; the first event chains to 64 zeros. Editing any field, removing an event from
//! the middle or reordering events therefore breaks the chain at the first affected event.
//! Removing the *last* events cannot be seen from the chain alone: every append also moves
//! the head's anchor (`anchor.rs`, table `audit_head`) in the same transaction, and
//! [`Store::verify_audit`] fails when the chain does not end at it.
//!
//! Events are appended only by the store, inside the transaction of the state change they
//! record, after the write lock is held (SQLite's database lock, or the store's advisory lock
//! on PostgreSQL, taken by every state-changing transaction of every process), so the "last
//! hash" read here is the real last one. `seq` is the primary key, so even a writer that
//! bypassed the lock could not fork the chain: its insert would fail.

use crate::codec;
use crate::db::{DbRow, WriteTxn, stmt};
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};

/// The `prev_hash` of the first event.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One recorded state change.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// Position in the chain, from 1, gap-free in an intact store.
    pub seq: i64,
    /// The run concerned, if any.
    pub run_id: Option<String>,
    /// The partition concerned, if any.
    pub partition_id: Option<String>,
    /// When the change was committed (store clock, UTC, microseconds).
    pub at: DateTime<Utc>,
    /// Who made it (`user@host`, `worker:…`).
    pub actor: String,
    /// What happened: `run.created`, `run.running`, `partition.done`, …
    pub action: String,
    /// Structured facts of the change, secrets masked.
    pub detail: serde_json::Value,
    /// Hash of the previous event (64 zeros for the first).
    pub prev_hash: String,
    /// Hash of this event, covering every field above.
    pub hash: String,
}

/// The result of [`Store::verify_audit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheck {
    /// How many events the store holds.
    pub events: u64,
    /// The first event whose hash or link does not match, `None` when the chain is intact.
    pub first_bad_seq: Option<i64>,
    /// What is wrong with that event.
    pub problem: Option<String>,
}

impl AuditCheck {
    /// True when the whole chain verified.
    pub fn is_ok(&self) -> bool {
        self.first_bad_seq.is_none()
    }
}

/// Appends one event in the write transaction `tx`.
pub(crate) async fn append(
    tx: &mut WriteTxn,
    run_id: Option<&str>,
    partition_id: Option<&str>,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let event = NewEvent {
        partition_id,
        action,
        detail,
    };
    append_all(tx, run_id, actor, vec![event]).await
}

/// [`append_all`], then commits `tx`: on SQLite the events' statement carries the `COMMIT`
/// (one round trip fewer, see [`WriteTxn`]).
pub(crate) async fn append_all_and_commit(
    mut tx: WriteTxn,
    run_id: Option<&str>,
    actor: &str,
    events: Vec<NewEvent<'_>>,
) -> Result<(), StoreError> {
    if tx.last_audit.is_none() {
        // Read before the statement that commits.
        tx.last_audit = Some(last_event(&mut tx).await?);
    }
    tx.commit_with_next();
    append_all(&mut tx, run_id, actor, events).await?;
    tx.commit().await?;
    Ok(())
}

/// An event to append with [`append_all`].
pub(crate) struct NewEvent<'a> {
    /// The partition it is about, if any.
    pub(crate) partition_id: Option<&'a str>,
    /// What happened (`partition.done`, …).
    pub(crate) action: &'a str,
    /// Its details (passwords are masked before they are stored).
    pub(crate) detail: serde_json::Value,
}

/// Appends `events` of one run and actor, in order, in the write transaction `tx`, chained
/// one after the other, and moves the anchor to the last: one statement whatever their number.
pub(crate) async fn append_all(
    tx: &mut WriteTxn,
    run_id: Option<&str>,
    actor: &str,
    events: Vec<NewEvent<'_>>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev_hash) = match tx.last_audit.take() {
        Some(head) => head,
        None => last_event(tx).await?,
    };
    let at = codec::now();
    let actor = backfill_core::secret::redact(actor);
    let tuples = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; events.len()].join(", ");
    let insert = format!(
        "INSERT INTO audit_events \
         (seq, run_id, partition_id, at, actor, action, detail, prev_hash, hash) \
         VALUES {tuples}"
    );
    let mut insert = stmt(crate::anchor::advancing(tx.dialect(), &insert));
    for NewEvent {
        partition_id,
        action,
        detail,
    } in events
    {
        seq += 1;
        let detail = redact_json(detail).to_string();
        let hash = event_hash(
            seq,
            run_id,
            partition_id,
            &at,
            &actor,
            action,
            &detail,
            &prev_hash,
        );
        insert = insert
            .bind(seq)
            .bind(run_id)
            .bind(partition_id)
            .bind(&at)
            .bind(&actor)
            .bind(action)
            .bind(detail)
            .bind(prev_hash)
            .bind(&hash);
        prev_hash = hash;
    }
    insert.bind(seq).bind(&prev_hash).execute(tx).await?;
    tx.last_audit = Some((seq, prev_hash));
    Ok(())
}

/// The chain's last event `(seq, hash)`, `(0, GENESIS)` when it has none.
async fn last_event(tx: &mut WriteTxn) -> Result<(i64, String), StoreError> {
    let last = stmt("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(tx)
        .await?;
    match last {
        Some(row) => Ok((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?)),
        None => Ok((0, GENESIS.to_owned())),
    }
}

/// [`last_event`] from a row that read [`LAST_EVENT_COLUMNS`].
pub(crate) fn last_event_of(row: &crate::db::DbRow) -> Result<(i64, String), StoreError> {
    let seq: Option<i64> = row.try_get("seq")?;
    let hash: Option<String> = row.try_get("hash")?;
    Ok(match (seq, hash) {
        (Some(seq), Some(hash)) => (seq, hash),
        _ => (0, GENESIS.to_owned()),
    })
}

/// The chain's last event as two columns, `seq` and `hash` (both NULL for an empty chain), to
/// add to a statement the transaction runs anyway (the fence check, an `UPDATE … RETURNING`),
/// so that it learns its head without a query of its own; read them with [`last_event_of`].
pub(crate) const LAST_EVENT_COLUMNS: &str = "\
    (SELECT seq FROM audit_events ORDER BY seq DESC LIMIT 1) AS seq, \
    (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS hash";

/// Masks passwords in every string of a JSON value (keys included), keeping its structure.
fn redact_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        J::String(s) => J::String(backfill_core::secret::redact(&s)),
        J::Array(items) => J::Array(items.into_iter().map(redact_json).collect()),
        J::Object(map) => J::Object(
            map.into_iter()
                .map(|(k, v)| (backfill_core::secret::redact(&k), redact_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The hex blake3 hash of an event's canonical encoding: each field is a presence byte and,
/// when present, its length (u64 little-endian) and bytes, so no two events encode alike.
#[allow(clippy::too_many_arguments)]
fn event_hash(
    seq: i64,
    run_id: Option<&str>,
    partition_id: Option<&str>,
    at: &str,
    actor: &str,
    action: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"backfill.audit.v1");
    let seq = seq.to_string();
    let fields = [
        Some(seq.as_str()),
        run_id,
        partition_id,
        Some(at),
        Some(actor),
        Some(action),
        Some(detail),
        Some(prev_hash),
    ];
    for field in fields {
        match field {
            None => {
                hasher.update(&[0]);
            }
            Some(text) => {
                hasher.update(&[1]);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// An event as stored, before its text columns are parsed.
struct RawEvent {
    seq: i64,
    run_id: Option<String>,
    partition_id: Option<String>,
    at: String,
    actor: String,
    action: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl RawEvent {
    fn from_row(row: &DbRow) -> Result<RawEvent, StoreError> {
        Ok(RawEvent {
            seq: row.try_get("seq")?,
            run_id: row.try_get("run_id")?,
            partition_id: row.try_get("partition_id")?,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            detail: row.try_get("detail")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    fn recomputed_hash(&self) -> String {
        event_hash(
            self.seq,
            self.run_id.as_deref(),
            self.partition_id.as_deref(),
            &self.at,
            &self.actor,
            &self.action,
            &self.detail,
            &self.prev_hash,
        )
    }

    fn parse(self) -> Result<AuditEvent, StoreError> {
        let detail = serde_json::from_str(&self.detail).map_err(|e| {
            StoreError::Corrupt(format!("audit event {} has bad detail: {e}", self.seq))
        })?;
        Ok(AuditEvent {
            seq: self.seq,
            at: codec::parse_time(&self.at, "audit event time")?,
            run_id: self.run_id,
            partition_id: self.partition_id,
            actor: self.actor,
            action: self.action,
            detail,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

const EVENT_COLUMNS: &str = "SELECT seq, run_id, partition_id, at, actor, action, detail, prev_hash, hash \
     FROM audit_events";

impl Store {
    /// The audit events of one run (exact run id), or of the whole store, in chain order.
    pub async fn audit_events(&self, run_id: Option<&str>) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = match run_id {
            Some(run_id) => {
                stmt(format!("{EVENT_COLUMNS} WHERE run_id = ? ORDER BY seq"))
                    .bind(run_id)
                    .fetch_all(&mut self.conn().await?)
                    .await?
            }
            None => {
                stmt(format!("{EVENT_COLUMNS} ORDER BY seq"))
                    .fetch_all(&mut self.conn().await?)
                    .await?
            }
        };
        rows.iter()
            .map(|row| RawEvent::from_row(row)?.parse())
            .collect()
    }

    /// Audit events of run `run_id` after sequence number `after` (from the first when
    /// `None`), at most `limit`, in chain order: keyset pages on `(run_id, seq)`.
    pub async fn audit_page(
        &self,
        run_id: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let query = stmt(format!(
            "{EVENT_COLUMNS} WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(run_id)
        .bind(after.unwrap_or(0))
        .bind(codec::to_db(limit as u64));
        self.events(query).await
    }

    /// The run-level audit events of run `run_id` (those about no single partition: created,
    /// started, paused, throttled, approved, resumed, finished…), at most `limit`, in chain
    /// order: a run's timeline without its per-partition events.
    pub async fn run_events(
        &self,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let query = stmt(format!(
            "{EVENT_COLUMNS} WHERE run_id = ? AND partition_id IS NULL ORDER BY seq LIMIT ?"
        ))
        .bind(run_id)
        .bind(codec::to_db(limit as u64));
        self.events(query).await
    }

    /// The events a query of [`EVENT_COLUMNS`] reads.
    async fn events(&self, query: crate::db::Stmt) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = query.fetch_all(&mut self.conn().await?).await?;
        rows.iter()
            .map(|row| RawEvent::from_row(row)?.parse())
            .collect()
    }

    /// The sequence number of the store's last audit event, 0 without any: the number of
    /// events of an intact chain, read from the key's index (no scan), for metrics.
    pub async fn audit_event_count(&self) -> Result<u64, StoreError> {
        let row = stmt("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(match row {
            Some(row) => codec::from_db(row.try_get::<i64, _>(0)?),
            None => 0,
        })
    }

    /// Recomputes the whole chain and reports the first event that does not match: an edited
    /// event fails its own hash, a removed or moved event breaks the link of the next one.
    /// A chain that does not end at the anchored head (its tail removed) fails at the first
    /// missing event.
    pub async fn verify_audit(&self) -> Result<AuditCheck, StoreError> {
        let mut conn = self.conn().await?;
        let rows = stmt(format!("{EVENT_COLUMNS} ORDER BY seq"))
            .fetch_all(&mut conn)
            .await?;
        let anchor = crate::anchor::head(&mut conn).await?;
        drop(conn);
        let mut expected_prev = GENESIS.to_owned();
        for (expected_seq, row) in (1i64..).zip(&rows) {
            let event = RawEvent::from_row(row)?;
            let problem = if event.seq != expected_seq {
                Some(format!(
                    "expected event {expected_seq}, found {} (events removed?)",
                    event.seq
                ))
            } else if event.prev_hash != expected_prev {
                Some("does not link to the previous event (removed or reordered?)".to_owned())
            } else if event.recomputed_hash() != event.hash {
                Some("its content does not match its hash (edited?)".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Ok(AuditCheck {
                    events: rows.len() as u64,
                    first_bad_seq: Some(event.seq),
                    problem: Some(problem),
                });
            }
            expected_prev = event.hash;
        }
        let last = rows.len() as i64;
        let tail = crate::anchor::check_tail(
            (last > 0).then_some((last, expected_prev.as_str())),
            anchor.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
        );
        Ok(AuditCheck {
            events: rows.len() as u64,
            first_bad_seq: tail.as_ref().map(|(seq, _)| *seq),
            problem: tail.map(|(_, problem)| problem),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_fields_and_absence() {
        let h = |run: Option<&str>, part: Option<&str>| {
            event_hash(1, run, part, "t", "a", "x", "{}", GENESIS)
        };
        assert_ne!(h(Some("ab"), Some("c")), h(Some("a"), Some("bc")));
        assert_ne!(h(None, Some("")), h(Some(""), None));
        assert_eq!(h(None, None).len(), 64);
    }

    #[test]
    fn json_details_are_redacted_in_place() {
        let detail = serde_json::json!({
            "error": "connect postgres://u:hunter2@h/db failed",
            "nested": ["password=s3cret", 3],
        });
        let text = redact_json(detail).to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("\"nested\":[\"password=***\",3]"), "{text}");
    }
}
