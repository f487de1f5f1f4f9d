//! What the test files of the `outbox` binary share: a PostgreSQL database of its own per test
//! (created from `DATABASE_URL`), the binary run against a database with a clean environment,
//! the operations fixture, and the check of a usage error.

// Each test file uses a part of these.
#![allow(dead_code)]

use std::process::{Command, Output};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

/// A database of its own for one test; dropped by [`TestDb::drop_db`] when the test passes.
pub struct TestDb {
    server: String,
    pub name: String,
    url: String,
}

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the suites with scripts/test, which starts a throwaway PostgreSQL server")
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
    pub async fn new() -> Self {
        let server = server_url();
        let name = format!("cli_{}", uuid::Uuid::now_v7().simple());
        let mut admin = AsyncPgConnection::establish(&server).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let url = with_database(&server, &name);
        TestDb { server, name, url }
    }

    pub async fn sql(&self, sql: &str) {
        let mut conn = AsyncPgConnection::establish(&self.url).await.expect("connect to test database");
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, sql).await.expect(sql);
    }

    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = AsyncPgConnection::establish(&self.url).await.expect("connect to test database");
        diesel::sql_query(sql).get_result::<N>(&mut conn).await.expect(sql).n
    }

    pub async fn drop_db(self) {
        let mut admin = AsyncPgConnection::establish(&self.server).await.expect("connect to DATABASE_URL");
        let _ = diesel::sql_query(format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&mut admin).await;
    }
}

impl Binary for TestDb {
    fn url(&self) -> &str {
        &self.url
    }
}

/// The binary run against one test database.
pub trait Binary {
    /// DATABASE_URL.
    fn url(&self) -> &str;

    /// The binary with a clean environment: only DATABASE_URL and `env`.
    fn outbox(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        command(self.url(), args, env)
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.outbox(args, env).output().expect("run the outbox binary")
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, &[]);
        assert!(out.status.success(), "outbox {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("outbox {args:?}: not JSON ({e}): {stdout}"))
    }
}

/// The binary with a clean environment: only DATABASE_URL=`url` and `env`.
pub fn command(url: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox"));
    cmd.env_clear().env("DATABASE_URL", url).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

// A parked head of key k1, the message it holds back, and one inbox dead letter.
pub const FIXTURE: &str = "
INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, last_error, parked_at)
VALUES ('0190f6e0-0000-7000-8000-000000000001', 'orders', 'k1', 'order.placed', 1, convert_to('{}', 'UTF8'), now(),
        1, 'Broker: Message size too large', now()),
       ('0190f6e0-0000-7000-8000-000000000002', 'orders', 'k1', 'order.placed', 1, convert_to('{}', 'UTF8'), now(),
        0, NULL, NULL);
INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, error, attempts)
VALUES ('inventory', '0190f6e0-0000-7000-8000-0000000000aa', 'orders', 2, 41, 'handler_failed', 'stock table locked', 5);
";

/// Asserts exit code 2 and that stderr says each of `needles`.
pub fn assert_usage_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not mention {needle:?}: {stderr}");
    }
}

/// Runs `outbox <args>` (a relay) against `db` with `env` until `pending()` (the outbox's rows)
/// is 0, checks that it holds the lease under `name` meanwhile, stops it with SIGTERM and checks
/// that it exits 0, logs "relay stopped" and released the lease.
#[cfg(unix)]
pub async fn relay_drains_then_stops_on_sigterm<B: Binary>(
    db: &B,
    args: &[&str],
    env: &[(&str, &str)],
    name: &str,
    pending: impl AsyncFn() -> i64,
) {
    use std::process::Stdio;
    use std::time::Duration;
    let mut relay =
        db.outbox(args, env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start outbox relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pending().await > 0 {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            panic!("relay exited early with {status}: {:?}", relay.wait_with_output().map(|o| o.stderr));
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay did not drain the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = &db.json(&["status", "--json"])["lease"];
    assert_eq!(lease["name"], name, "the relay runs under {name}: {lease}");
    assert!(
        lease["owner"].is_string() && lease["expires_in_secs"].is_f64(),
        "a running relay holds the lease: {lease}"
    );

    let killed = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().expect("run kill");
    assert!(killed.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = relay.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    assert!(status.success(), "relay exited with {status}: {stderr}");
    assert!(stderr.contains("relay stopped"), "graceful shutdown is logged: {stderr}");
    let lease = &db.json(&["status", "--json"])["lease"];
    assert!(lease["owner"].is_null(), "a graceful shutdown releases the lease: {lease}");
}
