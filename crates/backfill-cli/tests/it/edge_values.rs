//! Edge values through the real binary for every source × target pair of SQLite, PostgreSQL
//! and MySQL/MariaDB (upsert mode): every cell of the target is compared with the value it
//! must hold, then the same backfill runs again and must find every row unchanged (a lossy
//! round trip would make each re-run rewrite rows forever).
//!
//! The rows: the largest values (i64::MAX, i32::MAX, a 38-digit decimal, 9999-12-31, an
//! instant just after the 32-bit `time_t` limit of 2038-01-19 03:14:07 UTC), the smallest
//! (i64::MIN, i32::MIN, the negative 38-digit decimal, 1000-01-01, the last microsecond before
//! 1970, empty text and empty bytes, which are not NULL), a row that is NULL in every nullable
//! column, and values near zero (0.0000000001, a single zero byte, text in decomposed unicode
//! with a trailing space, an instant half a second before 1901-12-13 20:45:52 UTC, the 32-bit
//! `time_t` minimum). Text holds emoji, a ZWJ sequence, CJK, combining marks, tab, CR, LF,
//! quotes and a backslash; bytes hold zero bytes. SQLite → SQLite runs on the pushdown and on
//! the row path.
//!
//! Column types, per system (the mapping the connectors document):
//!
//! | column | PostgreSQL | MySQL/MariaDB | SQLite (storage class) |
//! |---|---|---|---|
//! | `i64v` | `BIGINT` | `BIGINT` | `BIGINT` (integer) |
//! | `i32v` | `INTEGER` | `INT` | `INTEGER` (integer) |
//! | `decv` | `NUMERIC(38,10)` | `DECIMAL(38,10)` | `TEXT` (text, plain notation, scale 10) |
//! | `txt` | `TEXT` | `TEXT` (utf8mb4) | `TEXT` (text) |
//! | `bin` | `BYTEA` | `LONGBLOB` | `BLOB` (blob) |
//! | `flag` | `BOOLEAN` | `BOOLEAN` (`TINYINT(1)`) | `BOOLEAN` (integer 0/1) |
//! | `datev` | `DATE` | `DATE` | `DATE` (text `YYYY-MM-DD`) |
//! | `tsv` | `TIMESTAMP` | `DATETIME(6)` | `TIMESTAMP` (text `YYYY-MM-DD HH:MM:SS[.f]`) |
//! | `tzv` | `TIMESTAMPTZ` | `DATETIME(6)`, in UTC | `TIMESTAMPTZ` (text, RFC 3339 with `Z`) |
//! | `tzr` | `TIMESTAMPTZ` | `TIMESTAMP(6)` | `TIMESTAMPTZ` (text, RFC 3339 with `Z`) |
//! | `js` | `JSON` | `JSON` | `JSON` (text) |
//! | `uid` | `UUID` | `CHAR(36)` | `UUID` (text, lower-case hyphenated) |
//!
//! Where a system cannot hold a value exactly, the column uses the type that can:
//! - MySQL's `TIMESTAMP` (its time-zone-aware type) only spans 1970-01-01 00:00:01 to
//!   2038-01-19 03:14:07 UTC, so instants outside it (`tzv`) live in a `DATETIME(6)` holding UTC;
//!   `tzr` keeps MySQL's `TIMESTAMP` for instants inside that range (its two ends included).
//!   A `DATETIME` reads as a timestamp without zone: into PostgreSQL's `TIMESTAMPTZ` it is
//!   taken as UTC (sqlx sessions run in UTC), into SQLite it is stored as wall-clock text
//!   (`YYYY-MM-DD HH:MM:SS.f`, no `Z`), which the expected values say.
//! - MySQL has no UUID type: `CHAR(36)` with the hyphenated text (a `BINARY(16)` would read as
//!   bytes, which PostgreSQL's `UUID` refuses).
//! - SQLite has no decimal type: the decimal is TEXT. A column declared `DECIMAL(38,10)` has
//!   NUMERIC affinity, where SQLite would store such text as a 15-digit float: the SQLite
//!   sink quarantines a decimal that would be rounded, naming the column
//!   (`postgres_decimal_into_a_sqlite_decimal_column_is_exact_or_refused`). Date, JSON and UUID
//!   columns keep their natural declarations (NUMERIC affinity leaves text that is not a
//!   number alone).
//! - MySQL DATE/DATETIME span years 1000..9999, so dates stay within them.
//!
//! - SQLite holds instants as RFC 3339 text with `Z` (the form the engine writes into SQLite),
//!   which MySQL refuses for `DATETIME`/`TIMESTAMP`: the MySQL sink turns such text into the
//!   instant's UTC wall clock for those columns only (`sqlite_to_mysql`);
//!   `sqlite_to_mysql_with_naive_utc_instants` covers instants already in MySQL's spelling.
//!
//! Each test uses its own PostgreSQL schema or MySQL database (`backfill_testkit::servers`,
//! MySQL sessions in UTC); a test whose server is down is skipped and counted as skipped, or
//! fails when services are required (`backfill_testkit::skip`).

