//! `backfill report RUN`: the postmortem of a run in one self-contained file (Markdown, JSON or
//! HTML with inline SVG charts): who and why, the timeline, partitions and rows, throughput and
//! rate over time, the top errors, reconciliation and the audit chain's state.
//!
//! Everything comes from the state store's aggregates and bounded reads (the run-level events,
//! the error groups, progress per bucket, the last rate changes), so the report of a run of a
//! million partitions is as small as one of a hundred.

use std::fmt::Write as _;

use backfill_store::{Bucket, Store};
use serde_json::{Value, json};

use crate::args::{ReportArgs, ReportFormat};
use crate::commands::run::find_run;
use crate::commands::status::{StatusView, UndoRows};
use crate::commands::{open_store, thousands};
use crate::output::Output;

/// Run-level events, error groups and rate changes a report holds at most.
const EVENTS: usize = 500;
const ERROR_GROUPS: usize = 10;
const RATE_CHANGES: u32 = 200;

pub(crate) async fn run(args: &ReportArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let record = find_run(&store, &args.run).await?;
    let report = gather(&store, record).await?;
    let text = match args.format {
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ReportFormat::Md => markdown(&report),
        ReportFormat::Html => html(&report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| {
                crate::UserError::new(format!(
                    "cannot write the report to {}: {e}",
                    path.display()
                ))
                .hint("give a writable path with --output, or leave it out to print the report")
            })?;
            out.note(format!("wrote {}", path.display()));
        }
        None => out.text(&text),
    }
    Ok(())
}

