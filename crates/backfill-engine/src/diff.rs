//! `diff` and `gaps`: what a run of a spec would change in its target, computed without
//! writing anything.
//!
//! Owns: comparing the source (its query, i.e. the rows after the spec's transform) with the
//! target table, partition by partition of the spec's plan, through the fingerprints of
//! `backfill_core::fingerprint` computed inside each database.
//!
//! How:
//! 1. **Fast path.** One `GROUP BY` bucket query per side gives every partition's fingerprint
//!    (`rows, sum, check`) at once: the source query is bound to the whole scope and its rows
//!    bucketed by the window column, the target table likewise. Equal fingerprints mean the
//!    partition is unchanged (all its rows). Between two PostgreSQL databases whose compared
//!    columns print alike ([`Hash::Native`]) this query uses PostgreSQL's own row hash, several
//!    times cheaper; a partition it finds different is fingerprinted again with the portable
//!    hash before it counts (a type's text form may differ where the values do not).
//! 2. **Bisection.** A partition whose fingerprints differ is cut into `slices` adjacent
//!    slices of its range (by the window column), one bucket query per side for all of them;
//!    slices that still differ are cut again, until a slice holds at most `fetch_rows` rows
//!    on both sides (or cannot be cut further); then both sides' rows of that slice are
//!    fetched as canonical texts and compared key by key, column by column.
//!
//! Does not: write anything, open the state store, or run anything for `sql` mode (the
//! statement writes rows of its own making: there is nothing to compare it with).
//!
//! Invariants:
//! - Read-only: every statement is a `SELECT` (see [`backfill_connectors::fingerprint::Db`]).
//! - Counts are exact when the key is unique in the source's result and each row's window
//!   column lies in the window that reads it (the query filters on that column):
//!   `insert + update + unchanged` is the source's row count of the partition, `extra` the
//!   target's rows in the window whose key the source does not return.
//! - A row whose window column moved to another partition is an `insert` in one and an
//!   `extra` in the other, as a run in `replace` mode would treat it.

use std::collections::HashMap;

use backfill_connectors::ConnectorError;
use backfill_connectors::fingerprint::{Buckets, Column, Db, Range, Relation, Scan};
use backfill_core::fingerprint::{Fingerprint, Kind};
use backfill_core::plan::{Partition, Window};
use backfill_core::spec::{Spec, WriteMode};
use backfill_core::value::Value;

/// How a diff is computed. [`Default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// Compare only these columns (the key columns are always compared); when `None`,
    /// every target column the source query returns.
    pub columns: Option<Vec<String>>,
    /// The column (in the source's result and in the target table) whose value places a row
    /// in a partition; when `None`: `replace` mode's `window_column`, else the source's
    /// `time_column`, else a one-column key for key scopes.
    pub window_column: Option<String>,
    /// Differing rows to keep with both sides' values (`--sample`).
    pub sample: usize,
    /// Differing keys listed per partition at most (the counts stay exact).
    pub max_keys: usize,
    /// Slices a differing range is cut into at each level (at least 2).
    pub slices: usize,
    /// A slice with at most this many rows on each side is fetched and compared row by row.
    pub fetch_rows: u64,
    /// Bisect differing partitions down to keys; `false` stops at partition fingerprints
    /// (what `gaps` needs). A partition with one side empty is not bisected when it holds
    /// more than `fetch_rows` rows: its counts are known, its keys are not listed.
    pub bisect: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            columns: None,
            window_column: None,
            sample: 0,
            max_keys: 100,
            slices: 16,
            fetch_rows: 2_000,
            bisect: true,
        }
    }
}

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// `sql` mode: the target's rows are not a function of source rows the engine can read.
    #[error(
        "`diff` compares the source's rows with the target table, but in `sql` mode the \
         statement makes its own rows: there is nothing to compare"
    )]
    SqlMode,
    /// No column says which partition a row belongs to.
    #[error(
        "diff needs the column that places each row in a partition (in the source's result and \
         in the target table): set `source.time_column` in the spec or pass --window-column"
    )]
    NoWindowColumn,
    /// A named column is not in the target table.
    #[error("column \"{column}\" is not a column of the target table {table}")]
    UnknownColumn {
        /// The column named.
        column: String,
        /// The target table.
        table: String,
    },
    /// A compared column cannot be fingerprinted (a float) or not in this database (JSON in
    /// PostgreSQL or MySQL).
    #[error("{message}")]
    Unhashable {
        /// What and why, naming the column.
        message: String,
        /// The column.
        column: String,
    },
    /// The source or target failed.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// The spec cannot be planned.
    #[error("cannot plan the spec: {0}")]
    Plan(#[from] backfill_core::plan::PlanError),
}