use backfill_testkit::{Db, System};
use chrono::{NaiveDateTime, SecondsFormat};
use sqlx::Row;

use crate::support::Workspace;

/// The logical type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    I64,
    I32,
    Decimal,
    Text,
    Bytes,
    Bool,
    Date,
    /// Timestamp without time zone.
    Timestamp,
    /// Instant, any year (MySQL: `DATETIME(6)` in UTC).
    Instant,
    /// Instant inside MySQL's `TIMESTAMP` range (MySQL: `TIMESTAMP(6)`).
    InstantInRange,
    Json,
    Uuid,
}

const COLUMNS: [(&str, Kind); 12] = [
    ("i64v", Kind::I64),
    ("i32v", Kind::I32),
    ("decv", Kind::Decimal),
    ("txt", Kind::Text),
    ("bin", Kind::Bytes),
    ("flag", Kind::Bool),
    ("datev", Kind::Date),
    ("tsv", Kind::Timestamp),
    ("tzv", Kind::Instant),
    ("tzr", Kind::InstantInRange),
    ("js", Kind::Json),
    ("uid", Kind::Uuid),
];

/// One cell in a system-neutral form. Timestamps and instants are
/// `YYYY-MM-DD HH:MM:SS.ffffff` (instants in UTC).
#[derive(Clone, Copy, Debug)]
enum V {
    Null,
    I(i64),
    /// Decimal text with the column's scale (10).
    D(&'static str),
    T(&'static str),
    B(&'static [u8]),
    Bool(bool),
    /// Dates, timestamps, JSON and UUIDs, as text.
    S(&'static str),
}

const ROWS: [(i64, [V; 12]); 4] = [
    (
        1,
        [
            V::I(i64::MAX),
            V::I(i32::MAX as i64),
            V::D("9999999999999999999999999999.9999999999"),
            V::T("😀 👨‍👩‍👧 中文字 Ünïcödé e\u{301} tab\there \"q\" 'a' back\\slash\nnew line\r\n"),
            V::B(&[0, 255, 0, 1, 0]),
            V::Bool(true),
            V::S("9999-12-31"),
            V::S("9999-12-31 23:59:59.999999"),
            V::S("2038-01-19 03:14:08.000001"),
            V::S("2038-01-19 03:14:07.999999"),
            V::S(r#"{"a": [1, null, true], "k": "ü😀"}"#),
            V::S("0190c7c8-8a2b-7c1e-9b3a-1234567890ab"),
        ],
    ),
    (
        2,
        [
            V::I(i64::MIN),
            V::I(i32::MIN as i64),
            V::D("-9999999999999999999999999999.9999999999"),
            V::T(""),
            V::B(&[]),
            V::Bool(false),
            V::S("1000-01-01"),
            V::S("1000-01-01 00:00:00.000000"),
            V::S("1969-12-31 23:59:59.999999"),
            V::S("1970-01-01 00:00:01.000000"),
            V::S("[]"),
            V::S("00000000-0000-0000-0000-000000000000"),
        ],
    ),
    (3, [V::Null; 12]),
    (
        4,
        [
            V::I(-1),
            V::I(0),
            V::D("-0.0000000001"),
            V::T("e\u{301}\u{308} "),
            V::B(&[0]),
            V::Bool(true),
            V::S("1970-01-01"),
            V::S("1969-12-31 23:59:59.999999"),
            V::S("1901-12-13 20:45:51.500000"),
            V::S("2000-02-29 12:00:00.000001"),
            V::S(r#""x""#),
            V::S("ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ],
    ),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The engine's portable text of a timestamp without zone (as SQLite stores it).
fn naive_text(text: &str) -> String {
    parse_ts(text).format("%Y-%m-%d %H:%M:%S%.f").to_string()
}

/// The engine's portable text of an instant (RFC 3339, `Z`).
fn instant_text(text: &str) -> String {
    parse_ts(text)
        .and_utc()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// How the SQLite source holds instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqliteInstants {
    /// RFC 3339 text with `Z`: the portable form the engine itself writes into SQLite.
    Rfc3339,
    /// `YYYY-MM-DD HH:MM:SS.f` text read as UTC (a form MySQL's DATETIME accepts).
    NaiveUtc,
}

/// What `render` must read from `target` for `value` of a `kind` column copied from `source`
/// (a SQLite source holding instants as `instants`).
fn expected(
    target: System,
    source: System,
    instants: SqliteInstants,
    kind: Kind,
    value: V,
) -> Option<String> {
    let plain = match value {
        V::Null => return None,
        V::I(i) => i.to_string(),
        V::D(s) | V::T(s) | V::S(s) => s.to_owned(),
        V::B(b) => hex(b),
        V::Bool(b) => b.to_string(),
    };
    if target != System::Sqlite {
        return Some(plain);
    }
    // SQLite: the storage class and the portable text the engine writes.
    Some(match (kind, value) {
        (_, V::I(i)) => format!("integer:{i}"),
        (_, V::Bool(b)) => format!("integer:{}", i64::from(b)),
        (_, V::B(b)) => format!("blob:{}", hex(b)),
        (Kind::Timestamp, V::S(s)) => format!("text:{}", naive_text(s)),
        // MySQL holds these instants in a DATETIME, which reads as a wall-clock timestamp.
        (Kind::Instant, V::S(s)) if source == System::MySql => format!("text:{}", naive_text(s)),
        (Kind::Instant | Kind::InstantInRange, V::S(s))
            if source == System::Sqlite && instants == SqliteInstants::NaiveUtc =>
        {
            format!("text:{}", naive_text(s))
        }
        (Kind::Instant | Kind::InstantInRange, V::S(s)) => format!("text:{}", instant_text(s)),
        _ => format!("text:{plain}"),
    })
}

/// Opens an isolated database of `system`, or `None` (skip) when its server is down.
async fn open(system: System, ws: &Workspace, name: &str) -> Option<Db> {
    Db::open(system, ws.dir.path(), "bf_ev", name).await
}

/// The table of this file's tests, in each system's types.
trait Tables {
    fn column_type(&self, kind: Kind) -> &'static str;
    async fn create(&self, name: &str);
    async fn fill(&self, name: &str, instants: SqliteInstants);
    async fn render(&self, name: &str) -> Vec<(i64, Vec<Option<String>>)>;
}

impl Tables for Db {
    /// The column type of `kind` in this system (see the table in the module doc).
    fn column_type(&self, kind: Kind) -> &'static str {
        use Kind::*;
        match (self.system(), kind) {
            (System::Postgres, I64) => "BIGINT",
            (System::Postgres, I32) => "INTEGER",
            (System::Postgres, Decimal) => "NUMERIC(38,10)",
            (System::Postgres, Text) => "TEXT",
            (System::Postgres, Bytes) => "BYTEA",
            (System::Postgres, Bool) => "BOOLEAN",
            (System::Postgres, Date) => "DATE",
            (System::Postgres, Timestamp) => "TIMESTAMP",
            (System::Postgres, Instant | InstantInRange) => "TIMESTAMPTZ",
            (System::Postgres, Json) => "JSON",
            (System::Postgres, Uuid) => "UUID",
            (System::MySql, I64) => "BIGINT",
            (System::MySql, I32) => "INT",
            (System::MySql, Decimal) => "DECIMAL(38,10)",
            (System::MySql, Text) => "TEXT",
            (System::MySql, Bytes) => "LONGBLOB",
            (System::MySql, Bool) => "BOOLEAN",
            (System::MySql, Date) => "DATE",
            (System::MySql, Timestamp | Instant) => "DATETIME(6)",
            (System::MySql, InstantInRange) => "TIMESTAMP(6) NULL DEFAULT NULL",
            (System::MySql, Json) => "JSON",
            (System::MySql, Uuid) => "CHAR(36)",
            (System::Sqlite, I64) => "BIGINT",
            (System::Sqlite, I32) => "INTEGER",
            (System::Sqlite, Decimal | Text) => "TEXT",
            (System::Sqlite, Bytes) => "BLOB",
            (System::Sqlite, Bool) => "BOOLEAN",
            (System::Sqlite, Date) => "DATE",
            (System::Sqlite, Timestamp) => "TIMESTAMP",
            (System::Sqlite, Instant | InstantInRange) => "TIMESTAMPTZ",
            (System::Sqlite, Json) => "JSON",
            (System::Sqlite, Uuid) => "UUID",
        }
    }

    async fn create(&self, name: &str) {
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|(c, k)| format!("{c} {}", self.column_type(*k)))
            .collect();
        self.exec(&format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, {})",
            self.table(name),
            columns.join(", ")
        ))
        .await;
    }

    /// Inserts `ROWS`, each value bound as a parameter in the form this system takes it
    /// (SQLite instants as `instants`).
    async fn fill(&self, name: &str, instants: SqliteInstants) {
        let table = self.table(name);
        let names: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
        for (id, values) in ROWS {
            match self {
                Db::Postgres(schema) => {
                    let pool = schema.pool();
                    // Every value as text, cast by SQL into the column's type.
                    let marks: Vec<String> = COLUMNS
                        .iter()
                        .enumerate()
                        .map(|(i, (_, kind))| {
                            let n = i + 2;
                            match kind {
                                Kind::I64 => format!("${n}::bigint"),
                                Kind::I32 => format!("${n}::integer"),
                                Kind::Decimal => format!("${n}::numeric"),
                                Kind::Text => format!("${n}"),
                                Kind::Bytes => format!("decode(${n}, 'hex')"),
                                Kind::Bool => format!("${n}::boolean"),
                                Kind::Date => format!("${n}::date"),
                                Kind::Timestamp => format!("${n}::timestamp"),
                                Kind::Instant | Kind::InstantInRange => {
                                    format!("${n}::timestamp AT TIME ZONE 'UTC'")
                                }
                                Kind::Json => format!("${n}::json"),
                                Kind::Uuid => format!("${n}::uuid"),
                            }
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO {table} (id, {}) VALUES ($1, {})",
                        names.join(", "),
                        marks.join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id);
                    for (_, v) in COLUMNS.iter().zip(values) {
                        q = q.bind(match v {
                            V::Null => None,
                            V::I(i) => Some(i.to_string()),
                            V::D(s) | V::T(s) | V::S(s) => Some(s.to_owned()),
                            V::B(b) => Some(hex(b)),
                            V::Bool(b) => Some(b.to_string()),
                        });
                    }
                    q.execute(pool)
                        .await
                        .unwrap_or_else(|e| panic!("fill: {e}"));
                }
                Db::MySql(database) => {
                    let pool = database.pool();
                    let sql = format!(
                        "INSERT INTO {table} (id, {}) VALUES (?, {})",
                        names.join(", "),
                        vec!["?"; names.len()].join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id);
                    for v in values {
                        q = match v {
                            V::Null => q.bind(None::<String>),
                            V::I(i) => q.bind(i),
                            V::D(s) | V::T(s) | V::S(s) => q.bind(s),
                            V::B(b) => q.bind(b),
                            V::Bool(b) => q.bind(b),
                        };
                    }
                    q.execute(pool)
                        .await
                        .unwrap_or_else(|e| panic!("fill: {e}"));
                }
                Db::Sqlite(pool, _) => {
                    let sql = format!(
                        "INSERT INTO {table} (id, {}) VALUES (?, {})",
                        names.join(", "),
                        vec!["?"; names.len()].join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id);
                    for ((_, kind), v) in COLUMNS.iter().zip(values) {
                        // The portable forms the engine itself writes into SQLite.
                        q = match (kind, v) {
                            (_, V::Null) => q.bind(None::<String>),
                            (_, V::I(i)) => q.bind(i),
                            (_, V::Bool(b)) => q.bind(i64::from(b)),
                            (_, V::B(b)) => q.bind(b),
                            (Kind::Timestamp, V::S(s)) => q.bind(naive_text(s)),
                            (Kind::Instant | Kind::InstantInRange, V::S(s)) => {
                                q.bind(match instants {
                                    SqliteInstants::Rfc3339 => instant_text(s),
                                    SqliteInstants::NaiveUtc => naive_text(s),
                                })
                            }
                            (_, V::D(s) | V::T(s) | V::S(s)) => q.bind(s),
                        };
                    }
                    q.execute(pool)
                        .await
                        .unwrap_or_else(|e| panic!("fill: {e}"));
                }
            }
        }
    }

    /// Every row of `name` by id, each cell rendered as text by the database (see `expected`).
    async fn render(&self, name: &str) -> Vec<(i64, Vec<Option<String>>)> {
        let exprs: Vec<String> = COLUMNS
            .iter()
            .map(|(c, kind)| match self.system() {
                System::Postgres => match kind {
                    Kind::Bytes => format!("encode({c}, 'hex')"),
                    Kind::Timestamp => format!("to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"),
                    Kind::Instant | Kind::InstantInRange => {
                        format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
                    }
                    _ => format!("{c}::text"),
                },
                System::MySql => match kind {
                    Kind::Bytes => format!("LOWER(HEX({c}))"),
                    Kind::Bool => format!("IF({c} IS NULL, NULL, IF({c}, 'true', 'false'))"),
                    Kind::Date => format!("DATE_FORMAT({c}, '%Y-%m-%d')"),
                    Kind::Timestamp | Kind::Instant | Kind::InstantInRange => {
                        format!("DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s.%f')")
                    }
                    _ => format!("CAST({c} AS CHAR)"),
                },
                System::Sqlite => format!(
                    "CASE typeof({c}) WHEN 'null' THEN NULL \
                     WHEN 'blob' THEN 'blob:' || lower(hex({c})) \
                     ELSE typeof({c}) || ':' || {c} END"
                ),
            })
            .collect();
        let sql = format!(
            "SELECT id, {} FROM {} ORDER BY id",
            exprs.join(", "),
            self.table(name)
        );
        let sql = sqlx::AssertSqlSafe(sql);
        macro_rules! collect {
            ($pool:expr) => {
                sqlx::query(sql)
                    .fetch_all($pool)
                    .await
                    .unwrap_or_else(|e| panic!("render {name}: {e}"))
                    .iter()
                    .map(|r| {
                        let id: i64 = r.get(0);
                        let cells = (1..=COLUMNS.len())
                            .map(|i| r.get::<Option<String>, _>(i))
                            .collect();
                        (id, cells)
                    })
                    .collect()
            };
        }
        match self {
            Db::Sqlite(pool, _) => collect!(pool),
            Db::Postgres(schema) => collect!(schema.pool()),
            Db::MySql(database) => collect!(database.pool()),
        }
    }
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds, so a failing test
/// can still drop its schemas before it panics.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Compares `got` (as `render` reads it from `target`) with the rows' expected values; on a
/// difference, names every wrong cell: row, column, expected and got.
fn check_values(
    got: &[(i64, Vec<Option<String>>)],
    target: System,
    source: System,
    instants: SqliteInstants,
    what: &str,
) -> Result<(), String> {
    let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
    let want_ids: Vec<i64> = ROWS.iter().map(|(id, _)| *id).collect();
    ensure!(
        ids == want_ids,
        "{what}: ids {ids:?}, expected {want_ids:?}"
    );
    let mut wrong = Vec::new();
    for ((id, cells), (_, values)) in got.iter().zip(ROWS) {
        for ((cell, (column, kind)), value) in cells.iter().zip(COLUMNS).zip(values) {
            let want = expected(target, source, instants, kind, value);
            if *cell != want {
                wrong.push(format!(
                    "  row {id} column {column}: expected {want:?}, got {cell:?}"
                ));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "{what}: {} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}

fn spec(source: &Db, target: &Db, extra_target: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
    format!(
        r#"name = "edge-values"
reason = "edge values across database systems"

[source]
url = "{}"
query = "SELECT id, {} FROM {} WHERE id >= :start AND id < :end"

[target]
url = "{}"
table = "{}"
key = ["id"]
{extra_target}

[scope]
key = "id"
from = 1
to = 5
chunk = 2

[limits]
concurrency = 2
batch_rows = 1
"#,
        source.url(),
        names.join(", "),
        source.table("edge_src"),
        target.url(),
        target.table("edge_dst"),
    )
}

async fn copy_edge_values(from: &str, to: &str, extra_target: &str, instants: SqliteInstants) {
    let (from_system, to_system) = (System::parse(from), System::parse(to));
    let ws = Workspace::new();
    let Some(source) = open(from_system, &ws, "src").await else {
        return;
    };
    let Some(target) = open(to_system, &ws, "dst").await else {
        source.drop_now().await;
        return;
    };
    let outcome = copy_and_check(&ws, &source, &target, extra_target, instants).await;
    source.drop_now().await;
    target.drop_now().await;
    if let Err(message) = outcome {
        panic!("{from} -> {to}: {message}");
    }
}

/// Creates and fills the tables, runs the backfill twice and checks every value after each.
async fn copy_and_check(
    ws: &Workspace,
    source: &Db,
    target: &Db,
    extra_target: &str,
    instants: SqliteInstants,
) -> Result<(), String> {
    let (from, to) = (source.system(), target.system());
    source.create("edge_src").await;
    source.fill("edge_src", instants).await;
    target.create("edge_dst").await;
    // The fixture itself holds the expected values in the source system.
    check_values(
        &source.render("edge_src").await,
        from,
        from,
        instants,
        "source fixture",
    )?;
    ws.write("spec.toml", &spec(source, target, extra_target));
    let rows = ROWS.len() as u64;

    let first = ws.run(&["--json", "run", "spec.toml"]);
    if first.code != 0 {
        // The rows the target rejected, with the database's reason, are the evidence.
        let quarantine = ws.run(&["quarantine", first.json()["run_id"].as_str().unwrap_or("")]);
        return Err(format!(
            "first run failed: {first:#?}\nquarantine:\n{}{}",
            quarantine.stdout, quarantine.stderr
        ));
    }
    let json = first.json();
    ensure!(json["rows"]["inserted"] == rows, "first run: {json}");
    check_values(
        &target.render("edge_dst").await,
        to,
        from,
        instants,
        "after the first run",
    )?;

    let second = ws.run(&["--json", "run", "spec.toml"]);
    ensure!(second.code == 0, "second run failed: {second:#?}");
    let json = second.json();
    ensure!(
        json["rows"]["inserted"] == 0
            && json["rows"]["updated"] == 0
            && json["rows"]["unchanged"] == rows,
        "the re-run must find every row unchanged: {json}"
    );
    check_values(
        &target.render("edge_dst").await,
        to,
        from,
        instants,
        "after the re-run",
    )
}

macro_rules! pairs {
    ($($name:ident: $from:literal -> $to:literal $(, $extra:literal)?;)*) => {$(
        #[tokio::test]
        async fn $name() {
            copy_edge_values($from, $to, concat!("" $(, $extra)?), SqliteInstants::Rfc3339).await;
        }
    )*};
}

pairs! {
    sqlite_to_sqlite: "sqlite" -> "sqlite";
    sqlite_to_sqlite_row_path: "sqlite" -> "sqlite", "pushdown = false";
    sqlite_to_postgres: "sqlite" -> "postgres";
    postgres_to_sqlite: "postgres" -> "sqlite";
    postgres_to_postgres: "postgres" -> "postgres";
    postgres_to_mysql: "postgres" -> "mysql";
    mysql_to_sqlite: "mysql" -> "sqlite";
    mysql_to_postgres: "mysql" -> "postgres";
    mysql_to_mysql: "mysql" -> "mysql";
}

/// SQLite → MySQL with instants in the portable form the engine itself writes into SQLite
/// (RFC 3339 with `Z`, e.g. after a PostgreSQL → SQLite backfill).
#[tokio::test]
async fn sqlite_to_mysql() {
    copy_edge_values("sqlite", "mysql", "", SqliteInstants::Rfc3339).await;
}

/// SQLite → MySQL with instants held as `YYYY-MM-DD HH:MM:SS.f` UTC text, which MySQL reads
/// as is.
#[tokio::test]
async fn sqlite_to_mysql_with_naive_utc_instants() {
    copy_edge_values("sqlite", "mysql", "", SqliteInstants::NaiveUtc).await;
}

/// A 38-digit PostgreSQL numeric into a SQLite column declared the natural way,
/// `DECIMAL(38,10)`: SQLite gives such a column NUMERIC affinity and would itself turn the
/// decimal's text into a 15-digit float. The engine never stores a rounded number: the row
/// goes to the quarantine with an error naming the column, and a decimal the column holds
/// exactly (`0.1000000000`, one significant digit) is written.
#[tokio::test]
async fn postgres_decimal_into_a_sqlite_decimal_column_is_exact_or_refused() {
    let ws = Workspace::new();
    let Some(source) = open(System::Postgres, &ws, "src").await else {
        return;
    };
    let Some(target) = open(System::Sqlite, &ws, "dst").await else {
        return;
    };
    let digits = "9999999999999999999999999999.9999999999";
    let small = "0.1000000000";
    source
        .exec(&format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, decv NUMERIC(38,10)); \
             INSERT INTO {0} VALUES (1, {digits}), (2, {small})",
            source.table("dec_src")
        ))
        .await;
    target
        .exec("CREATE TABLE dec_dst (id INTEGER PRIMARY KEY, decv DECIMAL(38,10))")
        .await;
    let spec = format!(
        r#"name = "edge-decimal"
reason = "decimal into a SQLite DECIMAL column"

[source]
url = "{}"
query = "SELECT id, decv FROM {} WHERE id >= :start AND id < :end"

[target]
url = "{}"
table = "dec_dst"
key = ["id"]

[scope]
key = "id"
from = 1
to = 3
chunk = 2
"#,
        source.url(),
        source.table("dec_src"),
        target.url(),
    );
    ws.write("spec.toml", &spec);
    let ran = ws.run(&["--json", "run", "spec.toml"]);
    let Db::Sqlite(pool, _) = &target else {
        unreachable!()
    };
    let stored: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, typeof(decv), CAST(decv AS TEXT) FROM dec_dst ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("read target");
    source.drop_now().await;
    assert_eq!(ran.code, 1, "the rounded row is quarantined: {ran:#?}");
    assert_eq!(
        stored,
        vec![(2, "real".to_owned(), "0.1".to_owned())],
        "only the exact decimal is stored: {ran:#?}"
    );
    let run_id = ran.json()["run_id"].as_str().expect("run id").to_owned();
    let quarantined = ws.run(&["--json", "quarantine", &run_id]).json();
    let rows = quarantined.as_array().expect("quarantine rows");
    assert_eq!(rows.len(), 1, "{quarantined:#}");
    assert_eq!(rows[0]["row"]["decv"], digits, "{quarantined:#}");
    let error = rows[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"decv\"") && error.contains("TEXT"),
        "the error names the column and the fix: {error}"
    );
}
