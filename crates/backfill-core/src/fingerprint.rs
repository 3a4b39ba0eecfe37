//! Row and key-range fingerprints that mean the same thing in every database and in the engine.
//!
//! Owns: the one definition of a row's fingerprint (its canonical encoding and hash) and of a
//! key range's fingerprint (row count plus an order-independent aggregate of row hashes), and
//! their computation over [`Value`] rows. The SQL that computes the same numbers inside
//! PostgreSQL, MySQL/MariaDB and SQLite lives in `backfill-connectors` (`fingerprint/`); it
//! must follow this contract byte for byte.
//!
//! Does not: read the catalog or run queries; decide which columns are hashed (the caller
//! passes them, with their [`Kind`], in order).
//!
//! # The contract (a compatibility promise: changing it changes every stored fingerprint)
//!
//! A **row** over columns `c1 … cn` (each with a [`Kind`], read from the catalog) is encoded
//! as the concatenation, in column order, of one field per column:
//!
//! - NULL: the single byte `N`;
//! - any other value: `V`, the byte length of its canonical text in decimal ASCII, `:`, then
//!   the canonical text (UTF-8). So NULL and the empty string (`V0:`) differ, and no choice of
//!   values can make two different rows encode alike.
//!
//! The canonical text of a non-NULL value, by kind:
//!
//! | kind | canonical text | examples |
//! |---|---|---|
//! | `Int` | decimal, `-` sign, no leading zeros | `-42`, `0` |
//! | `Decimal` | plain notation (no exponent), no leading zeros, no trailing fractional zeros, no trailing `.`, zero is `0` (never `-0`) | `12.50` → `12.5`, `100` → `100`, `-0.00` → `0` |
//! | `Bool` | `1` or `0` (as the integer, so `true` and `1` agree) | `1` |
//! | `Text` | the UTF-8 bytes as stored, unnormalised (NFC `é` ≠ NFD `é`) | `é` |
//! | `Bytes` | lower-case hex | `00ff` |
//! | `Date` | `YYYY-MM-DD` | `0001-01-01` |
//! | `Time` | `HH:MM:SS.ffffff` (always 6 fractional digits) | `23:59:59.000001` |
//! | `Timestamp` | `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, truncated to the microsecond; a timestamp without zone is taken as UTC, so an instant and its UTC wall clock agree | `9999-12-31 23:59:59.999999` |
//! | `Json` | the document with object keys sorted by their UTF-8 bytes (last duplicate wins), no whitespace, strings escaped as `serde_json` writes them, numbers as `serde_json` reads them (integers exact, others the shortest `f64` form) | `{"a":1,"b":[true,null]}` |
//! | `Uuid` | lower-case, hyphenated | `0190c7c8-8a2b-7c1e-9b3a-1234567890ab` |
//!
//! Kinds agree with each other where values do: `Int` 5 and `Decimal` `5.00` both give `5`
//! (a `bigint` copied into a `numeric(20,2)` keeps its fingerprint), `Bool` true and `Int` 1
//! both give `1` (MySQL's `TINYINT(1)` against PostgreSQL's `boolean`).
//! Floating-point columns have no canonical text every database prints alike and are refused
//! by the catalog readers (`Kind` has no float); exclude them from the checksum columns.
//!
//! The **row hash** is the MD5 digest of the encoded row (MD5 because PostgreSQL and MySQL
//! have it built in; it is a checksum here, not a defence against an adversary). Its first 8
//! bytes, big-endian, are [`RowHash::hash`] (the first 16 hex digits of `md5(…)`), its last 8
//! [`RowHash::check`].
//!
//! A **range fingerprint** ([`Fingerprint`]) is `(rows, sum, check)`: the number of rows, and
//! the sums modulo 2^64 of every row's `hash` and of every row's `check`. Sums are order
//! independent and mergeable (partitions add up to the whole), and a duplicated row changes
//! them (XOR would cancel it). Two independent 64-bit sums make an accidental match of two
//! different ranges with the same count a 2^-128 event.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use md5::{Digest, Md5};