/// What a run would do with one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key is in the source, not in the target.
    Insert,
    /// The key is in both and the rows differ.
    Update,
    /// The key is in the target's window, not in the source (a run with deletions would
    /// delete it; today's modes leave it, except `replace`).
    Extra,
}

impl Change {
    /// The name used in output: `insert`, `update`, `extra`.
    pub fn name(self) -> &'static str {
        match self {
            Change::Insert => "insert",
            Change::Update => "update",
            Change::Extra => "extra",
        }
    }
}

/// Rows by what a run would do with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Keys only in the source.
    pub insert: u64,
    /// Keys in both whose rows differ.
    pub update: u64,
    /// Source rows identical in the target.
    pub unchanged: u64,
    /// Keys only in the target's window.
    pub extra: u64,
}

impl ChangeCounts {
    /// Adds `other`.
    pub fn add(&mut self, other: &ChangeCounts) {
        self.insert += other.insert;
        self.update += other.update;
        self.unchanged += other.unchanged;
        self.extra += other.extra;
    }
}

/// One differing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// The key's canonical texts, in key column order.
    pub key: Vec<Option<String>>,
    /// What a run would do.
    pub change: Change,
    /// For an update, the compared columns whose values differ (never a key column).
    pub columns: Vec<String>,
}

/// A differing row with both sides' canonical texts, in [`Diff::columns`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Index of the partition in [`Diff::partitions`].
    pub partition: usize,
    /// The row's key and change.
    pub change: KeyChange,
    /// The source's row (`None` for an extra row).
    pub source: Option<Vec<Option<String>>>,
    /// The target's row (`None` for an insert).
    pub target: Option<Vec<Option<String>>>,
}

/// One partition's comparison.
#[derive(Clone, Debug)]
pub struct PartitionDiff {
    /// The partition of the plan.
    pub partition: Partition,
    /// Its source rows' fingerprint.
    pub source: Fingerprint,
    /// Its target rows' fingerprint.
    pub target: Fingerprint,
    /// Exact counts; `None` when the fingerprints differ and the partition was not bisected.
    pub counts: Option<ChangeCounts>,
    /// Differing keys, at most [`DiffOptions::max_keys`].
    pub keys: Vec<KeyChange>,
    /// True when more keys differ than are listed (or, for a big partition with one side
    /// empty, none is).
    pub keys_truncated: bool,
    /// After bisection: the slices of the window where rows differ, adjacent ones merged, in
    /// order (the whole window when it was not cut); what `run --only-diff` writes. Empty when
    /// unchanged or not bisected.
    pub ranges: Vec<Window>,
}

impl PartitionDiff {
    /// True when both sides hold the same rows.
    pub fn is_unchanged(&self) -> bool {
        self.source == self.target
    }
}

/// The comparison of a spec's source with its target.
#[derive(Clone, Debug)]
pub struct Diff {
    /// The compared columns, in target order (key columns included).
    pub columns: Vec<Column>,
    /// The key columns.
    pub key: Vec<String>,
    /// The column placing rows in partitions.
    pub window_column: String,
    /// One entry per partition of the plan, in plan order.
    pub partitions: Vec<PartitionDiff>,
    /// Up to [`DiffOptions::sample`] differing rows, both sides.
    pub samples: Vec<Sample>,
    /// Rows fetched and compared one by one (both sides), after the fingerprints.
    pub rows_fetched: u64,
    /// Fingerprint queries run (both sides).
    pub queries: u64,
    /// The fast path used the databases' own row hash ([`Hash::Native`]) rather than the
    /// portable fingerprint.
    pub native: bool,
}

impl Diff {
    /// Sum of the partitions' counts (partitions without counts are left out).
    pub fn totals(&self) -> ChangeCounts {
        let mut total = ChangeCounts::default();
        for p in &self.partitions {
            if let Some(c) = &p.counts {
                total.add(c);
            }
        }
        total
    }
}

/// Progress of a diff, for a bar or log lines.
#[derive(Clone, Copy, Debug)]
pub enum DiffProgress {
    /// The fingerprint queries of all partitions are running.
    Fingerprinting {
        /// Partitions of the plan.
        partitions: usize,
    },
    /// Fingerprints compared: `differing` partitions will be bisected.
    Compared {
        /// Partitions whose fingerprints differ.
        differing: usize,
    },
    /// One differing partition was bisected down to keys.
    Bisected {
        /// Partitions bisected so far.
        done: usize,
        /// Partitions to bisect.
        of: usize,
    },
}

