//! `[target]`: where rows go, the write mode and what each mode needs (a table and key for
//! `upsert` and `replace`, a window column for `replace`, a windowed statement for `sql`).

use std::ops::Range;

use toml::de::DeValue;

use crate::params::named_params;
use crate::spec::schema::suggest;
use crate::spec::{ParseContext, ShadowSpec, TargetSpec, WriteMode};
use crate::timefmt::TimeFormat;

use super::source::{default_time_format, identifier, time_format};
use super::walker::{Table, Walker, kind};

/// `[target]`: URL, table, key, write mode and what the mode needs, time format, guard
/// (upsert only) and pushdown. `source_format` decides a SQLite target's default format.
pub(super) fn target_spec(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    ctx: &ParseContext<'_>,
    source_format: &TimeFormat,
) -> Option<TargetSpec> {
    let url = w.url(t, "target", ctx);
    let mode_raw = w.string(t, "target", "mode", false);
    let table_raw = w.string(t, "target", "table", false);
    let table_span = table_raw.as_ref().map(|(_, s)| s.clone());
    let table = identifier(w, table_raw, "target.table");
    let key = key_list(w, t);
    let default_format = match (default_time_format(url.as_ref()), source_format) {
        // A SQLite target compares text: keep the source's text format, or RFC 3339 when
        // the source binds natively.
        (TimeFormat::Rfc3339, TimeFormat::Native) => TimeFormat::Rfc3339,
        (TimeFormat::Rfc3339, other) => other.clone(),
        (native, _) => native,
    };
    let time_format = time_format(w, t, "target", &default_format);
    let guard_raw = w.string(t, "target", "guard", false);
    let guard_span = guard_raw.as_ref().map(|(_, s)| s.clone());
    let guard = identifier(w, guard_raw, "target.guard");
    let window_column_raw = w.string(t, "target", "window_column", false);
    let window_column = identifier(w, window_column_raw, "target.window_column");
    let sql = w.string(t, "target", "sql", false);
    let seed_outside_scope = w.boolean(t, "target", "seed_outside_scope", false);

    let has_table = table.is_some() || table_span.is_some();
    let delete_window_column = window_column.clone();
    let is_shadow = mode_raw.as_ref().is_some_and(|(m, _)| m == "shadow");
    let shadow = is_shadow.then(|| ShadowSpec {
        seed_outside_scope,
        window_column: window_column.clone(),
    });
    let (mode_raw, window_column) = match is_shadow {
        // A shadow write upserts by key into the shadow table.
        true => {
            needs_table_and_key(w, "shadow", has_table, key.as_deref());
            (mode_raw.map(|(_, span)| ("upsert".to_owned(), span)), None)
        }
        false => (mode_raw, window_column),
    };
    if seed_outside_scope && !is_shadow {
        w.error(
            "target.seed_outside_scope",
            None,
            "`seed_outside_scope` only applies to `shadow` mode",
        );
    }
    let mode = write_mode(w, mode_raw, has_table, key.as_deref(), window_column, sql);
    let pushdown = w.boolean(t, "target", "pushdown", true);
    let partition_exchange = w.boolean(t, "target", "partition_exchange", false);
    // A shadow write leaves the live table alone: its rollback is a rename back, so no undo
    // log unless the spec asks for one.
    let scheme = url.as_ref().map(|u| u.scheme());
    let default_undo =
        super::undo::undo_by_default(scheme.as_deref(), is_shadow, partition_exchange);
    let mut undo_flags = super::undo::undo_flags(w, t, mode.as_ref(), default_undo);
    if is_shadow && t.get("undo").is_none() {
        undo_flags.undo = false;
    }
    if partition_exchange && !matches!(mode, Some(WriteMode::Replace { .. })) {
        w.error(
            "target.partition_exchange",
            None,
            "`partition_exchange` only applies to `replace` mode",
        )
        .hint = Some("it swaps a whole partition for a freshly loaded one".to_owned());
    } else if partition_exchange && undo_flags.undo {
        w.error(
            "target.partition_exchange",
            None,
            "`partition_exchange` keeps no undo log, so it cannot be combined with `undo`",
        )
        .hint = Some(
            "drop one of the two; `mode = \"shadow\"` gives a reversible swap of the whole table"
                .to_owned(),
        );
    }
    if guard.is_some() && !matches!(mode, Some(WriteMode::Upsert)) {
        w.error(
            "target.guard",
            guard_span,
            "`guard` only applies to `upsert` mode",
        )
        .hint = Some("replace and sql modes rewrite the window as a whole".to_owned());
    }
    Some(TargetSpec {
        guard,
        url: url?,
        table,
        key: key?,
        mode: mode?,
        time_format: time_format?,
        pushdown,
        undo: undo_flags.undo,
        propagate_deletes: undo_flags.propagate_deletes,
        delete_window_column,
        partition_exchange,
        shadow,
    })
}

