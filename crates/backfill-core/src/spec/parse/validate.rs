//! `[validate]`: reconciliation after writing. Reads the section's keys, then the rules that
//! cross sections: what `sql` mode needs (a pair of check queries) and what the other modes
//! need (a column that places rows in partitions). A `[validate]` that cannot work is an
//! error naming the field; without the section, the defaults apply and a reconciliation
//! that cannot work is only "not verified" (`crate::reconcile`).

use std::ops::Range;

use toml::de::DeValue;

use crate::params::named_params;
use crate::plan::Scope;
use crate::spec::{SourceSpec, TargetSpec, ValidateSpec, WriteMode};

use super::source::identifier;
use super::walker::{Table, Walker, kind};

const SECTION: &str = "validate";

/// `[validate]`'s own keys, each checked alone (the section is in the spec: `explicit`).
pub(super) fn validate(w: &mut Walker<'_>, t: &Table<'_>) -> ValidateSpec {
    let d = ValidateSpec::default();
    let tolerance = match w.integer(t, SECTION, "tolerance") {
        Some((n, span)) => u64::try_from(n).unwrap_or_else(|_| {
            w.error(
                "validate.tolerance",
                Some(span),
                format!("must be 0 or more rows, found {n}"),
            )
            .hint = Some("the rows a partition may differ by; 0 demands an exact match".into());
            0
        }),
        None => d.tolerance,
    };
    let window_column_raw = w.string(t, SECTION, "window_column", false);
    let after_partition = w.boolean(t, SECTION, "after_partition", d.after_partition);
    ValidateSpec {
        explicit: true,
        after_partition,
        // Without the check after each partition, the end of the run checks them all.
        at_end: w.boolean(t, SECTION, "at_end", !after_partition),
        tolerance,
        columns: columns(w, t),
        window_column: identifier(w, window_column_raw, "validate.window_column"),
        source_check: check(w, t, "source_check"),
        target_check: check(w, t, "target_check"),
    }
}

/// `validate.columns`: a non-empty list of column identifiers.
fn columns(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Vec<String>> {
    let v = t.get("columns")?;
    let DeValue::Array(items) = v.get_ref() else {
        w.error(
            "validate.columns",
            Some(v.span()),
            format!(
                "expected an array of column names, found {}",
                kind(v.get_ref())
            ),
        )
        .hint = Some("e.g. `columns = [\"amount_cents\", \"status\"]`".to_owned());
        return None;
    };
    if items.is_empty() {
        w.error(
            "validate.columns",
            Some(v.span()),
            "the column list is empty",
        )
        .hint = Some("leave `columns` out to compare every target column".to_owned());
        return None;
    }
    let mut out = Vec::new();
    for item in items.iter() {
        let DeValue::String(s) = item.get_ref() else {
            w.error(
                "validate.columns",
                Some(item.span()),
                format!("expected a column name, found {}", kind(item.get_ref())),
            );
            return None;
        };
        out.push(identifier(
            w,
            Some((s.to_string(), item.span())),
            "validate.columns",
        )?);
    }
    Some(out)
}

/// A check query: non-empty, binding exactly `:start` and `:end`.
fn check(w: &mut Walker<'_>, t: &Table<'_>, key: &str) -> Option<String> {
    let (q, span) = w.string(t, SECTION, key, false)?;
    let path = format!("validate.{key}");
    let hint = "e.g. `SELECT count(*), sum(amount) FROM t WHERE ts >= :start AND ts < :end`";
    if q.trim().is_empty() {
        w.error(&path, Some(span), "the query is empty").hint = Some(hint.to_owned());
        return None;
    }
    let params = named_params(&q);
    let mut ok = true;
    for p in ["start", "end"] {
        if !params.iter().any(|n| n == p) {
            w.error(
                &path,
                Some(span.clone()),
                format!("the query does not use `:{p}`"),
            )
            .hint = Some(hint.to_owned());
            ok = false;
        }
    }
    for p in params.iter().filter(|p| *p != "start" && *p != "end") {
        w.error(
            &path,
            Some(span.clone()),
            format!("unknown parameter `:{p}`"),
        )
        .hint = Some("only `:start` and `:end` are bound".to_owned());
        ok = false;
    }
    ok.then_some(q)
}

/// The rules between `[validate]` and the other sections, for a spec that has the section.
pub(super) fn validate_rules(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    v: &ValidateSpec,
    source: Option<&SourceSpec>,
    target: &TargetSpec,
    scope: Option<&Scope>,
) {
    let span = |key: &str| -> Option<Range<usize>> { t.get(key).map(|v| v.span()) };
    if let WriteMode::Sql { .. } = target.mode {
        for key in ["columns", "window_column"] {
            if t.get(key).is_some() {
                w.error(
                    &format!("validate.{key}"),
                    span(key),
                    format!("`{key}` compares rows, and `sql` mode makes its own rows"),
                )
                .hint = Some(
                    "in `sql` mode reconcile with `source_check` and `target_check` queries"
                        .to_owned(),
                );
            }
        }
        if (v.after_partition || v.at_end) && (v.source_check.is_none() || v.target_check.is_none())
        {
            let missing = if t.get("source_check").is_none() {
                "source_check"
            } else {
                "target_check"
            };
            w.error(
                &format!("validate.{missing}"),
                None,
                "`sql` mode is reconciled by a pair of check queries, and one is missing",
            )
            .hint = Some(
                "set `source_check` and `target_check`, each a query with `:start` and `:end` \
                 returning one row (e.g. a count and a sum) that must match; or remove \
                 `[validate]`"
                    .to_owned(),
            );
        }
        return;
    }
    for key in ["source_check", "target_check"] {
        if t.get(key).is_some() {
            w.error(
                &format!("validate.{key}"),
                span(key),
                format!("`{key}` is for `sql` mode only"),
            )
            .hint = Some(format!(
                "`{}` mode compares the rows themselves; remove `{key}`",
                target.mode.name()
            ));
        }
    }
    if v.window_column.is_some() || t.get("window_column").is_some() {
        return;
    }
    let replace = matches!(target.mode, WriteMode::Replace { .. });
    let time_column = source.and_then(|s| s.time_column.as_ref()).is_some();
    let key_scope = matches!(scope, Some(Scope::Key { .. })) && target.key.len() == 1;
    if !replace && !time_column && !key_scope {
        w.error(
            "validate.window_column",
            None,
            "reconciliation needs the column that places each row in a partition",
        )
        .hint = Some(
            "set `window_column` here (a column of the source's result and of the target \
             table), or `source.time_column`"
                .to_owned(),
        );
    }
}