/// Which row hash a fingerprint query uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    /// `backfill_core::fingerprint`'s: the same values hash alike in every database and in
    /// the engine. What reconciliation records.
    Portable,
    /// The database's own (PostgreSQL on both sides, columns of comparable types; see
    /// [`backfill_connectors::fingerprint::native_comparable`]): several times cheaper per
    /// row. Equal means equal; a difference may be one of presentation only (a type's text
    /// form), so it is checked again with [`Hash::Portable`] before it counts.
    Native,
}

/// Both sides opened, and what is compared.
pub(crate) struct Sides {
    source: Db,
    target: Db,
    query: String,
    table: String,
    source_format: backfill_core::timefmt::TimeFormat,
    target_format: backfill_core::timefmt::TimeFormat,
    columns: Vec<Column>,
    key_positions: Vec<usize>,
    window_column: String,
    /// [`Hash::Native`] compares these sides.
    native: bool,
}

/// Compares the source of `spec` with its target, partition by partition, without writing.
///
/// Errors: [`DiffError::SqlMode`] in `sql` mode; a clear error naming the column when a
/// compared column cannot be fingerprinted; connector errors as they come.
pub async fn diff(
    spec: &Spec,
    options: &DiffOptions,
    progress: &mut dyn FnMut(DiffProgress),
) -> Result<Diff, DiffError> {
    let plan = backfill_core::plan::plan(spec)?;
    let sides = open(spec, options).await?;
    // The result holds one entry per partition anyway, so the list is collected here.
    let partitions: Vec<Partition> = plan.partitions().collect();
    let result = compare(&sides, &partitions, options, progress).await;
    sides.source.close().await;
    sides.target.close().await;
    result
}

/// Opens both databases and decides the compared columns and the window column.
pub(crate) async fn open(spec: &Spec, options: &DiffOptions) -> Result<Sides, DiffError> {
    let (Some(source), Some(table)) = (&spec.source, &spec.target.table) else {
        return Err(DiffError::SqlMode);
    };
    if matches!(spec.target.mode, WriteMode::Sql { .. }) {
        return Err(DiffError::SqlMode);
    }
    let window_column = window_column(spec, options)?;
    let target = Db::open(&spec.target.url, 2, true).await?;
    let catalog = match target.catalog(table).await {
        Ok(c) => c,
        Err(e) => {
            target.close().await;
            return Err(e.into());
        }
    };
    let source_db = match Db::open(&source.url, 2, false).await {
        Ok(db) => db,
        Err(e) => {
            target.close().await;
            return Err(e.into());
        }
    };
    // By default the target's columns the source writes: the others (a load time, a
    // column filled by another job) were never the backfill's to make equal. When the query
    // cannot be described, every column (the fingerprint query then names the problem).
    let returned = match &options.columns {
        None => source_db.query_columns(&source.query).await.ok(),
        Some(_) => None,
    };
    let columns = match compared_columns(
        &catalog,
        &target,
        &source_db,
        table,
        &spec.target.key,
        options,
        returned.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            target.close().await;
            source_db.close().await;
            return Err(e);
        }
    };
    let key_positions = spec
        .target
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    let native = backfill_connectors::fingerprint::native_comparable(
        &source_db,
        &source.query,
        &target,
        &catalog,
        &columns,
    )
    .await;
    Ok(Sides {
        source: source_db,
        target,
        query: source.query.clone(),
        table: table.clone(),
        source_format: source.time_format.clone(),
        target_format: spec.target.time_format.clone(),
        columns,
        key_positions,
        window_column,
        native,
    })
}

/// The window column: the option, `replace`'s, the source's `time_column`, or a one-column
/// key of a key scope.
fn window_column(spec: &Spec, options: &DiffOptions) -> Result<String, DiffError> {
    if let Some(c) = &options.window_column {
        return Ok(c.clone());
    }
    if let WriteMode::Replace { window_column } = &spec.target.mode {
        return Ok(window_column.clone());
    }
    if let Some(c) = spec.source.as_ref().and_then(|s| s.time_column.clone()) {
        return Ok(c);
    }
    match (&spec.scope, spec.target.key.as_slice()) {
        (backfill_core::plan::Scope::Key { .. }, [one]) => Ok(one.clone()),
        _ => Err(DiffError::NoWindowColumn),
    }
}

