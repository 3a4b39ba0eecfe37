//! `backfill diff SPEC` and `backfill gaps SPEC`: what a run would change, and which
//! partitions are missing, partial or drifted, computed by `backfill_engine::diff` without
//! writing to the source or the target. Each records one audit event in the state store
//! (`spec.diff` / `spec.gaps`: the spec's name, its plan hash and the totals; no run, so the
//! event's run is NULL), since who compared what, and when, belongs in the trail.
//!
//! Exit codes: `diff` exits 0 whenever it could compare (a difference is its answer, not a
//! failure); `gaps` exits 1 when any partition has a gap and 0 when none has, so a script can
//! write `backfill gaps spec.toml || backfill run spec.toml`. Both exit 2 for the user's
//! input (a `sql` mode spec, an unknown or unhashable column) and 1 when a database fails.

use std::time::Instant;

use backfill_core::plan::Window;
use backfill_engine::diff::{ChangeCounts, Gap, KeyChange, PartitionDiff, Sample};
use backfill_engine::{Diff, DiffError, DiffOptions, DiffProgress};
use serde_json::{Map, Value as J, json};

use crate::args::{DiffArgs, GapsArgs};
use crate::commands::thousands;
use crate::output::Output;
use crate::{Reported, UserError, specfile};

/// `backfill diff SPEC`.
pub(crate) async fn diff(args: &DiffArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let (spec, _) = specfile::load(&args.spec, out)?;
    let store = crate::commands::open_store(state).await?;
    let options = DiffOptions {
        columns: args.columns.clone().filter(|c| !c.is_empty()),
        window_column: args.window_column.clone(),
        sample: args.sample,
        max_keys: args.max_keys.unwrap_or(if out.json { 100 } else { 10 }),
        fetch_rows: args.fetch_rows.max(1),
        ..DiffOptions::default()
    };
    let started = Instant::now();
    let result = compute(&spec, &options, out).await?;
    let elapsed = started.elapsed();
    let totals = result.totals();
    record(
        &store,
        &spec,
        "spec.diff",
        json!({
            "partitions": result.partitions.len(),
            "partitions_changed": result.partitions.iter().filter(|p| !p.is_unchanged()).count(),
            "totals": counts_json(&totals),
            "window_column": result.window_column,
            "queries": result.queries,
            "rows_fetched": result.rows_fetched,
            "row_hash": row_hash(&result),
        }),
    )
    .await?;
    let name_columns = args.columns.is_some();
    if out.json {
        out.json(&diff_json(
            &spec,
            &result,
            name_columns,
            elapsed.as_millis(),
        ));
    } else {
        print_diff(&spec, &result, name_columns, args.all, out);
        out.line(format!(
            "compared in {:.1} s: {} fingerprint queries ({} row hash), {} rows fetched",
            elapsed.as_secs_f64(),
            result.queries,
            if result.native {
                "PostgreSQL's own"
            } else {
                "portable"
            },
            thousands(result.rows_fetched)
        ));
    }
    Ok(())
}

