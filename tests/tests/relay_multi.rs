//! Several relays on one database: one publishes at a time (lease), a dead one is taken over
//! within its lease, every message is delivered, per-key order holds. Duplicates are counted.

use std::collections::HashSet;
use std::time::Duration;

use tests::relay_support as rs;
use tests::{Backend, TestDb, TestKafka};

tests::backends!(two_relays, three_relays,);

async fn relays_together<B: Backend>(count: usize) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;
    let ids = rs::write_events(&db, 10_000, 100, 500).await;
    let build =
        |pool| rs::relay(pool, &kafka).batch_size(200).lease(std::time::Duration::from_secs(2)).build().unwrap();

    // The first relay takes the lease and starts draining; the others join as stand-bys once it
    // has published (so it leads), and it is killed while most rows are left (so a stand-by must
    // take over to drain them; killing after a fixed pause let a fast leader finish first).
    let first = rs::spawn(build(db.pool(3).await));
    while db.count("SELECT count(*) AS n FROM outbox_messages").await == ids.len() as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut others = Vec::new();
    for _ in 1..count {
        others.push(rs::spawn(build(db.pool(3).await)));
    }
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 8_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill the leader mid-stream (no graceful release): a stand-by takes over within the lease.
    first.1.abort();
    let left_at_kill = db.count("SELECT count(*) AS n FROM outbox_messages").await;
    assert!(left_at_kill > 0, "the leader drained the outbox before it was killed: nothing left to take over");
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    for (stop, task) in others {
        stop.cancel();
        task.await.unwrap().unwrap();
    }
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    let epoch = db.count("SELECT epoch AS n FROM outbox_relay_leases").await;
    println!(
        "{count} relays, leader killed with {left_at_kill} rows left: {report:?}; lease epoch {epoch} \
         (duplicates on the topic: {})",
        report.duplicates
    );
    assert!(epoch >= 2, "a stand-by took the lease over");
}

async fn two_relays<B: Backend>() {
    relays_together::<B>(2).await;
}

async fn three_relays<B: Backend>() {
    relays_together::<B>(3).await;
}
