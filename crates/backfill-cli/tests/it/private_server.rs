//! Private database servers for tests that must stop, restart or replicate a server: the
//! machine's shared servers serve every other test in parallel, so they are never touched.
//!
//! Each server (PostgreSQL with `initdb`/`pg_ctl`, MariaDB with `mariadb-install-db`/
//! `mariadbd`) lives in its own temporary folder (data, socket, log) on a free loopback port,
//! listens on 127.0.0.1 only, and is removed when its value is dropped, even on a panic.
//! Start-up takes well under a second for either. Replication pairs are built from them: a
//! PostgreSQL standby cloned from its primary with `pg_basebackup -R`, a MariaDB replica
//! following its primary's binary log from the position the primary had when the replica was
//! made.
//!
//! When the server binaries are missing a test is skipped and counted as skipped (`None`), or
//! fails when services are required (`backfill_testkit::missing`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Row};

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether this process runs as root (the servers then run as their own OS user).
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The first of `dirs` holding an executable `name`.
pub(crate) fn find_in(dirs: impl IntoIterator<Item = PathBuf>, name: &str) -> Option<PathBuf> {
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// `name` in `PATH`, `/usr/sbin` or `/usr/bin`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .collect::<Vec<_>>();
    find_in(dirs, name)
}

/// Runs `cmd` to completion; panics with its output when it fails.
pub(crate) fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives `path` (recursively) to the OS `user` when this process is root.
pub(crate) fn chown(path: &Path, user: &str) {
    if is_root() {
        must(Command::new("chown").arg("-R").arg(user).arg(path), "chown");
    }
}

