//! The `outbox` binary, run as a process against a real PostgreSQL (a fresh database per test,
//! created from `DATABASE_URL`) or SQLite (a fresh file per test), and librdkafka's in-process
//! mock cluster.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

/// A database of its own for one test; dropped by [`TestDb::drop_db`] when the test passes.
struct TestDb {
    server: String,
    name: String,
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
    async fn new() -> Self {
        let server = server_url();
        let name = format!("cli_{}", uuid::Uuid::now_v7().simple());
        let mut admin = AsyncPgConnection::establish(&server).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let url = with_database(&server, &name);
        TestDb { server, name, url }
    }

    async fn sql(&self, sql: &str) {
        let mut conn = AsyncPgConnection::establish(&self.url).await.expect("connect to test database");
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, sql).await.expect(sql);
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

    async fn drop_db(self) {
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
trait Binary {
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
fn command(url: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox"));
    cmd.env_clear().env("DATABASE_URL", url).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

// A parked head of key k1, the message it holds back, and one inbox dead letter.
const FIXTURE: &str = "
INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, last_error, parked_at)
VALUES ('0190f6e0-0000-7000-8000-000000000001', 'orders', 'k1', 'order.placed', 1, convert_to('{}', 'UTF8'), now(),
        1, 'Broker: Message size too large', now()),
       ('0190f6e0-0000-7000-8000-000000000002', 'orders', 'k1', 'order.placed', 1, convert_to('{}', 'UTF8'), now(),
        0, NULL, NULL);
INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, error, attempts)
VALUES ('inventory', '0190f6e0-0000-7000-8000-0000000000aa', 'orders', 2, 41, 'handler_failed', 'stock table locked', 5);
";

#[tokio::test]
async fn migrate_status_and_repairs() {
    let db = TestDb::new().await;
    assert!(db.ok(&["migrate"]).contains("up to date"));
    assert!(db.ok(&["migrate"]).contains("up to date"), "migrating twice is a no-op");

    let status = db.json(&["status", "--json"]);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["parked"], 0);
    assert_eq!(status["dead_letters"], 0);
    assert!(status["lease"].is_null(), "{status}");
    assert!(status["oldest_pending_age_secs"].is_null(), "{status}");

    db.sql(FIXTURE).await;
    let status = db.json(&["status", "--json"]);
    assert_eq!(status["pending"], 1, "{status}");
    assert_eq!(status["parked"], 1, "{status}");
    assert_eq!(status["dead_letters"], 1, "{status}");
    assert_eq!(status["per_topic"][0]["topic"], "orders", "{status}");
    assert!(status["oldest_pending_age_secs"].as_f64().is_some(), "{status}");
    assert!(db.ok(&["status"]).contains("1 parked"), "the human form too");

    let parked = db.json(&["parked", "list", "--json"]);
    let parked = parked.as_array().expect("a JSON array");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["id"], "0190f6e0-0000-7000-8000-000000000001");
    assert_eq!(parked[0]["key"], "k1");
    assert_eq!(parked[0]["last_error"], "Broker: Message size too large");
    assert_eq!(db.json(&["parked", "list", "--json", "--topic", "other"]), Value::Array(vec![]));
    assert!(db.ok(&["parked", "list"]).contains("Message size too large"));