/// The compared columns in target order (`catalog`, the target table's): every target
/// column the source query returns (`returned`, matched as the sink matches them: exactly,
/// else ignoring ASCII case; every target column when `None`), or the key plus `--columns`;
/// refused when one has no fingerprint (in general, or in one of the two databases).
fn compared_columns(
    catalog: &[backfill_connectors::fingerprint::Catalogued],
    target: &Db,
    source: &Db,
    table: &str,
    key: &[String],
    options: &DiffOptions,
    returned: Option<&[String]>,
) -> Result<Vec<Column>, DiffError> {
    if let Some(wanted) = &options.columns {
        for name in wanted.iter().chain(key) {
            if !catalog.iter().any(|c| &c.name == name) {
                return Err(DiffError::UnknownColumn {
                    column: name.clone(),
                    table: table.to_owned(),
                });
            }
        }
    }
    let mut columns = Vec::new();
    for c in catalog {
        let chosen = match &options.columns {
            Some(w) => w.contains(&c.name) || key.contains(&c.name),
            None => returned.is_none_or(|r| {
                r.iter()
                    .any(|n| n == &c.name || n.eq_ignore_ascii_case(&c.name))
            }),
        };
        if !chosen {
            continue;
        }
        let column = c.column().map_err(|e| DiffError::Unhashable {
            message: e.to_string().replace(
                "leave it out of the checksum columns",
                "compare the other columns with --columns",
            ),
            column: c.name.clone(),
        })?;
        for db in [target, source] {
            if column.kind == Kind::Json && !matches!(db, Db::Sqlite(_)) {
                return Err(DiffError::Unhashable {
                    message: format!(
                        "column \"{}\" is JSON, which {} cannot canonicalise in SQL, so diff \
                         cannot fingerprint it there; compare the other columns with --columns",
                        c.name,
                        db.system()
                    ),
                    column: c.name.clone(),
                });
            }
        }
        columns.push(column);
    }
    Ok(columns)
}

/// Fast path over all partitions, then bisection of those that differ.
async fn compare(
    sides: &Sides,
    partitions: &[Partition],
    options: &DiffOptions,
    progress: &mut dyn FnMut(DiffProgress),
) -> Result<Diff, DiffError> {
    let mut diff = Diff {
        columns: sides.columns.clone(),
        key: sides
            .key_positions
            .iter()
            .map(|&i| sides.columns[i].name.clone())
            .collect(),
        window_column: sides.window_column.clone(),
        partitions: Vec::with_capacity(partitions.len()),
        samples: Vec::new(),
        rows_fetched: 0,
        queries: 0,
        native: sides.native,
    };
    if partitions.is_empty() {
        return Ok(diff);
    }
    progress(DiffProgress::Fingerprinting {
        partitions: partitions.len(),
    });
    let windows: Vec<Window> = partitions.iter().map(|p| p.window).collect();
    let hash = sides.fast_hash();
    let (mut source_fps, mut target_fps) =
        fingerprints(sides, &hull(&windows), &windows, hash).await?;
    diff.queries += 2;
    if hash == Hash::Native {
        diff.queries += recheck(sides, &windows, &mut source_fps, &mut target_fps).await?;
    }
    for (i, p) in partitions.iter().enumerate() {
        let (source, target) = (source_fps[i], target_fps[i]);
        let counts = (source == target).then_some(ChangeCounts {
            unchanged: source.rows,
            ..ChangeCounts::default()
        });
        diff.partitions.push(PartitionDiff {
            partition: p.clone(),
            source,
            target,
            counts,
            keys: Vec::new(),
            keys_truncated: false,
            ranges: Vec::new(),
        });
    }
    let differing: Vec<usize> = (0..partitions.len())
        .filter(|&i| !diff.partitions[i].is_unchanged())
        .collect();
    progress(DiffProgress::Compared {
        differing: differing.len(),
    });
    if !options.bisect {
        return Ok(diff);
    }
    for (done, &i) in differing.iter().enumerate() {
        bisect_partition(sides, &mut diff, i, options).await?;
        progress(DiffProgress::Bisected {
            done: done + 1,
            of: differing.len(),
        });
    }
    Ok(diff)
}

