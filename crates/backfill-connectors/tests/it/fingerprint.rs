//! Fingerprints agree everywhere: the same edge-value rows, written by the sinks into
//! PostgreSQL, MariaDB and SQLite, hash identically when pushed down into each database and
//! when the engine hashes the rows each source reads back (`backfill_core::fingerprint`).
//!
//! Each server test runs in its own schema or database (`backfill_testkit`); an unreachable
//! server skips the test (counted), or fails it when services are required.

use backfill_connectors::fingerprint::{self, Buckets, Column, Range, Relation, Scan};
use backfill_core::fingerprint::{Fingerprint, Kind, RowHash, row_hash};
use backfill_core::spec::WriteMode;
use backfill_core::value::{Batch, Value, parse_uuid};
use backfill_testkit::{MyDatabase, PgSchema};
use chrono::{NaiveDate, NaiveTime};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::{Dir, keys, read_all, sink, source, strings};

const COLUMNS: [(&str, Kind); 10] = [
    ("id", Kind::Int),
    ("i", Kind::Int),
    ("d", Kind::Decimal),
    ("t", Kind::Text),
    ("b", Kind::Bytes),
    ("f", Kind::Bool),
    ("day", Kind::Date),
    ("at", Kind::Timestamp),
    ("tm", Kind::Time),
    ("u", Kind::Uuid),
];

const PG_TABLE: &str = "(id bigint PRIMARY KEY, i bigint, d numeric(38,10), t text, b bytea, \
    f boolean, day date, at timestamptz, tm time, u uuid)";
// MariaDB: `u` is CHAR(36), not UUID: the MySQL sink binds a NULL as an integer, which
// MariaDB refuses to cast to UUID (a sink limitation, not the fingerprint's). The catalog then
// says text, hashed alike because the sink writes UUIDs lower-case and hyphenated.
const MY_TABLE: &str = "(id BIGINT PRIMARY KEY, i BIGINT, d DECIMAL(38,10), t TEXT, b BLOB, \
    f BOOLEAN, day DATE, at DATETIME(6), tm TIME(6), u CHAR(36))";
// SQLite: a decimal of 38 digits needs TEXT affinity (NUMERIC would store a REAL), so `d`
// is declared TEXT and hashed as a decimal because the kinds are given.
const SQLITE_TABLE: &str = "(id INTEGER PRIMARY KEY, i INTEGER, d TEXT, t TEXT, b BLOB, \
    f BOOLEAN, day DATE, at TIMESTAMP, tm TIME, u UUID)";

fn columns() -> Vec<Column> {
    COLUMNS.iter().map(|(n, k)| Column::new(*n, *k)).collect()
}

fn kinds() -> Vec<Kind> {
    COLUMNS.iter().map(|(_, k)| *k).collect()
}

fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> Value {
    Value::TimestampTz(
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_micro_opt(h, mi, s, us)
            .unwrap()
            .and_utc(),
    )
}

fn date(y: i32, m: u32, d: u32) -> Value {
    Value::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap())
}

fn time(h: u32, m: u32, s: u32, us: u32) -> Value {
    Value::Time(NaiveTime::from_hms_micro_opt(h, m, s, us).unwrap())
}

fn uuid(text: &str) -> Value {
    Value::Uuid(parse_uuid(text).unwrap())
}

