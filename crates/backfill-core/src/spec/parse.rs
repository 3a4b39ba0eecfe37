//! The spec parser: walks the spanned TOML document and builds a [`Spec`] or diagnostics.
//!
//! One module per spec section (`source`, `target`, `scope`, `limits` with `order`,
//! `throttle`), on a shared [`walker`] that reads typed values and records every problem with
//! its field path and span; `url` reads the connection URLs every section uses. This module
//! parses the document, calls each section in file order, applies the rules that cross
//! sections and assembles the spec.

mod limits;
mod order;
mod readiness;
mod scope;
mod slo;
mod source;
mod target;
mod throttle;
mod undo;
mod url;
mod validate;
mod walker;

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::{
    Limits, ParseContext, Parsed, SourceSpec, Spec, TargetSpec, ThrottleSpec, ValidateSpec,
};
use crate::diag::{Diagnostic, line_col};
use crate::order::Order;
use crate::params::named_params;
use crate::plan::{Scope, short_hash};
use crate::secret::redact;
use crate::timefmt::TimeFormat;

use self::limits::limits;
pub(crate) use self::scope::parse_instant;
use self::scope::scope;
use self::source::source_spec;
use self::target::target_spec;
use self::throttle::throttle;
use self::validate::{validate, validate_rules};
use self::walker::{Table, Walker, join};

pub(super) fn parse(text: &str, ctx: &ParseContext<'_>) -> Parsed {
    let mut w = Walker {
        text,
        diags: Vec::new(),
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return invalid_toml(text, &e),
    };
    let root = doc.get_ref();
    w.unknown_keys(root, "");
    let sections = sections(&mut w, root, ctx);
    if let (Some(src), Some(scope)) = (&sections.source, &sections.scope) {
        query_params(&mut w, root, &src.query, scope);
    }
    finish(w, root, sections)
}

/// A file that is not TOML: one diagnostic at the parser's span.
fn invalid_toml(text: &str, e: &toml::de::Error) -> Parsed {
    let message = e.message().trim().to_owned();
    let d = Diagnostic::error("", format!("invalid TOML: {message}"));
    Parsed {
        spec: None,
        diagnostics: vec![match e.span() {
            Some(span) => d.spanned(text, span),
            None => d,
        }],
        positions: Default::default(),
        spans: Default::default(),
    }
}

/// What each part of the file gave; `None` where it had an error (already reported).
struct Sections {
    name: Option<String>,
    reason: Option<String>,
    sql_mode: bool,
    /// Whether the file has a `[source]` table (even an invalid one).
    has_source_table: bool,
    source: Option<SourceSpec>,
    target: Option<TargetSpec>,
    scope: Option<Scope>,
    limits: Limits,
    throttle: Option<ThrottleSpec>,
    validate: ValidateSpec,
    canary: Option<super::CanarySpec>,
    /// `[canary]` is present (even an invalid one, already reported).
    has_canary_table: bool,
    slo: Option<crate::slo::SloSpec>,
    /// `[slo]` is present (even an invalid one, already reported).
    has_slo_table: bool,
}

