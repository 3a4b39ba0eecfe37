//! `[target] undo` and `[target] propagate_deletes`: the undo log and deletions (issue 11).
//!
//! Rules: `undo` defaults to true in `upsert` and `replace` and is refused in `sql` mode
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
/// invalid, already reported).
pub(super) fn undo_flags(w: &mut Walker<'_>, t: &Table<'_>, mode: Option<&WriteMode>) -> UndoFlags {
    let sql = matches!(mode, Some(WriteMode::Sql { .. }));
    let undo_set = t.get("undo").is_some();
    let undo = w.boolean(t, "target", "undo", !sql);
    let propagate_deletes = w.boolean(t, "target", "propagate_deletes", false);
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