use crate::value::{Value, parse_uuid, uuid_text};

/// The logical type of a hashed column: decides its canonical text (see the module doc).
///
/// Each dialect maps its catalog types onto these; the engine passes the same kinds when it
/// hashes rows itself, so a value is read the same way whichever path hashes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Integers of any width.
    Int,
    /// Exact decimals (and integers stored as decimals).
    Decimal,
    /// Booleans, hashed as the integers `1` and `0`.
    Bool,
    /// Character strings, hashed as stored.
    Text,
    /// Binary strings, hashed as lower-case hex.
    Bytes,
    /// Calendar dates.
    Date,
    /// Times of day.
    Time,
    /// Timestamps with or without time zone, in UTC.
    Timestamp,
    /// JSON documents, canonicalised.
    Json,
    /// UUIDs.
    Uuid,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 10] = [
        Kind::Int,
        Kind::Decimal,
        Kind::Bool,
        Kind::Text,
        Kind::Bytes,
        Kind::Date,
        Kind::Time,
        Kind::Timestamp,
        Kind::Json,
        Kind::Uuid,
    ];

    /// A one-letter code, stable: it is how kinds are passed to the SQLite function.
    pub fn code(self) -> char {
        match self {
            Kind::Int => 'i',
            Kind::Decimal => 'd',
            Kind::Bool => 'b',
            Kind::Text => 't',
            Kind::Bytes => 'x',
            Kind::Date => 'D',
            Kind::Time => 'T',
            Kind::Timestamp => 's',
            Kind::Json => 'j',
            Kind::Uuid => 'u',
        }
    }

    /// The kind of a [`code`](Kind::code).
    pub fn from_code(code: char) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The codes of `kinds`, in order (the SQLite function's first argument).
    pub fn codes(kinds: &[Kind]) -> String {
        kinds.iter().map(|k| k.code()).collect()
    }

    /// The kinds of a [`codes`](Kind::codes) string; `None` when a letter is not a code.
    pub fn parse_codes(codes: &str) -> Option<Vec<Kind>> {
        codes.chars().map(Kind::from_code).collect()
    }
}

/// Why a value has no canonical text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// The value cannot be read as its column's kind (e.g. text that is not a date in a date
    /// column, a NaN in a decimal column).
    #[error("column {column}: {value} is not a valid {kind:?} value")]
    Invalid {
        /// Position of the column in the hashed columns (0-based).
        column: usize,
        /// A short preview of the value.
        value: String,
        /// The column's kind.
        kind: Kind,
    },
    /// The row has a different number of values than there are hashed columns.
    #[error("a row has {values} values for {columns} hashed columns")]
    Width {
        /// Values in the row.
        values: usize,
        /// Hashed columns.
        columns: usize,
    },
}

/// The hash of one row: its MD5 digest as two big-endian halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowHash {
    /// Bytes 0..8 of the digest (the first 16 hex digits): the row's 64-bit hash.
    pub hash: u64,
    /// Bytes 8..16 of the digest: the independent second half summed for [`Fingerprint::check`].
    pub check: u64,
}

impl RowHash {
    /// The hash of a 16-byte MD5 digest.
    pub fn from_digest(digest: &[u8; 16]) -> RowHash {
        let (a, b) = digest.split_at(8);
        RowHash {
            hash: u64::from_be_bytes(a.try_into().unwrap_or_default()),
            check: u64::from_be_bytes(b.try_into().unwrap_or_default()),
        }
    }

    /// The hash of 32 hex digits (what `md5()` returns in SQL); `None` otherwise.
    pub fn from_hex(hex: &str) -> Option<RowHash> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        Some(RowHash {
            hash: u64::from_str_radix(&hex[..16], 16).ok()?,
            check: u64::from_str_radix(&hex[16..], 16).ok()?,
        })
    }

    /// The 32 lower-case hex digits of the digest.
    pub fn to_hex(self) -> String {
        format!("{:016x}{:016x}", self.hash, self.check)
    }
}

