//! Runs: creation with their partitions, lookup, and run state transitions.
//!
//! A run and all its partitions are created in one transaction with the `run.created` event,
//! so a crash never leaves a run with half a plan. Run state changes are checked against
//! [`RunState::can_move_to`] on the stored state, under the write lock.

use crate::db::{Arg, DbRow, Dialect, WriteTxn, stmt};
use crate::{Store, StoreError, audit, codec};
use backfill_core::{Guarantee, Partition, Plan, RunState};
use chrono::{DateTime, Utc};
use serde_json::json;

/// What is needed to create a run.
#[derive(Clone, Copy, Debug)]
pub struct NewRun<'a> {
    /// The spec's `name`; runs of the same name are resumed rather than duplicated.
    pub spec_name: &'a str,
    /// Hash of the spec file, to tell whether a resumed run still matches the spec.
    pub spec_hash: &'a str,
    /// Hash of the plan (the partitions), to tell whether a re-plan agrees.
    pub plan_hash: &'a str,
    /// The normalised spec the plan hash covers (`NormalizedSpec::to_json`, no password), so
    /// a refused resume can name the fields that changed.
    pub normalized_spec: &'a str,
    /// The spec text, already redacted by the caller; stored for the audit trail.
    pub spec_text: &'a str,
    /// Who started the run (`user@host`).
    pub owner: &'a str,
    /// Why (the spec's or the command line's reason).
    pub reason: &'a str,
    /// The plan; every partition is stored `pending`, read from it a chunk at a time.
    pub partitions: &'a dyn PartitionSource,
    /// What a crash can do to the target (decided by the caller from the mode and whether
    /// the target is this store's database).
    pub guarantee: Guarantee,
    /// Whether the run keeps an undo log (the spec's `target.undo`, its default applied):
    /// recorded so that a resumed run keeps the setting it began with.
    pub undo_log: bool,
}

/// The partitions a new run is created with, read once, in plan order, as they are inserted:
/// a plan of a million partitions never has to be in memory at once.
pub trait PartitionSource: Sync {
    /// How many partitions [`Self::partitions`] yields.
    fn count(&self) -> usize;
    /// Every partition, in plan order (indexes from 0).
    fn partitions(&self) -> Box<dyn Iterator<Item = Partition> + Send + '_>;
}

impl PartitionSource for Plan {
    fn count(&self) -> usize {
        self.len()
    }
    fn partitions(&self) -> Box<dyn Iterator<Item = Partition> + Send + '_> {
        Box::new(Plan::partitions(self))
    }
}

impl PartitionSource for Vec<Partition> {
    fn count(&self) -> usize {
        self.len()
    }
    fn partitions(&self) -> Box<dyn Iterator<Item = Partition> + Send + '_> {
        Box::new(self.iter().cloned())
    }
}

impl PartitionSource for &[Partition] {
    fn count(&self) -> usize {
        self.len()
    }
    fn partitions(&self) -> Box<dyn Iterator<Item = Partition> + Send + '_> {
        Box::new(self.iter().cloned())
    }
}

impl std::fmt::Debug for dyn PartitionSource + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} partitions", self.count())
    }
}

/// A stored run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// UUIDv7 in lower-case hyphenated text; sorts by creation time.
    pub id: String,
    /// The spec's `name`.
    pub spec_name: String,
    /// Hash of the spec at creation.
    pub spec_hash: String,
    /// Hash of the plan at creation.
    pub plan_hash: String,
    /// The redacted spec text at creation.
    pub spec_text: String,
    /// The normalised spec its plan hash covers; `None` for runs created before it was
    /// stored (schema 7 and older).
    pub normalized_spec: Option<String>,
    /// Who started it.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// Current state.
    pub state: RunState,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
    /// When it first went `running`.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last reached a terminal state; cleared when reopened.
    pub finished_at: Option<DateTime<Utc>>,
    /// Number of partitions of its plan.
    pub partitions_total: u64,
    /// Its delivery guarantee; `None` for runs created before guarantees were recorded.
    pub guarantee: Option<Guarantee>,
    /// Why it is paused (`user`, `budget_exhausted`, `circuit_open`, `outside_window`,
    /// `stopped`); `None` unless it is `paused`.
    pub pause_reason: Option<String>,
    /// Whether it keeps an undo log, as decided when it was created; `None` for runs created
    /// before it was recorded (schema 14 and older).
    pub undo_log: Option<bool>,
}