/// A private PostgreSQL cluster: data, unix socket and log in its own temporary folder.
pub(crate) struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates and starts the cluster; `None` (skipped) when PostgreSQL is not installed.
    pub(crate) fn start() -> Option<PrivatePostgres> {
        PrivatePostgres::start_with("")
    }

    /// [`PrivatePostgres::start`] with `conf` (lines of `postgresql.conf`) added to the
    /// defaults. The defaults already make a primary: `wal_level = replica`, ten WAL senders,
    /// and `initdb -A trust` lets loopback connections replicate without a password.
    pub(crate) fn start_with(conf: &str) -> Option<PrivatePostgres> {
        let server = PrivatePostgres::new()?;
        let data = server.data();
        server.as_postgres(
            Command::new(server.bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        );
        server.configure(conf);
        server.pg_ctl(&["start", "-w", "-t", "30"]);
        Some(server)
    }

    /// A hot standby of `primary` on its own port, cloned with `pg_basebackup -R` (which
    /// writes `standby.signal` and the `primary_conninfo` streaming from `primary`), started
    /// and accepting read-only connections. It starts with nothing left to replay.
    pub(crate) fn standby_of(primary: &PrivatePostgres) -> PrivatePostgres {
        let server = PrivatePostgres::new().expect("the primary's binaries are installed");
        server.as_postgres(
            Command::new(server.bin.join("pg_basebackup"))
                .args(["-R", "--no-sync", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(server.data()),
            "pg_basebackup",
        );
        // The clone carries the primary's settings; the later lines win.
        server.configure("hot_standby = on\n");
        server.pg_ctl(&["start", "-w", "-t", "30"]);
        server
    }

    /// A folder (owned by `postgres` when root) and a port for a new cluster.
    fn new() -> Option<PrivatePostgres> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        bins.sort();
        let Some(bin) = bins.into_iter().rev().find(|b| b.join("initdb").is_file()) else {
            return backfill_testkit::missing(
                "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)",
            );
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        chown(dir.path(), "postgres");
        Some(PrivatePostgres {
            dir,
            bin,
            port: free_port(),
        })
    }

    /// Appends this cluster's address, socket folder, the test speed-ups and `extra` to its
    /// `postgresql.conf`.
    fn configure(&self, extra: &str) {
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n{extra}",
            self.port,
            self.dir.path().display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("configure the private cluster");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The superuser's URL (no password: `trust`), database `postgres`.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new connection as the superuser.
    pub(crate) async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to the private PostgreSQL: {e}"))
    }

    /// Runs `cmd` as the `postgres` OS user when this process is root (initdb refuses root).
    fn as_postgres(&self, cmd: &mut Command, what: &str) {
        if is_root() {
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
            must(
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(program)
                    .args(args)
                    .stdin(Stdio::null()),
                what,
            );
        } else {
            must(cmd.stdin(Stdio::null()), what);
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(args),
            &format!("pg_ctl {}", args.join(" ")),
        );
    }

    /// A fast shutdown, waited for.
    pub(crate) fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
    }

    /// Starts the stopped cluster again, waited for.
    pub(crate) fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "30"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate: nothing in it is worth a clean shutdown. Errors (already stopped) do not
        // matter; the folder goes with `dir`.
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w", "-t", "10"]);
        let mut cmd = if is_root() {
            let mut r = Command::new("runuser");
            r.args(["-u", "postgres", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            r
        } else {
            cmd
        };
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private MariaDB server, a child of the test, with root (empty password) and database
/// `test`.
pub(crate) struct PrivateMariaDb {
    dir: tempfile::TempDir,
    mariadbd: PathBuf,
    port: u16,
    /// Options of `mariadbd` beyond the defaults, kept for restarts.
    options: Vec<String>,
    child: Option<Child>,
}

impl PrivateMariaDb {
    /// Installs and starts the server; `None` (skipped) when MariaDB is not installed.
    pub(crate) async fn start() -> Option<PrivateMariaDb> {
        PrivateMariaDb::start_with(&[]).await
    }

    /// [`PrivateMariaDb::start`] with more `mariadbd` options (`--server-id=2`, …).
    pub(crate) async fn start_with(options: &[&str]) -> Option<PrivateMariaDb> {
        let (Some(install), Some(mariadbd)) = (which("mariadb-install-db"), which("mariadbd"))
        else {
            return backfill_testkit::missing(
                "MariaDB server binaries (mariadb-install-db, mariadbd)",
            );
        };
        let dir = tempfile::tempdir().expect("temp dir");
        chown(dir.path(), "mysql");
        let mut server = PrivateMariaDb {
            dir,
            mariadbd,
            port: free_port(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            child: None,
        };
        // Temporary tables live in the server's own folder, not in the shared /tmp (a CI run
        // once saw a bootstrap's temporary table vanish from /tmp mid-install).
        let tmp = server.tmp();
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        chown(&tmp, "mysql");
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", server.data().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--tmpdir={}", tmp.display()));
        if is_root() {
            cmd.arg("--user=mysql");
        }
        must(cmd.stdin(Stdio::null()), "mariadb-install-db");
        server.spawn().await;
        let mut conn = server.connect("mysql").await.expect("connect");
        sqlx::raw_sql("CREATE DATABASE test CHARACTER SET utf8mb4")
            .execute(&mut conn)
            .await
            .expect("create database test");
        Some(server)
    }

    /// A primary: binary log on, server id 1.
    pub(crate) async fn primary() -> Option<PrivateMariaDb> {
        PrivateMariaDb::start_with(&["--log-bin=binlog", "--server-id=1"]).await
    }

    /// A replica of `primary` (server id 2) replicating as root from the primary's current
    /// binary log position (so the `test` database both already have is not created twice),
    /// with both replication threads running.
    pub(crate) async fn replica_of(primary: &PrivateMariaDb) -> PrivateMariaDb {
        let replica = PrivateMariaDb::start_with(&["--server-id=2"])
            .await
            .expect("the primary's binaries are installed");
        let mut on_primary = primary.connect("test").await.expect("connect the primary");
        let status = sqlx::raw_sql("SHOW MASTER STATUS")
            .fetch_one(&mut on_primary)
            .await
            .expect("SHOW MASTER STATUS (is the binary log on?)");
        let file: String = status.try_get("File").expect("File");
        let position: u64 = status.try_get("Position").expect("Position");
        let mut on_replica = replica.connect("test").await.expect("connect the replica");
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
             MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_LOG_FILE = '{file}', \
             MASTER_LOG_POS = {position}, MASTER_CONNECT_RETRY = 1",
            primary.port
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(change))
            .execute(&mut on_replica)
            .await
            .expect("CHANGE MASTER TO");
        sqlx::raw_sql("START SLAVE")
            .execute(&mut on_replica)
            .await
            .expect("START SLAVE");
        let started = Instant::now();
        loop {
            let row = sqlx::raw_sql("SHOW SLAVE STATUS")
                .fetch_one(&mut on_replica)
                .await
                .expect("SHOW SLAVE STATUS");
            let io: String = row.try_get("Slave_IO_Running").expect("Slave_IO_Running");
            let sql: String = row.try_get("Slave_SQL_Running").expect("Slave_SQL_Running");
            if io == "Yes" && sql == "Yes" {
                return replica;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "replication did not start in 30 s (IO {io}, SQL {sql}): {:?} {:?}",
                row.try_get::<String, _>("Last_IO_Error"),
                row.try_get::<String, _>("Last_SQL_Error"),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own folder for temporary tables.
    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// Root's URL (no password), database `test`.
    pub(crate) fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// A new connection as root to `database`.
    pub(crate) async fn connect(
        &self,
        database: &str,
    ) -> Result<sqlx::MySqlConnection, sqlx::Error> {
        let url = format!("mysql://root@127.0.0.1:{}/{database}", self.port);
        sqlx::MySqlConnection::connect(&url).await
    }

    /// Starts `mariadbd` and waits until it accepts connections.
    pub(crate) async fn spawn(&mut self) {
        let dir = self.dir.path();
        let log = File::create(dir.join("stderr.log")).expect("log file");
        let mut cmd = Command::new(&self.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", dir.join("mysql.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", self.tmp().display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-buffer-pool-size=32M",
            ])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if is_root() {
            cmd.arg("--user=mysql");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
        let started = Instant::now();
        loop {
            if self.connect("mysql").await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "mariadbd exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "mariadbd did not accept connections in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A clean shutdown (SIGTERM, as `systemctl stop` sends), waited for.
    pub(crate) fn stop(&mut self) {
        let mut child = self.child.take().expect("mariadbd is running");
        must(
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string()),
            "kill -TERM mariadbd",
        );
        child.wait().expect("wait for mariadbd");
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
