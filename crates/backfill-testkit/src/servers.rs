//! The test servers and a private database on each for one test.
//!
//! Servers come from `BACKFILL_TEST_POSTGRES_URL` and `BACKFILL_TEST_MYSQL_URL` (defaults: the
//! machine's PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306, database `test`).
//! [`PgSchema::create`] and [`MyDatabase::create`] connect (waiting up to
//! [`CONNECT_TIMEOUT`]) and create a uniquely named schema or database, or skip the test
//! through [`crate::skip`] when the server does not answer. [`Db`] is one test's database of
//! any [`System`] (SQLite files included), for the tests that cross systems.
//!
//! Invariants: two tests never share a namespace (names carry the process id, a counter and
//! the clock), so tests run in parallel; a namespace is dropped by `drop_now` at the end of
//! the test or, when the test panicked before, by `Drop` on a fresh connection.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Database, Executor, MySql, Pool, Postgres, SqlitePool};

/// How long opening a test's namespace waits for its server before the test is skipped (a
/// refused connection is retried until then).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL server of the tests: `BACKFILL_TEST_POSTGRES_URL`, or
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("BACKFILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MySQL/MariaDB server of the tests: `BACKFILL_TEST_MYSQL_URL`, or
/// `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("BACKFILL_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A name no other test uses at the same time: `PREFIX_PID_SEQ_NANOS`, lower-case, a valid
/// unquoted identifier when `prefix` is one.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{seq}_{nanos}", std::process::id())
}

/// `url` with `key=value` added to its query string.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// `url` with its database (the path) replaced by `database`, its query string kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let server = &base[..authority_end];
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Runs `sql` (one or several statements) on `executor`, panicking with the statement.
macro_rules! exec_on {
    ($executor:expr, $sql:expr) => {{
        let sql: &str = $sql;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute($executor)
            .await
            .map(drop)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }};
}

/// A database system the tests cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Sqlite,
    Postgres,
    MySql,
}

impl System {
    /// The system named `sqlite`, `postgres` or `mysql`; panics on any other name.
    pub fn parse(name: &str) -> System {
        match name {
            "sqlite" => System::Sqlite,
            "postgres" => System::Postgres,
            "mysql" => System::MySql,
            other => panic!("unknown system {other} (expected sqlite, postgres or mysql)"),
        }
    }
}

/// Drops a namespace from `Drop`: the test's runtime may be blocked right there, so a
/// connection of its pool would never see the answer. A fresh thread, runtime and connection
/// do it; a failure is reported on stderr (the test is failing already).
fn drop_on_fresh_connection(system: System, server: &str, sql: String) {
    let server = server.to_owned();
    let shown = sql.clone();
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let sql = sqlx::AssertSqlSafe(sql);
            let done: Result<(), sqlx::Error> = match system {
                System::Sqlite => Ok(()),
                System::Postgres => match sqlx::PgConnection::connect(&server).await {
                    Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
                    Err(e) => Err(e),
                },
                System::MySql => match sqlx::MySqlConnection::connect(&server).await {
                    Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
                    Err(e) => Err(e),
                },
            };
            done.map_err(|e| e.to_string())
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        #[allow(clippy::print_stderr, reason = "a test's cleanup has no other channel")]
        {
            eprintln!("could not run {shown}: {dropped:?}");
        }
    }
}

/// What a schema and a database share: where it lives, its name, and whether it is gone.
struct Namespace {
    system: System,
    /// The server's URL (the namespace is not in it).
    server: String,
    name: String,
    /// Set once the namespace is gone, so `Drop` does nothing more.
    dropped: AtomicBool,
}

impl Namespace {
    fn new(system: System, server: &str, prefix: &str) -> Namespace {
        Namespace {
            system,
            server: server.to_owned(),
            name: unique(prefix),
            dropped: AtomicBool::new(false),
        }
    }

    fn create_sql(&self) -> String {
        match self.system {
            System::MySql => format!("CREATE DATABASE {} CHARACTER SET utf8mb4", self.name),
            _ => format!("CREATE SCHEMA {}", self.name),
        }
    }

    fn drop_sql(&self) -> String {
        match self.system {
            System::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
            _ => format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.dropped.load(Ordering::Relaxed) {
            drop_on_fresh_connection(self.system, &self.server, self.drop_sql());
        }
    }
}

/// One test's schema (PostgreSQL) or database (MySQL/MariaDB) on a test server, with a small
/// pool on the server's URL. Dropped by [`Isolated::drop_now`], or by `Drop` when the test
/// panicked before.
pub struct Isolated<DB: Database> {
    pool: Pool<DB>,
    ns: Namespace,
}

/// One test's PostgreSQL schema on the test server.
pub type PgSchema = Isolated<Postgres>;

/// One test's MySQL/MariaDB database (`utf8mb4`) on the test server; the pool's sessions are
/// in UTC and `utf8mb4`, as the connector's.
pub type MyDatabase = Isolated<MySql>;

impl<DB: Database> Isolated<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// The schema's or database's name.
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// The server's URL (the namespace is not in it).
    pub fn server_url(&self) -> &str {
        &self.ns.server
    }

