//! Guarantees 4 and 7: a record Kafka can never accept is parked with its error; its key's later
//! messages wait behind it; every other key keeps flowing. Parked rows stay visible.

use std::collections::HashSet;
use std::time::Duration;

use diesel_async::AsyncConnection;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestConn, TestDb, TestKafka};

tests::backends!(oversized_record_is_parked_and_holds_only_its_key, failing_topic_retries_with_backoff_then_parks,);

async fn oversized_record_is_parked_and_holds_only_its_key<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;

    // Per key k0..k9: 20 events. Key k3's 6th event is larger than the producer accepts.
    let mut conn = db.conn().await;
    let mut delivered = Vec::new();
    let mut held = Vec::new();
    let mut poison = None;
    for round in 0..20u64 {
        for k in 0..10u64 {
            let mut e = Happened::new(format!("k{k}"), round * 10 + k);
            let is_poison = k == 3 && round == 5;
            if is_poison {
                e.pad = "y".repeat(64 * 1024);
            }
            let id = conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &e).await).await.unwrap();
            match (k, round) {
                (3, 5) => poison = Some(id),
                (3, r) if r > 5 => held.push(id),
                _ => delivered.push(id),
            }
        }
    }
    let poison = poison.unwrap();

    let config = outbox::KafkaConfig::new(kafka.brokers()).set("message.max.bytes", "32768");
    let relay = rs::relay_with(db.pool(4).await, config).max_attempts(3).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // Everything but key k3's tail goes out.
    let records = rs::read_topic(&kafka, delivered.len()).await;
    let report = rs::check_delivery(&records, &delivered, &held.iter().copied().chain([poison]).collect());
    println!("other keys delivered: {report:?}");

    // The poison row is parked with its error; k3's later rows are neither sent nor parked.
    let parked = conn.parked_rows().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, poison);
    assert!(parked[0].1.as_deref().unwrap_or_default().to_lowercase().contains("too large"), "{:?}", parked[0].1);
    assert_eq!(parked[0].2, 1, "a record-level error parks at once");
    // Give the relay more rounds: the held rows must still be waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = db
        .count("SELECT count(*) AS n FROM outbox_messages WHERE key = 'k3' AND parked_at IS NULL AND sent_at IS NULL")
        .await;
    assert_eq!(waiting, held.len() as i64, "k3's later messages wait behind the parked one");
    stop.cancel();
    task.await.unwrap().unwrap();
    let late = rs::read_topic(&kafka, delivered.len()).await;
    let on_topic: HashSet<uuid::Uuid> = late.iter().map(|r| r.header("ce_id").unwrap().parse().unwrap()).collect();
    assert!(held.iter().all(|id| !on_topic.contains(id)), "a held message overtook the parked one");
}

async fn failing_topic_retries_with_backoff_then_parks<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: topic errors need the mock cluster; skipped");
        return;
    };
    kafka.create_topic(rs::TOPIC, 1).await;
    let ids = rs::write_events(&db, 5, 1, 5).await;
    // Every Produce request fails with a retriable error; librdkafka gives up after
    // message.timeout.ms, the relay records an attempt, backs off, and finally parks.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000];
    mock.request_errors(RDKafkaApiKey::Produce, &errors);
    let config =
        outbox::KafkaConfig::new(kafka.brokers()).set("message.timeout.ms", "300").set("retry.backoff.ms", "50");
    let relay = rs::relay_with(db.pool(4).await, config)
        .max_attempts(3)
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NOT NULL").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the failing head was never parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    // Only the head of the key counts attempts: it is parked after max_attempts; the rest of
    // the key failed alongside it but waits, unparked, with no attempt of its own.
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NOT NULL").await, 1);
    assert_eq!(
        db.count("SELECT CAST(max(attempts) AS BIGINT) AS n FROM outbox_messages WHERE parked_at IS NOT NULL").await,
        3
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NULL AND attempts = 0").await, 4);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, ids.len() as i64, "nothing lost");
}
