//! Fingerprints inside SQLite, which has no MD5: two functions written in Rust and registered
//! on every connection the connectors open ([`register`]), which read each value by its
//! storage class and hash it with `backfill_core::fingerprint` itself, so SQLite and the
//! engine share one implementation of the contract.
//!
//! - `backfill_row_md5(codes, v1, …, vn)`: the row's MD5 digest as 32 hex digits; `codes` is
//!   one [`Kind::code`] letter per value.
//! - `backfill_fingerprint(codes, v1, …, vn)`: an aggregate giving `rows:sum:check` (decimal
//!   `u64`s) over its group; `0:0:0` over no row. Sums wrap modulo 2^64 in Rust, so nothing
//!   overflows (SQLite's `sum()` fails on 64-bit overflow).
//! - `backfill_canonical(code, v)`: the canonical text of one value read as the kind of
//!   `code` (NULL for NULL), what `diff` compares key by key.
//! - `backfill_undo_digest(v1, …, vn)`: `r` and the MD5 (32 hex digits) of each value's
//!   storage class and raw bytes: the undo log's digest of a row, which only needs to equal
//!   itself (computed by SQLite at write and at rollback), so it never fails on a value
//!   that does not read as its column's kind (`'n/a'` in a `DATE` column). Logs written
//!   before `backfill_undo_md5` hold it.
//! - `backfill_undo_md5(v1, …, vn)`: the same MD5 as a 16-byte blob, the digest the undo log
//!   writes now: half the bytes of the hex text in every logged row (the log's cost on SQLite
//!   is mostly the bytes it writes).
//!
//! A value that does not read as its kind (text that is not a date in a date column) makes
//! the statement fail with the contract's message, naming the column's position.
//!
//! The one `unsafe` of the module is the FFI: registering the functions on a locked handle,
//! reading `sqlite3_value`s and setting results; no Rust panic crosses it (the functions
//! return errors as SQLite errors, and Rust aborts rather than unwinding through `extern "C"`).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};
use std::ptr;

use backfill_core::fingerprint::{Fingerprint, Kind, RowHash, RowHasher};
use backfill_core::value::Value;
use libsqlite3_sys as ffi;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

use super::{Binder, Buckets, Column, Scan, Statement};
use crate::ConnectorError;
use crate::shared::{quote_column, quote_ident};
use crate::sqlite::{arguments, sql_error};

const ROW_MD5: &std::ffi::CStr = c"backfill_row_md5";
const FINGERPRINT: &std::ffi::CStr = c"backfill_fingerprint";
const CANONICAL: &std::ffi::CStr = c"backfill_canonical";
const UNDO_DIGEST: &std::ffi::CStr = c"backfill_undo_digest";
const UNDO_MD5: &std::ffi::CStr = c"backfill_undo_md5";

/// The undo log's SQLite digests start with this letter; the canonical `backfill_row_md5`
/// digests that older logs hold are 32 hex digits and never do.
pub(crate) const UNDO_DIGEST_PREFIX: &str = "r";

/// Registers the functions of the module doc on `conn` (deterministic, UTF-8).
///
/// Called for every new connection of the connectors' SQLite pools (`after_connect`); a test
/// or tool opening its own pool calls it the same way.
pub async fn register(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC;
    // SAFETY: `db` is this connection's open handle, locked away from sqlx's worker thread
    // for the duration; the names are NUL-terminated statics; no user data pointer is passed,
    // so no destructor is needed.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            ROW_MD5.as_ptr(),
            -1,
            flags,
            ptr::null_mut(),
            Some(row_md5),
            None,
            None,
            None,
        )
    };
    check(rc, ROW_MD5)?;
    // SAFETY: as above.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            FINGERPRINT.as_ptr(),
            -1,
            flags,
            ptr::null_mut(),
            None,
            Some(fingerprint_step),
            Some(fingerprint_final),
            None,
        )
    };
    check(rc, FINGERPRINT)?;
    // SAFETY: as above.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            UNDO_DIGEST.as_ptr(),
            -1,
            flags,
            ptr::null_mut(),
            Some(undo_digest),
            None,
            None,
            None,
        )
    };
    check(rc, UNDO_DIGEST)?;
    // SAFETY: as above.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            UNDO_MD5.as_ptr(),
            -1,
            flags,
            ptr::null_mut(),
            Some(undo_md5),
            None,
            None,
            None,
        )
    };
    check(rc, UNDO_MD5)?;
    // SAFETY: as above.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            CANONICAL.as_ptr(),
            2,
            flags,
            ptr::null_mut(),
            Some(canonical_fn),
            None,
            None,
            None,
        )
    };
    check(rc, CANONICAL)
}

