//! `outbox migrate` applies both crates' migration sets (the outbox's and the inbox's), and the
//! "has `outbox migrate` been run" hint counts both: a database with only the outbox's tables gets
//! it when a dead-letter command fails. Against a fresh PostgreSQL database per test (from
//! `DATABASE_URL`).

use std::process::{Command, Output, Stdio};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

struct TestDb {
    server: String,
    name: String,
    url: String,
}

/// `url` with its database name replaced by `db` (query parameters kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = base[scheme_end..].find('/').map_or(base, |i| &base[..scheme_end + i]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

impl TestDb {
    async fn new() -> Self {
        let server = std::env::var("DATABASE_URL").expect("DATABASE_URL is not set: run the suites with scripts/test");
        let name = format!("cli_{}", uuid::Uuid::now_v7().simple());
        let mut admin = AsyncPgConnection::establish(&server).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let url = with_database(&server, &name);
        TestDb { server, name, url }
    }

    async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = AsyncPgConnection::establish(&self.url).await.expect("connect to test database");
        diesel::sql_query(sql).get_result::<N>(&mut conn).await.expect(sql).n
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &self.url)
            .stdin(Stdio::null())
            .output()
            .expect("run the outbox binary")
    }

    async fn drop_db(self) {
        let mut admin = AsyncPgConnection::establish(&self.server).await.expect("connect to DATABASE_URL");
        let _ = diesel::sql_query(format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&mut admin).await;
    }
}

const VERSIONS: &str = "SELECT count(*) AS n FROM outbox_schema_migrations";

#[tokio::test]
async fn migrate_applies_the_outbox_and_the_inbox_sets() {
    let db = TestDb::new().await;
    let out = db.run(&["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.count(VERSIONS).await, 5, "2 outbox + 3 inbox versions");
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
    let out = db.run(&["dead-letters", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    db.drop_db().await;
}

#[tokio::test]
async fn the_migrate_hint_counts_the_inbox_set_too() {
    let db = TestDb::new().await;
    // Only the outbox's set: the inbox's tables are missing.
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("connect to test database");
    outbox::migrate(&mut conn).await.expect("migrate the outbox");
    let out = db.run(&["dead-letters", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the schema lacks 3 of 5 migrations"), "{stderr}");
    assert!(stderr.contains("has `outbox migrate` been run on this database?"), "{stderr}");
    // And the command fixes it.
    assert!(db.run(&["migrate"]).status.success());
    assert_eq!(db.count(VERSIONS).await, 5);
    assert!(db.run(&["dead-letters", "list"]).status.success());
    db.drop_db().await;
}