/// `backfill gaps SPEC`.
pub(crate) async fn gaps(args: &GapsArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let (spec, _) = specfile::load(&args.spec, out)?;
    let store = crate::commands::open_store(state).await?;
    let options = DiffOptions {
        columns: args.columns.clone(),
        window_column: args.window_column.clone(),
        bisect: false,
        ..DiffOptions::default()
    };
    let result = compute(&spec, &options, out).await?;
    let gaps: Vec<(&PartitionDiff, Gap)> = result
        .partitions
        .iter()
        .map(|p| (p, Gap::of(&p.source, &p.target)))
        .filter(|(_, g)| *g != Gap::Ok)
        .collect();
    let count = |gap: Gap| gaps.iter().filter(|(_, g)| *g == gap).count();
    record(
        &store,
        &spec,
        "spec.gaps",
        json!({
            "partitions": result.partitions.len(),
            "missing": count(Gap::Missing),
            "partial": count(Gap::Partial),
            "drifted": count(Gap::Drifted),
            "window_column": result.window_column,
        }),
    )
    .await?;
    if out.json {
        let list: Vec<J> = gaps
            .iter()
            .map(|(p, g)| {
                let mut o = partition_head(p);
                o.insert("gap".into(), json!(g.name()));
                o.insert("delta".into(), json!(delta(p)));
                J::Object(o)
            })
            .collect();
        out.json(&json!({
            "spec": spec.name,
            "partitions": result.partitions.len(),
            "gaps": list,
            "missing": gaps.iter().filter(|(_, g)| *g == Gap::Missing).count(),
            "partial": gaps.iter().filter(|(_, g)| *g == Gap::Partial).count(),
            "drifted": gaps.iter().filter(|(_, g)| *g == Gap::Drifted).count(),
        }));
    } else if gaps.is_empty() {
        out.line(format!(
            "no gaps: all {} partitions of {} match their source",
            result.partitions.len(),
            spec.name
        ));
    } else {
        out.line(format!(
            "{} of {} partitions of {} have gaps:",
            gaps.len(),
            result.partitions.len(),
            spec.name
        ));
        out.line(format!(
            "{:<18} {:<8} {:>12} {:>12} {:>10}  window",
            "partition", "gap", "source rows", "target rows", "delta"
        ));
        for (p, g) in &gaps {
            out.line(format!(
                "{:<18} {:<8} {:>12} {:>12} {:>+10}  {}",
                p.partition.id,
                g.name(),
                thousands(p.source.rows),
                thousands(p.target.rows),
                delta(p),
                p.partition.window
            ));
        }
    }
    if gaps.is_empty() {
        Ok(())
    } else {
        Err(Reported(1).into())
    }
}

/// Appends the audit event of a `diff` or `gaps` (no run: `run_id` NULL): `detail` plus the
/// spec's name and plan hash.
async fn record(
    store: &backfill_store::Store,
    spec: &backfill_core::Spec,
    action: &str,
    mut detail: J,
) -> anyhow::Result<()> {
    let plan = backfill_core::plan::plan(spec).map_err(|e| UserError::new(e.to_string()))?;
    if let Some(o) = detail.as_object_mut() {
        o.insert("spec".into(), json!(spec.name));
        o.insert("plan_hash".into(), json!(plan.hash));
    }
    store
        .record_spec_action(&crate::commands::whoami(), action, detail)
        .await?;
    Ok(())
}

/// Target rows minus source rows.
fn delta(p: &PartitionDiff) -> i128 {
    i128::from(p.target.rows) - i128::from(p.source.rows)
}

/// Runs the diff with progress notes, turning the user's mistakes into exit-2 errors.
async fn compute(
    spec: &backfill_core::Spec,
    options: &DiffOptions,
    out: Output,
) -> anyhow::Result<Diff> {
    let mut last = Instant::now();
    let mut progress = |event: DiffProgress| match event {
        DiffProgress::Fingerprinting { partitions } => out.note(format!(
            "fingerprinting {} partitions in the source and the target…",
            thousands(partitions as u64)
        )),
        DiffProgress::Compared { differing } if differing > 0 && options.bisect => out.note(
            format!("{differing} partitions differ; narrowing them down to keys…"),
        ),
        DiffProgress::Compared { .. } => {}
        DiffProgress::Bisected { done, of } => {
            if done == of || last.elapsed().as_secs() >= 2 {
                last = Instant::now();
                out.note(format!("  {done}/{of} partitions narrowed down"));
            }
        }
    };
    backfill_engine::diff(spec, options, &mut progress)
        .await
        .map_err(diff_error)
}