/// The fingerprint of a set of rows (a partition, a key range, a slice): count and sums.
///
/// Guarantees: independent of row order; `a.merge(b)` is the fingerprint of the union of
/// disjoint sets; equal sets of rows give equal fingerprints on every path (engine, each
/// database).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Number of rows.
    pub rows: u64,
    /// Sum modulo 2^64 of the rows' [`RowHash::hash`].
    pub sum: u64,
    /// Sum modulo 2^64 of the rows' [`RowHash::check`].
    pub check: u64,
}

impl Fingerprint {
    /// Adds one row.
    pub fn add(&mut self, row: RowHash) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(row.hash);
        self.check = self.check.wrapping_add(row.check);
    }

    /// Adds every row of `other` (a disjoint set).
    pub fn merge(&mut self, other: &Fingerprint) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
        self.check = self.check.wrapping_add(other.check);
    }

    /// The fingerprint from a row count and the two sums as a database returns them: exact
    /// decimal integers of any size and sign (PostgreSQL's `numeric`, MySQL's `DECIMAL`),
    /// reduced modulo 2^64; an empty or NULL sum is 0. `None` when a sum is not an integer.
    pub fn from_sums(rows: i64, sum: Option<&str>, check: Option<&str>) -> Option<Fingerprint> {
        Some(Fingerprint {
            rows: u64::try_from(rows).ok()?,
            sum: sum.map_or(Some(0), wrap_integer)?,
            check: check.map_or(Some(0), wrap_integer)?,
        })
    }

    /// The fingerprint of `rows` over columns of `kinds`, computed in the engine.
    pub fn of_rows<'r>(
        kinds: &[Kind],
        rows: impl IntoIterator<Item = &'r [Value]>,
    ) -> Result<Fingerprint, FingerprintError> {
        let mut fp = Fingerprint::default();
        let mut hasher = RowHasher::default();
        for row in rows {
            fp.add(hasher.hash(kinds, row)?);
        }
        Ok(fp)
    }
}