/// Windows whose native fingerprints differ, fingerprinted again with [`Hash::Portable`]
/// (their fingerprints replaced), so a difference of presentation only is not reported.
/// Windows whose row counts differ differ anyway (counts are exact): they keep their native
/// fingerprints, which only their counts and their inequality are read from.
/// A few are checked one by one (each reads its own window, through the window column's
/// index where there is one); many at once in one bucket query per side. Returns the
/// queries run.
async fn recheck(
    sides: &Sides,
    windows: &[Window],
    source: &mut [Fingerprint],
    target: &mut [Fingerprint],
) -> Result<u64, DiffError> {
    const ONE_BY_ONE: usize = 16;
    let differing: Vec<usize> = (0..windows.len())
        .filter(|&i| source[i] != target[i] && source[i].rows == target[i].rows)
        .collect();
    if differing.is_empty() {
        return Ok(0);
    }
    if differing.len() <= ONE_BY_ONE {
        for &i in &differing {
            let (s, t) = fingerprints(sides, &windows[i], &windows[i..=i], Hash::Portable).await?;
            (source[i], target[i]) = (s[0], t[0]);
        }
        return Ok(2 * differing.len() as u64);
    }
    let chosen: Vec<Window> = differing.iter().map(|&i| windows[i]).collect();
    let (s, t) = fingerprints(sides, &hull(&chosen), &chosen, Hash::Portable).await?;
    for (n, &i) in differing.iter().enumerate() {
        (source[i], target[i]) = (s[n], t[n]);
    }
    Ok(2)
}

/// The smallest window covering `windows` (not empty).
fn hull(windows: &[Window]) -> Window {
    let mut out = windows[0];
    for w in &windows[1..] {
        out = match (out, *w) {
            (Window::Time { start, end }, Window::Time { start: s, end: e }) => Window::Time {
                start: start.min(s),
                end: end.max(e),
            },
            (Window::Key { start, end }, Window::Key { start: s, end: e }) => Window::Key {
                start: start.min(s),
                end: end.max(e),
            },
            (a, _) => a,
        };
    }
    out
}

/// Fingerprints of each of `windows` (disjoint, any order) on both sides with `hash`, one
/// bucket query per side; the source's query is bound to `over`, which covers them all.
pub(crate) async fn fingerprints(
    sides: &Sides,
    over: &Window,
    windows: &[Window],
    hash: Hash,
) -> Result<(Vec<Fingerprint>, Vec<Fingerprint>), DiffError> {
    // Adjacent buckets over the sorted windows; gaps between them are buckets of their own,
    // ignored.
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| windows[i]);
    let mut edges: Vec<Window> = Vec::new(); // [start, end) per bucket, in order
    let mut bucket_of = vec![0usize; windows.len()];
    for &i in &order {
        let w = windows[i];
        if let Some(last) = edges.last()
            && end_of(last) != start_of(&w)
        {
            edges.push(between(last, &w));
        }
        bucket_of[i] = edges.len();
        edges.push(w);
    }
    let side = |format: &backfill_core::timefmt::TimeFormat| -> Vec<Value> {
        let mut bounds = Vec::with_capacity(edges.len() + 1);
        for (n, w) in edges.iter().enumerate() {
            let [start, end] = backfill_connectors::fingerprint::window_bounds(w, format);
            if n == 0 {
                bounds.push(start);
            }
            bounds.push(end);
        }
        bounds
    };
    let (sql, params) = backfill_connectors::fingerprint::query_relation(
        &sides.source,
        &sides.query,
        over,
        &sides.source_format,
    )?;
    let source_bounds = side(&sides.source_format);
    let target_bounds = side(&sides.target_format);
    let source_scan = Scan {
        relation: Relation::Query {
            sql: &sql,
            params: &params,
        },
        columns: &sides.columns,
        range: None,
    };
    let target_scan = Scan {
        relation: Relation::Table(&sides.table),
        columns: &sides.columns,
        range: None,
    };
    let source_buckets = Buckets {
        column: &sides.window_column,
        bounds: &source_bounds,
    };
    let target_buckets = Buckets {
        column: &sides.window_column,
        bounds: &target_bounds,
    };
    let (s, t) = tokio::join!(
        bucket_fingerprints(&sides.source, hash, &source_scan, &source_buckets),
        bucket_fingerprints(&sides.target, hash, &target_scan, &target_buckets)
    );
    let (s, t) = (s?, t?);
    Ok((
        bucket_of.iter().map(|&b| s[b]).collect(),
        bucket_of.iter().map(|&b| t[b]).collect(),
    ))
}

/// One side's fingerprints of `buckets` with `hash`.
async fn bucket_fingerprints(
    db: &Db,
    hash: Hash,
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    match hash {
        Hash::Portable => db.fingerprint_buckets(scan, buckets).await,
        Hash::Native => db.native_fingerprint_buckets(scan, buckets).await,
    }
}

fn start_of(w: &Window) -> Window {
    match *w {
        Window::Time { start, .. } => Window::Time { start, end: start },
        Window::Key { start, .. } => Window::Key { start, end: start },
    }
}