/// Reads the top-level keys and every section, in the order later sections depend on them
/// (the scope before the limits that check against it, the source's time format before the
/// target's default), then the rules between sections.
fn sections(w: &mut Walker<'_>, root: &Table<'_>, ctx: &ParseContext<'_>) -> Sections {
    let name = name(w, root);
    let reason = w
        .string(root, "", "reason", false)
        .map(|(r, _)| r)
        .filter(|r| !r.trim().is_empty());

    // `sql` mode runs its own statement: `[source]` is optional there (estimates only).
    let sql_mode = is_sql_mode(root);
    let source_table = w.section(root, "source", false);
    if source_table.is_none() && root.get("source").is_none() && !sql_mode {
        w.error("source", None, "missing section `[source]`").hint = Some(
            "add a `[source]` table with the `url` and `query` rows are read from (only `sql` \
             mode, which runs its own statement, can do without); see docs/spec.md"
                .to_owned(),
        );
    }
    let source = source_table.and_then(|t| source_spec(w, t, ctx));
    let target_table = w.section(root, "target", true);
    let scope_table = w.section(root, "scope", true);
    let scope = scope_table.and_then(|t| scope(w, t));
    let limits = match w.section(root, "limits", false) {
        Some(t) => limits(w, t, scope.as_ref()),
        None => Limits::default(),
    };
    let throttle_table = w.section(root, "throttle", false);
    let mut throttle = throttle_table.and_then(|t| throttle(w, t, ctx, &limits));
    let slo_table = w.section(root, "slo", false);
    let slo = slo_table.and_then(|t| slo::slo(w, t, throttle_table, throttle.as_mut()));
    let source_format = source
        .as_ref()
        .map_or(TimeFormat::Rfc3339, |s| s.time_format.clone());
    let mut target = target_table.and_then(|t| target_spec(w, t, ctx, &source_format));
    if let Some(target) = target.as_mut() {
        undo::window_for_deletes(w, target, source.as_ref());
    }
    if let Some(shadow) = target.as_mut().and_then(|t| t.shadow.as_mut()) {
        target::shadow_window(w, shadow, source.as_ref());
    }
    if sql_mode && source_table.is_none() {
        needs_source(w, root, &limits);
    }
    let validate_table = w.section(root, "validate", false);
    let validate = validate_table.map_or_else(ValidateSpec::default, |t| validate(w, t));
    if let (Some(t), Some(target)) = (validate_table, &target) {
        validate_rules(w, t, &validate, source.as_ref(), target, scope.as_ref());
    }
    let canary_table = w.section(root, "canary", false);
    let canary = canary_table.and_then(|t| readiness::canary(w, t));
    Sections {
        name,
        reason,
        sql_mode,
        has_source_table: source_table.is_some(),
        source,
        target,
        scope,
        limits,
        throttle,
        validate,
        canary,
        has_canary_table: canary_table.is_some(),
        slo,
        has_slo_table: slo_table.is_some(),
    }
}

/// The top-level `name`: letters, digits, `_` and `-`, at most 100.
fn name(w: &mut Walker<'_>, root: &Table<'_>) -> Option<String> {
    w.string(root, "", "name", true).and_then(|(name, span)| {
        let ok = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Some(name)
        } else {
            w.error("name", Some(span), format!("invalid name `{name}`"))
                .hint = Some("use letters, digits, `_` and `-` (at most 100)".to_owned());
            None
        }
    })
}

/// The source query binds exactly `:start` and `:end` (both, unless the scope is an empty
/// list).
fn query_params(w: &mut Walker<'_>, root: &Table<'_>, query: &str, scope: &Scope) {
    let needs_window = !matches!(scope, Scope::List(v) if v.is_empty());
    let params = named_params(query);
    let span = source_table_span(root, "query");
    for p in ["start", "end"] {
        if needs_window && !params.iter().any(|n| n == p) {
            w.error(
                "source.query",
                span.clone(),
                format!("the query does not use `:{p}`"),
            )
            .hint = Some(
                "filter the window with bound parameters, e.g. `WHERE ts >= :start AND ts < :end`"
                    .to_owned(),
            );
        }
    }
    for p in &params {
        if p != "start" && p != "end" {
            w.error(
                "source.query",
                span.clone(),
                format!("unknown parameter `:{p}`"),
            )
            .hint = Some("only `:start` and `:end` are bound".to_owned());
        }
    }
}

