//! `[target] undo` and `[target] propagate_deletes`: the undo log and deletions (issue 11).
//!
//! Rules: `undo` is on by default in `upsert` and `replace`, on every target: the log is
//! written set-wise, of the rows the write changes only (bench/undo.py); on by itself with
//! `propagate_deletes`, which needs it in `upsert` ([`undo_by_default`]). It is refused in `sql` mode
//! (its rows are not the engine's, so there is nothing to take a before-image of);
//! `propagate_deletes` is natural in `replace`, needs the undo log in `upsert` (the keys a
//! window's batches touched are what tells a deleted key from a kept one), and is refused
//! in `sql` mode. In `upsert` it also needs a column to bound the window with
//! ([`window_for_deletes`]).

use crate::spec::{SourceSpec, TargetSpec, WriteMode};

use super::walker::{Table, Walker};

/// The two flags, as validated.
pub(super) struct UndoFlags {
    pub(super) undo: bool,
    pub(super) propagate_deletes: bool,
}

/// Reads `target.undo` and `target.propagate_deletes` for `mode` (`None`: the mode was
/// invalid, already reported); `undo` defaults to `default_undo` (see [`undo_by_default`]),
/// or to true with `propagate_deletes`.
pub(super) fn undo_flags(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    mode: Option<&WriteMode>,
    default_undo: bool,
) -> UndoFlags {
    let sql = matches!(mode, Some(WriteMode::Sql { .. }));
    let undo_set = t.get("undo").is_some();
    let propagate_deletes = w.boolean(t, "target", "propagate_deletes", false);
    let undo = w.boolean(
        t,
        "target",
        "undo",
        (propagate_deletes || default_undo) && !sql,
    );
    if sql && undo_set && undo {
        w.error("target.undo", None, "`undo` does not apply to `sql` mode")
            .hint = Some(
            "the statement's rows are not the engine's; remove `undo` or use upsert/replace"
                .to_owned(),
        );
    }
    if sql && propagate_deletes {
        w.error(
            "target.propagate_deletes",
            None,
            "`propagate_deletes` does not apply to `sql` mode",
        )
        .hint = Some("write the deletion into the statement itself".to_owned());
    }
    if matches!(mode, Some(WriteMode::Upsert)) && propagate_deletes && !undo {
        w.error(
            "target.propagate_deletes",
            None,
            "`propagate_deletes` in `upsert` mode needs `undo = true`",
        )
        .hint = Some(
            "the undo log records the keys each window's batches wrote: the target's other \
             keys in the window are the deleted ones"
                .to_owned(),
        );
    }
    UndoFlags {
        undo: undo && !sql,
        propagate_deletes: propagate_deletes && !sql,
    }
}

/// Whether `undo` is on when the spec does not say: for a target of a known `scheme`, where
/// the log is written set-wise, of the rows the write changes only (PostgreSQL: in the
/// upsert's statement or at a window's commit; SQLite: by temporary triggers or statements
/// after the write; MySQL: by joins over temporary tables), measured by bench/undo.py. Never
/// for `shadow` (its rollback is a rename) or `partition_exchange` (it keeps no log).
pub(super) fn undo_by_default(scheme: Option<&str>, shadow: bool, exchange: bool) -> bool {
    matches!(
        scheme,
        Some("postgres" | "postgresql" | "sqlite" | "mysql" | "mariadb")
    ) && !shadow
        && !exchange
}

/// In `upsert` mode with `propagate_deletes`, the column bounding each window's deletion:
/// `target.window_column`, else `source.time_column`; reports a spec error when neither is
/// set. Leaves other modes alone.
pub(super) fn window_for_deletes(
    w: &mut Walker<'_>,
    target: &mut TargetSpec,
    source: Option<&SourceSpec>,
) {
    if target.mode != WriteMode::Upsert || !target.propagate_deletes {
        target.delete_window_column = None;
        return;
    }
    if target.delete_window_column.is_none() {
        target.delete_window_column = source.and_then(|s| s.time_column.clone());
    }
    if target.delete_window_column.is_none() {
        w.error(
            "target.propagate_deletes",
            None,
            "`propagate_deletes` in `upsert` mode needs the target column that bounds a window",
        )
        .hint = Some(
            "set `[target] window_column` (or `[source] time_column`) to the column compared \
             with `:start`/`:end`"
                .to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::spec::{ParseContext, Parsed};

    const BASE: &str = r#"
name = "n"
reason = "r"
[source]
url = "sqlite://src.db"
query = "SELECT id, ts FROM t WHERE ts >= :start AND ts < :end"
[target]
url = "sqlite://dst.db"
table = "t_copy"
key = ["id"]
EXTRA
[scope]
start = "2026-03-01T00:00:00Z"
end = "2026-03-04T00:00:00Z"
partition = "1d"
"#;

    fn parse(extra: &str) -> Parsed {
        let env = |_: &str| None;
        crate::spec::parse(
            &BASE.replace("EXTRA", extra),
            &ParseContext {
                env: &env,
                base_dir: Path::new("/specs"),
            },
        )
    }

    fn errors(extra: &str) -> Vec<String> {
        parse(extra)
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn undo_is_on_by_default_and_propagate_deletes_off() {
        let spec = parse("").spec.expect("valid");
        assert!(spec.target.undo, "on by default for a SQLite target");
        assert!(!parse("undo = false").spec.expect("valid").target.undo);
        let deleting = parse("propagate_deletes = true\nwindow_column = \"ts\"");
        assert!(
            deleting.spec.expect("valid").target.undo,
            "deletions turn the log on"
        );
        assert!(!spec.target.propagate_deletes);
        assert_eq!(spec.target.delete_window_column, None);
    }

    #[test]
    fn propagate_deletes_in_upsert_needs_a_window_column_and_undo() {
        assert_eq!(
            errors("propagate_deletes = true"),
            [
                "target.propagate_deletes: `propagate_deletes` in `upsert` mode needs the target column that bounds a window"
            ]
        );
        let spec = parse("propagate_deletes = true\nwindow_column = \"ts\"")
            .spec
            .expect("valid");
        assert_eq!(spec.target.delete_window_column.as_deref(), Some("ts"));
        assert_eq!(
            errors("propagate_deletes = true\nwindow_column = \"ts\"\nundo = false"),
            ["target.propagate_deletes: `propagate_deletes` in `upsert` mode needs `undo = true`"]
        );
    }

    #[test]
    fn sql_mode_refuses_undo() {
        let sql =
            "mode = \"sql\"\nsql = \"DELETE FROM t WHERE ts >= :start AND ts < :end\"\nundo = true";
        assert_eq!(
            errors(sql),
            ["target.undo: `undo` does not apply to `sql` mode"]
        );
    }
}