fn end_of(w: &Window) -> Window {
    match *w {
        Window::Time { end, .. } => Window::Time { start: end, end },
        Window::Key { end, .. } => Window::Key { start: end, end },
    }
}

/// The gap from the end of `a` to the start of `b`.
fn between(a: &Window, b: &Window) -> Window {
    match (*a, *b) {
        (Window::Time { end, .. }, Window::Time { start, .. }) => Window::Time {
            start: end,
            end: start,
        },
        (Window::Key { end, .. }, Window::Key { start, .. }) => Window::Key {
            start: end,
            end: start,
        },
        (a, _) => a,
    }
}

/// `window` cut into at most `n` adjacent non-empty slices; one slice when it cannot be cut.
fn slices(window: &Window, n: usize) -> Vec<Window> {
    let n = i64::try_from(n.max(2)).unwrap_or(2);
    match *window {
        Window::Key { start, end } => {
            let width = end.saturating_sub(start);
            let parts = n.min(width.max(1));
            (0..parts)
                .map(|i| Window::Key {
                    start: start + width / parts * i + (width % parts).min(i),
                    end: start + width / parts * (i + 1) + (width % parts).min(i + 1),
                })
                .filter(|w| !w.is_empty())
                .collect()
        }
        Window::Time { start, end } => {
            let micros = (end - start).num_microseconds().unwrap_or(i64::MAX);
            let parts = n.min(micros.max(1));
            let at = |i: i64| {
                let offset = micros / parts * i + (micros % parts).min(i);
                start + chrono::Duration::microseconds(offset)
            };
            (0..parts)
                .map(|i| Window::Time {
                    start: at(i),
                    end: if i == parts - 1 { end } else { at(i + 1) },
                })
                .filter(|w| !w.is_empty())
                .collect()
        }
    }
}

/// Bisects partition `index` of `diff` down to keys and fills its counts and keys.
async fn bisect_partition(
    sides: &Sides,
    diff: &mut Diff,
    index: usize,
    options: &DiffOptions,
) -> Result<(), DiffError> {
    let p = &diff.partitions[index];
    let window = p.partition.window;
    let source_rows = p.source.rows;
    // One side empty and too big to list cheaply: the counts are known without a row.
    if (p.source.rows == 0 || p.target.rows == 0)
        && p.source.rows.max(p.target.rows) > options.fetch_rows
    {
        let p = &mut diff.partitions[index];
        p.counts = Some(ChangeCounts {
            insert: p.source.rows,
            extra: p.target.rows,
            ..ChangeCounts::default()
        });
        p.keys_truncated = true;
        p.ranges = vec![window];
        return Ok(());
    }
    let mut pending = vec![(window, p.source, p.target)];
    let mut counts = ChangeCounts::default();
    let mut keys = Vec::new();
    let mut truncated = false;
    let mut ranges: Vec<Window> = Vec::new();
    while let Some((w, s, t)) = pending.pop() {
        let cut = slices(&w, options.slices);
        if s.rows.max(t.rows) <= options.fetch_rows || cut.len() < 2 {
            let rows = compare_rows(sides, &window, &w).await?;
            diff.rows_fetched += rows.fetched;
            if !rows.changes.is_empty() {
                push_range(&mut ranges, w);
            }
            for change in rows.changes {
                match change.change.change {
                    Change::Insert => counts.insert += 1,
                    Change::Update => counts.update += 1,
                    Change::Extra => counts.extra += 1,
                }
                if diff.samples.len() < options.sample {
                    diff.samples.push(Sample {
                        partition: index,
                        ..change.clone()
                    });
                }
                if keys.len() < options.max_keys {
                    keys.push(change.change);
                } else {
                    truncated = true;
                }
            }
            continue;
        }
        // Portable: a partition whose every row differs in print only (`char(4)` against
        // `char(8)`) beside a real change would have every slice differ natively, and be
        // fetched whole. The bisected partitions are few; their slices are small.
        let (sf, tf) = fingerprints(sides, &window, &cut, Hash::Portable).await?;
        diff.queries += 2;
        // Pushed in reverse so slices are visited in key order.
        for i in (0..cut.len()).rev() {
            if sf[i] != tf[i] {
                pending.push((cut[i], sf[i], tf[i]));
            }
        }
    }
    counts.unchanged = source_rows.saturating_sub(counts.insert + counts.update);
    keys.sort_by(|a, b| key_order(&a.key, &b.key));
    let p = &mut diff.partitions[index];
    p.counts = Some(counts);
    p.keys = keys;
    p.keys_truncated = truncated;
    p.ranges = ranges;
    Ok(())
}

