//! Graceful shutdown with a batch in flight returns within the configured bound, marks nothing
//! that was not acknowledged, and the next relay delivers the rest.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tests::relay_support as rs;
use tests::{Backend, TestDb, TestKafka};

tests::backends!(shutdown_with_a_batch_in_flight,);

async fn shutdown_with_a_batch_in_flight<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: this scenario takes brokers down, which needs the mock cluster; skipped");
        return;
    };
    kafka.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 400, 10, 100).await;
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let bound = Duration::from_secs(1);
    let relay = rs::relay(db.pool(3).await, &kafka).shutdown_timeout(bound).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    tokio::time::sleep(Duration::from_millis(500)).await; // the batch is produced, unacknowledged

    let asked = Instant::now();
    stop.cancel();
    // The bound under test is the configured shutdown timeout; the extra second is slack for
    // the lease release and a loaded machine, not a performance claim.
    tokio::time::timeout(bound + Duration::from_secs(5), task)
        .await
        .expect("run() did not return within the shutdown bound")
        .unwrap()
        .unwrap();
    println!("shutdown returned after {:?} (bound {bound:?})", asked.elapsed());
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, ids.len() as i64, "nothing marked");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NULL").await,
        1,
        "the lease was released for an immediate takeover"
    );

    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    let started = Instant::now();
    let relay = rs::relay(db.pool(3).await, &kafka).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("next relay drained in {:?}: {report:?}", started.elapsed());
}
