//! `outbox relay` on PostgreSQL (a fresh database per test, created from `DATABASE_URL`) and
//! librdkafka's in-process mock cluster: it publishes and stops gracefully on SIGTERM, and
//! start-up failures end the process with an error instead of a retry loop.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Binary, TestDb};

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

    let env = [("KAFKA_BROKERS", brokers.as_str()), ("OUTBOX_LEASE_MS", "3000"), ("OUTBOX_RELAY_NAME", "cli-test")];
    let args = ["relay", "--poll-interval-ms", "50"];
    common::relay_drains_then_stops_on_sigterm(&db, &args, &env, "cli-test", async || {
        db.count("SELECT count(*) AS n FROM outbox_messages").await
    })
    .await;
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