/// Appends `w` to `ranges` (visited in order), merged into the last range when adjacent.
fn push_range(ranges: &mut Vec<Window>, w: Window) {
    if let Some(last) = ranges.last_mut()
        && end_of(last) == start_of(&w)
    {
        *last = match (*last, w) {
            (Window::Time { start, .. }, Window::Time { end, .. }) => Window::Time { start, end },
            (Window::Key { start, .. }, Window::Key { end, .. }) => Window::Key { start, end },
            (a, _) => a,
        };
        return;
    }
    ranges.push(w);
}

/// The differing rows of one small slice.
struct SliceRows {
    changes: Vec<Sample>,
    fetched: u64,
}

/// Fetches both sides' rows of `slice` (the source's query bound to `partition`) and
/// compares them key by key.
async fn compare_rows(
    sides: &Sides,
    partition: &Window,
    slice: &Window,
) -> Result<SliceRows, DiffError> {
    let (sql, params) = backfill_connectors::fingerprint::query_relation(
        &sides.source,
        &sides.query,
        partition,
        &sides.source_format,
    )?;
    let [ss, se] = backfill_connectors::fingerprint::window_bounds(slice, &sides.source_format);
    let [ts, te] = backfill_connectors::fingerprint::window_bounds(slice, &sides.target_format);
    let source_scan = Scan {
        relation: Relation::Query {
            sql: &sql,
            params: &params,
        },
        columns: &sides.columns,
        range: Some(Range {
            column: &sides.window_column,
            start: &ss,
            end: &se,
        }),
    };
    let target_scan = Scan {
        relation: Relation::Table(&sides.table),
        columns: &sides.columns,
        range: Some(Range {
            column: &sides.window_column,
            start: &ts,
            end: &te,
        }),
    };
    let (s, t) = tokio::join!(
        sides.source.canonical_rows(&source_scan),
        sides.target.canonical_rows(&target_scan)
    );
    let (s, t) = (s?, t?);
    let fetched = (s.len() + t.len()) as u64;
    Ok(SliceRows {
        changes: changed_rows(&sides.columns, &sides.key_positions, s, t),
        fetched,
    })
}

/// Rows as canonical texts.
type Rows = Vec<Vec<Option<String>>>;

/// The changes between `source` and `target` rows of the same slice, matched by key.
fn changed_rows(
    columns: &[Column],
    key_positions: &[usize],
    source: Rows,
    target: Rows,
) -> Vec<Sample> {
    let key_of = |row: &[Option<String>]| -> Vec<Option<String>> {
        key_positions.iter().map(|&i| row[i].clone()).collect()
    };
    let mut target_by_key: HashMap<Vec<Option<String>>, Vec<Option<String>>> =
        target.into_iter().map(|r| (key_of(&r), r)).collect();
    let mut out = Vec::new();
    for row in source {
        let key = key_of(&row);
        match target_by_key.remove(&key) {
            None => out.push(Sample {
                partition: 0,
                change: KeyChange {
                    key,
                    change: Change::Insert,
                    columns: Vec::new(),
                },
                source: Some(row),
                target: None,
            }),
            Some(other) if other != row => {
                let differing = columns
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| row[*i] != other[*i])
                    .map(|(_, c)| c.name.clone())
                    .collect();
                out.push(Sample {
                    partition: 0,
                    change: KeyChange {
                        key,
                        change: Change::Update,
                        columns: differing,
                    },
                    source: Some(row),
                    target: Some(other),
                });
            }
            Some(_) => {}
        }
    }
    for (key, row) in target_by_key {
        out.push(Sample {
            partition: 0,
            change: KeyChange {
                key,
                change: Change::Extra,
                columns: Vec::new(),
            },
            source: None,
            target: Some(row),
        });
    }
    out.sort_by(|a, b| key_order(&a.change.key, &b.change.key));
    out
}