impl RunRecord {
    /// Whether the run keeps an undo log: as recorded when it was created, else (a run created
    /// before that was recorded) as its spec says now (`spec_undo`).
    pub fn keeps_undo(&self, spec_undo: bool) -> bool {
        self.undo_log.unwrap_or(spec_undo)
    }
}

const RUN_COLUMNS: &str = "SELECT id, spec_name, spec_hash, plan_hash, spec_text, \
     normalized_spec, owner, reason, state, created_at, updated_at, started_at, finished_at, partitions_total, guarantee, pause_reason, undo_log FROM runs";

/// Newest first; the UUIDv7 id breaks ties within one microsecond.
const NEWEST_FIRST: &str = "ORDER BY created_at DESC, id DESC";

/// Partitions per multi-row INSERT: 6 parameters each stays far below SQLite's 32766 and
/// PostgreSQL's 65535 limits.
const INSERT_CHUNK: usize = 500;

/// Partitions per `INSERT` on PostgreSQL, sent as one JSON parameter (about 1 MB).
const PG_INSERT_CHUNK: usize = 10_000;

/// Partitions above which creating a run on SQLite enlarges the page cache for the insert.
const LARGE_INSERT: usize = 50_000;

/// The page cache of that insert, in KiB (SQLite's default is 2,000).
const LARGE_INSERT_CACHE_KIB: u32 = 65_536;

fn run_from_row(row: &DbRow) -> Result<RunRecord, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(RunRecord {
        id: row.try_get("id")?,
        spec_name: row.try_get("spec_name")?,
        spec_hash: row.try_get("spec_hash")?,
        plan_hash: row.try_get("plan_hash")?,
        spec_text: row.try_get("spec_text")?,
        normalized_spec: row.try_get("normalized_spec")?,
        owner: row.try_get("owner")?,
        reason: row.try_get("reason")?,
        state: state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))?,
        created_at: codec::parse_time(&row.try_get::<String, _>("created_at")?, "created_at")?,
        updated_at: codec::parse_time(&row.try_get::<String, _>("updated_at")?, "updated_at")?,
        started_at: codec::parse_opt_time(row.try_get("started_at")?, "started_at")?,
        finished_at: codec::parse_opt_time(row.try_get("finished_at")?, "finished_at")?,
        partitions_total: codec::from_db(row.try_get("partitions_total")?),
        guarantee: match row.try_get::<Option<String>, _>("guarantee")? {
            None => None,
            Some(name) => {
                Some(Guarantee::from_name(&name).ok_or_else(|| {
                    StoreError::Corrupt(format!("run guarantee: unknown `{name}`"))
                })?)
            }
        },
        pause_reason: row.try_get("pause_reason")?,
        undo_log: row.try_get::<Option<i64>, _>("undo_log")?.map(|v| v != 0),
    })
}

