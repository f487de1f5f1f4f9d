//! The `outbox` binary on SQLite (a fresh file per test): the operations commands, what SQLite
//! cannot do refused, and `outbox relay` publishing to librdkafka's in-process mock cluster.

mod common;

use std::time::Duration;

use common::{Binary, assert_usage_error, command};
use diesel_async::RunQueryDsl;
use serde_json::Value;

/// A SQLite database file of its own for one test, in a directory removed on drop; DATABASE_URL
/// is `url` (a path, or `sqlite://` and a path).
struct SqliteDb {
    dir: std::path::PathBuf,
    path: String,
    url: String,
}

impl SqliteDb {
    /// A database (not created yet) at `<temp>/…/name`; `sqlite_url`: DATABASE_URL is
    /// `sqlite://<path>` instead of the bare path.
    fn new(name: &str, sqlite_url: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-cli-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let path = dir.join(name).to_str().expect("utf-8 temp path").to_owned();
        let url = if sqlite_url { format!("sqlite://{path}") } else { path.clone() };
        SqliteDb { dir, path, url }
    }

    async fn conn(&self) -> outbox::sqlite::SqliteConnection {
        outbox::sqlite::connect(&self.path).await.expect("open the test database")
    }

    async fn sql(&self, sql: &str) {
        diesel_async::SimpleAsyncConnection::batch_execute(&mut self.conn().await, sql).await.expect(sql);
    }

    async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(sql).get_result::<N>(&mut self.conn().await).await.expect(sql).n
    }
}

impl Drop for SqliteDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Binary for SqliteDb {
    fn url(&self) -> &str {
        &self.url
    }
}

const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// [`FIXTURE`](common::FIXTURE) on SQLite, with the second row held behind the parked head (as the relay leaves
/// it), so a retry has something to release.
fn sqlite_fixture() -> String {
    format!(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, \
                                      last_error, parked_at, held)
         VALUES ('0190f6e0-0000-7000-8000-000000000001', 'orders', 'k1', 'order.placed', 1, X'7b7d',
                 '2026-01-01T00:00:00Z', 1, 'Broker: Message size too large', {SQLITE_NOW_MS}, 0),
                ('0190f6e0-0000-7000-8000-000000000002', 'orders', 'k1', 'order.placed', 1, X'7b7d',
                 '2026-01-01T00:00:00Z', 0, NULL, NULL, 1);
         INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, kafka_offset, reason,
                                         error, attempts)
         VALUES ('inventory', '0190f6e0-0000-7000-8000-0000000000aa', 'orders', 2, 41, 'handler_failed',
                 'stock table locked', 5);"
    )
}

/// Every operations command on SQLite, with DATABASE_URL as `sqlite://PATH` and as a bare path.
#[tokio::test]
async fn sqlite_migrate_status_and_repairs() {
    for sqlite_url in [true, false] {
        let db = SqliteDb::new("app.db", sqlite_url);
        assert!(db.ok(&["migrate"]).contains("up to date"), "migrate creates the file");
        assert!(db.ok(&["migrate"]).contains("up to date"), "migrating twice is a no-op");
        let status = db.json(&["status", "--json"]);
        assert_eq!((status["pending"].as_i64(), status["parked"].as_i64()), (Some(0), Some(0)), "{status}");
        assert!(status["lease"].is_null() && status["oldest_pending_age_secs"].is_null(), "{status}");

        db.sql(&sqlite_fixture()).await;
        let status = db.json(&["status", "--json"]);
        assert_eq!(status["pending"], 1, "{status}");
        assert_eq!(status["parked"], 1, "{status}");
        assert_eq!(status["dead_letters"], 1, "{status}");
        assert_eq!(status["per_topic"][0]["topic"], "orders", "{status}");
        assert!(status["oldest_pending_age_secs"].as_f64().is_some_and(|s| s >= 0.0), "{status}");
        assert!(db.ok(&["status"]).contains("1 parked"), "the human form too");

        let parked = db.json(&["parked", "list", "--json"]);
        let parked = parked.as_array().expect("a JSON array");
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0]["id"], "0190f6e0-0000-7000-8000-000000000001");
        assert_eq!(parked[0]["key"], "k1");
        assert_eq!(parked[0]["last_error"], "Broker: Message size too large");
        assert_eq!(parked[0]["created_at"].as_str().map(|t| t.ends_with('Z')), Some(true), "{parked:?}");
        assert_eq!(db.json(&["parked", "list", "--json", "--topic", "other"]), Value::Array(vec![]));
        assert!(db.ok(&["parked", "list"]).contains("Message size too large"));

        // Retrying by id touches only the parked row, and releases the row held behind it.
        let out = db.run(
            &[
                "parked",
                "retry",
                "--id",
                "0190f6e0-0000-7000-8000-000000000001",
                "0190f6e0-0000-7000-8000-000000000002",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("un-parked 1 message"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("1 of the 2 given ids are not parked"));
        assert_eq!(db.json(&["parked", "list", "--json"]), Value::Array(vec![]));
        assert_eq!(
            db.count("SELECT count(*) AS n FROM outbox_messages WHERE attempts = 0 AND parked_at IS NULL AND held = 0")
                .await,
            2
        );

        db.sql(&format!("UPDATE outbox_messages SET parked_at = {SQLITE_NOW_MS} WHERE key = 'k1'")).await;
        assert!(db.ok(&["parked", "discard", "--all", "--topic", "orders"]).contains("discarded 2 parked"));
        assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);

        let dead = db.json(&["dead-letters", "list", "--json", "--group", "inventory"]);
        assert_eq!(dead[0]["reason"], "handler_failed", "{dead}");
        assert_eq!(dead[0]["message_id"], "0190f6e0-0000-7000-8000-0000000000aa", "{dead}");
        assert_eq!((dead[0]["partition"].as_i64(), dead[0]["offset"].as_i64()), (Some(2), Some(41)), "{dead}");
        assert!(db.ok(&["dead-letters", "list"]).contains("stock table locked"));
        let id = dead[0]["id"].as_i64().expect("an id").to_string();
        assert!(db.ok(&["dead-letters", "discard", "--all", "--group", "other"]).contains("discarded 0"));
        assert!(db.ok(&["dead-letters", "discard", "--id", &id]).contains("discarded 1"));
        assert_eq!(db.json(&["status", "--json"])["dead_letters"], 0);
    }
}