    // Retrying by id touches only the parked row, never the pending one named alongside it.
    let out = db.run(
        &["parked", "retry", "--id", "0190f6e0-0000-7000-8000-000000000001", "0190f6e0-0000-7000-8000-000000000002"],
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("un-parked 1 message"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of the 2 given ids are not parked"));
    assert_eq!(db.json(&["parked", "list", "--json"]), Value::Array(vec![]));
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages WHERE attempts = 0 AND parked_at IS NULL").await, 2);

    db.sql("UPDATE outbox_messages SET parked_at = now() WHERE key = 'k1'").await;
    assert!(db.ok(&["parked", "discard", "--all", "--topic", "orders"]).contains("discarded 2 parked"));
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);

    let dead = db.json(&["dead-letters", "list", "--json", "--group", "inventory"]);
    assert_eq!(dead[0]["reason"], "handler_failed", "{dead}");
    assert_eq!(dead[0]["partition"], 2, "{dead}");
    assert_eq!(dead[0]["offset"], 41, "{dead}");
    assert!(dead[0]["replay_requested_at"].is_null(), "{dead}");
    // Replay requests mark the rows a running inbox of the group replays.
    let id = dead[0]["id"].to_string();
    let requested = "SELECT count(*) AS n FROM inbox_dead_letters WHERE replay_requested_at IS NOT NULL";
    assert!(db.ok(&["dead-letters", "replay", "--all", "--group", "other"]).contains("replay of 0"));
    assert!(db.ok(&["dead-letters", "replay", "--all", "--reason", "unknown_type"]).contains("replay of 0"));
    assert_eq!(db.count(requested).await, 0);
    let out = db.run(&["dead-letters", "replay", "--id", &id, "999999"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("requested a replay of 1 dead letter"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of the 2 given ids are not dead letters"));
    assert_eq!(db.count(requested).await, 1);
    let dead = db.json(&["dead-letters", "list", "--json"]);
    assert!(dead[0]["replay_requested_at"].is_string(), "{dead}");
    assert!(db.ok(&["dead-letters", "list"]).contains("REPLAY REQUESTED"));
    db.sql("UPDATE inbox_dead_letters SET replay_requested_at = NULL").await;
    let by_reason = ["dead-letters", "replay", "--all", "--group", "inventory", "--reason", "handler_failed"];
    assert!(db.ok(&by_reason).contains("replay of 1"));
    assert_eq!(db.count(requested).await, 1);
    assert!(db.ok(&["dead-letters", "discard", "--all", "--group", "other"]).contains("discarded 0"));
    assert!(db.ok(&["dead-letters", "discard", "--all", "--group", "inventory"]).contains("discarded 1"));
    assert_eq!(db.json(&["status", "--json"])["dead_letters"], 0);
    db.drop_db().await;
}

/// Asserts exit code 2 and that stderr says each of `needles`.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not mention {needle:?}: {stderr}");
    }
}

/// Text that producers and brokers control (dead-letter errors and reasons, topics, parked keys
/// and errors) never reaches the terminal as control sequences.
#[tokio::test]
async fn hostile_text_is_escaped_in_tables() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    // ESC [2J (clear screen), a carriage return, a right-to-left override, a BEL.
    db.sql(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, \
                                      last_error, parked_at)
         VALUES ('0190f6e0-0000-7000-8000-000000000003', 'orders', E'k\\x1b[2Jx', 'order.placed', 1, '\\x', now(),
                 1, E'too large\\rFAKE', now());
         INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, \
                                         error, attempts)
         VALUES ('inventory', NULL, E'orders\\x07', 0, 1, E'unknown_type\\x1b]0;pwned\\x07', \
                 E'no handler for \\u202Eevil\\x1b[31m', 1);",
    )
    .await;
    for args in [&["dead-letters", "list"][..], &["parked", "list"][..], &["status"][..]] {
        let out = db.ok(args);
        for bad in ['\x1b', '\r', '\x07', '\u{202e}'] {
            assert!(!out.contains(bad), "outbox {args:?} printed {bad:?} raw: {out:?}");
        }
    }
    let dead = db.ok(&["dead-letters", "list"]);
    assert!(dead.contains("\\u{1b}[31m") && dead.contains("\\u{202e}evil"), "escaped, still readable: {dead}");
    assert!(db.ok(&["parked", "list"]).contains("too large\\u{d}FAKE"));
    // JSON keeps the exact text (serde escapes it).
    let json = db.json(&["dead-letters", "list", "--json"]);
    assert_eq!(json[0]["topic"], "orders\u{7}");
    db.drop_db().await;
}