fn check(rc: c_int, name: &std::ffi::CStr) -> Result<(), sqlx::Error> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "cannot register SQLite function {}: result code {rc}",
            name.to_string_lossy()
        )))
    }
}

/// The running sums of one `backfill_fingerprint` group, in memory SQLite zeroes for us.
#[repr(C)]
struct Sums {
    rows: u64,
    sum: u64,
    check: u64,
}

/// Reads one argument by its storage class.
///
/// SAFETY: `v` must be a protected `sqlite3_value` of the current call.
unsafe fn read_value(v: *mut ffi::sqlite3_value) -> Result<Value, String> {
    // SAFETY: per the function's contract; text/blob pointers are read before their length,
    // as SQLite documents, and copied before returning.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => Ok(Value::Int(ffi::sqlite3_value_int64(v))),
            ffi::SQLITE_FLOAT => Ok(Value::Float(ffi::sqlite3_value_double(v))),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let bytes = raw_bytes(p, ffi::sqlite3_value_bytes(v));
                String::from_utf8(bytes)
                    .map(Value::Text)
                    .map_err(|_| "text that is not UTF-8".to_owned())
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v).cast::<u8>();
                Ok(Value::Blob(raw_bytes(p, ffi::sqlite3_value_bytes(v))))
            }
            _ => Ok(Value::Null),
        }
    }
}

/// Copies `len` bytes at `p` (a NULL pointer or non-positive length is empty).
///
/// SAFETY: `p` must be valid for `len` bytes when non-null.
unsafe fn raw_bytes(p: *const u8, len: c_int) -> Vec<u8> {
    // SAFETY: per the function's contract; copied before returning.
    unsafe { raw_slice(p, len) }.to_vec()
}

/// Reads one argument into `slot`, reusing the `String` or `Vec` already there, so reading
/// row after row into the same slots allocates nothing once they have grown.
///
/// SAFETY: `v` must be a protected `sqlite3_value` of the current call.
unsafe fn read_value_into(v: *mut ffi::sqlite3_value, slot: &mut Value) -> Result<(), String> {
    // SAFETY: per the function's contract; text/blob pointers are read before their length,
    // as SQLite documents, and copied before returning.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let bytes = raw_slice(p, ffi::sqlite3_value_bytes(v));
                let text =
                    std::str::from_utf8(bytes).map_err(|_| "text that is not UTF-8".to_owned())?;
                match slot {
                    Value::Text(s) => {
                        s.clear();
                        s.push_str(text);
                    }
                    _ => *slot = Value::Text(text.to_owned()),
                }
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v).cast::<u8>();
                let bytes = raw_slice(p, ffi::sqlite3_value_bytes(v));
                match slot {
                    Value::Blob(b) => {
                        b.clear();
                        b.extend_from_slice(bytes);
                    }
                    _ => *slot = Value::Blob(bytes.to_vec()),
                }
            }
            _ => *slot = read_value(v)?,
        }
    }
    Ok(())
}

/// The `len` bytes at `p` (a NULL pointer or non-positive length is empty).
///
/// SAFETY: `p` must be valid for `len` bytes when non-null, for the returned lifetime.
unsafe fn raw_slice<'a>(p: *const u8, len: c_int) -> &'a [u8] {
    match usize::try_from(len) {
        // SAFETY: per the function's contract.
        Ok(len) if !p.is_null() && len > 0 => unsafe { std::slice::from_raw_parts(p, len) },
        _ => &[],
    }
}

/// What a thread's calls reuse from row to row: the last kind codes parsed, the row's
/// values and the hasher's buffers (an allocation per value per row cost more than the MD5,
/// and threads contended for the allocator).
struct Scratch {
    /// The kind codes `kinds` was parsed from.
    codes: String,
    kinds: Vec<Kind>,
    /// The call's first argument (the codes) as read.
    head: Value,
    row: Vec<Value>,
    hasher: RowHasher,
}