/// A diff's error as the CLI reports it: the user's mistakes exit 2 with a hint, a failing
/// database exits 1.
pub(crate) fn diff_error(e: DiffError) -> anyhow::Error {
    match e {
        DiffError::SqlMode => UserError::new(e.to_string())
            .hint(
                "`backfill plan` shows the windows the statement would run for; compare \
                     results with your own queries",
            )
            .into(),
        DiffError::NoWindowColumn => UserError::new(e.to_string())
            .hint("e.g. `--window-column created_at`")
            .into(),
        DiffError::UnknownColumn { .. } => UserError::new(e.to_string())
            .hint("--columns takes target column names, comma-separated")
            .into(),
        DiffError::Unhashable { .. } => UserError::new(e.to_string())
            .hint("e.g. `--columns=id,amount` lists the columns to compare")
            .into(),
        DiffError::Plan(_) => UserError::new(e.to_string()).into(),
        DiffError::Connector(e) => anyhow::Error::new(e),
    }
}

/// `{"id", "index", "window", "source_rows", "target_rows"}` of a partition.
fn partition_head(p: &PartitionDiff) -> Map<String, J> {
    let mut o = Map::new();
    o.insert("id".into(), json!(p.partition.id));
    o.insert("index".into(), json!(p.partition.index));
    o.insert("window".into(), window_json(&p.partition.window));
    o.insert("source_rows".into(), json!(p.source.rows));
    o.insert("target_rows".into(), json!(p.target.rows));
    o
}

fn window_json(w: &Window) -> J {
    match w {
        Window::Time { start, end } => json!({
            "start": start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "end": end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }),
        Window::Key { start, end } => json!({ "start": start, "end": end }),
    }
}

fn counts_json(c: &ChangeCounts) -> J {
    json!({
        "insert": c.insert,
        "update": c.update,
        "unchanged": c.unchanged,
        "extra": c.extra,
    })
}

/// A key as `{column: canonical text}`.
fn key_json(diff: &Diff, key: &[Option<String>]) -> J {
    J::Object(
        diff.key
            .iter()
            .zip(key)
            .map(|(c, v)| (c.clone(), json!(v)))
            .collect(),
    )
}

fn change_json(diff: &Diff, k: &KeyChange, name_columns: bool) -> Map<String, J> {
    let mut o = Map::new();
    o.insert("key".into(), key_json(diff, &k.key));
    o.insert("change".into(), json!(k.change.name()));
    if name_columns && !k.columns.is_empty() {
        o.insert("columns".into(), json!(k.columns));
    }
    o
}

/// A row as `{column: canonical text}`.
fn row_json(diff: &Diff, row: Option<&Vec<Option<String>>>) -> J {
    row.map_or(J::Null, |r| {
        J::Object(
            diff.columns
                .iter()
                .zip(r)
                .map(|(c, v)| (c.name.clone(), json!(v)))
                .collect(),
        )
    })
}

fn sample_json(diff: &Diff, s: &Sample) -> J {
    let mut o = change_json(diff, &s.change, true);
    o.insert(
        "partition".into(),
        json!(diff.partitions[s.partition].partition.id),
    );
    o.insert("source".into(), row_json(diff, s.source.as_ref()));
    o.insert("target".into(), row_json(diff, s.target.as_ref()));
    J::Object(o)
}

/// The one JSON object of `diff --json`.
fn diff_json(spec: &backfill_core::Spec, diff: &Diff, name_columns: bool, elapsed_ms: u128) -> J {
    let partitions: Vec<J> = diff
        .partitions
        .iter()
        .map(|p| {
            let mut o = partition_head(p);
            o.insert(
                "status".into(),
                json!(if p.is_unchanged() {
                    "unchanged"
                } else {
                    "differs"
                }),
            );
            if let Some(c) = &p.counts {
                for (k, v) in counts_json(c).as_object().into_iter().flatten() {
                    o.insert(k.clone(), v.clone());
                }
            }
            let keys: Vec<J> = p
                .keys
                .iter()
                .map(|k| J::Object(change_json(diff, k, name_columns)))
                .collect();
            o.insert("keys".into(), json!(keys));
            o.insert("keys_truncated".into(), json!(p.keys_truncated));
            J::Object(o)
        })
        .collect();
    let differing = diff.partitions.iter().filter(|p| !p.is_unchanged()).count();
    let mut totals = counts_json(&diff.totals());
    if let Some(t) = totals.as_object_mut() {
        t.insert("partitions".into(), json!(diff.partitions.len()));
        t.insert("partitions_changed".into(), json!(differing));
    }
    json!({
        "spec": spec.name,
        "target": spec.target.table,
        "key": diff.key,
        "columns": diff.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "window_column": diff.window_column,
        "partitions": partitions,
        "totals": totals,
        "sample": diff.samples.iter().map(|s| sample_json(diff, s)).collect::<Vec<_>>(),
        "queries": diff.queries,
        "rows_fetched": diff.rows_fetched,
        "row_hash": row_hash(diff),
        "elapsed_ms": elapsed_ms,
    })
}