    /// A pool on the server (up to 4 connections).
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// `table` qualified with the schema or database.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.ns.name)
    }

    /// Runs `sql` (statements separated by `;`) on the pool; panics naming the statement.
    pub async fn exec(&self, sql: &str) {
        exec_on!(&self.pool, sql);
    }

    /// Drops the schema or database and everything in it.
    pub async fn drop_now(&self) {
        self.exec(&self.ns.drop_sql()).await;
        self.ns.dropped.store(true, Ordering::Relaxed);
    }

    /// Creates the namespace on `pool`, or skips the test when `pool` could not connect.
    async fn start(
        pool: Result<Pool<DB>, sqlx::Error>,
        system: System,
        server: &str,
        prefix: &str,
    ) -> Option<Isolated<DB>> {
        let what = if system == System::MySql {
            "MySQL"
        } else {
            "PostgreSQL"
        };
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => return crate::skip::unreachable(what, server, &e),
        };
        let ns = Namespace::new(system, server, prefix);
        exec_on!(&pool, &ns.create_sql());
        Some(Isolated { pool, ns })
    }
}

impl PgSchema {
    /// A new schema `PREFIX_…` on [`postgres_url`], or `None` when the server does not answer
    /// and services are not required (the test is then skipped and counted).
    pub async fn create(prefix: &str) -> Option<PgSchema> {
        PgSchema::create_on(&postgres_url(), prefix).await
    }

    /// [`PgSchema::create`] on the server at `server`.
    pub async fn create_on(server: &str, prefix: &str) -> Option<PgSchema> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(server)
            .await;
        Isolated::start(pool, System::Postgres, server, prefix).await
    }
}

impl MyDatabase {
    /// A new database `PREFIX_…` on [`mysql_url`], or `None` when the server does not answer
    /// and services are not required (the test is then skipped and counted).
    pub async fn create(prefix: &str) -> Option<MyDatabase> {
        MyDatabase::create_on(&mysql_url(), prefix).await
    }

    /// [`MyDatabase::create`] on the server at `server`.
    pub async fn create_on(server: &str, prefix: &str) -> Option<MyDatabase> {
        let options = MySqlConnectOptions::from_str(server)
            .unwrap_or_else(|e| {
                let shown = backfill_core::secret::redact(server);
                panic!("BACKFILL_TEST_MYSQL_URL {shown} is not a MySQL URL: {e}")
            })
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4");
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await;
        Isolated::start(pool, System::MySql, server, prefix).await
    }

    /// The URL of this database on the server.
    pub fn url(&self) -> String {
        with_database(&self.ns.server, &self.ns.name)
    }
}

/// Opens a SQLite file (created if missing) as the tests do: WAL, a 30 s busy timeout, two
/// connections.
pub async fn sqlite(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// One test's own database of any system: a SQLite file in the test's folder, or a
/// [`PgSchema`] or [`MyDatabase`] on the test servers.
pub enum Db {
    /// The pool and the file's `sqlite://` URL.
    Sqlite(SqlitePool, String),
    Postgres(PgSchema),
    MySql(MyDatabase),
}

impl Db {
    /// `DIR/NAME.db` for SQLite, a schema or database `PREFIX_NAME_…` on a server; `None`
    /// when that server does not answer and services are not required (skipped, counted).
    pub async fn open(system: System, dir: &Path, prefix: &str, name: &str) -> Option<Db> {
        let prefix = format!("{prefix}_{name}");
        Some(match system {
            System::Sqlite => {
                let path = dir.join(format!("{name}.db"));
                let url = format!("sqlite://{}", path.display());
                Db::Sqlite(sqlite(&path).await, url)
            }
            System::Postgres => Db::Postgres(PgSchema::create(&prefix).await?),
            System::MySql => Db::MySql(MyDatabase::create(&prefix).await?),
        })
    }

    /// Which system it is.
    pub fn system(&self) -> System {
        match self {
            Db::Sqlite(..) => System::Sqlite,
            Db::Postgres(..) => System::Postgres,
            Db::MySql(..) => System::MySql,
        }
    }

    /// `table`, qualified with the schema or database on a server.
    pub fn table(&self, table: &str) -> String {
        match self {
            Db::Sqlite(..) => table.to_owned(),
            Db::Postgres(schema) => schema.table(table),
            Db::MySql(database) => database.table(table),
        }
    }

    /// The URL a spec names it by: the SQLite file, or the server's URL (tables are
    /// qualified with [`Db::table`]).
    pub fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Postgres(schema) => schema.server_url(),
            Db::MySql(database) => database.server_url(),
        }
    }

    /// Runs `sql` (statements separated by `;`); panics naming the statement.
    pub async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(pool, _) => exec_on!(pool, sql),
            Db::Postgres(schema) => schema.exec(sql).await,
            Db::MySql(database) => database.exec(sql).await,
        }
    }

    /// Drops the schema or database (a SQLite file goes with the test's folder).
    pub async fn drop_now(&self) {
        match self {
            Db::Sqlite(..) => {}
            Db::Postgres(schema) => schema.drop_now().await,
            Db::MySql(database) => database.drop_now().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_database_or_a_parameter_and_keep_the_rest() {
        let cases = [
            (
                "mysql://root@127.0.0.1:3306/test",
                "mysql://root@127.0.0.1:3306/db1",
            ),
            (
                "mysql://root@h:1/test?ssl-mode=disabled",
                "mysql://root@h:1/db1?ssl-mode=disabled",
            ),
            ("mysql://root@h:1", "mysql://root@h:1/db1"),
            ("mysql://u:p@h/t", "mysql://u:p@h/db1"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "db1"), expected, "{url}");
        }
        assert_eq!(with_param("postgres://h/t", "a", "1"), "postgres://h/t?a=1");
        assert_eq!(
            with_param("postgres://h/t?b=2", "a", "1"),
            "postgres://h/t?b=2&a=1"
        );
    }

    #[test]
    fn unique_names_differ_within_one_process() {
        assert_ne!(unique("bf_x"), unique("bf_x"));
        assert!(unique("bf_x").starts_with(&format!("bf_x_{}_", std::process::id())));
    }
}
