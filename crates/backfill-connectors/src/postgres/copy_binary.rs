//! `COPY … FROM STDIN (FORMAT binary)`: rows encoded in PostgreSQL's binary wire format, so
//! the server stores each field without parsing text.
//!
//! Binary COPY has no implicit casts: every field must be the exact binary form of its
//! column's type. So the encoder is chosen per column from the target's `format_type`, and a
//! batch is encoded in binary only when every value has an exact encoding for its column
//! (an `Int` for an `integer` column within range, a `TimestampTz` for `timestamp with time
//! zone`, a plain decimal for `numeric`, …). Anything else, an unusual type, a value that
//! needs a cast, returns `None` and the caller sends that batch as COPY text, where the
//! server's input functions do the casting and report bad values. The two paths store the
//! same values; binary is only faster.
//!
//! The same per-field encoding makes a column of a batch one binary array parameter
//! ([`ArrayParam`]), for the upsert that reads its rows from `unnest($1::int8[], …)`: the
//! array's elements go through the element type's binary input, exactly as a binary COPY
//! field does, so both paths store the same values, and a batch that cannot be encoded
//! exactly falls back to COPY text the same way.
//!
//! Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>; arrays:
//! `array_recv` in PostgreSQL's `src/backend/utils/adt/arrayfuncs.c`.

use backfill_core::value::Value;
use chrono::{NaiveDate, NaiveDateTime, Timelike};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, Postgres};

/// How one target column is encoded, from its `format_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Column {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// `text`, `character varying(n)`, `character(n)`: UTF-8 bytes (the server applies the
    /// length modifier as it does for text).
    Text,
    Bytea,
    TimestampTz,
    Timestamp,
    Date,
    Time,
    Uuid,
    Json,
    Jsonb,
    Numeric,
    /// No binary encoding here: batches with this column go as text.
    Other,
}

impl Column {
    /// The encoder for a column whose `format_type` is `ty`.
    pub(super) fn of(ty: &str) -> Column {
        // Without type modifiers: `timestamp(3) with time zone` → `timestamp with time zone`
        // (the server applies the modifier to binary input as it does to text).
        let mut base = String::with_capacity(ty.len());
        let mut depth = 0u32;
        for c in ty.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                c if depth == 0 => base.push(c),
                _ => {}
            }
        }
        match base.trim() {
            "smallint" => Column::Int2,
            "integer" => Column::Int4,
            "bigint" => Column::Int8,
            "real" => Column::Float4,
            "double precision" => Column::Float8,
            "boolean" => Column::Bool,
            "text" | "character varying" | "character" => Column::Text,
            "bytea" => Column::Bytea,
            "timestamp with time zone" => Column::TimestampTz,
            "timestamp without time zone" | "timestamp" => Column::Timestamp,
            "date" => Column::Date,
            "time without time zone" | "time" => Column::Time,
            "uuid" => Column::Uuid,
            "json" => Column::Json,
            "jsonb" => Column::Jsonb,
            "numeric" => Column::Numeric,
            _ => Column::Other,
        }
    }
}

impl Column {
    /// The element type's OID and the SQL name of its array type (for the cast of an
    /// `unnest` parameter), or `None` for [`Column::Other`]. Built-in OIDs never change.
    pub(super) fn array_type(self) -> Option<(u32, &'static str)> {
        Some(match self {
            Column::Int2 => (21, "int2[]"),
            Column::Int4 => (23, "int4[]"),
            Column::Int8 => (20, "int8[]"),
            Column::Float4 => (700, "float4[]"),
            Column::Float8 => (701, "float8[]"),
            Column::Bool => (16, "bool[]"),
            Column::Text => (25, "text[]"),
            Column::Bytea => (17, "bytea[]"),
            Column::TimestampTz => (1184, "timestamptz[]"),
            Column::Timestamp => (1114, "timestamp[]"),
            Column::Date => (1082, "date[]"),
            Column::Time => (1083, "time[]"),
            Column::Uuid => (2950, "uuid[]"),
            Column::Json => (114, "json[]"),
            Column::Jsonb => (3802, "jsonb[]"),
            Column::Numeric => (1700, "numeric[]"),
            Column::Other => return None,
        })
    }

    /// The OID of the array type of this element type.
    fn array_oid(self) -> Option<u32> {
        Some(match self {
            Column::Int2 => 1005,
            Column::Int4 => 1007,
            Column::Int8 => 1016,
            Column::Float4 => 1021,
            Column::Float8 => 1022,
            Column::Bool => 1000,
            Column::Text => 1009,
            Column::Bytea => 1001,
            Column::TimestampTz => 1185,
            Column::Timestamp => 1115,
            Column::Date => 1182,
            Column::Time => 1183,
            Column::Uuid => 2951,
            Column::Json => 199,
            Column::Jsonb => 3807,
            Column::Numeric => 1231,
            Column::Other => return None,
        })
    }
}

