//! A stale relay that wakes up after its lease was taken over is fenced: it marks nothing.
//!
//! Relay A publishes to a cluster whose acknowledgements take 4 s, longer than its 1 s lease,
//! so A is "paused" holding a batch. Relay B takes the lease over, but its own cluster is
//! down, so B cannot deliver yet. When A's acknowledgements arrive, A must not mark the rows:
//! if it did, they would vanish from the outbox without ever reaching B's cluster.

use std::collections::HashSet;
use std::time::Duration;

use tests::relay_support as rs;
use tests::{Backend, TestDb, TestKafka};

tests::backends!(stale_relay_marks_nothing,);

async fn stale_relay_marks_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let (kafka_a, kafka_b) = (TestKafka::new(), TestKafka::new());
    let (Some(mock_a), Some(mock_b)) = (kafka_a.mock(), kafka_b.mock()) else {
        println!("KAFKA_BROKERS is set: this scenario needs two mock clusters; skipped");
        return;
    };
    kafka_a.create_topic(rs::TOPIC, 2).await;
    kafka_b.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 300, 10, 100).await;
    for b in 1..=3 {
        mock_a.broker_round_trip_time(b, Duration::from_secs(4)).unwrap();
    }
    let lease = Duration::from_secs(1);
    let a = rs::relay(db.pool(3).await, &kafka_a).lease(lease).build().unwrap();
    let (stop_a, task_a) = rs::spawn(a);
    tokio::time::sleep(Duration::from_millis(300)).await; // A holds the lease and a batch

    for b in 1..=3 {
        mock_b.broker_down(b).unwrap();
    }
    let b = rs::relay(db.pool(3).await, &kafka_b).lease(lease).build().unwrap();
    let (stop_b, task_b) = rs::spawn(b);

    // Well past A's acknowledgements (4 s): A was fenced, B cannot deliver, so every row is there.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let epoch = db.count("SELECT epoch AS n FROM outbox_relay_leases").await;
    assert!(epoch >= 2, "B took the lease over (epoch {epoch})");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM outbox_messages").await,
        ids.len() as i64,
        "the stale relay marked rows it no longer owned"
    );

    for b in 1..=3 {
        mock_b.broker_up(b).unwrap();
    }
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let records = kafka_b.read_all(rs::TOPIC, ids.len(), Duration::from_secs(60), Duration::from_millis(300)).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("after takeover (epoch {epoch}), B delivered {report:?}");
    stop_a.cancel();
    stop_b.cancel();
    task_a.await.unwrap().unwrap();
    task_b.await.unwrap().unwrap();
}