/// A decimal integer text of any size, modulo 2^64 (negative values wrap).
fn wrap_integer(text: &str) -> Option<u64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0u64, |acc, b| {
        acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
    });
    Some(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

/// The hash of one row over columns of `kinds` (see the module doc).
pub fn row_hash(kinds: &[Kind], row: &[Value]) -> Result<RowHash, FingerprintError> {
    RowHasher::default().hash(kinds, row)
}

/// Hashes rows one after another with the same two buffers, so hashing a row allocates
/// nothing once the buffers have grown to the widest row (SQLite's fingerprint function
/// calls it once per row; an allocation per value there cost more than the MD5).
#[derive(Debug, Default)]
pub struct RowHasher {
    /// The encoded row, the MD5 input.
    encoded: Vec<u8>,
    /// One value's canonical text.
    text: String,
}

impl RowHasher {
    /// The hash of `row` over columns of `kinds`: the same as [`row_hash`].
    pub fn hash(&mut self, kinds: &[Kind], row: &[Value]) -> Result<RowHash, FingerprintError> {
        encode_row_with(kinds, row, &mut self.encoded, &mut self.text)?;
        let digest: [u8; 16] = Md5::digest(self.encoded.as_slice()).into();
        Ok(RowHash::from_digest(&digest))
    }

    /// Frees a buffer that grew past `max` bytes (one huge row), so a long-lived hasher does
    /// not keep the largest row it ever saw.
    pub fn shrink(&mut self, max: usize) {
        if self.encoded.capacity() > max {
            self.encoded = Vec::new();
        }
        if self.text.capacity() > max {
            self.text = String::new();
        }
    }
}

/// Writes the encoded row (the MD5 input) into `out`, cleared first.
pub fn encode_row(
    kinds: &[Kind],
    row: &[Value],
    out: &mut Vec<u8>,
) -> Result<(), FingerprintError> {
    encode_row_with(kinds, row, out, &mut String::new())
}

/// [`encode_row`] with `text` as the scratch space for each value's canonical text.
fn encode_row_with(
    kinds: &[Kind],
    row: &[Value],
    out: &mut Vec<u8>,
    text: &mut String,
) -> Result<(), FingerprintError> {
    if kinds.len() != row.len() {
        return Err(FingerprintError::Width {
            values: row.len(),
            columns: kinds.len(),
        });
    }
    out.clear();
    for (column, (kind, value)) in kinds.iter().zip(row).enumerate() {
        text.clear();
        if canonical(*kind, value, text).map_err(|()| FingerprintError::Invalid {
            column,
            value: value.preview(),
            kind: *kind,
        })? {
            out.push(b'V');
            push_decimal(out, text.len());
            out.push(b':');
            out.extend_from_slice(text.as_bytes());
        } else {
            out.push(b'N');
        }
    }
    Ok(())
}

/// Appends `n` in decimal ASCII to `out`, without allocating.
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The canonical text of `value` read as `kind` (see the module doc); `Ok(None)` for NULL.
///
/// Guarantees: hashing a row of these texts as [`Kind::Text`] values (NULL as
/// [`Value::Null`]) gives the same [`RowHash`] as hashing the original values with their
/// kinds, so rows fetched as canonical texts (what `diff` compares key by key) hash alike.
pub fn canonical_text(
    kind: Kind,
    value: &Value,
    column: usize,
) -> Result<Option<String>, FingerprintError> {
    let mut out = String::new();
    match canonical(kind, value, &mut out) {
        Ok(true) => Ok(Some(out)),
        Ok(false) => Ok(None),
        Err(()) => Err(FingerprintError::Invalid {
            column,
            value: value.preview(),
            kind,
        }),
    }
}

/// Appends the canonical text of `value` read as `kind` to `out`; `Ok(false)` for NULL.
///
/// Values arrive as each connector decodes them; SQLite's dynamic storage gives text (or an
/// integer, or a real) for decimals, dates, timestamps, JSON and UUIDs, so those are parsed.
fn canonical(kind: Kind, value: &Value, out: &mut String) -> Result<bool, ()> {
    if matches!(value, Value::Null) {
        return Ok(false);
    }
    match kind {
        Kind::Int | Kind::Decimal => canonical_number(value, out)?,
        Kind::Bool => canonical_bool(value, out)?,
        Kind::Text => match value {
            Value::Text(s) | Value::Json(s) | Value::Decimal(s) => out.push_str(s),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Blob(b) => out.push_str(std::str::from_utf8(b).map_err(|_| ())?),
            _ => return Err(()),
        },
        Kind::Bytes => match value {
            Value::Blob(b) => push_hex(b, out),
            Value::Text(s) => push_hex(s.as_bytes(), out),
            _ => return Err(()),
        },
        Kind::Date => {
            let date = match value {
                Value::Date(d) => *d,
                Value::Text(s) => {
                    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| ())?
                }
                _ => return Err(()),
            };
            push_date(date, out);
        }
        Kind::Time => {
            let time = match value {
                Value::Time(t) => *t,
                Value::Text(s) => {
                    NaiveTime::parse_from_str(s.trim(), "%H:%M:%S%.f").map_err(|_| ())?
                }
                _ => return Err(()),
            };
            push_time(time, out);
        }
        Kind::Timestamp => {
            let ts = match value {
                Value::Timestamp(t) => *t,
                Value::TimestampTz(t) => t.naive_utc(),
                Value::Text(s) => parse_timestamp(s).ok_or(())?,
                _ => return Err(()),
            };
            push_date(ts.date(), out);
            out.push(' ');
            push_time(ts.time(), out);
        }
        Kind::Json => match value {
            Value::Json(s) | Value::Text(s) => canonical_json(s, out)?,
            _ => return Err(()),
        },
        Kind::Uuid => match value {
            Value::Uuid(u) => out.push_str(&uuid_text(u)),
            Value::Text(s) => out.push_str(&uuid_text(&parse_uuid(s.trim()).ok_or(())?)),
            Value::Blob(b) => out.push_str(&uuid_text(b.as_slice().try_into().map_err(|_| ())?)),
            _ => return Err(()),
        },
    }
    Ok(true)
}