/// The largest buffer a thread's scratch keeps between rows (bytes).
const KEEP_BYTES: usize = 1 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
        codes: String::new(),
        kinds: Vec::new(),
        head: Value::Null,
        row: Vec::new(),
        hasher: RowHasher::default(),
    });
}

/// The row hash of a call's arguments: kind codes, then one value per code.
///
/// SAFETY: `argv` must hold `argc` protected values of the current call.
unsafe fn hash_arguments(
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> Result<RowHash, String> {
    let argc = usize::try_from(argc).unwrap_or(0);
    if argc == 0 || argv.is_null() {
        return Err("needs the kind codes and one value per code".to_owned());
    }
    // SAFETY: per the function's contract.
    let args = unsafe { std::slice::from_raw_parts(argv, argc) };
    SCRATCH.with(|scratch| {
        // A call never re-enters another on the same thread (SQLite calls the function and
        // waits); `try_borrow_mut` turns a surprise into an error, not a panic.
        let mut scratch = scratch
            .try_borrow_mut()
            .map_err(|_| "re-entered on one thread".to_owned())?;
        let Scratch {
            codes,
            kinds,
            head,
            row,
            hasher,
        } = &mut *scratch;
        // SAFETY: `args[0]` is a protected value of this call.
        unsafe { read_value_into(args[0], head)? };
        let Value::Text(text) = &*head else {
            return Err("the first argument must be the kind codes".to_owned());
        };
        if text != codes {
            *kinds = Kind::parse_codes(text).ok_or_else(|| format!("bad kind codes {text:?}"))?;
            codes.clone_from(text);
        }
        row.resize(argc - 1, Value::Null);
        for (slot, v) in row.iter_mut().zip(&args[1..]) {
            // SAFETY: each element is a protected value of this call.
            unsafe { read_value_into(*v, slot)? };
        }
        let hash = hasher.hash(kinds, row).map_err(|e| e.to_string());
        // A thread's slots live as long as the thread: let one huge row go again.
        hasher.shrink(KEEP_BYTES);
        for slot in row.iter_mut() {
            let large = match slot {
                Value::Text(s) => s.capacity() > KEEP_BYTES,
                Value::Blob(b) => b.capacity() > KEEP_BYTES,
                _ => false,
            };
            if large {
                *slot = Value::Null;
            }
        }
        hash
    })
}

/// Sets `text` as the call's result (SQLite copies it).
///
/// SAFETY: `ctx` must be the current call's context.
unsafe fn result_text(ctx: *mut ffi::sqlite3_context, text: &str) {
    let len = c_int::try_from(text.len()).unwrap_or(0);
    // SAFETY: per the function's contract; SQLITE_TRANSIENT makes SQLite copy the bytes.
    unsafe {
        ffi::sqlite3_result_text(
            ctx,
            text.as_ptr().cast::<c_char>(),
            len,
            ffi::SQLITE_TRANSIENT(),
        );
    }
}

/// Fails the call (and its statement) with `message`.
///
/// SAFETY: `ctx` must be the current call's context.
unsafe fn result_error(ctx: *mut ffi::sqlite3_context, name: &str, message: &str) {
    let message = format!("{name}: {message}");
    let len = c_int::try_from(message.len()).unwrap_or(0);
    // SAFETY: per the function's contract; SQLite copies the message.
    unsafe { ffi::sqlite3_result_error(ctx, message.as_ptr().cast::<c_char>(), len) };
}

unsafe extern "C" fn row_md5(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite calls this with the call's context and arguments.
    unsafe {
        match hash_arguments(argc, argv) {
            Ok(hash) => result_text(ctx, &hash.to_hex()),
            Err(message) => result_error(ctx, "backfill_row_md5", &message),
        }
    }
}

/// The MD5 of each argument's storage class and raw bytes: the undo log's row digest.
///
/// SAFETY: `argv` must hold `argc` protected values of the current call.
unsafe fn undo_hash(argc: c_int, argv: *mut *mut ffi::sqlite3_value) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: per the function's contract; a text or blob pointer is read before its
        // length, as SQLite documents.
        unsafe {
            let v = *argv.add(i);
            match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_INTEGER => {
                    hasher.update(b"i");
                    hasher.update(ffi::sqlite3_value_int64(v).to_le_bytes());
                }
                ffi::SQLITE_FLOAT => {
                    hasher.update(b"f");
                    hasher.update(ffi::sqlite3_value_double(v).to_bits().to_le_bytes());
                }
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_value_text(v);
                    let bytes = raw_slice(p, ffi::sqlite3_value_bytes(v));
                    hasher.update(b"t");
                    hasher.update((bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v).cast::<u8>();
                    let bytes = raw_slice(p, ffi::sqlite3_value_bytes(v));
                    hasher.update(b"b");
                    hasher.update((bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
                _ => hasher.update(b"n"),
            }
        }
    }
    hasher.finalize().into()
}

unsafe extern "C" fn undo_digest(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite calls this with the call's context and `argc` protected values.
    let digest = unsafe { undo_hash(argc, argv) };
    let hex = format!("{UNDO_DIGEST_PREFIX}{:032x}", u128::from_be_bytes(digest));
    // SAFETY: `ctx` is the current call's context.
    unsafe { result_text(ctx, &hex) };
}

unsafe extern "C" fn undo_md5(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite calls this with the call's context and `argc` protected values.
    let digest = unsafe { undo_hash(argc, argv) };
    // SAFETY: `ctx` is the current call's context; SQLITE_TRANSIENT makes SQLite copy the
    // 16 bytes.
    unsafe {
        ffi::sqlite3_result_blob(ctx, digest.as_ptr().cast(), 16, ffi::SQLITE_TRANSIENT());
    }
}

/// `backfill_undo_digest(alias."c1", …)` over `columns` (quoted names): the digest older
/// undo logs hold (see the module doc), for their rollback.
pub(crate) fn undo_digest_sql(columns: &[String], alias: &str) -> String {
    let args: Vec<String> = columns.iter().map(|c| format!("{alias}.{c}")).collect();
    format!("backfill_undo_digest({})", args.join(", "))
}

/// `backfill_undo_md5(alias."c1", …)` over `columns` (quoted names): the undo log's row
/// digest, a 16-byte blob (see the module doc).
pub(crate) fn undo_md5_sql(columns: &[String], alias: &str) -> String {
    let args: Vec<String> = columns.iter().map(|c| format!("{alias}.{c}")).collect();
    format!("backfill_undo_md5({})", args.join(", "))
}

/// The canonical text of a call's two arguments: one kind code, then the value.
///
/// SAFETY: `argv` must hold `argc` protected values of the current call.
unsafe fn canonical_arguments(
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> Result<Option<String>, String> {
    if argc != 2 || argv.is_null() {
        return Err("needs a kind code and a value".to_owned());
    }
    // SAFETY: per the function's contract.
    let args = unsafe { std::slice::from_raw_parts(argv, 2) };
    // SAFETY: each element is a protected value of this call.
    let (code, value) = unsafe { (read_value(args[0])?, read_value(args[1])?) };
    let kind = match &code {
        Value::Text(c) => Kind::parse_codes(c).and_then(|k| (k.len() == 1).then(|| k[0])),
        _ => None,
    }
    .ok_or_else(|| format!("bad kind code {code:?}"))?;
    backfill_core::fingerprint::canonical_text(kind, &value, 0).map_err(|e| e.to_string())
}

unsafe extern "C" fn canonical_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite calls this with the call's context and arguments.
    unsafe {
        match canonical_arguments(argc, argv) {
            Ok(Some(text)) => result_text(ctx, &text),
            Ok(None) => ffi::sqlite3_result_null(ctx),
            Err(message) => result_error(ctx, "backfill_canonical", &message),
        }
    }
}

unsafe extern "C" fn fingerprint_step(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite calls this with the call's context and arguments; the aggregate context
    // is zeroed, 8-byte aligned memory of the requested size, owned by SQLite for the group.
    unsafe {
        let size = c_int::try_from(std::mem::size_of::<Sums>()).unwrap_or(c_int::MAX);
        let sums = ffi::sqlite3_aggregate_context(ctx, size).cast::<Sums>();
        let Some(sums) = sums.as_mut() else {
            ffi::sqlite3_result_error_nomem(ctx);
            return;
        };
        match hash_arguments(argc, argv) {
            Ok(hash) => {
                sums.rows += 1;
                sums.sum = sums.sum.wrapping_add(hash.hash);
                sums.check = sums.check.wrapping_add(hash.check);
            }
            Err(message) => result_error(ctx, "backfill_fingerprint", &message),
        }
    }
}

unsafe extern "C" fn fingerprint_final(ctx: *mut ffi::sqlite3_context) {
    // SAFETY: a size of 0 returns the group's context if a step allocated it, else NULL
    // (no row), without allocating.
    unsafe {
        let sums = ffi::sqlite3_aggregate_context(ctx, 0).cast::<Sums>();
        let text = match sums.as_ref() {
            Some(s) => format!("{}:{}:{}", s.rows, s.sum, s.check),
            None => "0:0:0".to_owned(),
        };
        result_text(ctx, &text);
    }
}

/// `'codes', t."c1", …`: the functions' arguments for the scan's columns.
fn function_args(columns: &[Column]) -> String {
    // Only `Kind::code` letters: safe to write as a literal.
    let mut out = format!(
        "'{}'",
        Kind::codes(&columns.iter().map(|c| c.kind).collect::<Vec<_>>())
    );
    for column in columns {
        out.push_str(", t.");
        out.push_str(&quote_column(&column.name, '"'));
    }
    out
}

/// `backfill_row_md5('codes', alias."c1", …)`: one row's digest (see
/// `super::row_digest_expr`).
pub(crate) fn row_digest(columns: &[Column], alias: &str) -> String {
    let columns: Vec<Column> = columns
        .iter()
        .filter(|c| c.kind != Kind::Json)
        .cloned()
        .collect();
    if columns.is_empty() {
        return "'-'".to_owned();
    }
    let mut out = format!(
        "backfill_row_md5('{}'",
        Kind::codes(&columns.iter().map(|c| c.kind).collect::<Vec<_>>())
    );
    for column in &columns {
        out.push_str(&format!(", {alias}.{}", quote_column(&column.name, '"')));
    }
    out.push(')');
    out
}

/// `SELECT backfill_fingerprint(…) [, bucket] FROM … [GROUP BY bucket]`.
fn aggregate_sql(
    scan: &Scan<'_>,
    buckets: Option<&Buckets<'_>>,
) -> Result<Statement, ConnectorError> {
    super::check_scan(scan)?;
    if let Some(b) = buckets {
        super::check_buckets(b)?;
    }
    let mut binder = Binder::new(false, &scan.relation);
    let mut select = format!(
        "backfill_fingerprint({}) AS fp",
        function_args(scan.columns)
    );
    if let Some(b) = buckets {
        select.push_str(&format!(
            ", {} AS bk",
            super::bucket_expr(&mut binder, b, '"')
        ));
    }
    let from = binder.relation(&scan.relation, '"');
    let filter = super::where_clause(&mut binder, scan, buckets, '"');
    let group = if buckets.is_some() {
        " GROUP BY bk"
    } else {
        ""
    };
    Ok(binder.finish(format!("SELECT {select} FROM {from}{filter}{group}")))
}

/// The statement giving one row, `rows:sum:check`, for the whole scan.
pub fn fingerprint_sql(scan: &Scan<'_>) -> Result<Statement, ConnectorError> {
    aggregate_sql(scan, None)
}

/// The statement giving `rows:sum:check, bucket` per non-empty bucket.
pub fn buckets_sql(scan: &Scan<'_>, buckets: &Buckets<'_>) -> Result<Statement, ConnectorError> {
    aggregate_sql(scan, Some(buckets))
}

/// The statement giving each row's hex digest, ordered by `order_by`.
pub fn row_hashes_sql(scan: &Scan<'_>, order_by: &[&str]) -> Result<Statement, ConnectorError> {
    super::check_scan(scan)?;
    let mut order = Vec::new();
    for key in order_by {
        crate::ident::check_column(key, "order column")?;
        order.push(format!("t.{}", quote_ident(key, '"')));
    }
    let mut binder = Binder::new(false, &scan.relation);
    let from = binder.relation(&scan.relation, '"');
    let filter = super::where_clause(&mut binder, scan, None, '"');
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let sql = format!(
        "SELECT backfill_row_md5({}) FROM {from}{filter}{order}",
        function_args(scan.columns)
    );
    Ok(binder.finish(sql))
}

/// The statement giving each row's canonical texts, one column per scan column.
pub fn canonical_rows_sql(scan: &Scan<'_>) -> Result<Statement, ConnectorError> {
    super::check_scan(scan)?;
    let mut binder = Binder::new(false, &scan.relation);
    let select: Vec<String> = scan
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // Only `Kind::code` letters: safe to write as a literal.
            format!(
                "backfill_canonical('{}', t.{}) AS c{i}",
                c.kind.code(),
                quote_column(&c.name, '"')
            )
        })
        .collect();
    let from = binder.relation(&scan.relation, '"');
    let filter = super::where_clause(&mut binder, scan, None, '"');
    Ok(binder.finish(format!("SELECT {} FROM {from}{filter}", select.join(", "))))
}

