//! Versioned schema migrations, embedded in the binary.
//!
//! The store's version lives in `schema_version`. Opening a store applies, in one write
//! transaction, every migration newer than that version, so a store is either fully at the new
//! version or untouched. A store whose version is newer than this build knows is refused
//! ([`StoreError::NewerSchema`]): an old binary must never write a schema it does not
//! understand. Migrations are append-only: never edit one that has shipped.

use sqlx::SqlitePool;

use crate::StoreError;

/// Every migration, in order; the version of the last one is the version this build knows.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_partition_errors.sql")),
];

/// The newest schema version this build can read and write.
pub(crate) fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Brings the store at `pool` to [`known_version`]; a no-op when it is already there.
pub(crate) async fn run(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version (\
            version INTEGER NOT NULL PRIMARY KEY, \
            applied_at TEXT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let known = known_version();
    if current > known {
        return Err(StoreError::NewerSchema {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying state store migration");
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)")
            .bind(version)
            .bind(crate::codec::now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