/// One column of a batch as a one-dimensional binary array parameter, encoded straight into
/// the statement's argument buffer (no copy of the batch in between). Encoding fails when a
/// value has no exact binary form for its column ([`NeedsText`]): the caller then sends the
/// batch by `COPY` text, where the server casts.
pub(super) struct ArrayParam<'a> {
    /// The batch's rows.
    pub(super) rows: &'a [Vec<Value>],
    /// Which value of each row.
    pub(super) index: usize,
    /// How the column's values are encoded.
    pub(super) column: Column,
}

/// The error of an [`ArrayParam`] whose batch needs `COPY` text.
#[derive(Debug, thiserror::Error)]
#[error("a value has no exact binary form for its column")]
pub(super) struct NeedsText;

impl sqlx::Type<Postgres> for ArrayParam<'_> {
    fn type_info() -> PgTypeInfo {
        // Never used: `produces` names the column's own array type.
        PgTypeInfo::with_name("_text")
    }
}

impl sqlx::Encode<'_, Postgres> for ArrayParam<'_> {
    fn produces(&self) -> Option<PgTypeInfo> {
        self.column
            .array_oid()
            .map(|oid| PgTypeInfo::with_oid(Oid(oid)))
    }

    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let out: &mut Vec<u8> = buf;
        encode_array(out, self.rows, self.index, self.column).ok_or(NeedsText)?;
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        20 + self.rows.len() * 16
    }
}

/// Appends the binary array of value `index` of every row (`array_recv`'s input: dimensions,
/// a has-NULL flag, the element type, the length and lower bound, then each element as a
/// length and bytes), or `None` when some value has no exact encoding for `column`.
fn encode_array(
    out: &mut Vec<u8>,
    rows: &[Vec<Value>],
    index: usize,
    column: Column,
) -> Option<()> {
    let (element, _) = column.array_type()?;
    let len = i32::try_from(rows.len()).ok()?;
    let has_null = rows
        .iter()
        .any(|r| matches!(r.get(index), Some(Value::Null)));
    out.extend_from_slice(&1i32.to_be_bytes()); // one dimension
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&element.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for row in rows {
        field(out, row.get(index)?, column)?;
    }
    Some(())
}

/// Midnight of 2000-01-01, PostgreSQL's epoch for dates and timestamps.
fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

/// The header of a binary COPY stream: signature, flags (no OIDs), no extension.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The trailer of a binary COPY stream: a field count of -1.
pub(super) const TRAILER: &[u8] = &[0xff, 0xff];