/// Each row's canonical texts (NULL as `None`), in no particular order.
pub async fn canonical_rows(
    pool: &SqlitePool,
    scan: &Scan<'_>,
) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
    let rows = fetch(pool, canonical_rows_sql(scan)?).await?;
    rows.iter()
        .map(|r| {
            (0..scan.columns.len())
                .map(|i| r.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("reading canonical rows", &e))
}

async fn fetch(pool: &SqlitePool, statement: Statement) -> Result<Vec<SqliteRow>, ConnectorError> {
    let args = arguments(&statement.params, statement.params.len())?;
    sqlx::query_with(AssertSqlSafe(statement.sql), args)
        .fetch_all(pool)
        .await
        .map_err(|e| sql_error("fingerprint query", &e))
}

/// Parses `rows:sum:check` from `backfill_fingerprint`.
fn parse_fingerprint(text: &str) -> Result<Fingerprint, ConnectorError> {
    let mut parts = text.split(':');
    let (Some(rows), Some(sum), Some(check), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(super::bad_sums(text));
    };
    let rows = rows.parse::<i64>().map_err(|_| super::bad_sums(text))?;
    Fingerprint::from_sums(rows, Some(sum), Some(check)).ok_or_else(|| super::bad_sums(text))
}

/// The fingerprint of the scan, computed in the database.
pub async fn fingerprint(
    pool: &SqlitePool,
    scan: &Scan<'_>,
) -> Result<Fingerprint, ConnectorError> {
    let rows = fetch(pool, fingerprint_sql(scan)?).await?;
    match rows.first() {
        Some(row) => parse_fingerprint(
            &row.try_get::<String, _>(0)
                .map_err(|e| sql_error("reading a fingerprint", &e))?,
        ),
        None => Ok(Fingerprint::default()),
    }
}

/// The fingerprint of each bucket (in bucket order; empty buckets are empty fingerprints),
/// in one query.
pub async fn fingerprint_buckets(
    pool: &SqlitePool,
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let rows = fetch(pool, buckets_sql(scan, buckets)?).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let read = |e: sqlx::Error| sql_error("reading a fingerprint", &e);
        let text: String = row.try_get(0).map_err(read)?;
        let bucket: i64 = row.try_get(1).map_err(read)?;
        out.push((bucket, parse_fingerprint(&text)?));
    }
    super::per_bucket(buckets.len(), out)
}