async fn insert_partitions(
    tx: &mut WriteTxn,
    run_id: &str,
    partitions: &dyn PartitionSource,
) -> Result<(), StoreError> {
    // SQLite, for a large run only (then the default again): the primary key
    // (run_id, partition_id) takes ids in hash order, so at a million rows its pages no longer
    // fit the default 2 MB page cache and inserts read pages back. (Statement journals stay
    // in memory: `temp_store` in `open_sqlite`.) PostgreSQL needs no such help.
    let large = tx.dialect() == Dialect::Sqlite && partitions.count() > LARGE_INSERT;
    if large {
        stmt(format!("PRAGMA cache_size = -{LARGE_INSERT_CACHE_KIB}"))
            .execute(tx)
            .await?;
    }
    let size = match tx.dialect() {
        Dialect::Sqlite => INSERT_CHUNK,
        Dialect::Postgres => PG_INSERT_CHUNK,
    };
    let mut source = partitions.partitions();
    let mut chunk: Vec<Partition> = Vec::with_capacity(size);
    loop {
        chunk.clear();
        chunk.extend(source.by_ref().take(size));
        if chunk.is_empty() {
            break;
        }
        match tx.dialect() {
            Dialect::Sqlite => insert_chunk(tx, run_id, &chunk).await?,
            Dialect::Postgres => insert_chunk_pg(tx, run_id, &chunk).await?,
        }
    }
    if large {
        stmt("PRAGMA cache_size = -2000").execute(tx).await?;
    }
    Ok(())
}

/// One multi-row `INSERT` of `chunk`, every partition `pending`. `OR FAIL`: a failing row
/// stops the statement without undoing its earlier rows, so SQLite keeps no statement journal
/// for it (when foreign keys are not checked either, see `Store::begin_write_bulk`); the
/// caller's transaction, never committed after an error, undoes them all.
async fn insert_chunk(
    tx: &mut WriteTxn,
    run_id: &str,
    chunk: &[Partition],
) -> Result<(), StoreError> {
    let mut sql = String::from(
        "INSERT OR FAIL INTO partitions \
         (run_id, partition_id, idx, window_kind, window_start, window_end, state) VALUES ",
    );
    for i in 0..chunk.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, 'pending')");
    }
    let mut query = stmt(sql);
    for p in chunk {
        let (kind, start, end) = codec::window_columns(&p.window);
        query = query
            .bind(run_id)
            .bind(&p.id)
            .bind(codec::to_db(p.index as u64))
            .bind(kind)
            .bind(Arg::Text(Some(start)))
            .bind(Arg::Text(Some(end)));
    }
    query.execute(tx).await?;
    Ok(())
}

/// PostgreSQL: the chunk as one JSON parameter, unpacked by `json_to_recordset`. A multi-row
/// `VALUES` needs six parameters a row, so at most about 10,000 rows a statement, each parsed
/// and planned anew; one parameter of text carries any number of rows.
async fn insert_chunk_pg(
    tx: &mut WriteTxn,
    run_id: &str,
    chunk: &[Partition],
) -> Result<(), StoreError> {
    let rows: Vec<serde_json::Value> = chunk
        .iter()
        .map(|p| {
            let (kind, start, end) = codec::window_columns(&p.window);
            json!({ "i": p.id, "x": p.index, "k": kind, "s": start, "e": end })
        })
        .collect();
    stmt(
        "INSERT INTO partitions \
         (run_id, partition_id, idx, window_kind, window_start, window_end, state) \
         SELECT ?, r.i, r.x, r.k, r.s, r.e, 'pending' \
         FROM json_to_recordset(?::json) AS r(i text, x bigint, k text, s text, e text)",
    )
    .bind(run_id)
    .bind(Arg::Text(Some(serde_json::Value::Array(rows).to_string())))
    .execute(tx)
    .await?;
    Ok(())
}

/// Run `run_id`, its row locked until `tx` ends (PostgreSQL; SQLite's write transaction
/// already excludes every other writer).
async fn fetch_run(tx: &mut WriteTxn, run_id: &str) -> Result<RunRecord, StoreError> {
    let lock = tx.dialect().for_update();
    let row = stmt(format!("{RUN_COLUMNS} WHERE id = ?{lock}"))
        .bind(run_id)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no run matches `{run_id}`")))?;
    run_from_row(&row)
}