fn canonical_number(value: &Value, out: &mut String) -> Result<(), ()> {
    match value {
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
        Value::Decimal(s) | Value::Text(s) => out.push_str(&normalize_decimal(s).ok_or(())?),
        // A decimal SQLite stored as REAL: its shortest exact decimal form.
        Value::Float(f) if f.is_finite() => {
            out.push_str(&normalize_decimal(&format!("{f}")).ok_or(())?);
        }
        _ => return Err(()),
    }
    Ok(())
}

fn canonical_bool(value: &Value, out: &mut String) -> Result<(), ()> {
    let truth = match value {
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => true,
            "0" | "f" | "false" => false,
            _ => return Err(()),
        },
        _ => return Err(()),
    };
    out.push(if truth { '1' } else { '0' });
    Ok(())
}

fn push_hex(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn push_date(date: NaiveDate, out: &mut String) {
    let _ = write!(out, "{}", date.format("%Y-%m-%d"));
}

/// `HH:MM:SS.ffffff`, truncated to the microsecond (a leap second's extra nanoseconds kept in
/// the fraction are truncated too).
fn push_time(time: NaiveTime, out: &mut String) {
    let micros = (time.nanosecond() % 1_000_000_000) / 1_000;
    let _ = write!(out, "{}.{micros:06}", time.format("%H:%M:%S"));
}

/// A timestamp in one of the text forms the connectors store (RFC 3339 with an offset, or a
/// wall clock with `T` or a space), as a UTC wall clock.
fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc).naive_utc());
    }
    let naive = text.strip_suffix('Z').unwrap_or(text);
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ]
    .iter()
    .find_map(|f| {
        NaiveDateTime::parse_from_str(naive, f).ok().or_else(|| {
            NaiveDate::parse_from_str(naive, f)
                .ok()?
                .and_hms_opt(0, 0, 0)
        })
    })
}

/// The canonical text of a decimal number written `[+-]digits[.digits][e[+-]digits]`; `None`
/// when it is not one (or its exponent is beyond ±4096, far past any database's decimals).
pub fn normalize_decimal(text: &str) -> Option<String> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    if !(-4096..=4096).contains(&exponent) {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // All digits, and where the decimal point falls among them.
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let point = i64::try_from(int.len()).ok()? + i64::from(exponent);
    let first = digits.iter().position(|&d| d != b'0');
    let Some(first) = first else {
        return Some("0".to_owned());
    };
    let last = digits.iter().rposition(|&d| d != b'0').unwrap_or(first);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    // Digit i (0-based) has weight 10^(point - 1 - i); emit from the larger of the first
    // significant digit and the units digit, down to the smaller of the last significant
    // digit and the units digit.
    let first = i64::try_from(first).ok()?;
    let last = i64::try_from(last).ok()?;
    let from = first.min(point - 1);
    let to = last.max(point - 1);
    for i in from..=to {
        if i == point {
            out.push('.');
        }
        let d = usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(b'0');
        out.push(char::from(d));
    }
    Some(out)
}

/// Canonical JSON: keys sorted by bytes, no whitespace, `serde_json`'s string escaping and
/// number forms.
fn canonical_json(text: &str, out: &mut String) -> Result<(), ()> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|_| ())?;
    push_json(&doc, out);
    Ok(())
}

