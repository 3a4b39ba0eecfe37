//! `backfill check SPEC`: validate the file, then the connections and the data's time format.

use backfill_connectors::watch::{Offer, signal};
use backfill_connectors::{AnySink, AnySource, ConnectorError, Watch, open_sink, open_source};
use backfill_core::spec::SourceSpec;
use backfill_core::{Diagnostic, Scope, Spec, Window, WriteMode};
use serde_json::json;

use crate::UserError;
use crate::args::CheckArgs;
use crate::output::Output;
use crate::specfile;

pub(crate) async fn run(args: &CheckArgs, out: Output) -> anyhow::Result<()> {
    let spec_file = specfile::parse_file(&args.spec)?;
    let (file, parsed) = (&spec_file.file, &spec_file.parsed);
    let mut diagnostics = parsed.diagnostics.clone();
    let mut signals = None;
    if let Some(spec) = &parsed.spec
        && !args.offline
    {
        let mut found = live_checks(spec).await;
        let (offers, problems) = live_signals(spec).await;
        found.extend(problems);
        signals = offers;
        for mut d in found {
            d.position = d.position.or_else(|| parsed.position_of(&d.path));
            d.span = d.span.or_else(|| parsed.span_of(&d.path));
            diagnostics.push(d);
        }
    }
    spec_file.print(&diagnostics, out);
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let partitions = parsed
        .spec
        .as_ref()
        .and_then(|s| backfill_core::plan::Cut::new(&s.scope).ok())
        .and_then(|cut| cut.count().ok())
        .unwrap_or(0);
    let mut result = json!({
        "spec": file,
        "ok": errors == 0,
        "errors": errors,
        "warnings": warnings,
        "partitions": partitions,
        "diagnostics": specfile::diagnostics_json(&diagnostics),
    });
    if let Some((key, offers)) = &signals {
        result["signals"] = json!({
            "database": key,
            "offers": offers.iter().map(|o| json!({
                "signal": o.signal,
                "available": o.available,
                "detail": o.detail,
            })).collect::<Vec<_>>(),
        });
        out.line(format!("live signals of {key}:"));
        for o in offers {
            out.line(format!(
                "  {}: {} ({})",
                o.signal,
                if o.available { "yes" } else { "no" },
                o.detail
            ));
        }
    }
    out.json(&result);
    if errors > 0 {
        let mut error = UserError::new(format!(
            "{file}: {errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        ));
        error.diagnostics = specfile::diagnostics_json(&diagnostics);
        return Err(error.into());
    }
    let live = if args.offline {
        ""
    } else {
        ", source and target reachable"
    };
    out.line(format!(
        "{file}: ok ({partitions} partitions{live}{})",
        if warnings > 0 {
            format!(", {warnings} warnings")
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// The signals the throttle's live database offers (`backfill_connectors::Watch::offers`):
/// the database of `throttle.watch`, else a PostgreSQL or MySQL probe's (which the throttle
/// reads only through `watch`, said in a warning). Returns the key the database came from and
/// its offers, and the problems found: the watch unreachable (an error), the live statements'
/// latency not offered (a warning: the throttle then follows the other signals only).
async fn live_signals(spec: &Spec) -> (Option<(&'static str, Vec<Offer>)>, Vec<Diagnostic>) {
    let Some(throttle) = &spec.throttle else {
        return (None, Vec::new());
    };
    let (key, url) = match (&throttle.watch, &throttle.probe) {
        (Some(url), _) => ("throttle.watch", url),
        (None, Some(probe)) if probe.url.scheme() != "sqlite" => ("throttle.probe", &probe.url),
        _ => return (None, Vec::new()),
    };
    let watch = match Watch::open(url).await {
        Ok(w) => w,
        Err(e) => return (None, vec![open_problem(key, &e)]),
    };
    let offers = watch.offers().await;
    watch.close().await;
    let mut problems = Vec::new();
    let latency = offers
        .iter()
        .find(|o| [signal::PG_STAT_STATEMENTS, signal::DIGESTS].contains(&o.signal));
    match (key, latency) {
        ("throttle.watch", Some(o)) if !o.available => problems.push(
            Diagnostic::warning(
                "throttle.watch",
                format!(
                    "the watched database does not offer {}: {}",
                    o.signal, o.detail
                ),
            )
            .with_hint(
                "until it does, the throttle follows the other signals only (waits or threads \
                 running, replica lag, errors, a `probe` if set)",
            ),
        ),
        ("throttle.probe", Some(o)) if o.available => problems.push(
            Diagnostic::warning(
                "throttle.probe",
                format!(
                    "the probe's database offers {}, which the throttle reads only through \
                     `watch`",
                    o.signal
                ),
            )
            .with_hint(
                "add `watch = { url = … }` naming it: live traffic's own latency is a \
                 steadier signal than a probe statement",
            ),
        ),
        _ => {}
    }
    (Some((key, offers)), problems)
}

/// Connects to the source and target; checks the target columns and the time format.
async fn live_checks(spec: &Spec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // `sql` mode may have no `[source]`: then only the target is checked.
    let source = match &spec.source {
        None => None,
        Some(source) => match open_source(source, spec.source_key(), 1).await {
            Ok(s) => Some((s, source)),
            Err(e) => {
                out.push(open_problem("source", &e));
                None
            }
        },
    };
    let sink = match open_sink(&spec.target, 1).await {
        Ok(s) => Some(s),
        Err(e) => {
            out.push(open_problem("target", &e));
            None
        }
    };
    if let (Some(sink), WriteMode::Replace { window_column }) = (&sink, &spec.target.mode)
        && let Ok(Some(false)) = sink.leads_an_index(window_column).await
    {
        out.push(
            Diagnostic::warning(
                "target.window_column",
                format!(
                    "no index of the target table starts with `{window_column}`: `replace` \
                     deletes each partition's window by it, so every partition scans the whole \
                     table"
                ),
            )
            .with_hint(format!(
                "create one, e.g. CREATE INDEX ON {} ({window_column})",
                spec.target.table.as_deref().unwrap_or("TABLE")
            )),
        );
    }
    if let Some(sink) = &sink
        && let Some(d) = unindexed_reconciliation(spec, sink).await
    {
        out.push(d);
    }
    let Some((source, source_spec)) = source else {
        if let Some(sink) = sink {
            sink.close().await;
        }
        return out;
    };
    let whole = whole_window(&spec.scope);
    let first = backfill_core::plan::Cut::new(&spec.scope)
        .ok()
        .and_then(|cut| cut.windows().next());
    if let (Some(window), WriteMode::Sql { .. }) = (first, &spec.target.mode) {
        // The source of `sql` mode only counts rows: that is all there is to check.
        if let Err(e) = source.count(&window).await {
            out.push(Diagnostic::error("source.query", e.to_string()));
        }
    } else if let Some(window) = first {
        match source.read_batch(&window, None, 1).await {
            Ok(batch) if !batch.columns.is_empty() => {
                if let Err(e) = source.key_positions(&batch.columns) {
                    out.push(Diagnostic::error("target.key", e.to_string()).with_hint(
                        "the source query must return every key column under the same name",
                    ));
                }
                if let (Some(sink), false) =
                    (&sink, matches!(spec.target.mode, WriteMode::Sql { .. }))
                    && let Err(e) = sink.check_columns(&batch.columns).await
                {
                    out.push(Diagnostic::error("target.table", e.to_string()).with_hint(
                        "the target table needs a column for every column the query returns",
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => out.push(Diagnostic::error("source.query", e.to_string())),
        }
    }
    if let (Some(window), Some(ready)) = (first, &source_spec.ready) {
        out.extend(ready_check(&source, &ready.sql, &window).await);
    }
    if let (Some(window @ Window::Time { .. }), Some(column)) = (whole, &source_spec.time_column) {
        out.extend(time_format_checks(source_spec, &source, &window, column).await);
    }
    source.close().await;
    if let Some(sink) = sink {
        sink.close().await;
    }
    out
}

/// `source.ready` run once, for the first partition's `window`: an error is the spec's
/// (the query is wrong); "not ready" only a note, since a run waits for it.
/// A warning when reconciliation by default checks each partition on a target table whose
/// window column leads no index: each check scans the whole table.
async fn unindexed_reconciliation(spec: &Spec, sink: &AnySink) -> Option<Diagnostic> {
    let backfill_core::reconcile::Reconcile::Rows { window_column } =
        backfill_core::reconcile::reconcile(spec)
    else {
        return None;
    };
    if spec.validate.explicit || !spec.validate.after_partition {
        return None;
    }
    let Ok(Some(false)) = sink.leads_an_index(&window_column).await else {
        return None;
    };
    Some(
        Diagnostic::warning(
            "validate.after_partition",
            format!(
                "no index of the target table starts with `{window_column}`: each \
                 partition's reconciliation will scan the whole table"
            ),
        )
        .with_hint(format!(
            "create one, e.g. CREATE INDEX ON {} ({window_column}), or set `[validate] \
             after_partition = false` and `at_end = true` to reconcile once at the end",
            spec.target.table.as_deref().unwrap_or("TABLE")
        )),
    )
}

async fn ready_check(source: &AnySource, sql: &str, window: &Window) -> Option<Diagnostic> {
    match source.ready(sql, window).await {
        Ok(true) => None,
        Ok(false) => Some(
            Diagnostic::warning(
                "source.ready",
                format!(
                    "the source is not ready for the first partition ({window}) yet: a run \
                     waits for it, up to `ready_timeout`"
                ),
            )
            .with_hint("`backfill plan SPEC` lists every partition that is not ready"),
        ),
        Err(e) => Some(Diagnostic::error("source.ready", e.to_string())),
    }
}

/// A diagnostic for an error opening the source or target, at the field it is about.
fn open_problem(side: &str, e: &ConnectorError) -> Diagnostic {
    match e {
        ConnectorError::Connect { .. } | ConnectorError::Unavailable { .. } => {
            Diagnostic::error(format!("{side}.url"), e.to_string())
                .with_hint("check that the database exists and is reachable")
        }
        ConnectorError::MissingColumn { .. } if side == "source" => {
            Diagnostic::error("target.key", e.to_string())
                .with_hint("the source query must return every key column under the same name")
        }
        ConnectorError::MissingColumn { .. } => Diagnostic::error("target.table", e.to_string())
            .with_hint("the target table needs a column for every column the query returns"),
        ConnectorError::Sql { .. } if side == "source" => {
            Diagnostic::error("source.query", e.to_string())
        }
        ConnectorError::Sql { .. } | ConnectorError::Data { .. } => {
            Diagnostic::error(side, e.to_string())
        }
    }
}

async fn time_format_checks(
    spec: &SourceSpec,
    source: &backfill_connectors::AnySource,
    whole: &Window,
    column: &str,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let format = &spec.time_format;
    match source.sample(whole, column, 20).await {
        Ok(values) if values.is_empty() => {
            let mut hint = None;
            for alt in format.alternatives() {
                if let Ok(n) = source.count_with_format(whole, &alt).await
                    && n > 0
                {
                    hint = Some(format!(
                        "with time_format = \"{}\" the query finds {n} rows in the scope",
                        alt.name()
                    ));
                    break;
                }
            }
            let d = Diagnostic::warning(
                "source.time_format",
                format!(
                    "the query finds no rows in the whole scope with time_format = \"{}\"",
                    format.name()
                ),
            );
            out.push(match hint {
                Some(h) => d.with_hint(h),
                None => d.with_hint("check the scope and source.time_column"),
            });
        }
        Ok(values) => {
            let bad: Vec<_> = values
                .iter()
                .filter(|v| {
                    !matches!(v, backfill_core::Value::Null) && format.parse_value(v).is_none()
                })
                .collect();
            if let Some(example) = bad.first() {
                out.push(
                    Diagnostic::warning(
                        "source.time_format",
                        format!(
                            "{} of {} sampled values of `{column}` do not match time_format = \"{}\" (e.g. {})",
                            bad.len(),
                            values.len(),
                            format.name(),
                            example.preview()
                        ),
                    )
                    .with_hint("set source.time_format to how the column stores instants"),
                );
            }
        }
        Err(e) => out.push(Diagnostic::warning("source.time_column", e.to_string())),
    }
    out
}

/// One window covering the whole scope (for sampling and counting).
pub(crate) fn whole_window(scope: &Scope) -> Option<Window> {
    match scope {
        Scope::Time { start, end, .. } => Some(Window::Time {
            start: *start,
            end: *end,
        }),
        Scope::Key { from, to, .. } => Some(Window::Key {
            start: *from,
            end: *to,
        }),
        Scope::List(list) => {
            let first = list.iter().min()?;
            let last = list.iter().max()?;
            match (first, last) {
                (Window::Time { start, .. }, Window::Time { end, .. }) => Some(Window::Time {
                    start: *start,
                    end: *end,
                }),
                (Window::Key { start, .. }, Window::Key { end, .. }) => Some(Window::Key {
                    start: *start,
                    end: *end,
                }),
                _ => None,
            }
        }
    }
}
