//! The values that move between a source and a sink.
//!
//! A deliberately small, database-neutral set: every connector maps its native types onto it
//! and back. Values are plain data with no I/O; equality is exact (floats compare by bits), so
//! "unchanged row" detection never rounds.

/// One cell of a row.
#[derive(Clone, Debug)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text (possibly empty, which is not NULL).
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// A short, human form for messages (text is truncated, blobs are summarised), so a huge
    /// value never floods a log line.
    pub fn preview(&self) -> String {
        const MAX: usize = 64;
        match self {
            Value::Null => "NULL".to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(s) if s.chars().count() > MAX => {
                let head: String = s.chars().take(MAX).collect();
                format!("{head:?}…")
            }
            Value::Text(s) => format!("{s:?}"),
            Value::Blob(b) => format!("<{} bytes>", b.len()),
        }
    }
}

/// A batch of rows read from a source, column names shared by every row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Column names, in the order of each row's values.
    pub columns: Vec<String>,
    /// The rows; every row has exactly `columns.len()` values.
    pub rows: Vec<Vec<Value>>,
}

impl Batch {
    /// Number of rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the batch holds no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What a write did to the target, counted by the database where it can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Rows read from the source.
    pub read: u64,
    /// Rows that were new in the target.
    pub inserted: u64,
    /// Existing rows whose values changed.
    pub updated: u64,
    /// Existing rows already identical to the source: not written at all.
    pub unchanged: u64,
    /// Rows deleted (`replace` mode deletes the window first).
    pub deleted: u64,
    /// Rows affected by a `sql`-mode statement, which cannot tell inserts from updates.
    pub affected: u64,
}

impl RowCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &RowCounts) {
        self.read += other.read;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.deleted += other.deleted;
        self.affected += other.affected;
    }

    /// Rows the write changed in the target.
    pub fn written(&self) -> u64 {
        self.inserted + self.updated + self.deleted + self.affected
    }
}

/// Encodes key values (a checkpoint) as JSON that round-trips exactly: `{"i":1}`, `{"f":1.5}`,
/// `{"t":"x"}`, `{"b":"00ff"}` or `null` per value.
pub fn encode_key(values: &[Value]) -> String {
    use serde_json::{Value as J, json};
    let items: Vec<J> = values
        .iter()
        .map(|v| match v {
            Value::Null => J::Null,
            Value::Int(i) => json!({ "i": i }),
            Value::Float(f) => json!({ "f": f }),
            Value::Text(s) => json!({ "t": s }),
            Value::Blob(b) => {
                json!({ "b": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
            }
        })
        .collect();
    J::Array(items).to_string()
}

/// Decodes [`encode_key`] output; `None` when the text is not such an encoding.
pub fn decode_key(text: &str) -> Option<Vec<Value>> {
    use serde_json::Value as J;
    let J::Array(items) = serde_json::from_str::<J>(text).ok()? else {
        return None;
    };
    items
        .into_iter()
        .map(|item| {
            if item.is_null() {
                return Some(Value::Null);
            }
            let obj = item.as_object()?;
            let (tag, v) = obj.iter().next()?;
            match tag.as_str() {
                "i" => v.as_i64().map(Value::Int),
                "f" => v.as_f64().map(Value::Float),
                "t" => v.as_str().map(|s| Value::Text(s.to_owned())),
                "b" => {
                    let s = v.as_str()?;
                    if s.len() % 2 != 0 {
                        return None;
                    }
                    (0..s.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                        .map(Value::Blob)
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = vec![
            Value::Int(i64::MIN),
            Value::Text("é\"x".into()),
            Value::Null,
            Value::Float(-0.5),
            Value::Blob(vec![0, 255]),
        ];
        assert_eq!(decode_key(&encode_key(&key)), Some(key));
        assert_eq!(decode_key("[{\"z\":1}]"), None);
        assert_eq!(decode_key("nonsense"), None);
    }

    #[test]
    fn preview_truncates_long_text() {
        let long = Value::Text("é".repeat(500));
        assert!(long.preview().chars().count() < 80);
        assert_eq!(Value::Blob(vec![0; 10]).preview(), "<10 bytes>");
    }

    #[test]
    fn floats_compare_exactly() {
        assert_eq!(Value::Float(0.1), Value::Float(0.1));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }
}
