//! Versioned schema migrations, embedded in the binary, one list per backend.
//!
//! The store's version lives in `schema_version`. Opening a store applies, in one write
//! transaction, every migration newer than that version, so a store is either fully at the new
//! version or untouched. A store whose version is newer than this build knows is refused
//! ([`StoreError::NewerSchema`]): an old binary must never write a schema it does not
//! understand. Migrations are append-only: never edit one that has shipped. Both lists have
//! the same versions, and version `n` gives both backends the same tables and columns.
//!
//! On PostgreSQL the transaction holds the store's advisory lock (as every write does), so
//! processes opening one store at the same moment migrate it once; it also creates the
//! store's schema when missing.

use crate::db::{Dialect, WriteTxn, stmt};
use crate::{Store, StoreError};

/// Every SQLite migration, in order.
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_partition_errors.sql")),
    (3, include_str!("../migrations/0003_quarantine.sql")),
    (4, include_str!("../migrations/0004_run_guarantee.sql")),
    (5, include_str!("../migrations/0005_run_controls.sql")),
    (6, include_str!("../migrations/0006_partition_split.sql")),
    (7, include_str!("../migrations/0007_leases.sql")),
    (
        8,
        include_str!("../migrations/0008_run_normalized_spec.sql"),
    ),
    (9, include_str!("../migrations/0009_partition_checks.sql")),
    (
        10,
        include_str!("../migrations/0010_only_gaps_audit_anchor.sql"),
    ),
    (11, include_str!("../migrations/0011_run_canary.sql")),
    (12, include_str!("../migrations/0012_shadows.sql")),
    (
        13,
        include_str!("../migrations/0013_partitions_gap_index.sql"),
    ),
    (
        14,
        include_str!("../migrations/0014_partition_error_class.sql"),
    ),
    (15, include_str!("../migrations/0015_run_undo.sql")),
];

/// Every PostgreSQL migration, in order; same versions as [`SQLITE`].
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_partition_errors.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_quarantine.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_run_guarantee.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_run_controls.sql"),
    ),
    (
        6,
        include_str!("../migrations/postgres/0006_partition_split.sql"),
    ),
    (7, include_str!("../migrations/postgres/0007_leases.sql")),
    (
        8,
        include_str!("../migrations/postgres/0008_run_normalized_spec.sql"),
    ),
    (
        9,
        include_str!("../migrations/postgres/0009_partition_checks.sql"),
    ),
    (
        10,
        include_str!("../migrations/postgres/0010_only_gaps_audit_anchor.sql"),
    ),
    (
        11,
        include_str!("../migrations/postgres/0011_run_canary.sql"),
    ),
    (12, include_str!("../migrations/postgres/0012_shadows.sql")),
    (
        13,
        include_str!("../migrations/postgres/0013_partitions_gap_index.sql"),
    ),
    (
        14,
        include_str!("../migrations/postgres/0014_partition_error_class.sql"),
    ),
    (15, include_str!("../migrations/postgres/0015_run_undo.sql")),
];

fn migrations(dialect: Dialect) -> &'static [(i64, &'static str)] {
    match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    }
}

/// The newest schema version this build can read and write.
pub(crate) fn known_version() -> i64 {
    SQLITE.last().map_or(0, |(version, _)| *version)
}

/// Brings `store` to [`known_version`]; a no-op when it is already there.
pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    if let Some(schema) = store.pg_schema() {
        create_schema(&mut tx, schema).await?;
    }
    let int = match tx.dialect() {
        Dialect::Sqlite => "INTEGER",
        Dialect::Postgres => "BIGINT",
    };
    stmt(format!(
        "CREATE TABLE IF NOT EXISTS schema_version (\
            version {int} NOT NULL PRIMARY KEY, \
            applied_at TEXT NOT NULL)"
    ))
    .execute(&mut tx)
    .await?;
    let current: i64 = stmt("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_optional(&mut tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let known = known_version();
    if current > known {
        return Err(StoreError::NewerSchema {
            found: current,
            known,
        });
    }
    for (version, sql) in migrations(tx.dialect())
        .iter()
        .filter(|(v, _)| *v > current)
    {
        tracing::info!(version, "applying state store migration");
        match tx.begun().await? {
            crate::db::Exec::Sqlite(conn) => sqlx::raw_sql(*sql).execute(conn).await.map(drop),
            crate::db::Exec::Postgres(conn) => sqlx::raw_sql(*sql).execute(conn).await.map(drop),
        }?;
        stmt("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)")
            .bind(*version)
            .bind(crate::codec::now().as_str())
            .execute(&mut tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates the store's schema unless it exists (checked first, so a user without the right
/// to create schemas can use one prepared for it).
async fn create_schema(tx: &mut WriteTxn, schema: &str) -> Result<(), StoreError> {
    let exists = stmt("SELECT 1 FROM pg_namespace WHERE nspname = ?")
        .bind(schema)
        .fetch_optional(tx)
        .await?
        .is_some();
    if !exists {
        // `schema` is validated as a plain lower-case identifier by `Store::open`.
        stmt(format!("CREATE SCHEMA \"{schema}\""))
            .execute(tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_versions() {
        let versions = |list: &[(i64, &str)]| list.iter().map(|(v, _)| *v).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
        // 1, 2, 3, … with no gap: a store at version n has every migration up to n.
        let expected: Vec<i64> = (1..=known_version()).collect();
        assert_eq!(versions(SQLITE), expected);
    }
}