/// Keys in a natural order: integer parts as numbers (`9` before `10`), others as text.
fn key_order(a: &[Option<String>], b: &[Option<String>]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (x, y) {
            (Some(x), Some(y)) => match (x.parse::<i128>(), y.parse::<i128>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
            _ => x.cmp(y),
        };
        if order.is_ne() {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

impl Sides {
    /// The cheapest row hash that compares these sides: [`Hash::Native`] where it can.
    pub(crate) fn fast_hash(&self) -> Hash {
        if self.native {
            Hash::Native
        } else {
            Hash::Portable
        }
    }

    /// Closes both databases.
    pub(crate) async fn close(&self) {
        self.source.close().await;
        self.target.close().await;
    }

    /// The differing keys of one window whose fingerprints differ (`source`, `target`), by
    /// bisection, at most `options.max_keys` (reconciliation's sample of a mismatch).
    pub(crate) async fn differing_keys(
        &self,
        window: Window,
        source: Fingerprint,
        target: Fingerprint,
        options: &DiffOptions,
    ) -> Result<(Vec<KeyChange>, ChangeCounts, bool), DiffError> {
        let mut diff = Diff {
            columns: self.columns.clone(),
            key: Vec::new(),
            window_column: self.window_column.clone(),
            partitions: vec![PartitionDiff {
                partition: Partition {
                    id: backfill_core::plan::partition_id(&window),
                    index: 0,
                    window,
                },
                source,
                target,
                counts: None,
                keys: Vec::new(),
                ranges: Vec::new(),
                keys_truncated: false,
            }],
            samples: Vec::new(),
            rows_fetched: 0,
            queries: 0,
            native: self.native,
        };
        bisect_partition(self, &mut diff, 0, options).await?;
        let p = diff.partitions.swap_remove(0);
        Ok((p.keys, p.counts.unwrap_or_default(), p.keys_truncated))
    }
}

/// What `gaps` reports about one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gap {
    /// Source and target agree.
    Ok,
    /// The target holds no row of a partition the source has rows for.
    Missing,
    /// The target holds fewer rows than the source.
    Partial,
    /// Same or more rows, but they differ.
    Drifted,
}

impl Gap {
    /// The gap of a partition from its two fingerprints.
    pub fn of(source: &Fingerprint, target: &Fingerprint) -> Gap {
        if source == target {
            Gap::Ok
        } else if target.rows == 0 && source.rows > 0 {
            Gap::Missing
        } else if target.rows < source.rows {
            Gap::Partial
        } else {
            Gap::Drifted
        }
    }

    /// The name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Gap::Ok => "ok",
            Gap::Missing => "missing",
            Gap::Partial => "partial",
            Gap::Drifted => "drifted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn slices_cover_the_window_without_gaps() {
        let w = Window::Key { start: 0, end: 10 };
        let s = slices(&w, 4);
        assert_eq!(s.first().map(start_of), Some(start_of(&w)));
        assert_eq!(s.last().map(end_of), Some(end_of(&w)));
        for pair in s.windows(2) {
            assert_eq!(end_of(&pair[0]), start_of(&pair[1]));
        }
        assert_eq!(slices(&Window::Key { start: 3, end: 4 }, 16).len(), 1);
        let day = Window::Time {
            start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
        };
        let s = slices(&day, 16);
        assert_eq!(s.len(), 16);
        assert_eq!(s.last().map(end_of), Some(end_of(&day)));
    }

    #[test]
    fn rows_match_by_key_and_name_differing_columns() {
        let columns = vec![
            Column::new("id", Kind::Int),
            Column::new("a", Kind::Text),
            Column::new("b", Kind::Text),
        ];
        let r = |id: &str, a: &str, b: Option<&str>| {
            vec![
                Some(id.to_owned()),
                Some(a.to_owned()),
                b.map(str::to_owned),
            ]
        };
        let source = vec![r("1", "x", None), r("2", "y", Some("")), r("3", "z", None)];
        let target = vec![r("1", "x", None), r("2", "y", None), r("10", "w", None)];
        let changes = changed_rows(&columns, &[0], source, target);
        let got: Vec<(String, &str, Vec<String>)> = changes
            .iter()
            .map(|c| {
                (
                    c.change.key[0].clone().unwrap_or_default(),
                    c.change.change.name(),
                    c.change.columns.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("2".to_owned(), "update", vec!["b".to_owned()]),
                ("3".to_owned(), "insert", vec![]),
                ("10".to_owned(), "extra", vec![]),
            ]
        );
    }

    #[test]
    fn gaps_classify_by_counts_and_sums() {
        let fp = |rows, sum| Fingerprint {
            rows,
            sum,
            check: sum,
        };
        assert_eq!(Gap::of(&fp(3, 1), &fp(3, 1)), Gap::Ok);
        assert_eq!(Gap::of(&fp(3, 1), &fp(0, 0)), Gap::Missing);
        assert_eq!(Gap::of(&fp(3, 1), &fp(2, 1)), Gap::Partial);
        assert_eq!(Gap::of(&fp(3, 1), &fp(3, 2)), Gap::Drifted);
        assert_eq!(Gap::of(&fp(3, 1), &fp(4, 2)), Gap::Drifted);
    }
}