/// Positions every diagnostic (one without a span points at its field, or the nearest
/// enclosing table), sorts them in file order, and builds the spec when nothing is an error.
fn finish(mut w: Walker<'_>, root: &Table<'_>, sections: Sections) -> Parsed {
    let text = w.text;
    let mut positions = std::collections::BTreeMap::new();
    let mut spans = std::collections::BTreeMap::new();
    collect_positions(root, "", text, &mut positions, &mut spans);
    let mut parsed = Parsed {
        spec: None,
        diagnostics: Vec::new(),
        positions,
        spans,
    };
    for d in &mut w.diags {
        if d.position.is_none() && !d.path.is_empty() {
            d.position = parsed.position_of(&d.path);
            d.span = parsed.span_of(&d.path);
        }
    }
    w.diags
        .sort_by_key(|d| (d.position.unwrap_or((usize::MAX, 0)), d.path.clone()));
    let has_error = w.diags.iter().any(Diagnostic::is_error);
    let Sections {
        name,
        reason,
        sql_mode,
        has_source_table,
        source,
        target,
        scope,
        limits,
        throttle,
        validate,
        canary,
        has_canary_table,
        slo,
        has_slo_table,
    } = sections;
    let source_ok = source.is_some() || (sql_mode && !has_source_table);
    let canary_ok = canary.is_some() || !has_canary_table;
    let slo_ok = slo.is_some() || !has_slo_table;
    let spec = match (
        name,
        source_ok && canary_ok && slo_ok,
        target,
        scope,
        has_error,
    ) {
        (Some(name), true, Some(target), Some(scope), false) => Some(Spec {
            name,
            reason,
            source,
            target,
            scope,
            limits,
            throttle,
            validate,
            canary,
            slo,
            redacted_text: redact(text),
            spec_hash: short_hash(&[text]),
        }),
        _ => None,
    };
    parsed.spec = spec;
    parsed.diagnostics = w.diags;
    parsed
}

/// Whether the file says `target.mode = "sql"`, read before `[target]` is validated.
fn is_sql_mode(root: &Table<'_>) -> bool {
    let Some(DeValue::Table(target)) = root.get("target").map(|t| t.get_ref()) else {
        return false;
    };
    matches!(target.get("mode").map(|m| m.get_ref()), Some(DeValue::String(m)) if m == "sql")
}

/// In `sql` mode without `[source]`, the limits that count a window's rows in the source are
/// errors: there is nothing to count.
fn needs_source(w: &mut Walker<'_>, root: &Table<'_>, limits: &Limits) {
    let span = |key: &str| match root.get("limits").map(|l| l.get_ref()) {
        Some(DeValue::Table(t)) => t.get(key).map(|v| v.span()),
        _ => None,
    };
    let hint = "add a `[source]` whose `query` selects the rows of a window (`:start`, `:end`): \
                in `sql` mode it is only used to count them";
    if limits.split.rows.is_some() {
        w.error(
            "limits.split_rows",
            span("split_rows"),
            "`split_rows` needs `[source]`: it counts each partition's rows in the source",
        )
        .hint = Some(hint.to_owned());
    }
    if limits.order == Order::LargestFirst {
        w.error(
            "limits.order",
            span("order"),
            "`largest_first` needs `[source]`: it counts each partition's rows in the source",
        )
        .hint = Some(hint.to_owned());
    }
}

/// Records the position and span of every value (and table header) under `table`, by dotted
/// path.
fn collect_positions(
    table: &Table<'_>,
    prefix: &str,
    text: &str,
    out: &mut std::collections::BTreeMap<String, (usize, usize)>,
    spans: &mut std::collections::BTreeMap<String, Range<usize>>,
) {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let path = join(prefix, name);
        // Values are where problems are; a table is found by its header.
        if let DeValue::Table(inner) = v.get_ref() {
            out.insert(path.clone(), line_col(text, k.span().start));
            spans.insert(path.clone(), k.span());
            collect_positions(inner, &path, text, out, spans);
        } else {
            out.insert(path.clone(), line_col(text, v.span().start));
            spans.insert(path, v.span());
        }
    }
}

fn source_table_span(root: &Table<'_>, key: &str) -> Option<Range<usize>> {
    match root.get("source")?.get_ref() {
        DeValue::Table(t) => t.get(key).map(|v| v.span()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