/// The report's facts, as JSON (the `json` format itself; the others render it).
async fn gather(store: &Store, record: backfill_store::RunRecord) -> anyhow::Result<Value> {
    let run_id = record.id.clone();
    let view = StatusView::load(store, record, UndoRows::Skip).await?;
    let events = store.run_events(&run_id, EVENTS).await?;
    let errors = store.error_groups(&run_id, ERROR_GROUPS).await?;
    let rates = store.rate_changes(&run_id, RATE_CHANGES).await?;
    // Minutes for a run of a few hours, hours beyond.
    let bucket = if view.st.elapsed_seconds > 6.0 * 3600.0 {
        Bucket::Hour
    } else {
        Bucket::Minute
    };
    let progress = store.progress(&run_id, bucket).await?;
    let chain = store.verify_audit().await?;
    Ok(json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "status": view.to_json(),
        "timeline": events.iter().map(|e| json!({
            "at": e.at.to_rfc3339(),
            "actor": e.actor,
            "action": e.action,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "timeline_truncated": events.len() == EVENTS,
        "errors": errors.iter().map(backfill_store::ErrorGroup::to_json).collect::<Vec<_>>(),
        "rates": rates.iter().map(|r| json!({
            "at": r.at,
            "rows_per_second": r.rate,
            "cause": r.cause,
        })).collect::<Vec<_>>(),
        "progress": {
            "bucket": if bucket == Bucket::Hour { "hour" } else { "minute" },
            "points": progress.iter().map(|p| json!({
                "at": p.at, "partitions": p.partitions, "rows": p.rows,
            })).collect::<Vec<_>>(),
        },
        "audit_chain": {
            "events": chain.events,
            "intact": chain.is_ok(),
            "first_bad_seq": chain.first_bad_seq,
            "problem": chain.problem,
        },
    }))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn count(v: &Value) -> String {
    v.as_u64().map_or_else(|| text(v), thousands)
}

/// The summary lines both text formats show: (label, value).
fn summary(r: &Value) -> Vec<(&'static str, String)> {
    let s = &r["status"];
    let parts = s["partitions"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{} {k}", count(n)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let rows = &s["rows"];
    let rec = &s["reconciliation"];
    let chain = &r["audit_chain"];
    let mut lines = summary_lines(s, &parts, rows, rec, chain);
    // `[slo]`: the deadline and projection, the error budget and the burn guard's stage.
    let objective: Vec<String> = crate::commands::objective::lines(&s["slo"])
        .iter()
        .map(|l| {
            let words = l.split_whitespace().collect::<Vec<_>>().join(" ");
            words
                .strip_prefix("objective: ")
                .map_or(words.clone(), str::to_owned)
        })
        .collect();
    if !objective.is_empty() {
        lines.push(("Objective", objective.join("; ")));
    }
    lines
}

fn summary_lines(
    s: &Value,
    parts: &str,
    rows: &Value,
    rec: &Value,
    chain: &Value,
) -> Vec<(&'static str, String)> {
    vec![
        ("Run", text(&s["run_id"])),
        ("Spec", text(&s["spec"])),
        ("State", text(&s["state"])),
        ("Owner", text(&s["owner"])),
        ("Reason", text(&s["reason"])),
        ("Created", text(&s["created_at"])),
        ("Started", text(&s["started_at"])),
        ("Finished", text(&s["finished_at"])),
        ("Guarantee", text(&s["guarantee"])),
        ("Plan hash", text(&s["plan_hash"])),
        (
            "Partitions",
            format!("{parts} (of {})", count(&s["partitions_total"])),
        ),
        (
            "Rows",
            format!(
                "{} read, {} inserted, {} updated, {} deleted, {} unchanged",
                count(&rows["read"]),
                count(&rows["inserted"]),
                count(&rows["updated"]),
                count(&rows["deleted"]),
                count(&rows["unchanged"])
            ),
        ),
        (
            "Success rate",
            format!("{:.1}%", s["success_rate"].as_f64().unwrap_or(0.0) * 100.0),
        ),
        (
            "Throughput",
            format!(
                "{} rows/s over {}",
                thousands(s["rows_per_second"].as_f64().unwrap_or(0.0) as u64),
                crate::commands::duration(s["elapsed_seconds"].as_f64().unwrap_or(0.0))
            ),
        ),
        (
            "Errors",
            format!(
                "{:.2} per 1,000 rows, {:.2} retries per partition, {} failing partitions",
                s["errors_per_1000_rows"].as_f64().unwrap_or(0.0),
                s["retries_per_partition"].as_f64().unwrap_or(0.0),
                count(&s["failing_total"])
            ),
        ),
        (
            "Reconciliation",
            format!(
                "{} verified, {} mismatched, {} not verified",
                count(&rec["verified"]),
                count(&rec["mismatched"]),
                count(&rec["not_verified"])
            ),
        ),
        (
            "Audit chain",
            if chain["intact"] == true {
                format!("intact ({} events in the store)", count(&chain["events"]))
            } else {
                format!(
                    "BROKEN at event {}: {}",
                    text(&chain["first_bad_seq"]),
                    text(&chain["problem"])
                )
            },
        ),
    ]
}

/// Text made safe for a Markdown table cell or heading: backslashes and pipes escaped, line
/// breaks to spaces, `<` as an entity so no text becomes HTML.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
        .replace('<', "&lt;")
}

/// A value as safe Markdown text ([`cell`]).
fn md_text(v: &Value) -> String {
    cell(&text(v))
}

fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let s = &r["status"];
    let _ = writeln!(
        md,
        "# Backfill report: {} ({})\n",
        md_text(&s["spec"]),
        md_text(&s["run_id"])
    );
    let _ = writeln!(
        md,
        "Generated {} by `backfill report`.\n",
        md_text(&r["generated_at"])
    );
    md.push_str("## Summary\n\n| | |\n|---|---|\n");
    for (label, value) in summary(r) {
        let _ = writeln!(md, "| {label} | {} |", cell(&value));
    }
    md.push_str("\n## Timeline\n\n| at | who | what | detail |\n|---|---|---|---|\n");
    for e in r["timeline"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            md_text(&e["at"]),
            md_text(&e["actor"]),
            md_text(&e["action"]),
            cell(&e["detail"].to_string())
        );
    }
    if r["timeline_truncated"] == true {
        let _ = writeln!(
            md,
            "\n(the first {EVENTS} run-level events; `backfill audit RUN` lists all)"
        );
    }
    let bucket = md_text(&r["progress"]["bucket"]);
    let _ = writeln!(
        md,
        "\n## Throughput (per {bucket})\n\n| {bucket} (UTC) | partitions | rows |\n|---|---:|---:|"
    );
    for p in r["progress"]["points"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            md_text(&p["at"]),
            count(&p["partitions"]),
            count(&p["rows"])
        );
    }
    md.push_str("\n## Rate changes\n\n| at | rows/s | cause |\n|---|---:|---|\n");
    for c in r["rates"].as_array().into_iter().flatten() {
        let rate = c["rows_per_second"]
            .as_f64()
            .map_or("no limit".to_owned(), |v| thousands(v as u64));
        let _ = writeln!(
            md,
            "| {} | {rate} | {} |",
            md_text(&c["at"]),
            md_text(&c["cause"])
        );
    }
    md.push_str("\n## Top errors\n\n");
    let errors = r["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if errors.is_empty() {
        md.push_str("No failing partition.\n");
    } else {
        md.push_str("| partitions | failed | first | class | error |\n|---:|---:|---|---|---|\n");
        for g in errors {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                count(&g["partitions"]),
                count(&g["failed"]),
                md_text(&g["first_partition_id"]),
                md_text(&g["class"]),
                md_text(&g["message"])
            );
        }
    }
    md
}