/// Appends one tuple of raw fields, each the binary wire form of its value exactly as
/// PostgreSQL sent it in a result row (`None` for NULL): what `COPY … (FORMAT binary)` reads
/// back when the column has the same type. `None` when the row is too wide for the format.
pub(super) fn raw_tuple<'a>(
    out: &mut Vec<u8>,
    fields: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) -> Option<()> {
    out.extend_from_slice(&i16::try_from(fields.len()).ok()?.to_be_bytes());
    for field in fields {
        match field {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(bytes) => {
                out.extend_from_slice(&i32::try_from(bytes.len()).ok()?.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    Some(())
}

/// The whole COPY stream (header, rows, trailer) of `rows` for columns encoded as `columns`,
/// or `None` when some value has no exact binary encoding for its column.
pub(super) fn encode(rows: &[Vec<Value>], columns: &[Column]) -> Option<Vec<u8>> {
    if columns.contains(&Column::Other) {
        return None;
    }
    let field_count = i16::try_from(columns.len()).ok()?;
    let mut out = Vec::with_capacity(19 + rows.len() * (2 + columns.len() * 12));
    out.extend_from_slice(HEADER);
    for row in rows {
        if row.len() != columns.len() {
            return None;
        }
        out.extend_from_slice(&field_count.to_be_bytes());
        for (value, column) in row.iter().zip(columns) {
            field(&mut out, value, *column)?;
        }
    }
    out.extend_from_slice(TRAILER);
    Some(out)
}

/// Appends one field: its length (-1 for NULL) and bytes.
fn field(out: &mut Vec<u8>, value: &Value, column: Column) -> Option<()> {
    let start = out.len();
    out.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
    match (value, column) {
        (Value::Null, _) => {
            out.truncate(start);
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Some(());
        }
        (Value::Int(i), Column::Int2) => {
            out.extend_from_slice(&i16::try_from(*i).ok()?.to_be_bytes())
        }
        (Value::Int(i), Column::Int4) => {
            out.extend_from_slice(&i32::try_from(*i).ok()?.to_be_bytes())
        }
        (Value::Int(i), Column::Int8) => out.extend_from_slice(&i.to_be_bytes()),
        (Value::Int(i), Column::Numeric) => numeric(out, &i.to_string())?,
        (Value::Decimal(d), Column::Numeric) => numeric(out, d)?,
        (Value::Float(f), Column::Float8) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
        // Only when the value is exactly a `real`; otherwise the server rounds it (text).
        (Value::Float(f), Column::Float4) if f64::from(*f as f32).to_bits() == f.to_bits() => {
            out.extend_from_slice(&(*f as f32).to_bits().to_be_bytes());
        }
        (Value::Bool(b), Column::Bool) => out.push(u8::from(*b)),
        // A NUL cannot be stored; the text path reports it as a data error.
        (Value::Text(s), Column::Text) if !s.contains('\0') => out.extend_from_slice(s.as_bytes()),
        (Value::Blob(b), Column::Bytea) => out.extend_from_slice(b),
        (Value::TimestampTz(t), Column::TimestampTz) => {
            out.extend_from_slice(&micros_since_epoch(t.naive_utc())?.to_be_bytes());
        }
        (Value::Timestamp(t), Column::Timestamp) => {
            out.extend_from_slice(&micros_since_epoch(*t)?.to_be_bytes());
        }
        (Value::Date(d), Column::Date) => {
            let days = d.signed_duration_since(pg_epoch().date()).num_days();
            out.extend_from_slice(&i32::try_from(days).ok()?.to_be_bytes());
        }
        (Value::Time(t), Column::Time) => {
            let micros = i64::from(t.num_seconds_from_midnight()) * 1_000_000
                + i64::from(t.nanosecond() % 1_000_000_000) / 1_000;
            out.extend_from_slice(&micros.to_be_bytes());
        }
        (Value::Uuid(u), Column::Uuid) => out.extend_from_slice(u),
        (Value::Json(s) | Value::Text(s), Column::Json) if !s.contains('\0') => {
            out.extend_from_slice(s.as_bytes());
        }
        (Value::Json(s) | Value::Text(s), Column::Jsonb) if !s.contains('\0') => {
            out.push(1); // jsonb binary format version
            out.extend_from_slice(s.as_bytes());
        }
        _ => return None,
    }
    let len = i32::try_from(out.len() - start - 4).ok()?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Some(())
}

/// Microseconds since 2000-01-01, or `None` when the value has sub-microsecond digits (the
/// server would round them; the text path lets it) or is out of range.
fn micros_since_epoch(t: NaiveDateTime) -> Option<i64> {
    if !t.nanosecond().is_multiple_of(1_000) {
        return None;
    }
    t.signed_duration_since(pg_epoch()).num_microseconds()
}

/// Appends a plain decimal (`-12.50`, `0.001`, `7`) as a binary `numeric`: base-10000 digits
/// with a weight, a sign and the display scale (the number of fraction digits written).
/// `None` for anything else (exponents, `NaN`, stray characters).
fn numeric(out: &mut Vec<u8>, text: &str) -> Option<()> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !digits_ok(int_part)
        || !digits_ok(frac_part)
    {
        return None;
    }
    let dscale = u16::try_from(frac_part.len()).ok()?;
    // Pad the integer part on the left and the fraction on the right to whole groups of 4.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int_part.bytes())
        .chain(frac_part.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut groups: Vec<u16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
        .collect();
    let mut weight = i32::try_from((int_part.len() + int_pad) / 4).ok()? - 1;
    // Leading and trailing zero groups are implied by the weight and the scale.
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i32::try_from(leading).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, 0x0000u16)
    } else {
        (weight, if negative { 0x4000 } else { 0x0000 })
    };
    out.extend_from_slice(&u16::try_from(groups.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&i16::try_from(weight).ok()?.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_trailer_and_raw_tuples_frame_the_fields() {
        // 11-byte signature, 4-byte flags, 4-byte extension length.
        assert_eq!(HEADER.len(), 19);
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(
            encode(&[], &[Column::Int8]),
            Some([HEADER, TRAILER].concat())
        );
        let mut out = Vec::new();
        raw_tuple(&mut out, [Some(&[1u8, 2][..]), None].into_iter()).unwrap();
        assert_eq!(out, [0, 2, 0, 0, 0, 2, 1, 2, 0xff, 0xff, 0xff, 0xff]);
    }
    use chrono::{DateTime, Utc};

    /// A timestamp with time zone as microseconds since PostgreSQL's epoch.
    fn tz_micros(t: DateTime<Utc>) -> Option<i64> {
        micros_since_epoch(t.naive_utc())
    }

    fn numeric_bytes(text: &str) -> Option<Vec<u16>> {
        let mut out = Vec::new();
        numeric(&mut out, text)?;
        Some(
            out.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
        )
    }

    #[test]
    fn numerics_are_base_10000_with_weight_sign_and_scale() {
        // [ndigits, weight, sign, dscale, digits…]
        assert_eq!(numeric_bytes("0"), Some(vec![0, 0, 0, 0]));
        assert_eq!(numeric_bytes("0.00"), Some(vec![0, 0, 0, 2]));
        assert_eq!(numeric_bytes("-0.00"), Some(vec![0, 0, 0, 2]));
        assert_eq!(numeric_bytes("1.50"), Some(vec![2, 0, 0, 2, 1, 5000]));
        assert_eq!(
            numeric_bytes("-12.5"),
            Some(vec![2, 0, 0x4000, 1, 12, 5000])
        );
        assert_eq!(numeric_bytes("10000"), Some(vec![1, 1, 0, 0, 1]));
        assert_eq!(
            numeric_bytes("0.0001"),
            Some(vec![1, (-1i16) as u16, 0, 4, 1])
        );
        assert_eq!(
            numeric_bytes("12345678.9"),
            Some(vec![3, 1, 0, 1, 1234, 5678, 9000])
        );
        // 38 digits survive exactly.
        assert_eq!(
            numeric_bytes("12345678901234567890.123456789012345678"),
            Some(vec![
                10, 4, 0, 18, 1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012, 3456, 7800
            ])
        );
        for bad in ["", "-", ".", "1e5", "NaN", "1.2.3", "12a", " 1"] {
            assert_eq!(numeric_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn values_that_need_a_cast_fall_back_to_text() {
        let row = |v: Value| vec![vec![v]];
        assert!(encode(&row(Value::Int(1)), &[Column::Int4]).is_some());
        assert!(encode(&row(Value::Int(i64::from(i32::MAX) + 1)), &[Column::Int4]).is_none());
        assert!(encode(&row(Value::Text("1".into())), &[Column::Int8]).is_none());
        assert!(encode(&row(Value::Float(0.1)), &[Column::Float4]).is_none());
        assert!(encode(&row(Value::Float(0.5)), &[Column::Float4]).is_some());
        assert!(encode(&row(Value::Text("a\0b".into())), &[Column::Text]).is_none());
        assert!(encode(&row(Value::Null), &[Column::Other]).is_none());
        assert!(encode(&row(Value::Null), &[Column::Int4]).is_some());
        let naive = NaiveDate::from_ymd_opt(2025, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(encode(&row(Value::Timestamp(naive)), &[Column::TimestampTz]).is_none());
        let nanos = naive.with_nanosecond(1).unwrap();
        assert!(encode(&row(Value::Timestamp(nanos)), &[Column::Timestamp]).is_none());
    }

    #[test]
    fn dates_and_instants_count_from_2000() {
        let t = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(tz_micros(t), Some(-500_000));
        let mut out = Vec::new();
        let d = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        field(&mut out, &Value::Date(d), Column::Date).unwrap();
        assert_eq!(out, [0, 0, 0, 4, 0xff, 0xff, 0xd5, 0x33]); // -10957 days
    }

    #[test]
    fn a_row_of_every_supported_type_goes_binary_with_exact_bytes() {
        let columns = [
            Column::Int8,
            Column::Int4,
            Column::Text,
            Column::Bool,
            Column::Jsonb,
        ];
        let row = vec![
            Value::Int(-2),
            Value::Null,
            Value::Text("é".into()),
            Value::Bool(true),
            Value::Json("{}".into()),
        ];
        let data = encode(&[row], &columns).expect("binary");
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 5]); // flags, extension, 5 fields
        want.extend([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        want.extend([0, 0, 0, 2, 0xc3, 0xa9]);
        want.extend([0, 0, 0, 1, 1]);
        want.extend([0, 0, 0, 3, 1, b'{', b'}']);
        want.extend([0xff, 0xff]); // trailer
        assert_eq!(data, want);

        let every = [
            "smallint",
            "integer",
            "bigint",
            "real",
            "double precision",
            "numeric(10,2)",
            "text",
            "character varying(10)",
            "character(3)",
            "bytea",
            "boolean",
            "date",
            "time without time zone",
            "timestamp without time zone",
            "timestamp with time zone",
            "json",
            "jsonb",
            "uuid",
        ]
        .map(Column::of);
        assert!(!every.contains(&Column::Other));
    }

    #[test]
    fn types_map_from_format_type() {
        assert_eq!(Column::of("character varying(20)"), Column::Text);
        assert_eq!(Column::of("numeric(12,2)"), Column::Numeric);
        assert_eq!(
            Column::of("timestamp(3) with time zone"),
            Column::TimestampTz
        );
        assert_eq!(Column::of("time(0) without time zone"), Column::Time);
        assert_eq!(
            Column::of("timestamp(6) without time zone"),
            Column::Timestamp
        );
        assert_eq!(Column::of("timestamp with time zone"), Column::TimestampTz);
        assert_eq!(Column::of("interval"), Column::Other);
    }
}
