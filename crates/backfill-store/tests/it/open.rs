use backfill_store::{Store, StoreError, same_database_urls};

use crate::{Backend, TestDb, create, key_partitions, sqlite_db};

#[tokio::test]
async fn reopening_is_idempotent_and_keeps_data() {
    let db = sqlite_db().await;
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(2)).await;
    let path = store.sqlite_path().unwrap();
    assert!(path.is_absolute());
    assert!(path.ends_with("state/backfill.db"));
    assert!(store.pg_schema().is_none());
    store.close().await;

    let dir = path.parent().unwrap().parent().unwrap();
    // Every accepted spelling of the same file opens the same store.
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
        path.display().to_string(),
        format!("{}/state/../state/backfill.db", dir.display()),
    ] {
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.sqlite_path().unwrap(), path);
        assert!(again.same_database(&url));
        assert_eq!(again.get_run(&run.id).await.unwrap().partitions_total, 2);
        assert_eq!(
            db.raw_i64s("SELECT version FROM schema_version").await,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        again.close().await;
    }
}

async fn reopening_keeps_data_and_version(db: TestDb) {
    let store = db.open().await;
    let run = create(&store, "a", &key_partitions(2)).await;
    store.close().await;
    let again = db.open().await;
    assert_eq!(again.get_run(&run.id).await.unwrap().partitions_total, 2);
    assert_eq!(
        db.raw_i64s("SELECT version FROM schema_version ORDER BY version")
            .await,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
    if db.backend == Backend::Postgres {
        assert!(again.sqlite_path().is_none());
        assert!(again.pg_schema().unwrap().starts_with("bf_test_"));
    }
}

async fn a_newer_schema_is_refused(db: TestDb) {
    let store = db.open().await;
    db.raw_exec("INSERT INTO schema_version (version, applied_at) VALUES (99, 'later')")
        .await;
    store.close().await;

    let err = Store::open(&db.url).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                known: 15
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade backfill"));
    assert!(!err.is_transient());
}

/// Processes opening one new store at the same moment migrate it exactly once.
async fn concurrent_opens_migrate_once(db: TestDb) {
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap().close().await;
    }
    assert_eq!(
        db.raw_i64s("SELECT version FROM schema_version ORDER BY version")
            .await,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
}

async fn same_database_compares_the_database(db: TestDb) {
    let store = db.open().await;
    // `plan` asks the same question by URL, without opening a store: same answers.
    let agree = |url: &str| {
        let answer = store.same_database(url);
        assert_eq!(same_database_urls(&db.url, url), answer, "{url}");
        answer
    };
    assert!(agree(&db.url));
    match db.backend {
        Backend::Sqlite => {
            let path = store.sqlite_path().unwrap();
            assert!(agree(&format!("sqlite:{}?mode=rwc", path.display())));
            assert!(!agree(&format!("{}.other", path.display())));
            assert!(!agree("postgres://postgres@127.0.0.1:5432/test"));
        }
        Backend::Postgres => {
            let base = db.url.split('?').next().unwrap();
            // Another schema, other parameters, `localhost` for `127.0.0.1`: same database.
            assert!(agree(base));
            assert!(agree(&format!("{base}?schema=elsewhere&sslmode=disable")));
            let localhost = base.replace("127.0.0.1", "localhost");
            assert!(agree(&localhost), "{localhost}");
            // Another database, port or host is not.
            assert!(!agree(&format!("{base}_other")));
            assert!(!agree(&base.replace(":5432", ":5433")));
            assert!(!agree(&base.replace("127.0.0.1", "db.example")));
            assert!(!agree("sqlite://state.db"));
        }
    }
}

crate::on_both_backends!(
    reopening_keeps_data_and_version,
    a_newer_schema_is_refused,
    concurrent_opens_migrate_once,
    same_database_compares_the_database,
);

/// Each failure to open names the redacted URL and says which kind it is: a URL that names no
/// store (`InvalidUrl`, the user's input), a server that cannot be reached (`Unreachable`), or
/// a store that is there but cannot be opened (`Open`).
#[tokio::test]
async fn open_errors_name_the_redacted_url_and_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    // A directory is not a database file.
    let err = Store::open(&dir.path().display().to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");

    // Nothing listens on port 1: refused at once, reported with the password masked.
    let err = Store::open("postgres://bob:hunter2@127.0.0.1:1/state")
        .await
        .unwrap_err();
    let StoreError::Unreachable { url, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(url, "postgres://bob:***@127.0.0.1:1/state");
    assert!(!err.to_string().contains("hunter2"));

    for bad in ["Upper", "1x", "a-b", "pg_catalog", ""] {
        let err = Store::open(&format!(
            "postgres://bob:hunter2@127.0.0.1:1/db?schema={bad}"
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidUrl { message, .. } if message.contains("schema name")),
            "{bad}: {err:?}"
        );
    }
    for bad in ["mysql://h/db", "sqlite://", "postgres://h:notaport/db"] {
        let err = Store::open(bad).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidUrl { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[tokio::test]
async fn in_memory_store_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    assert!(store.sqlite_path().is_none());
    assert!(!store.same_database("sqlite::memory:"));
    let run = create(&store, "a", &key_partitions(3)).await;
    assert_eq!(store.partitions(&run.id).await.unwrap().len(), 3);
    assert_eq!(store.url_redacted(), "sqlite::memory:");
    // A large run too: its creation must not close the one connection that is the store.
    let large = create(&store, "b", &key_partitions(50_001)).await;
    assert_eq!(store.partitions(&large.id).await.unwrap().len(), 50_001);
    assert_eq!(store.partitions(&run.id).await.unwrap().len(), 3);
}