/// Each row's hash, ordered by `order_by`.
pub async fn row_hashes(
    pool: &SqlitePool,
    scan: &Scan<'_>,
    order_by: &[&str],
) -> Result<Vec<RowHash>, ConnectorError> {
    let rows = fetch(pool, row_hashes_sql(scan, order_by)?).await?;
    let digests = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("reading a row hash", &e))?;
    super::parse_digests(digests)
}

/// The kind of a SQLite column by its declared type (SQLite's own affinity rules, refined by
/// the names the connectors and users write: `BOOLEAN`, `DATE`, `TIMESTAMP`, `JSON`, `UUID`,
/// `DECIMAL`); `None` for `REAL`/`FLOAT`/`DOUBLE` and an undeclared type.
pub fn kind_of(declared: &str) -> Option<Kind> {
    let t = declared.to_ascii_uppercase();
    let has = |s: &str| t.contains(s);
    Some(if has("BOOL") {
        Kind::Bool
    } else if has("TIMESTAMP") || has("DATETIME") {
        Kind::Timestamp
    } else if has("DATE") {
        Kind::Date
    } else if has("TIME") {
        Kind::Time
    } else if has("JSON") {
        Kind::Json
    } else if has("UUID") {
        Kind::Uuid
    } else if has("DEC") || has("NUMERIC") {
        Kind::Decimal
    } else if has("INT") {
        Kind::Int
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        Kind::Text
    } else if has("BLOB") || has("BINARY") || has("BYTEA") {
        Kind::Bytes
    } else {
        return None;
    })
}

