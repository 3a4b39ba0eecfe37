use backfill_store::{Store, StoreError};

use crate::{create, key_partitions, raw_pool, store};

#[tokio::test]
async fn reopening_is_idempotent_and_keeps_data() {
    let (store, dir) = store().await;
    let run = create(&store, "a", &key_partitions(2)).await;
    let path = store.sqlite_path().unwrap();
    assert!(path.is_absolute());
    assert!(path.ends_with("state/backfill.db"));
    store.close().await;

    // Every accepted spelling of the same file opens the same store.
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
        path.display().to_string(),
        format!("{}/state/../state/backfill.db", dir.path().display()),
    ] {
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.sqlite_path().unwrap(), path);
        assert_eq!(again.get_run(&run.id).await.unwrap().partitions_total, 2);
        let pool = raw_pool(&again).await;
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(versions, [1]);
        pool.close().await;
        again.close().await;
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (store, _dir) = store().await;
    let path = store.sqlite_path().unwrap();
    let pool = raw_pool(&store).await;
    sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (99, 'later')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    store.close().await;

    let err = Store::open(&path.display().to_string()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                known: 1
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade backfill"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn open_errors_name_the_redacted_url() {
    let dir = tempfile::tempdir().unwrap();
    // A directory is not a database file.
    let err = Store::open(&dir.path().display().to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");

    let err = Store::open("postgres://bob:hunter2@db/state")
        .await
        .unwrap_err();
    let StoreError::Open { url, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(url, "postgres://bob:***@db/state");
    assert!(!err.to_string().contains("hunter2"));
}

#[tokio::test]
async fn in_memory_store_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    assert!(store.sqlite_path().is_none());
    let run = create(&store, "a", &key_partitions(3)).await;
    assert_eq!(store.partitions(&run.id).await.unwrap().len(), 3);
    assert_eq!(store.url_redacted(), "sqlite::memory:");
}