/// Which row hash the fast path used: `native` (PostgreSQL's own, both sides) or `portable`.
fn row_hash(diff: &Diff) -> &'static str {
    if diff.native { "native" } else { "portable" }
}

/// `id=17` or `(a=1, b=x)`.
fn key_text(diff: &Diff, key: &[Option<String>]) -> String {
    let parts: Vec<String> = diff
        .key
        .iter()
        .zip(key)
        .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
        .collect();
    parts.join(", ")
}

fn print_diff(spec: &backfill_core::Spec, diff: &Diff, name_columns: bool, all: bool, out: Output) {
    let differing = diff.partitions.iter().filter(|p| !p.is_unchanged()).count();
    out.line(format!(
        "diff of {} → {}: {} partitions, {} differ (rows placed by {})",
        spec.name,
        spec.target.table.as_deref().unwrap_or("?"),
        diff.partitions.len(),
        differing,
        diff.window_column
    ));
    if differing > 0 || all {
        out.line(format!(
            "{:<18} {:>9} {:>9} {:>11} {:>9}  window",
            "partition", "insert", "update", "unchanged", "extra"
        ));
    }
    for p in diff.partitions.iter().filter(|p| all || !p.is_unchanged()) {
        let c = p.counts.unwrap_or_default();
        out.line(format!(
            "{:<18} {:>9} {:>9} {:>11} {:>9}  {}",
            p.partition.id,
            thousands(c.insert),
            thousands(c.update),
            thousands(c.unchanged),
            thousands(c.extra),
            p.partition.window
        ));
        for k in &p.keys {
            let columns = if name_columns && !k.columns.is_empty() {
                format!("  ({})", k.columns.join(", "))
            } else {
                String::new()
            };
            out.line(format!(
                "    {:<7} {}{columns}",
                k.change.name(),
                key_text(diff, &k.key)
            ));
        }
        if p.keys_truncated && p.keys.is_empty() {
            let side = if p.target.rows == 0 {
                "target"
            } else {
                "source"
            };
            out.line(format!(
                "    every row (the {side} has none in this window; keys not listed)"
            ));
        } else if p.keys_truncated {
            out.line("    … more keys differ (--max-keys lists more)");
        }
    }
    let t = diff.totals();
    out.line(format!(
        "total: {} to insert, {} to update, {} unchanged, {} extra in the target",
        thousands(t.insert),
        thousands(t.update),
        thousands(t.unchanged),
        thousands(t.extra)
    ));
    print_samples(diff, out);
}

/// Each sample row as a column table: source value, target value, a marker where they differ.
fn print_samples(diff: &Diff, out: Output) {
    for s in &diff.samples {
        out.line(format!(
            "sample: {} {} (partition {})",
            s.change.change.name(),
            key_text(diff, &s.change.key),
            diff.partitions[s.partition].partition.id
        ));
        let width = diff.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
        out.line(format!("  {:<width$}  {:<28} target", "column", "source"));
        let cell = |row: &Option<Vec<Option<String>>>, i: usize| -> String {
            match row {
                None => "-".to_owned(),
                Some(r) => r[i].clone().unwrap_or_else(|| "NULL".to_owned()),
            }
        };
        for (i, c) in diff.columns.iter().enumerate() {
            let (a, b) = (cell(&s.source, i), cell(&s.target, i));
            let mark = if a != b { "  ≠" } else { "" };
            out.line(format!("  {:<width$}  {a:<28} {b}{mark}", c.name));
        }
    }
}