/// The write mode `target.mode` names (`upsert` when absent), with what that mode needs: a
/// table and key for `upsert` and `replace`, a window column for `replace`, a statement
/// using `:start` and `:end` for `sql`.
fn write_mode(
    w: &mut Walker<'_>,
    mode_raw: Option<(String, Range<usize>)>,
    has_table: bool,
    key: Option<&[String]>,
    window_column: Option<String>,
    sql: Option<(String, Range<usize>)>,
) -> Option<WriteMode> {
    let mode_name = mode_raw
        .as_ref()
        .map_or("upsert".to_owned(), |(m, _)| m.clone());
    match mode_name.as_str() {
        "upsert" => {
            needs_table_and_key(w, "upsert", has_table, key);
            Some(WriteMode::Upsert)
        }
        "replace" => {
            needs_table_and_key(w, "replace", has_table, key);
            match window_column {
                Some(c) => Some(WriteMode::Replace { window_column: c }),
                None => {
                    w.error(
                        "target.window_column",
                        None,
                        "`replace` mode needs `window_column`",
                    )
                    .hint = Some(
                        "the target column compared with `:start`/`:end` when deleting a window"
                            .to_owned(),
                    );
                    None
                }
            }
        }
        "sql" => match sql {
            Some((statement, span)) => {
                let params = named_params(&statement);
                for p in ["start", "end"] {
                    if !params.iter().any(|n| n == p) {
                        w.error(
                            "target.sql",
                            Some(span.clone()),
                            format!("the statement does not use `:{p}`"),
                        )
                        .hint = Some(
                            "without the window each partition would redo the whole table"
                                .to_owned(),
                        );
                    }
                }
                Some(WriteMode::Sql { statement })
            }
            None => {
                w.error(
                    "target.sql",
                    None,
                    "`sql` mode needs `sql`, the statement run per partition",
                );
                None
            }
        },
        other => {
            let span = mode_raw.map(|(_, s)| s);
            let hint = match suggest(other, &["upsert", "replace", "sql", "shadow"]) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "use `upsert`, `replace`, `sql` or `shadow`".to_owned(),
            };
            w.error("target.mode", span, format!("unknown write mode `{other}`"))
                .hint = Some(hint);
            None
        }
    }
}

/// `upsert` and `replace` write rows by key into a table: both must be given (a key that
/// failed to parse was reported already).
fn needs_table_and_key(w: &mut Walker<'_>, mode: &str, has_table: bool, key: Option<&[String]>) {
    if !has_table {
        w.error("target.table", None, format!("`{mode}` mode needs `table`"));
    }
    if key.is_some_and(|k| k.is_empty()) {
        w.error(
            "target.key",
            None,
            format!("`{mode}` mode needs `key`, the key columns"),
        )
        .hint =
            Some("e.g. `key = [\"id\"]`; the source query must return these columns".to_owned());
    }
}

/// `target.key`: a column or a non-empty list of distinct column identifiers.
fn key_list(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Vec<String>> {
    let Some(v) = t.get("key") else {
        return Some(Vec::new());
    };
    let items: Vec<(String, Range<usize>)> = match v.get_ref() {
        DeValue::String(s) => vec![(s.to_string(), v.span())],
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((s.to_string(), item.span())),
                    other => {
                        w.error(
                            "target.key",
                            Some(item.span()),
                            format!("expected a column name, found {}", kind(other)),
                        );
                        return None;
                    }
                }
            }
            out
        }
        other => {
            w.error(
                "target.key",
                Some(v.span()),
                format!("expected an array of column names, found {}", kind(other)),
            );
            return None;
        }
    };
    if items.is_empty() {
        w.error("target.key", Some(v.span()), "the key list is empty")
            .hint = Some("e.g. `key = [\"id\"]`".to_owned());
        return None;
    }
    let mut out = Vec::new();
    for item in items {
        if out.contains(&item.0) {
            w.error(
                "target.key",
                Some(item.1.clone()),
                format!("column `{}` is listed twice", item.0),
            );
            return None;
        }
        out.push(identifier(w, Some(item), "target.key")?);
    }
    Some(out)
}

/// A shadow write's window column: `target.window_column`, else `source.time_column`;
/// `seed_outside_scope` needs one (it copies the rows outside the scope by that column).
pub(super) fn shadow_window(
    w: &mut Walker<'_>,
    shadow: &mut ShadowSpec,
    source: Option<&crate::spec::SourceSpec>,
) {
    if shadow.window_column.is_none() {
        shadow.window_column = source.and_then(|s| s.time_column.clone());
    }
    if shadow.seed_outside_scope && shadow.window_column.is_none() {
        w.error(
            "target.seed_outside_scope",
            None,
            "`seed_outside_scope` needs the column that places a row in the scope",
        )
        .hint = Some(
            "set `target.window_column` (or `source.time_column`): rows of the live table \
             outside `[scope start, scope end)` by that column are copied into the shadow"
                .to_owned(),
        );
    }
}