#[tokio::test]
async fn invalid_options_exit_with_code_2_and_say_why() {
    let db = TestDb::new().await;
    let brokers = ("KAFKA_BROKERS", "127.0.0.1:9");
    // Not a number, from the environment: the flag and the variable are named.
    let out = db.run(&["relay"], &[brokers, ("OUTBOX_BATCH_SIZE", "lots")]);
    assert_usage_error(&out, &["invalid value 'lots'", "--batch-size", "OUTBOX_BATCH_SIZE"]);
    // Not a boolean, as a flag.
    let out = db.run(&["relay", "--listen", "maybe"], &[brokers]);
    assert_usage_error(&out, &["invalid value 'maybe'", "--listen", "possible values: true, false"]);
    // Well-formed but rejected by the relay's own checks.
    let out = db.run(&["relay"], &[brokers, ("OUTBOX_BATCH_SIZE", "0")]);
    assert_usage_error(&out, &["batch_size 0 is out of range"]);
    let out = db.run(&["relay", "--backoff-base-ms", "400000"], &[brokers]);
    assert_usage_error(&out, &["backoff base"]);
    let out = db.run(&["relay"], &[brokers, ("KAFKA_ACKS", "1")]);
    assert_usage_error(&out, &["acks=1", "refused"]);
    let out = db.run(&["relay"], &[]);
    assert_usage_error(&out, &["KAFKA_BROKERS is not set"]);
    // Selections.
    assert_usage_error(&db.run(&["parked", "retry"], &[]), &["--id"]);
    assert_usage_error(&db.run(&["parked", "discard", "--id", "not-a-uuid"], &[]), &["not-a-uuid"]);
    assert_usage_error(&db.run(&["dead-letters", "discard", "--all"], &[]), &["--group"]);
    assert_usage_error(&db.run(&["dead-letters", "replay"], &[]), &["--id"]);
    assert_usage_error(&db.run(&["dead-letters", "replay", "--group", "inventory"], &[]), &["--all"]);
    let mut no_db = db.outbox(&["status"], &[]);
    no_db.env_remove("DATABASE_URL");
    assert_usage_error(&no_db.output().expect("run"), &["DATABASE_URL"]);
    db.drop_db().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_then_stops_gracefully_on_sigterm() {
    let db = TestDb::new().await;
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    mock.create_topic("orders", 1, 1).expect("create topic");
    let brokers = mock.bootstrap_servers();
    db.ok(&["migrate"]);
    db.sql(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at)
         SELECT gen_random_uuid(), 'orders', 'k' || (i % 3), 'order.placed', 1, convert_to('{}', 'UTF8'), now()
         FROM generate_series(1, 20) AS i",
    )
    .await;

    let mut relay = db
        .outbox(
            &["relay", "--poll-interval-ms", "50"],
            &[("KAFKA_BROKERS", &brokers), ("OUTBOX_LEASE_MS", "3000"), ("OUTBOX_RELAY_NAME", "cli-test")],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outbox relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 0 {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            panic!("relay exited early with {status}: {:?}", relay.wait_with_output().map(|o| o.stderr));
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay did not drain the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = &db.json(&["status", "--json"])["lease"];
    assert_eq!(lease["name"], "cli-test", "{lease}");
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
    db.drop_db().await;
}

/// Start-up failures end the process with an error (exit code 1) instead of a retry loop.
#[tokio::test]
async fn relay_start_up_failures_exit_non_zero_and_say_why() {
    let db = TestDb::new().await;
    // No schema (the test database is not migrated yet): at once, whatever the start-up timeout.
    let out = db.run(&["relay", "--startup-timeout-secs", "3600"], &[("KAFKA_BROKERS", "127.0.0.1:9")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("no schema: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not migrated") && stderr.contains("outbox migrate"), "{stderr}");
    // No broker answers: at the start-up deadline.
    db.ok(&["migrate"]);
    let out = db.run(&["relay", "--startup-timeout-secs", "2"], &[("KAFKA_BROKERS", "127.0.0.1:9")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("no broker: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no broker answered") && stderr.contains("127.0.0.1:9"), "{stderr}");
    db.drop_db().await;
}

/// SIGTERM while the start-up probe still waits for a broker ends the process at once, not at
/// the probe's deadline (60 s here; the bound below only catches a process that waits for it).
#[cfg(unix)]
#[tokio::test]
async fn sigterm_during_the_broker_probe_ends_the_relay() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    let mut relay = db
        .outbox(&["relay", "--startup-timeout-secs", "60"], &[("KAFKA_BROKERS", "127.0.0.1:9")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outbox relay");
    // Started: it holds the lease while the probe waits beside it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().expect("kill").success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = relay.kill();
            panic!("the relay was still running 30 s after SIGTERM (its probe waits up to 60 s)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("exited {status} {:?} after SIGTERM during the broker probe", asked.elapsed());
    assert!(status.success(), "{status}");
    db.drop_db().await;
}

/// A database that refuses connections fails start-up at our deadline, with our message (bb8
/// alone would wait its own 30 s connection timeout per attempt).
#[tokio::test]
async fn an_unreachable_database_fails_at_the_startup_deadline() {
    let db = TestDb::new().await;
    let out = db.run(
        &["relay", "--startup-timeout-secs", "2"],
        &[("KAFKA_BROKERS", "127.0.0.1:9"), ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("unreachable database: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("before the start-up deadline"), "{stderr}");
    db.drop_db().await;
}

/// The "has `outbox migrate` been run" hint is read from the catalog, not from the server's
/// error text: a server answering in German (`lc_messages`, which PostgreSQL translates) gets
/// it too. Needs the de_DE.UTF-8 locale (scripts/pg.sh generates it).
#[tokio::test]
async fn an_unmigrated_database_gets_the_migrate_hint_in_any_language() {
    let db = TestDb::new().await;
    db.sql(&format!("ALTER DATABASE {} SET lc_messages = 'de_DE.UTF-8'", db.name)).await;
    let out = db.run(&["status"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("existiert nicht"), "the server answers in German: {stderr}");
    assert!(stderr.contains("has `outbox migrate` been run on this database?"), "{stderr}");
    db.drop_db().await;
}

/// `status --check` for probes: 0 healthy, 1 degraded with the reasons printed, 2 cannot tell.
#[tokio::test]
async fn status_check_exit_codes() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    let check = |args: &[&str]| {
        let out = db.run(&[&["status", "--check"][..], args].concat(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("status --check {args:?}: exit {:?}\n{stdout}", out.status.code());
        (out.status.code(), stdout)
    };
    // No relay has ever run: degraded.
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("check: degraded: no relay holds a live lease"), "{stdout}");
    assert_eq!(check(&["--no-lease-ok"]).0, Some(0), "healthy once the lease is not required");

    // A live lease, nothing pending: healthy.
    db.sql(
        "INSERT INTO outbox_relay_leases (name, owner, epoch, expires_at) \
            VALUES ('default', gen_random_uuid(), 1, now() + interval '1 hour')",
    )
    .await;
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("check: ok"), "{stdout}");

    // A pending message two minutes old and a parked one.
    db.sql(FIXTURE).await;
    db.sql("UPDATE outbox_messages SET created_at = now() - interval '2 minutes' WHERE parked_at IS NULL").await;
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(1), "older than the default 60 s: {stdout}");
    assert!(stdout.contains("the oldest pending message is 120") && stdout.contains("threshold 60.0s"), "{stdout}");
    assert_eq!(check(&["--max-pending-age-secs", "3600"]).0, Some(0), "within a longer threshold");
    let (code, stdout) = check(&["--max-pending-age-secs", "3600", "--fail-on-parked"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("1 parked message(s)"), "{stdout}");

    // --json keeps stdout one JSON document; the verdict goes to stderr.
    let out = db.run(&["status", "--check", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["parked"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("check: degraded: the oldest pending message"));

    // An expired lease: no relay is publishing.
    db.sql("UPDATE outbox_relay_leases SET expires_at = now() - interval '1 second'").await;
    let (code, stdout) = check(&["--max-pending-age-secs", "3600"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("relay \"default\" is stopped or dead"), "{stdout}");

    // The database cannot be reached: cannot tell.
    let unreachable = db
        .outbox(&["status", "--check"], &[])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot connect to the database"), "{stderr}");
    // Without --check a connection failure stays exit code 1.
    let plain = db.outbox(&["status"], &[]).env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none").output();
    assert_eq!(plain.expect("run").status.code(), Some(1));
    // Thresholds need --check.
    assert_usage_error(&db.run(&["status", "--fail-on-parked"], &[]), &["--check"]);
    db.drop_db().await;
}

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

/// [`FIXTURE`] on SQLite, with the second row held behind the parked head (as the relay leaves
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

    let mut relay = db
        .outbox(
            &["relay", "--poll-interval-ms", "50"],
            &[("KAFKA_BROKERS", &brokers), ("OUTBOX_LEASE_MS", "3000"), ("OUTBOX_RELAY_NAME", "cli-test")],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outbox relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 0 {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            panic!("relay exited early with {status}: {:?}", relay.wait_with_output().map(|o| o.stderr));
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay did not drain the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = &db.json(&["status", "--json"])["lease"];
    assert_eq!(lease["name"], "cli-test", "{lease}");
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

/// A relay configuration file in a fresh temporary directory; removed on drop.
struct ConfigFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl ConfigFile {
    fn new(toml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-cli-config-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join("relay.toml");
        std::fs::write(&path, toml).expect("write the configuration file");
        ConfigFile { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `outbox relay --print-config`, parsed (it needs no database or broker).
fn effective_config(args: &[&str], env: &[(&str, &str)]) -> outbox::relay::RelayConfig {
    let mut all = vec!["relay", "--print-config"];
    all.extend_from_slice(args);
    let out = command("", &all, env).output().expect("run the outbox binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "outbox {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("--print-config printed no RelayConfig ({e}): {stdout}"))
}

/// The configuration is the library's defaults, then the file, then the flags and their
/// environment variables.
#[test]
fn a_config_file_is_applied_and_flags_override_it() {
    use outbox::relay::{AfterSend, RelayConfig};
    let file = ConfigFile::new(
        "name = \"from-file\"\nbatch_size = 250\npoll_interval = \"250ms\"\nmetrics_interval = \"1m\"\n\
         after_send = { mode = \"keep\", retention = \"7days\" }\n[retry]\nbase = \"1s\"\nmax = \"2m\"\n",
    );
    let defaults = RelayConfig::default();
    assert_eq!(effective_config(&[], &[]), defaults);

    let from_file = effective_config(&["--config", file.path()], &[]);
    assert_eq!(from_file.name, "from-file");
    assert_eq!(from_file.batch_size, 250);
    assert_eq!(from_file.poll_interval, Duration::from_millis(250));
    assert_eq!(from_file.metrics_interval, Duration::from_secs(60));
    assert_eq!(from_file.after_send, AfterSend::Keep { retention: Duration::from_secs(7 * 24 * 3600) });
    assert_eq!(from_file.retry, outbox::RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(120)));
    assert_eq!(from_file.lease, defaults.lease, "what the file leaves out keeps its default");

    // A flag and an environment variable override the file; the file's other values stay.
    let overridden = effective_config(
        &["--batch-size", "7", "--backoff-max-ms", "90000"],
        &[("OUTBOX_CONFIG", file.path()), ("OUTBOX_RELAY_NAME", "from-env")],
    );
    assert_eq!((overridden.name.as_str(), overridden.batch_size), ("from-env", 7));
    assert_eq!(overridden.retry.base, Duration::from_secs(1));
    assert_eq!(overridden.retry.max, Duration::from_secs(90));
    assert_eq!(overridden.poll_interval, Duration::from_millis(250));
}

/// The file's values reach the relay that runs: it publishes under the file's name until SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_with_the_config_file() {
    let db = TestDb::new().await;
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    mock.create_topic("orders", 1, 1).expect("create topic");
    let brokers = mock.bootstrap_servers();
    db.ok(&["migrate"]);
    db.sql(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at)
         SELECT gen_random_uuid(), 'orders', 'k' || (i % 3), 'order.placed', 1, convert_to('{}', 'UTF8'), now()
         FROM generate_series(1, 5) AS i",
    )
    .await;
    let file = ConfigFile::new("name = \"from-file\"\npoll_interval = \"50ms\"\nlease = \"3s\"\n");
    let mut relay = db
        .outbox(&["relay", "--config", file.path()], &[("KAFKA_BROKERS", &brokers)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outbox relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 0 {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            panic!("relay exited early with {status}: {:?}", relay.wait_with_output().map(|o| o.stderr));
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay did not drain the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = &db.json(&["status", "--json"])["lease"];
    assert_eq!(lease["name"], "from-file", "the relay runs under the file's name: {lease}");
    assert!(lease["owner"].is_string(), "a running relay holds the lease: {lease}");
    assert!(Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().expect("run kill").success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = relay.try_wait().expect("poll relay") {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "relay exited with {status}");
    db.drop_db().await;
}

/// A configuration file that cannot be used stops the relay before it connects (exit code 2),
/// naming the file and what is wrong in it.
#[tokio::test]
async fn config_file_errors_exit_with_code_2_and_name_the_field() {
    let db = TestDb::new().await;
    let brokers = ("KAFKA_BROKERS", "127.0.0.1:9");
    let unknown = ConfigFile::new("name = \"x\"\npoll_interval_ms = 100\n");
    let out = db.run(&["relay", "--config", unknown.path()], &[brokers]);
    assert_usage_error(&out, &[unknown.path(), "line 2", "unknown field `poll_interval_ms`", "expected one of"]);
    let duration = ConfigFile::new("poll_interval = \"fast\"\n");
    let out = db.run(&["relay", "--config", duration.path()], &[brokers]);
    assert_usage_error(
        &out,
        &[duration.path(), "poll_interval", "invalid value: string \"fast\", expected a duration"],
    );
    let retry = ConfigFile::new("[retry]\nbase = \"1s\"\n");
    let out = db.run(&["relay", "--config", retry.path()], &[brokers]);
    assert_usage_error(&out, &["missing field `max`"]);
    // Well-formed but refused by the relay's checks, like the same value given as a flag.
    let invalid = ConfigFile::new("batch_size = 0\n");
    let out = db.run(&["relay", "--config", invalid.path()], &[brokers]);
    assert_usage_error(&out, &["batch_size 0 is out of range"]);
    let out = db.run(&["relay", "--config", "/nonexistent/relay.toml"], &[brokers]);
    assert_usage_error(&out, &["--config /nonexistent/relay.toml", "cannot read it"]);
    db.drop_db().await;
}

/// `outbox config print-default` needs no database and prints `RelayConfig::default()`.
#[test]
fn the_printed_default_config_parses_back_into_the_default() {
    let mut cmd = command("", &["config", "print-default"], &[]);
    cmd.env_remove("DATABASE_URL");
    let out = cmd.output().expect("run the outbox binary");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let parsed: outbox::relay::RelayConfig =
        toml::from_str(&text).unwrap_or_else(|e| panic!("the printed default does not parse ({e}): {text}"));
    assert_eq!(parsed, outbox::relay::RelayConfig::default(), "{text}");
}

/// Each relay flag's `[default: ...]` in `--help` is the library's default, so the two cannot
/// drift apart again.
#[test]
fn relay_help_shows_the_library_defaults() {
    let out = command("", &["relay", "--help"], &[]).output().expect("run the outbox binary");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    // The help of each flag: from its `--flag` line to the next flag's.
    let flag_help = |flag: &str| -> String {
        let start = help.find(&format!("      {flag} ")).unwrap_or_else(|| panic!("{flag} is not in the help: {help}"));
        let rest = &help[start + flag.len()..];
        let end = rest.find("\n      --").or_else(|| rest.find("\n  -h")).unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let d = outbox::relay::RelayConfig::default();
    let ms = |d: Duration| d.as_millis().to_string();
    let expected = [
        ("--name", d.name.clone()),
        ("--batch-size", d.batch_size.to_string()),
        ("--poll-interval-ms", ms(d.poll_interval)),
        ("--lease-ms", ms(d.lease)),
        ("--max-attempts", d.max_attempts.to_string()),
        ("--backoff-base-ms", ms(d.retry.base)),
        ("--backoff-max-ms", ms(d.retry.max)),
        ("--shutdown-timeout-ms", ms(d.shutdown_timeout)),
        ("--startup-timeout-secs", d.startup_timeout.as_secs().to_string()),
        ("--source", d.source.clone()),
    ];
    for (flag, default) in expected {
        let text = flag_help(flag);
        assert!(text.contains(&format!("[default: {default}]")), "{flag} should say [default: {default}]: {text}");
        assert_eq!(text.matches("[default: ").count(), 1, "{flag} has one default: {text}");
    }
    assert!(d.listen.is_none() && flag_help("--listen").contains("[default: true, false with --transaction-pooling"));
    assert!(
        d.after_send == outbox::relay::AfterSend::Delete
            && flag_help("--retention-secs").contains("[default: delete on send]")
    );
}