/// NULLs, empty strings and bytes, NFC and NFD text, 38-digit decimals with trailing zeros
/// and negative zero, extreme and microsecond timestamps, booleans, bytes with 0x00.
fn edge_rows() -> Vec<Vec<Value>> {
    use Value::{Blob, Bool, Decimal, Int, Null, Text};
    vec![
        vec![Int(1), Null, Null, Null, Null, Null, Null, Null, Null, Null],
        vec![
            Int(2),
            Int(0),
            Decimal("0.0000000000".into()),
            Text(String::new()),
            Blob(Vec::new()),
            Bool(false),
            date(2026, 3, 1),
            ts(2026, 3, 1, 0, 0, 0, 0),
            time(0, 0, 0, 0),
            uuid("0190c7c8-8a2b-7c1e-9b3a-1234567890ab"),
        ],
        vec![
            Int(3),
            Int(i64::MAX),
            Decimal("1234567890123456789012345678.1234567890".into()),
            Text("\u{e9}".into()),
            Blob(vec![0]),
            Bool(true),
            date(1, 1, 1),
            ts(1, 1, 1, 0, 0, 0, 0),
            time(23, 59, 59, 999_999),
            uuid("ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ],
        vec![
            Int(4),
            Int(i64::MIN),
            Decimal("-12.5000000000".into()),
            Text("e\u{301}".into()),
            Blob(vec![0, 1, 0, 255]),
            Bool(false),
            date(9999, 12, 31),
            ts(9999, 12, 31, 23, 59, 59, 999_999),
            time(12, 0, 0, 1),
            Null,
        ],
        vec![
            Int(5),
            Int(-1),
            Decimal("-0.0000000000".into()),
            Text("a'b\\c\n\t\u{1f600} \"q\" V3:x N".into()),
            Blob(b"\\x00 'x'".to_vec()),
            Null,
            Null,
            ts(2026, 3, 1, 12, 34, 56, 1),
            Null,
            Null,
        ],
        vec![
            Int(6),
            Int(42),
            Decimal("100.0000000000".into()),
            Text(" ".into()),
            Null,
            Bool(true),
            date(2000, 2, 29),
            ts(2000, 2, 29, 23, 59, 59, 500_000),
            time(0, 0, 0, 1),
            Null,
        ],
    ]
}

fn batch() -> Batch {
    Batch {
        columns: COLUMNS.iter().map(|(n, _)| (*n).to_owned()).collect(),
        rows: edge_rows(),
    }
}

/// What the engine computes over `rows`: row hashes, the whole fingerprint, and the
/// fingerprints of ids `[0, 3)`, `[3, 5)`, `[5, 7)`, `[7, 100)` and of ids `[2, 5)`.
#[derive(Debug, PartialEq)]
struct Observed {
    hashes: Vec<RowHash>,
    whole: Fingerprint,
    buckets: Vec<Fingerprint>,
    range: Fingerprint,
    /// Buckets over the timestamp column: [`time_bounds`] hold row 6, then rows 2 and 5.
    by_time: Vec<Fingerprint>,
    /// The rows fetched as canonical texts (what `diff` compares), hashed as text, sorted:
    /// the same as the row hashes, so texts agree byte for byte across systems.
    canonical: Vec<RowHash>,
}

/// Hashes rows of canonical texts as `Text` values, sorted.
fn text_hashes(rows: Vec<Vec<Option<String>>>) -> Vec<RowHash> {
    let mut out: Vec<RowHash> = rows
        .into_iter()
        .map(|r| {
            let values: Vec<Value> = r
                .into_iter()
                .map(|v| v.map_or(Value::Null, Value::Text))
                .collect();
            row_hash(&vec![Kind::Text; values.len()], &values).unwrap()
        })
        .collect();
    out.sort();
    out
}

/// Bounds on `at`, bound as each connector binds a window's instants.
fn time_bounds() -> Vec<Value> {
    vec![
        ts(2000, 1, 1, 0, 0, 0, 0),
        ts(2026, 3, 1, 0, 0, 0, 0),
        ts(2026, 3, 2, 0, 0, 0, 0),
    ]
}

const BOUNDS: [i64; 5] = [0, 3, 5, 7, 100];

fn engine(rows: &[Vec<Value>]) -> Observed {
    let kinds = kinds();
    let id = |r: &Vec<Value>| match r[0] {
        Value::Int(i) => i,
        _ => panic!("id"),
    };
    let of = |lo: i64, hi: i64| {
        Fingerprint::of_rows(
            &kinds,
            rows.iter()
                .filter(|r| (lo..hi).contains(&id(r)))
                .map(Vec::as_slice),
        )
        .unwrap()
    };
    Observed {
        hashes: rows.iter().map(|r| row_hash(&kinds, r).unwrap()).collect(),
        canonical: {
            let mut all: Vec<RowHash> = rows.iter().map(|r| row_hash(&kinds, r).unwrap()).collect();
            all.sort();
            all
        },
        whole: of(i64::MIN, i64::MAX),
        buckets: BOUNDS.windows(2).map(|w| of(w[0], w[1])).collect(),
        range: of(2, 5),
        by_time: [&[6][..], &[2, 5]]
            .iter()
            .map(|ids| {
                let rows = rows.iter().filter(|r| ids.contains(&id(r)));
                Fingerprint::of_rows(&kinds, rows.map(Vec::as_slice)).unwrap()
            })
            .collect(),
    }
}

fn bounds() -> Vec<Value> {
    BOUNDS.iter().map(|b| Value::Int(*b)).collect()
}

/// Reads every row back through the system's source, as the engine would.
async fn read_back(url: &str, table: &str) -> Vec<Vec<Value>> {
    let names = COLUMNS.map(|(n, _)| n).join(", ");
    let query = format!("SELECT {names} FROM {table} WHERE id >= :start AND id < :end");
    let source = source(url, &query, &["id"]).await;
    let (batch, _) = read_all(&source, &keys(0, 100), 1000).await;
    assert_eq!(batch.columns, strings(&COLUMNS.map(|(n, _)| n)));
    batch.rows
}

async fn write(url: &str, table: &str) {
    let sink = sink(url, table, &["id"], WriteMode::Upsert).await;
    sink.upsert(&batch(), None).await.unwrap();
}

/// Runs the pushed-down statements of one system (a macro: each system's pool type differs).
macro_rules! pushed {
    ($module:ident, $pool:expr, $table:expr) => {{
        let columns = columns();
        let scan = Scan {
            relation: Relation::Table($table),
            columns: &columns,
            range: None,
        };
        let bounds = bounds();
        let buckets = Buckets {
            column: "id",
            bounds: &bounds,
        };
        let time_bounds = time_bounds();
        let by_time = Buckets {
            column: "at",
            bounds: &time_bounds,
        };
        let (start, end) = (Value::Int(2), Value::Int(5));
        let ranged = Scan {
            range: Some(Range {
                column: "id",
                start: &start,
                end: &end,
            }),
            ..scan
        };
        Observed {
            hashes: fingerprint::$module::row_hashes($pool, &scan, &["id"])
                .await
                .unwrap(),
            whole: fingerprint::$module::fingerprint($pool, &scan)
                .await
                .unwrap(),
            buckets: fingerprint::$module::fingerprint_buckets($pool, &scan, &buckets)
                .await
                .unwrap(),
            range: fingerprint::$module::fingerprint($pool, &ranged)
                .await
                .unwrap(),
            by_time: fingerprint::$module::fingerprint_buckets($pool, &scan, &by_time)
                .await
                .unwrap(),
            canonical: text_hashes(
                fingerprint::$module::canonical_rows($pool, &scan)
                    .await
                    .unwrap(),
            ),
        }
    }};
}

async fn sqlite_pool(path: &std::path::Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .after_connect(|conn, _| Box::pin(fingerprint::sqlite::register(conn)))
        .connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

#[tokio::test]
async fn fingerprints_agree_across_postgres_mariadb_sqlite_and_the_engine() {
    let want = engine(&edge_rows());
    // Sanity: the edge values differ where they should (NFC vs NFD rows 3 and 4 differ
    // anyway; the whole fingerprint is the sum of the buckets).
    let mut sum = Fingerprint::default();
    want.buckets.iter().for_each(|b| sum.merge(b));
    assert_eq!(sum, want.whole);

    // SQLite.
    let dir = Dir::temp();
    let url = dir
        .db("fp.db", &format!("CREATE TABLE fp {SQLITE_TABLE};"))
        .await;
    write(&url, "fp").await;
    assert_eq!(engine(&read_back(&url, "fp").await), want, "SQLite, engine");
    let pool = sqlite_pool(&dir.path("fp.db")).await;
    assert_eq!(pushed!(sqlite, &pool, "fp"), want, "SQLite, pushed down");
    let mut catalog = fingerprint::sqlite::columns(&pool, "fp").await.unwrap();
    catalog[2].kind = Kind::Decimal; // declared TEXT, see SQLITE_TABLE
    assert_eq!(catalog, columns());

    // PostgreSQL.
    if let Some(schema) = PgSchema::create("bf_fp").await {
        let table = schema.table("fp");
        schema
            .exec(&format!("CREATE TABLE {table} {PG_TABLE}"))
            .await;
        write(schema.server_url(), &table).await;
        let rows = read_back(schema.server_url(), &table).await;
        assert_eq!(engine(&rows), want, "PostgreSQL, engine");
        assert_eq!(
            pushed!(postgres, schema.pool(), &table),
            want,
            "PostgreSQL, pushed"
        );
        let catalog = fingerprint::postgres::columns(schema.pool(), &table).await;
        assert_eq!(catalog.unwrap(), columns());
        schema.drop_now().await;
    }

    // MariaDB / MySQL.
    if let Some(db) = MyDatabase::create("bf_fp").await {
        let table = db.table("fp");
        db.exec(&format!("CREATE TABLE {table} {MY_TABLE}")).await;
        write(&db.url(), "fp").await;
        let rows = read_back(&db.url(), "fp").await;
        assert_eq!(engine(&rows), want, "MariaDB, engine");
        // A pool of its own, in the server's default time zone: the functions set UTC.
        let pool = MySqlPoolOptions::new().connect(&db.url()).await.unwrap();
        assert_eq!(pushed!(mysql, &pool, &table), want, "MariaDB, pushed");
        let mut catalog = fingerprint::mysql::columns(&pool, &table).await.unwrap();
        assert_eq!(catalog[9].kind, Kind::Text); // CHAR(36), see MY_TABLE
        catalog[9].kind = Kind::Uuid;
        assert_eq!(catalog, columns());
        pool.close().await;
        db.drop_now().await;
    }
}

/// Rows of `sql` (with parameters `own`) in `range`, hashed over `columns`.
fn query_scan<'a>(
    sql: &'a str,
    own: &'a [Value],
    columns: &'a [Column],
    range: Range<'a>,
) -> Scan<'a> {
    Scan {
        relation: Relation::Query { sql, params: own },
        columns,
        range: Some(range),
    }
}

#[tokio::test]
async fn a_query_relation_binds_its_own_parameters_first() {
    let want = engine(&edge_rows()[1..4]);
    let columns = columns();
    let (from, to) = (Value::Int(2), Value::Int(5));
    let own = [Value::Int(0), Value::Int(100)];
    let bounds = bounds();
    let buckets = Buckets {
        column: "id",
        bounds: &bounds,
    };
    let range = Range {
        column: "id",
        start: &from,
        end: &to,
    };
    let scan_of = |sql| query_scan(sql, &own, &columns, range);

    let dir = Dir::temp();
    let url = dir
        .db("q.db", &format!("CREATE TABLE fp {SQLITE_TABLE};"))
        .await;
    write(&url, "fp").await;
    let pool = sqlite_pool(&dir.path("q.db")).await;
    let scan = scan_of("SELECT * FROM fp WHERE id >= ? AND id < ?");
    let fp = fingerprint::sqlite::fingerprint(&pool, &scan)
        .await
        .unwrap();
    assert_eq!(fp, want.whole);
    let per = fingerprint::sqlite::fingerprint_buckets(&pool, &scan, &buckets).await;
    assert_eq!(per.unwrap()[..2], [want.buckets[0], want.buckets[1]]);

    if let Some(schema) = PgSchema::create("bf_fpq").await {
        let table = schema.table("fp");
        schema
            .exec(&format!("CREATE TABLE {table} {PG_TABLE}"))
            .await;
        write(schema.server_url(), &table).await;
        let sql = format!("SELECT * FROM {table} WHERE id >= $1 AND id < $2;");
        let scan = query_scan(&sql, &own, &columns, range);
        let fp = fingerprint::postgres::fingerprint(schema.pool(), &scan).await;
        assert_eq!(fp.unwrap(), want.whole);
        let per = fingerprint::postgres::fingerprint_buckets(schema.pool(), &scan, &buckets).await;
        assert_eq!(per.unwrap()[..2], [want.buckets[0], want.buckets[1]]);
        schema.drop_now().await;
    }

    if let Some(db) = MyDatabase::create("bf_fpq").await {
        let table = db.table("fp");
        db.exec(&format!("CREATE TABLE {table} {MY_TABLE}")).await;
        write(&db.url(), "fp").await;
        let sql = format!("SELECT * FROM {table} WHERE id >= ? AND id < ?");
        let scan = query_scan(&sql, &own, &columns, range);
        let fp = fingerprint::mysql::fingerprint(db.pool(), &scan).await;
        assert_eq!(fp.unwrap(), want.whole);
        let per = fingerprint::mysql::fingerprint_buckets(db.pool(), &scan, &buckets).await;
        assert_eq!(per.unwrap()[..2], [want.buckets[0], want.buckets[1]]);
        db.drop_now().await;
    }
}

/// JSON is canonical in SQLite and the engine (key order and whitespace do not count);
/// PostgreSQL and MySQL refuse to push a JSON column down, naming it, and the engine hashes
/// what their sources read to the same value.
#[tokio::test]
async fn json_is_canonical_and_refused_where_sql_cannot_canonicalise_it() {
    let columns = [Column::new("id", Kind::Int), Column::new("doc", Kind::Json)];
    let kinds = [Kind::Int, Kind::Json];
    let doc = Value::Json("{\"a\":[1,2.5,\"x\"],\"b\":{\"d\":null,\"c\":true}}".into());
    let want = row_hash(&kinds, &[Value::Int(1), doc]).unwrap();
    let scan = Scan {
        relation: Relation::Table("j"),
        columns: &columns,
        range: None,
    };

    let dir = Dir::temp();
    let script = "CREATE TABLE j (id INTEGER PRIMARY KEY, doc JSON);
        INSERT INTO j VALUES (1, '{ \"b\": {\"c\": true, \"d\": null}, \"a\": [1, 2.5, \"x\"] }');";
    dir.db("j.db", script).await;
    let pool = sqlite_pool(&dir.path("j.db")).await;
    let hashes = fingerprint::sqlite::row_hashes(&pool, &scan, &["id"]).await;
    assert_eq!(hashes.unwrap(), vec![want]);
    // A value that is not JSON fails the statement, naming the column.
    sqlx::query("INSERT INTO j VALUES (2, 'not json')")
        .execute(&pool)
        .await
        .unwrap();
    let err = fingerprint::sqlite::fingerprint(&pool, &scan)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("column 1"), "{err}");

    // The connectors' own SQLite connections have the functions: a source query calls one.
    let url = crate::url(&dir.path("j.db"));
    let query = "SELECT id, backfill_row_md5('ij', id, doc) AS h FROM j \
                 WHERE id >= :start AND id < :end";
    let (batch, _) = read_all(&source(&url, query, &["id"]).await, &keys(1, 2), 10).await;
    assert_eq!(
        batch.rows,
        vec![vec![Value::Int(1), Value::Text(want.to_hex())]]
    );

    let refused = fingerprint::postgres::fingerprint_sql(&scan).unwrap_err();
    assert!(refused.to_string().contains("\"doc\" is JSON"), "{refused}");
    assert!(fingerprint::mysql::row_hashes_sql(&scan, &["id"]).is_err());

    if let Some(schema) = PgSchema::create("bf_fpj").await {
        let table = schema.table("j");
        schema
            .exec(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, doc jsonb);
                 INSERT INTO {table} VALUES (1, '{{\"b\": {{\"d\": null, \"c\": true}}, \"a\": [1, 2.5, \"x\"]}}')"
            ))
            .await;
        let query = format!("SELECT id, doc FROM {table} WHERE id >= :start AND id < :end");
        let source = source(schema.server_url(), &query, &["id"]).await;
        let (batch, _) = read_all(&source, &keys(0, 100), 100).await;
        assert_eq!(row_hash(&kinds, &batch.rows[0]).unwrap(), want);
        schema.drop_now().await;
    }
}