/// What SQLite cannot do is refused with exit code 2 and a reason; a missing file is not
/// silently created by anything but `migrate`.
#[tokio::test]
async fn sqlite_refuses_postgres_only_options_and_missing_files() {
    let db = SqliteDb::new("app.sqlite", false);
    // Not created by a command that only reads or repairs: exit 1, and migrate is named.
    for args in [&["status"][..], &["parked", "list"][..], &["relay"][..]] {
        let out = db.run(args, &[("KAFKA_BROKERS", "127.0.0.1:9")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "outbox {args:?}: {stderr}");
        assert!(stderr.contains("does not exist") && stderr.contains("outbox migrate"), "{stderr}");
    }
    assert!(!std::path::Path::new(&db.path).exists(), "no empty database was created");
    db.ok(&["migrate"]);

    let out = db.run(&["status", "--transaction-pooling"], &[]);
    assert_usage_error(&out, &["--transaction-pooling", "SQLite"]);
    let out = db.run(&["migrate"], &[("OUTBOX_TRANSACTION_POOLING", "true")]);
    assert_usage_error(&out, &["--transaction-pooling", "SQLite"]);
    let out = db.run(&["relay", "--listen", "true"], &[("KAFKA_BROKERS", "127.0.0.1:9")]);
    assert_usage_error(&out, &["--listen true", "SQLite"]);
    // The relay's own checks, as on PostgreSQL.
    let out = db.run(&["relay"], &[("KAFKA_BROKERS", "127.0.0.1:9"), ("OUTBOX_BATCH_SIZE", "0")]);
    assert_usage_error(&out, &["batch_size 0 is out of range"]);
    // An in-memory database and a `sqlite:` URL without `//` (run in the test's directory, so a
    // wrongly created `sqlite:app.db` file would land there).
    for (url, says) in [("sqlite://:memory:", "in-memory"), ("sqlite:app.db", "sqlite://PATH")] {
        let out = command(url, &["migrate"], &[]).current_dir(&db.dir).output().expect("run");
        assert_usage_error(&out, &[says]);
    }
    let files: Vec<String> = std::fs::read_dir(&db.dir)
        .expect("list the test directory")
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| f.starts_with("app.sqlite")), "only the test's database: {files:?}");
}

/// `outbox relay` on SQLite publishes the outbox, holds the lease while it runs and releases it
/// on SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_publishes_then_stops_gracefully_on_sigterm() {
    let db = SqliteDb::new("relay.db", true);
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    mock.create_topic("orders", 1, 1).expect("create topic");
    let brokers = mock.bootstrap_servers();
    db.ok(&["migrate"]);
    db.sql(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 20)
         INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at)
         SELECT printf('0190f6e0-0000-7000-8000-%012d', i), 'orders', 'k' || (i % 3), 'order.placed', 1, X'7b7d',
                '2026-01-01T00:00:00Z' FROM g",
    )
    .await;

    let env = [("KAFKA_BROKERS", brokers.as_str()), ("OUTBOX_LEASE_MS", "3000"), ("OUTBOX_RELAY_NAME", "cli-test")];
    let args = ["relay", "--poll-interval-ms", "50"];
    common::relay_drains_then_stops_on_sigterm(&db, &args, &env, "cli-test", async || {
        db.count("SELECT count(*) AS n FROM outbox_messages").await
    })
    .await;
    let records = read_all(&brokers, "orders", 20).await;
    assert_eq!(records, 20, "every message reached the topic");
}

/// How many records `topic` holds (all of them, read from the start), waiting up to 30 s for
/// `want`.
async fn read_all(brokers: &str, topic: &str, want: usize) -> usize {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("cli-test-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while n < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(_)) => n += 1,
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => break,
        }
    }
    n
}