/// Inserts a new run (state `planned`), its partitions and its `run.created` event in `tx`.
async fn insert_run(tx: &mut WriteTxn, new: &NewRun<'_>) -> Result<RunRecord, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = codec::now();
    stmt(
        "INSERT INTO runs (id, spec_name, spec_hash, plan_hash, spec_text, normalized_spec, \
         owner, reason, state, created_at, updated_at, partitions_total, guarantee, undo_log) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(new.spec_name)
    .bind(new.spec_hash)
    .bind(new.plan_hash)
    .bind(new.spec_text)
    .bind(new.normalized_spec)
    .bind(new.owner)
    .bind(new.reason)
    .bind(RunState::Planned.as_str())
    .bind(&now)
    .bind(&now)
    .bind(codec::to_db(new.partitions.count() as u64))
    .bind(new.guarantee.name())
    .bind(i64::from(new.undo_log))
    .execute(tx)
    .await?;
    insert_partitions(tx, &id, new.partitions).await?;
    audit::append(
        tx,
        Some(&id),
        None,
        new.owner,
        "run.created",
        json!({
            "spec_name": new.spec_name,
            "spec_hash": new.spec_hash,
            "plan_hash": new.plan_hash,
            "reason": new.reason,
            "partitions": new.partitions.count(),
            "guarantee": new.guarantee.name(),
            "undo_log": new.undo_log,
        }),
    )
    .await?;
    fetch_run(tx, &id).await
}

impl Store {
    /// The write transaction that creates `new`: without foreign-key checks on SQLite for a
    /// large run (see [`Store::begin_write_bulk`]; its rows' keys are the run it inserts).
    async fn begin_create(&self, new: &NewRun<'_>) -> Result<WriteTxn, StoreError> {
        if new.partitions.count() > LARGE_INSERT {
            self.begin_write_bulk().await
        } else {
            self.begin_write().await
        }
    }

    /// Creates a run in state `planned` with every partition `pending`, and its `run.created`
    /// audit event, atomically: either all of it exists afterwards or none of it.
    pub async fn create_run(&self, new: NewRun<'_>) -> Result<RunRecord, StoreError> {
        let mut tx = self.begin_create(&new).await?;
        let run = insert_run(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// The unfinished run of `new.spec_name` if there is one (`Ok((run, false))`), else a new
    /// run created as by [`Store::create_run`] (`Ok((run, true))`). The look-up and the
    /// insert are one serialised write transaction, so processes starting the same spec at
    /// the same moment all get the same run: a spec never has two unfinished runs this way.
    pub async fn find_or_create_run(
        &self,
        new: NewRun<'_>,
    ) -> Result<(RunRecord, bool), StoreError> {
        let mut tx = self.begin_create(&new).await?;
        let found = stmt(format!(
            "{RUN_COLUMNS} WHERE spec_name = ? AND state IN ('planned', 'running', 'paused', 'awaiting_approval') \
             {NEWEST_FIRST} LIMIT 1"
        ))
        .bind(new.spec_name)
        .fetch_optional(&mut tx)
        .await?;
        if let Some(row) = found {
            return Ok((run_from_row(&row)?, false));
        }
        let run = insert_run(&mut tx, &new).await?;
        tx.commit().await?;
        Ok((run, true))
    }

    /// The newest run of `spec_name` that is `planned`, `running` or `paused`: the one a new
    /// `run` of the same spec must resume instead of starting another.
    pub async fn find_unfinished_run(
        &self,
        spec_name: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        let row = stmt(format!(
            "{RUN_COLUMNS} WHERE spec_name = ? AND state IN ('planned', 'running', 'paused', 'awaiting_approval') \
             {NEWEST_FIRST} LIMIT 1"
        ))
        .bind(spec_name)
        .fetch_optional(&mut self.conn().await?)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The run whose id is `id_or_prefix`, or the only run whose id starts with it (at least 4
    /// characters). [`StoreError::NotFound`] when none matches, [`StoreError::Ambiguous`]
    /// when several do.
    pub async fn get_run(&self, id_or_prefix: &str) -> Result<RunRecord, StoreError> {
        let wanted = id_or_prefix.trim().to_ascii_lowercase();
        let exact = stmt(format!("{RUN_COLUMNS} WHERE id = ?"))
            .bind(&wanted)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        if let Some(row) = exact {
            return run_from_row(&row);
        }
        if wanted.chars().count() < 4 {
            return Err(StoreError::NotFound(format!(
                "no run matches `{id_or_prefix}` (give at least 4 characters of a run id)"
            )));
        }
        // substr rather than LIKE, so `%` or `_` in the input match only themselves.
        let rows = stmt(format!(
            "{RUN_COLUMNS} WHERE substr(id, 1, length(?)) = ? {NEWEST_FIRST} LIMIT 5"
        ))
        .bind(&wanted)
        .bind(&wanted)
        .fetch_all(&mut self.conn().await?)
        .await?;
        match rows.as_slice() {
            [] => Err(StoreError::NotFound(format!(
                "no run matches `{id_or_prefix}`"
            ))),
            [row] => run_from_row(row),
            several => {
                let ids: Vec<String> = several
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>("id").ok())
                    .collect();
                Err(StoreError::Ambiguous(format!(
                    "`{id_or_prefix}` matches several runs ({}{}); give more characters",
                    ids.join(", "),
                    if several.len() == 5 { ", …" } else { "" }
                )))
            }
        }
    }

    /// The most recently created run, if any.
    pub async fn latest_run(&self) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.list_runs(1).await?.into_iter().next())
    }

    /// Up to `limit` runs, newest first.
    pub async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let rows = stmt(format!("{RUN_COLUMNS} {NEWEST_FIRST} LIMIT ?"))
            .bind(i64::from(limit))
            .fetch_all(&mut self.conn().await?)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Moves run `run_id` (exact id) to `to` if [`RunState::can_move_to`] allows it from its
    /// stored state, else [`StoreError::IllegalTransition`] with nothing changed. Sets
    /// `started_at` on the first `running`, `finished_at` on a terminal state (cleared when a
    /// finished run is reopened), and appends `run.<state>` with `detail` (plus `from`, the
    /// previous state, when `detail` is an object or null), all in one transaction. A move to
    /// `paused` records `detail["pause_reason"]` (default `stopped`) as the run's pause
    /// reason; any other move clears it.
    pub async fn set_run_state(
        &self,
        run_id: &str,
        to: RunState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let from = fetch_run(&mut tx, run_id).await?.state;
        if !from.can_move_to(to) {
            return Err(StoreError::IllegalTransition {
                what: format!("run {run_id}"),
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        let terminal = matches!(
            to,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        );
        let now = codec::now();
        let pause_reason = (to == RunState::Paused).then(|| {
            detail
                .get("pause_reason")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("stopped")
                .to_owned()
        });
        stmt(
            "UPDATE runs SET state = ?, updated_at = ?, pause_reason = ?, \
             started_at = CASE WHEN ? AND started_at IS NULL THEN ? ELSE started_at END, \
             finished_at = CASE WHEN ? THEN ? ELSE NULL END \
             WHERE id = ?",
        )
        .bind(to.as_str())
        .bind(&now)
        .bind(pause_reason.as_deref())
        .bind(to == RunState::Running)
        .bind(&now)
        .bind(terminal)
        .bind(&now)
        .bind(run_id)
        .execute(&mut tx)
        .await?;
        // Record where the run came from, unless the caller already said.
        let detail = match detail {
            serde_json::Value::Null => json!({ "from": from.as_str() }),
            serde_json::Value::Object(mut map) => {
                map.entry("from").or_insert_with(|| json!(from.as_str()));
                serde_json::Value::Object(map)
            }
            other => other,
        };
        audit::append(
            &mut tx,
            Some(run_id),
            None,
            actor,
            &format!("run.{to}"),
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
