//! Rows the target rejects: a batch split until each refused row stands alone, the refused
//! rows recorded in the store's quarantine with their reason.

use backfill_connectors::UndoBatch;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_core::{Batch, RowCounts, Value};
use backfill_store::Rejected;

use crate::error::AttemptError;

use super::{Ctx, Written};

/// Writes `batch` in halves, recursively, until every row the target rejects stands alone;
/// the accepted rows are written, the rejected ones returned with the database's reason.
/// `O(k log n)` statements for `k` rejected rows in a batch of `n`.
pub(super) async fn isolate_rejected(
    ctx: &Ctx,
    batch: &Batch,
    key_positions: &[usize],
    undo: Option<&UndoBatch>,
) -> Result<Written, AttemptError> {
    let mut counts = RowCounts::default();
    let mut rejected = Vec::new();
    let mut stack: Vec<&[Vec<Value>]> = vec![&batch.rows];
    while let Some(rows) = stack.pop() {
        let part = Batch {
            columns: batch.columns.clone(),
            rows: rows.to_vec(),
        };
        match ctx.sink.upsert_undo(&part, None, undo).await {
            Ok(c) => counts.add(&c),
            Err(e) if e.class() == ErrorClass::Data && rows.len() > 1 => {
                let (left, right) = rows.split_at(rows.len() / 2);
                stack.push(right);
                stack.push(left);
            }
            Err(e) if e.class() == ErrorClass::Data => {
                rejected.push(rejected_row(&batch.columns, &rows[0], key_positions, &e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Written {
        counts,
        rejected,
        extra_ran: false,
    })
}

/// `row` (named by `columns`), refused by the target with `error`, as a quarantine record:
/// its key, the database's reason (secrets masked) and the row as a JSON object.
pub(super) fn rejected_row(
    columns: &[String],
    row: &[Value],
    key_positions: &[usize],
    error: &impl std::fmt::Display,
) -> Rejected {
    let key: Vec<Value> = key_positions.iter().map(|&i| row[i].clone()).collect();
    let json: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .zip(row)
        .map(|(c, v)| (c.clone(), value_json(v)))
        .collect();
    Rejected {
        key: backfill_core::encode_key(&key),
        error: redact(&error.to_string()),
        row: serde_json::Value::Object(json),
    }
}

/// A value as JSON for the quarantine: numbers and booleans as themselves, everything else as
/// its portable text, blobs as hex.
pub(super) fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Blob(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        other => json!(other.as_portable_text().unwrap_or_default()),
    }
}
