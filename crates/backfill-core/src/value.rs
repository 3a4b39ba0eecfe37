//! The values that move between a source and a sink.
//!
//! A deliberately small, database-neutral set: every connector maps its native types onto it
//! and back. Values are plain data with no I/O; equality is exact (floats compare by bits), so
//! "unchanged row" detection never rounds.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// One cell of a row.
///
/// Every connector decodes its native types into these and encodes them back; a type that
/// has no faithful variant here is refused with an error naming the column, never converted
/// lossily. Decimals travel as text so no digit is ever rounded; timestamps without a time
/// zone stay wall-clock times and are never shifted.
#[derive(Clone, Debug)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// An exact decimal number in plain notation (`-12.50`, scale kept), any precision.
    Decimal(String),
    /// UTF-8 text (possibly empty, which is not NULL).
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
    /// A calendar date.
    Date(NaiveDate),
    /// A time of day without a date or zone.
    Time(NaiveTime),
    /// A timestamp without time zone: a wall-clock reading, never shifted.
    Timestamp(NaiveDateTime),
    /// An instant (timestamp with time zone), held in UTC.
    TimestampTz(DateTime<Utc>),
    /// A JSON document, as text.
    Json(String),
    /// A UUID.
    Uuid([u8; 16]),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Decimal(a), Value::Decimal(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            (Value::Date(a), Value::Date(b)) => a == b,
            (Value::Time(a), Value::Time(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::TimestampTz(a), Value::TimestampTz(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a == b,
            (Value::Uuid(a), Value::Uuid(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The memory this value holds: its inline size plus the bytes of text, JSON, decimal or
    /// blob it owns (the measure of [`BATCH_BYTES`]).
    pub fn size(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 0,
            }
    }

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
            Value::Bool(b) => b.to_string(),
            Value::Decimal(d) => d.clone(),
            Value::Date(d) => d.to_string(),
            Value::Time(t) => t.to_string(),
            Value::Timestamp(t) => t.to_string(),
            Value::TimestampTz(t) => t.to_rfc3339(),
            Value::Json(j) if j.chars().count() > MAX => {
                let head: String = j.chars().take(MAX).collect();
                format!("{head}…")
            }
            Value::Json(j) => j.clone(),
            Value::Uuid(u) => uuid_text(u),
        }
    }

    /// The value as text for a database without a native type for it (SQLite): plain
    /// decimals, ISO dates and times, RFC 3339 instants with `Z`, hyphenated UUIDs. `None` for
    /// NULL, integers, floats and blobs, which every database stores natively.
    pub fn as_portable_text(&self) -> Option<String> {
        match self {
            Value::Decimal(d) => Some(d.clone()),
            Value::Text(s) | Value::Json(s) => Some(s.clone()),
            Value::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            Value::Time(t) => Some(t.format("%H:%M:%S%.f").to_string()),
            Value::Timestamp(t) => Some(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
            Value::TimestampTz(t) => Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            Value::Uuid(u) => Some(uuid_text(u)),
            Value::Bool(_) | Value::Null | Value::Int(_) | Value::Float(_) | Value::Blob(_) => None,
        }
    }
}

/// Hyphenated lower-case text of a UUID.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Parses hyphenated (or plain 32-digit) UUID text.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The most memory one batch of rows is meant to hold, in [`Value::size`] bytes, whatever
/// `limits.batch_rows` says: a source stops a batch at the row that reaches it, so a batch
/// of wide rows (large text, JSON or blobs) cannot grow with `batch_rows` times the width.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

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
    /// The memory the rows hold, as [`row_size`] counts it.
    pub fn size(&self) -> usize {
        self.rows.iter().map(|r| row_size(r)).sum()
    }

    /// Whether a source may have more rows after this batch, read with at most `batch_rows`
    /// rows and [`BATCH_BYTES`]: the batch was cut by one bound or the other. Only a batch
    /// below both bounds ends its window.
    pub fn is_full(&self, batch_rows: u32) -> bool {
        self.len() >= batch_rows as usize || self.size() >= BATCH_BYTES
    }
}

/// The memory one row's values hold: each value's inline size plus the bytes it owns.
pub fn row_size(row: &[Value]) -> usize {
    row.iter().map(Value::size).sum()
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
            Value::Bool(b) => json!({ "bo": b }),
            Value::Decimal(d) => json!({ "d": d }),
            Value::Date(d) => json!({ "da": d.to_string() }),
            Value::Time(t) => json!({ "ti": t.format("%H:%M:%S%.f").to_string() }),
            Value::Timestamp(t) => json!({ "ts": t.format("%Y-%m-%dT%H:%M:%S%.f").to_string() }),
            Value::TimestampTz(t) => {
                json!({ "tz": t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true) })
            }
            Value::Json(j) => json!({ "j": j }),
            Value::Uuid(u) => json!({ "u": uuid_text(u) }),
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
                "bo" => v.as_bool().map(Value::Bool),
                "d" => v.as_str().map(|s| Value::Decimal(s.to_owned())),
                "da" => v.as_str()?.parse().ok().map(Value::Date),
                "ti" => NaiveTime::parse_from_str(v.as_str()?, "%H:%M:%S%.f")
                    .ok()
                    .map(Value::Time),
                "ts" => NaiveDateTime::parse_from_str(v.as_str()?, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(Value::Timestamp),
                "tz" => DateTime::parse_from_rfc3339(v.as_str()?)
                    .ok()
                    .map(|t| Value::TimestampTz(t.with_timezone(&Utc))),
                "j" => v.as_str().map(|s| Value::Json(s.to_owned())),
                "u" => parse_uuid(v.as_str()?).map(Value::Uuid),
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
    fn a_batch_is_full_at_its_row_count_or_its_bytes() {
        let inline = std::mem::size_of::<Value>();
        assert_eq!(Value::Int(7).size(), inline);
        assert_eq!(Value::Text("abc".into()).size(), inline + 3);
        assert_eq!(Value::Blob(vec![0; 10]).size(), inline + 10);
        let wide = |n: usize| Batch {
            columns: vec!["body".into()],
            rows: (0..n)
                .map(|_| vec![Value::Text("x".repeat(BATCH_BYTES / 4))])
                .collect(),
        };
        // Below both bounds: the window ends here.
        assert!(!wide(3).is_full(1000));
        // Cut by bytes (4 rows reach BATCH_BYTES), or by rows.
        assert!(wide(4).is_full(1000));
        assert!(wide(3).is_full(3));
    }

    #[test]
    fn keys_round_trip() {
        let t = NaiveDate::from_ymd_opt(1969, 7, 20)
            .unwrap()
            .and_hms_micro_opt(20, 17, 40, 123_456)
            .unwrap();
        let key = vec![
            Value::Bool(true),
            Value::Decimal("-12345678901234567890123456789012345.678".into()),
            Value::Date(t.date()),
            Value::Time(t.time()),
            Value::Timestamp(t),
            Value::TimestampTz(t.and_utc()),
            Value::Json("{\"a\":[1,2]}".into()),
            Value::Uuid(parse_uuid("0190c7c8-8a2b-7c1e-9b3a-1234567890ab").unwrap()),
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
    fn uuids_and_portable_text() {
        let u = parse_uuid("0190C7C8-8A2B-7C1E-9B3A-1234567890AB").unwrap();
        assert_eq!(uuid_text(&u), "0190c7c8-8a2b-7c1e-9b3a-1234567890ab");
        assert_eq!(parse_uuid("nope"), None);
        let d = NaiveDate::from_ymd_opt(2038, 1, 19).unwrap();
        assert_eq!(
            Value::Date(d).as_portable_text().as_deref(),
            Some("2038-01-19")
        );
        let ts = d.and_hms_opt(3, 14, 8).unwrap();
        assert_eq!(
            Value::Timestamp(ts).as_portable_text().as_deref(),
            Some("2038-01-19 03:14:08")
        );
        assert_eq!(
            Value::TimestampTz(ts.and_utc())
                .as_portable_text()
                .as_deref(),
            Some("2038-01-19T03:14:08Z")
        );
        assert_eq!(Value::Int(1).as_portable_text(), None);
    }

    #[test]
    fn floats_compare_exactly() {
        assert_eq!(Value::Float(0.1), Value::Float(0.1));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }
}