/// The columns of `table` (`table` or `schema.table`) in table order, with their kinds from
/// the declared types. A column whose declared type has no fingerprint is an error naming
/// it; a missing table is an error too.
pub async fn columns(pool: &SqlitePool, table: &str) -> Result<Vec<Column>, ConnectorError> {
    super::require_kinds(catalog(pool, table).await?)
}

/// [`catalog`]'s type name of a column declared without a type.
pub(crate) const NO_TYPE: &str = "(none declared)";

/// Every column of `table` in table order with its declared type and kind (`None` when it
/// has no fingerprint); a missing table is an error.
pub async fn catalog(
    pool: &SqlitePool,
    table: &str,
) -> Result<Vec<super::Catalogued>, ConnectorError> {
    crate::ident::check_table(table)?;
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (schema, name),
        None => ("main", table),
    };
    let rows = sqlx::query("SELECT name, type FROM pragma_table_info(?, ?) ORDER BY cid")
        .bind(name)
        .bind(schema)
        .fetch_all(pool)
        .await
        .map_err(|e| sql_error("reading the table's columns", &e))?;
    if rows.is_empty() {
        return Err(ConnectorError::Data {
            message: format!("table {table} not found (or it has no columns)"),
        });
    }
    rows.iter()
        .map(|row| {
            let name: String = row.get(0);
            let declared: String = row.get(1);
            let kind = kind_of(&declared);
            let type_name = if declared.is_empty() {
                NO_TYPE.to_owned()
            } else {
                declared
            };
            Ok(super::Catalogued {
                name,
                type_name,
                kind,
            })
        })
        .collect()
}