fn push_json(doc: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match doc {
        J::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&J::String(key.clone()).to_string());
                out.push(':');
                push_json(value, out);
            }
            out.push('}');
        }
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn text(kind: Kind, value: Value) -> Option<String> {
        let mut out = String::new();
        match canonical(kind, &value, &mut out) {
            Ok(true) => Some(out),
            Ok(false) => Some("NULL".to_owned()),
            Err(()) => None,
        }
    }

    #[test]
    fn canonical_texts_hash_like_the_values() {
        let kinds = [Kind::Decimal, Kind::Timestamp, Kind::Text];
        let row = [
            Value::Decimal("12.50".into()),
            Value::Text("2026-03-01T06:05:06+02:00".into()),
            Value::Null,
        ];
        let texts: Vec<Value> = kinds
            .iter()
            .zip(&row)
            .enumerate()
            .map(|(i, (k, v))| {
                canonical_text(*k, v, i)
                    .unwrap()
                    .map_or(Value::Null, Value::Text)
            })
            .collect();
        assert_eq!(
            row_hash(&[Kind::Text; 3], &texts).unwrap(),
            row_hash(&kinds, &row).unwrap()
        );
        assert!(canonical_text(Kind::Date, &Value::Text("x".into()), 4).is_err());
    }

    #[test]
    fn decimals_normalise() {
        let cases = [
            ("12.50", Some("12.5")),
            ("100", Some("100")),
            ("100.000", Some("100")),
            ("-0.00", Some("0")),
            ("0", Some("0")),
            ("+007.0700", Some("7.07")),
            ("-.5", Some("-0.5")),
            ("5.", Some("5")),
            ("1e3", Some("1000")),
            ("1.25E-3", Some("0.00125")),
            (
                "-12345678901234567890123456789012345.678000",
                Some("-12345678901234567890123456789012345.678"),
            ),
            (
                "99999999999999999999999999999999999999",
                Some("99999999999999999999999999999999999999"),
            ),
            ("", None),
            (".", None),
            ("1.2.3", None),
            ("NaN", None),
            ("1e99999", None),
            ("12a", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_decimal(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn values_of_every_kind_agree_across_representations() {
        let ts = NaiveDate::from_ymd_opt(2026, 3, 1)
            .unwrap()
            .and_hms_nano_opt(4, 5, 6, 123_456_789)
            .unwrap();
        // Each group: the same logical value as different connectors decode it.
        let groups: Vec<(Kind, Vec<Value>, &str)> = vec![
            (
                Kind::Int,
                vec![
                    Value::Int(5),
                    Value::Decimal("5.00".into()),
                    Value::Text("5".into()),
                    Value::Float(5.0),
                ],
                "5",
            ),
            (
                Kind::Decimal,
                vec![
                    Value::Decimal("12.50".into()),
                    Value::Text("12.5".into()),
                    Value::Float(12.5),
                ],
                "12.5",
            ),
            (
                Kind::Bool,
                vec![Value::Bool(true), Value::Int(1), Value::Text("t".into())],
                "1",
            ),
            (Kind::Bytes, vec![Value::Blob(vec![0, 0xff])], "00ff"),
            (
                Kind::Date,
                vec![Value::Date(ts.date()), Value::Text("2026-03-01".into())],
                "2026-03-01",
            ),
            (
                Kind::Time,
                vec![
                    Value::Time(ts.time()),
                    Value::Text("04:05:06.123456".into()),
                ],
                "04:05:06.123456",
            ),
            (
                Kind::Timestamp,
                vec![
                    Value::Timestamp(ts),
                    Value::TimestampTz(ts.and_utc()),
                    Value::Text("2026-03-01T04:05:06.123456Z".into()),
                    Value::Text("2026-03-01T06:05:06.123456+02:00".into()),
                    Value::Text("2026-03-01 04:05:06.123456".into()),
                ],
                "2026-03-01 04:05:06.123456",
            ),
            (
                Kind::Json,
                vec![
                    Value::Json("{\"b\": [1, 2.5], \"a\": null}".into()),
                    Value::Text("{\"a\":null,\"b\":[1,2.5]}".into()),
                ],
                "{\"a\":null,\"b\":[1,2.5]}",
            ),
            (
                Kind::Uuid,
                vec![
                    Value::Uuid(parse_uuid("0190c7c8-8a2b-7c1e-9b3a-1234567890ab").unwrap()),
                    Value::Text("0190C7C8-8A2B-7C1E-9B3A-1234567890AB".into()),
                ],
                "0190c7c8-8a2b-7c1e-9b3a-1234567890ab",
            ),
        ];
        for (kind, values, want) in groups {
            for value in values {
                assert_eq!(
                    text(kind, value.clone()).as_deref(),
                    Some(want),
                    "{kind:?} {value:?}"
                );
            }
        }
    }

    #[test]
    fn text_is_hashed_as_stored_and_null_is_not_empty() {
        let nfc = Value::Text("\u{e9}".into());
        let nfd = Value::Text("e\u{301}".into());
        let kinds = [Kind::Text];
        assert_ne!(row_hash(&kinds, &[nfc]), row_hash(&kinds, &[nfd]));
        assert_ne!(
            row_hash(&kinds, &[Value::Null]),
            row_hash(&kinds, &[Value::Text(String::new())])
        );
        // Length prefixes keep field boundaries: ("ab", "") is not ("a", "b").
        let two = [Kind::Text, Kind::Text];
        let t = |s: &str| Value::Text(s.into());
        assert_ne!(
            row_hash(&two, &[t("ab"), t("")]),
            row_hash(&two, &[t("a"), t("b")])
        );
    }

    #[test]
    fn bad_values_and_widths_are_errors_naming_the_column() {
        let err = row_hash(
            &[Kind::Int, Kind::Date],
            &[Value::Int(1), Value::Text("nope".into())],
        );
        expect![[r#"Err("column 1: \"nope\" is not a valid Date value")"#]]
            .assert_eq(&format!("{:?}", err.map_err(|e| e.to_string())));
        assert_eq!(
            row_hash(&[Kind::Int], &[]),
            Err(FingerprintError::Width {
                values: 0,
                columns: 1
            })
        );
        assert!(text(Kind::Decimal, Value::Float(f64::NAN)).is_none());
    }

    #[test]
    fn fingerprints_are_order_independent_and_mergeable() {
        let kinds = [Kind::Int, Kind::Text];
        let rows: Vec<Vec<Value>> = (0..50)
            .map(|i| vec![Value::Int(i), Value::Text(format!("r{i}"))])
            .collect();
        let all = Fingerprint::of_rows(&kinds, rows.iter().map(Vec::as_slice)).unwrap();
        let reversed = Fingerprint::of_rows(&kinds, rows.iter().rev().map(Vec::as_slice)).unwrap();
        assert_eq!(all, reversed);
        let mut halves =
            Fingerprint::of_rows(&kinds, rows[..20].iter().map(Vec::as_slice)).unwrap();
        halves.merge(&Fingerprint::of_rows(&kinds, rows[20..].iter().map(Vec::as_slice)).unwrap());
        assert_eq!(all, halves);
        // A duplicated row changes the sums, not only the count.
        let mut dup = all;
        dup.add(row_hash(&kinds, &rows[0]).unwrap());
        assert_ne!((dup.sum, dup.check), (all.sum, all.check));
    }

    #[test]
    fn database_sums_reduce_modulo_2_64() {
        let fp = Fingerprint::from_sums(3, Some("18446744073709551617"), Some("-1")).unwrap();
        assert_eq!((fp.rows, fp.sum, fp.check), (3, 1, u64::MAX));
        assert_eq!(
            Fingerprint::from_sums(0, None, None),
            Some(Fingerprint::default())
        );
        assert_eq!(Fingerprint::from_sums(1, Some("1.5"), None), None);
        assert_eq!(
            RowHash::from_hex("900150983cd24fb0d6963f7d28e17f72")
                .map(RowHash::to_hex)
                .as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            Kind::parse_codes(&Kind::codes(&Kind::ALL)),
            Some(Kind::ALL.to_vec())
        );
    }

    /// One hasher reused over rows of different widths and kinds hashes each row as a
    /// fresh one would (its buffers carry nothing from the row before), lengths of several
    /// digits included.
    #[test]
    fn a_reused_hasher_hashes_like_a_fresh_one() {
        let long = "x".repeat(1234);
        let rows: Vec<(Vec<Kind>, Vec<Value>)> = vec![
            (
                vec![Kind::Text, Kind::Int],
                vec![Value::Text(long.clone()), Value::Int(7)],
            ),
            (vec![Kind::Int], vec![Value::Int(-1)]),
            (
                vec![Kind::Text, Kind::Text, Kind::Bytes],
                vec![
                    Value::Text("0123456789ab".to_owned()),
                    Value::Null,
                    Value::Blob(vec![0, 255]),
                ],
            ),
            (vec![Kind::Text], vec![Value::Text(String::new())]),
        ];
        let mut hasher = RowHasher::default();
        for (kinds, row) in &rows {
            assert_eq!(
                hasher.hash(kinds, row).unwrap(),
                row_hash(kinds, row).unwrap()
            );
        }
        // Shrinking lets the long row's buffers go, and changes no hash.
        hasher.hash(&rows[0].0, &rows[0].1).unwrap();
        hasher.shrink(64);
        assert!(hasher.encoded.capacity() <= 64 && hasher.text.capacity() <= 64);
        assert_eq!(
            hasher.hash(&rows[0].0, &rows[0].1).unwrap(),
            row_hash(&rows[0].0, &rows[0].1).unwrap()
        );
        let mut encoded = Vec::new();
        encode_row(&rows[0].0, &rows[0].1, &mut encoded).unwrap();
        assert!(encoded.starts_with(b"V1234:xxx"));
        encode_row(&rows[2].0, &rows[2].1, &mut encoded).unwrap();
        assert_eq!(encoded, b"V12:0123456789abNV4:00ff");
    }

    /// The compatibility contract: these encodings and hashes must never change.
    #[test]
    fn golden_row_encoding_and_hashes() {
        let kinds = [
            Kind::Int,
            Kind::Decimal,
            Kind::Text,
            Kind::Text,
            Kind::Bytes,
            Kind::Bool,
            Kind::Date,
            Kind::Timestamp,
            Kind::Json,
        ];
        let row = [
            Value::Int(-42),
            Value::Decimal("12.500".into()),
            Value::Text("é".into()),
            Value::Null,
            Value::Blob(vec![0, 1, 0xab]),
            Value::Bool(false),
            Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap()),
            Value::TimestampTz(
                NaiveDate::from_ymd_opt(9999, 12, 31)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap()
                    .and_utc(),
            ),
            Value::Json("{\"b\":1, \"a\":\"x\"}".into()),
        ];
        let mut buf = Vec::new();
        encode_row(&kinds, &row, &mut buf).unwrap();
        expect![[r#"V3:-42V4:12.5V2:éNV6:0001abV1:0V10:0001-01-01V26:9999-12-31 23:59:59.999999V15:{"a":"x","b":1}"#]]
            .assert_eq(&String::from_utf8(buf).unwrap());
        let hash = row_hash(&kinds, &row).unwrap();
        expect!["1f093752e5d74f882e9e45ad2799878c"].assert_eq(&hash.to_hex());
        let empty = row_hash(&[Kind::Text], &[Value::Text(String::new())]).unwrap();
        // md5("V0:")
        expect!["da009ebb07be8163e0d11c0671bb27ea"].assert_eq(&empty.to_hex());
        let mut fp = Fingerprint::default();
        fp.add(hash);
        fp.add(empty);
        expect!["Fingerprint { rows: 2, sum: 17945109545543389419, check: 1112215056983306102 }"]
            .assert_eq(&format!("{fp:?}"));
    }
}
