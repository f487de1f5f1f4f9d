//! Each crate applies its own migration set (`outbox::migrate`, `inbox::migrate`) into the one
//! version table, `outbox_schema_migrations`, with the versions the single runner of earlier
//! releases recorded: a database that runner migrated is current for both crates, and nothing
//! runs again. The two sets do not depend on each other's tables, so either can come first.

use tests::{Backend, TestConn, TestDb};

tests::backends!(
    a_database_migrated_by_the_single_runner_is_current_for_both_crates,
    a_fresh_database_gets_both_sets_in_either_order,
    each_set_creates_only_its_own_tables,
);

/// The one ordered folder of every version (the repository's top-level `migrations/`, what
/// diesel CLI reads), in order: `(version, up.sql)`.
fn all_versions<B: Backend>() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(B::NAME);
    let mut versions: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let up = std::fs::read_to_string(path.join("up.sql")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.file_name().expect("a name").to_string_lossy().into_owned(), up)
        })
        .collect();
    versions.sort();
    versions
}

async fn a_database_migrated_by_the_single_runner_is_current_for_both_crates<B: Backend>() {
    let db = TestDb::<B>::empty().await;
    let mut conn = db.conn().await;
    // What `outbox::migrate` of the single runner did: its version table, then every version in
    // order, each recorded beside its up.sql.
    let (table, stamp, applied_at) = match B::NAME {
        "postgres" => (
            "CREATE TABLE outbox_schema_migrations (version TEXT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "UPDATE outbox_schema_migrations SET applied_at = '2000-01-01T00:00:00Z'",
            "applied_at = '2000-01-01T00:00:00Z'",
        ),
        _ => (
            "CREATE TABLE outbox_schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
            "UPDATE outbox_schema_migrations SET applied_at = 946684800000",
            "applied_at = 946684800000",
        ),
    };
    conn.exec(table).await;
    let versions = all_versions::<B>();
    assert_eq!(versions.len(), B::MIGRATIONS, "the top-level folder lists every version of both crates");
    for (version, up) in &versions {
        let record = match B::NAME {
            "postgres" => format!("INSERT INTO outbox_schema_migrations (version) VALUES ('{version}')"),
            _ => format!("INSERT INTO outbox_schema_migrations (version, applied_at) VALUES ('{version}', 0)"),
        };
        conn.exec(&record).await;
        conn.exec(up).await;
    }
    conn.exec(stamp).await;

    for set in [&outbox::MIGRATIONS, &inbox::MIGRATIONS] {
        assert_eq!(set.missing(&mut conn).await.unwrap(), Vec::<&str>::new(), "{} lacks nothing", set.name());
    }
    outbox::migrate(&mut conn).await.unwrap();
    inbox::migrate(&mut conn).await.unwrap();
    inbox::migrate(&mut conn).await.unwrap();
    outbox::migrate(&mut conn).await.unwrap();
    // No version recorded again or anew: every row is the one the single runner wrote.
    let total = db.count("SELECT count(*) AS n FROM outbox_schema_migrations").await;
    let stamped = db.count(&format!("SELECT count(*) AS n FROM outbox_schema_migrations WHERE {applied_at}")).await;
    assert_eq!((total, stamped), (B::MIGRATIONS as i64, B::MIGRATIONS as i64));
    // And every version the two sets have is one the single runner recorded.
    let sets: Vec<&str> = [outbox::MIGRATIONS, inbox::MIGRATIONS]
        .iter()
        .flat_map(|s| s.versions::<B::Conn>().iter().map(|(v, _)| *v))
        .collect();
    assert_eq!(sets.len(), B::MIGRATIONS);
    for v in sets {
        assert!(versions.iter().any(|(old, _)| old == v), "{v} is a version the single runner recorded");
    }
}

async fn a_fresh_database_gets_both_sets_in_either_order<B: Backend>() {
    for inbox_first in [true, false] {
        let db = TestDb::<B>::empty().await;
        let mut conn = db.conn().await;
        if inbox_first {
            inbox::migrate(&mut conn).await.unwrap();
            outbox::migrate(&mut conn).await.unwrap();
        } else {
            outbox::migrate(&mut conn).await.unwrap();
            inbox::migrate(&mut conn).await.unwrap();
        }
        assert_eq!(db.count("SELECT count(*) AS n FROM outbox_schema_migrations").await, B::MIGRATIONS as i64);
        for set in [&outbox::MIGRATIONS, &inbox::MIGRATIONS] {
            assert!(
                set.missing(&mut conn).await.unwrap().is_empty(),
                "{} current (inbox first: {inbox_first})",
                set.name()
            );
        }
        // Both crates' tables are usable.
        assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
        assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
    }
}

async fn each_set_creates_only_its_own_tables<B: Backend>() {
    let db = TestDb::<B>::empty().await;
    let mut conn = db.conn().await;
    inbox::migrate(&mut conn).await.unwrap();
    let tables = |prefix: &str| match B::NAME {
        "postgres" => {
            format!("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE '{prefix}%'")
        }
        _ => format!("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name LIKE '{prefix}%'"),
    };
    assert!(db.count(&tables("inbox_")).await > 0);
    // The version table only: no outbox_messages, no relay tables.
    assert_eq!(db.count(&tables("outbox_")).await, 1);
    let missing = outbox::MIGRATIONS.missing(&mut conn).await.unwrap();
    let outbox_versions: Vec<&str> = outbox::MIGRATIONS.versions::<B::Conn>().iter().map(|(v, _)| *v).collect();
    assert_eq!(missing, outbox_versions);
    assert!(inbox::MIGRATIONS.missing(&mut conn).await.unwrap().is_empty());
}
