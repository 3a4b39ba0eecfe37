//! `backfill quarantine RUN [--retry]`: the rows the target rejected, and another chance.
//!
//! Keys print as the user wrote them in the spec, `id=18000` (`a=1, b="x"` for several
//! columns), never in the store's internal encoding.

use serde_json::json;

use crate::args::QuarantineArgs;
use crate::commands::run::find_run;
use crate::commands::{open_store, whoami};
use crate::output::Output;

pub(crate) async fn run(args: &QuarantineArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    if args.retry {
        let reopened = store.retry_quarantine(&run.id, &whoami()).await?;
        out.json(&json!({ "run_id": run.id, "reopened_partitions": reopened }));
        out.line(format!(
            "reopened {reopened} partition(s) of run {} with quarantined rows; continue with `backfill resume {}`",
            run.id, run.id
        ));
        return Ok(());
    }
    let rows = store.quarantined(&run.id).await?;
    let key_columns = key_columns(&run.spec_text);
    out.json(&json!(
        rows.iter()
            .map(|r| json!({
                "partition_id": r.partition_id,
                "key": serde_json::from_str::<serde_json::Value>(&r.key).unwrap_or(json!(r.key)),
                "key_text": display_key(&r.key, &key_columns),
                "error": r.error,
                "row": r.row,
                "attempt": r.attempt,
                "at": r.at,
            }))
            .collect::<Vec<_>>()
    ));
    if rows.is_empty() {
        out.line(format!("run {} has no quarantined rows", run.id));
        return Ok(());
    }
    out.line(format!(
        "{} quarantined row(s) in run {}:",
        rows.len(),
        run.id
    ));
    for r in &rows {
        out.line(format!(
            "  {} key {}: {}",
            r.partition_id,
            display_key(&r.key, &key_columns),
            r.error
        ));
        out.line(format!("      row {}", r.row));
    }
    out.line(format!(
        "fix the cause, then `backfill quarantine {} --retry` and `backfill resume {}`",
        run.id, run.id
    ));
    Ok(())
}

/// The run's key columns (`target.key`) from its stored spec text; empty when the text does
/// not say (the key then prints without names).
fn key_columns(spec_text: &str) -> Vec<String> {
    let Ok(doc) = spec_text.parse::<toml::Table>() else {
        return Vec::new();
    };
    match doc.get("target").and_then(|t| t.get("key")) {
        Some(toml::Value::String(one)) => vec![one.clone()],
        Some(toml::Value::Array(many)) => many
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A stored key (`encode_key` text) for people: `id=18000`, `a=1, b="x"`; values without
/// names when the columns are unknown; the stored text when it cannot be decoded.
fn display_key(stored: &str, columns: &[String]) -> String {
    let Some(values) = backfill_core::decode_key(stored) else {
        return stored.to_owned();
    };
    let named = columns.len() == values.len();
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match named {
            true => format!("{}={}", columns[i], v.preview()),
            false => v.preview(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_by_column_name() {
        let columns = key_columns("# backfill spec file: /x\n[target]\nkey = [\"a\", \"b\"]\n");
        assert_eq!(columns, ["a", "b"]);
        let key = backfill_core::encode_key(&[
            backfill_core::Value::Int(1),
            backfill_core::Value::Text("x".into()),
        ]);
        assert_eq!(display_key(&key, &columns), "a=1, b=\"x\"");
        assert_eq!(display_key(&key, &[]), "1, \"x\"");
        assert_eq!(key_columns("[target]\nkey = \"id\"\n"), ["id"]);
        assert_eq!(display_key("not a key", &columns), "not a key");
    }
}