/// Escapes text for HTML (element content and quoted attributes).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A bar chart of `values` (labels under the first and last bar) as inline SVG.
fn svg_bars(values: &[(String, f64)], unit: &str) -> String {
    let (w, h) = (720.0, 160.0);
    let max = values
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let n = values.len().max(1) as f64;
    let bar = w / n;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"{}\" class=\"chart\">",
        h + 20.0,
        esc(unit)
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let bh = (v / max * h).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{}: {} {}</title></rect>",
            i as f64 * bar + bar * 0.1,
            h - bh,
            bar * 0.8,
            esc(label),
            thousands(*v as u64),
            esc(unit)
        );
    }
    if let (Some(first), Some(last)) = (values.first(), values.last()) {
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{:.0}\">{}</text><text x=\"{w}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
            h + 16.0,
            esc(&first.0),
            h + 16.0,
            esc(&last.0)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{w}\" y=\"12\" text-anchor=\"end\">max {} {}</text></svg>",
        thousands(max as u64),
        esc(unit)
    );
    svg
}

fn html(r: &Value) -> String {
    let s = &r["status"];
    let mut h = String::new();
    let title = format!(
        "Backfill report: {} ({})",
        text(&s["spec"]),
        text(&s["run_id"])
    );
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>\
         <h1>{}</h1><p class=\"muted\">Generated {} by <code>backfill report</code>.</p>",
        esc(&title),
        esc(&title),
        esc(&text(&r["generated_at"]))
    );
    h.push_str("<h2>Summary</h2><table class=\"kv\">");
    for (label, value) in summary(r) {
        let _ = write!(h, "<tr><th>{label}</th><td>{}</td></tr>", esc(&value));
    }
    h.push_str("</table>");
    let bucket = text(&r["progress"]["bucket"]);
    let points: Vec<(String, f64)> = r["progress"]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (text(&p["at"]), p["rows"].as_f64().unwrap_or(0.0)))
        .collect();
    let _ = write!(
        h,
        "<h2>Throughput (rows per {bucket})</h2>{}",
        svg_bars(&points, "rows")
    );
    let rates: Vec<(String, f64)> = r["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (text(&c["at"]), c["rows_per_second"].as_f64().unwrap_or(0.0)))
        .collect();
    let _ = write!(
        h,
        "<h2>Rate limit at each change (rows/s; 0: no limit)</h2>{}",
        svg_bars(&rates, "rows/s")
    );
    h.push_str("<h2>Top errors</h2>");
    let errors = r["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if errors.is_empty() {
        h.push_str("<p>No failing partition.</p>");
    } else {
        h.push_str(
            "<table><tr><th>partitions</th><th>failed</th><th>first</th><th>class</th>\
             <th>error</th></tr>",
        );
        for g in errors {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                count(&g["partitions"]),
                count(&g["failed"]),
                esc(&text(&g["first_partition_id"])),
                esc(&text(&g["class"])),
                esc(&text(&g["message"]))
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<h2>Timeline</h2><table><tr><th>at</th><th>who</th><th>what</th><th>detail</th></tr>",
    );
    for e in r["timeline"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&text(&e["at"])),
            esc(&text(&e["actor"])),
            esc(&text(&e["action"])),
            esc(&e["detail"].to_string())
        );
    }
    h.push_str("</table></main></body></html>\n");
    h
}

/// The report's own style: readable on a laptop and a phone, printable, no external resource.
const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:960px;margin:0 auto;padding:24px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}\
th,td{border-bottom:1px solid #e3e6eb;padding:6px 8px;text-align:left;vertical-align:top}\
table.kv th{width:160px;color:#5a6272;font-weight:500}code{font-size:12px;word-break:break-all}\
.muted{color:#5a6272}.chart{width:100%;height:auto;background:#fff}.chart rect{fill:#3d6fd8}\
.chart text{font-size:11px;fill:#5a6272}";
