//! Guarantee 2 across a relay crash: the relay task is aborted mid-batch and its database
//! sessions are terminated; a restarted relay delivers everything.
//!
//! PostgreSQL only: killing the relay's sessions uses `pg_terminate_backend` (SQLite has no
//! server sessions to terminate; an aborted SQLite relay is covered by `relay_multi`).

use std::collections::HashSet;
use std::time::Duration;

use tests::relay_support as rs;
use tests::{TestDb, TestKafka};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_aborted_mid_batch_and_connections_killed() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;
    let ids = rs::write_events(&db, 5000, 50, 500).await;
    // Slow acknowledgements keep a batch in flight when the crash comes.
    if let Some(mock) = kafka.mock() {
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::from_millis(300)).unwrap();
        }
    }
    let relay = rs::relay(db.pool_named(4, "relay-crash").await, &kafka).batch_size(500).build().unwrap();
    let (_stop, task) = rs::spawn(relay);
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 3000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let killed = db.terminate_backends("relay-crash").await;
    let left = db.count("SELECT count(*) AS n FROM outbox_messages").await;
    if let Some(mock) = kafka.mock() {
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::ZERO).unwrap();
        }
    }
    // The restarted relay must wait out the dead one's lease, then deliver the rest.
    let relay = rs::relay(db.pool_named(4, "relay-restarted").await, &kafka).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("crashed with {left} rows left, {killed} sessions terminated; after restart {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_its_connections_being_terminated_repeatedly() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;
    let ids = rs::write_events(&db, 5000, 50, 500).await;
    let relay = rs::relay(db.pool_named(4, "relay-victim").await, &kafka).batch_size(200).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    let mut kills = 0;
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 0 && kills < 200 {
        kills += db.terminate_backends("relay-victim").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("{kills} relay sessions terminated while draining: {report:?}");
    assert!(kills > 0);
}