/// The first row of `statement` (a reconciliation check query, issue 11) as values, read
/// like a source's rows; `None` when it returns no row.
pub async fn check_row(
    pool: &SqlitePool,
    statement: Statement,
) -> Result<Option<Vec<backfill_core::value::Value>>, ConnectorError> {
    let rows = fetch(pool, statement).await?;
    Ok(
        crate::sqlite::decode_rows(rows.into_iter().take(1).collect(), &[])?
            .into_iter()
            .next(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_to_kinds() {
        let cases = [
            ("INTEGER", Some(Kind::Int)),
            ("BIGINT", Some(Kind::Int)),
            ("BOOLEAN", Some(Kind::Bool)),
            ("DECIMAL(38,10)", Some(Kind::Decimal)),
            ("NUMERIC", Some(Kind::Decimal)),
            ("TEXT", Some(Kind::Text)),
            ("VARCHAR(20)", Some(Kind::Text)),
            ("BLOB", Some(Kind::Bytes)),
            ("DATE", Some(Kind::Date)),
            ("DATETIME", Some(Kind::Timestamp)),
            ("TIMESTAMPTZ", Some(Kind::Timestamp)),
            ("TIME", Some(Kind::Time)),
            ("JSON", Some(Kind::Json)),
            ("UUID", Some(Kind::Uuid)),
            ("REAL", None),
            ("DOUBLE", None),
            ("", None),
        ];
        for (declared, want) in cases {
            assert_eq!(kind_of(declared), want, "{declared}");
        }
    }

    #[test]
    fn fingerprint_text_parses() {
        assert_eq!(
            parse_fingerprint("2:18446744073709551615:3").unwrap(),
            Fingerprint {
                rows: 2,
                sum: u64::MAX,
                check: 3
            }
        );
        assert!(parse_fingerprint("2:1").is_err());
        assert!(parse_fingerprint("x:1:2").is_err());
    }
}
