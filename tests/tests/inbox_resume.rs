//! Guarantee 6, restarts: the inbox resumes from the position stored in the database with the
//! handler's effects, not from Kafka's committed offsets.
//!
//! - A consumer task aborted mid-stream (its in-flight transaction dies with it) and a new one
//!   started: every message takes effect exactly once.
//! - The group's committed Kafka offsets rewound to 0 while it was stopped, and its dedup rows
//!   deleted so that only the stored position can prevent re-handling: nothing is handled
//!   twice, and the handler runs only for the new messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(
    aborted_consumer_restarts_without_loss_or_doubling,
    kafka_offsets_rewound_to_earliest_resume_from_database_position,
);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
}

struct RecordOrder {
    calls: Arc<AtomicUsize>,
    delay: Duration,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect { n: Some(e.n), ..Effect::of(id) }).await?;
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
}

async fn setup<B: Backend>() -> (TestDb<B>, TestKafka, TestProducer) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 2).await;
    db.create_effects().await;
    let producer = TestProducer::new(&kafka);
    (db, kafka, producer)
}

async fn produce(producer: &TestProducer, from: i64, per_partition: i64) {
    let mut events = Vec::new();
    for n in from..from + per_partition {
        for p in 0..2 {
            events
                .push(CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), n: n * 2 + i64::from(p) }).partition(p));
        }
    }
    producer.send_all(&events).await;
}

async fn inbox<B: Backend>(
    db: &TestDb<B>,
    kafka: &TestKafka,
    calls: &Arc<AtomicUsize>,
    delay: Duration,
) -> Inbox<B::Conn> {
    Inbox::builder(db.pool(4).await, inbox_kafka_config(kafka))
        .group("inventory")
        .batch_size(10)
        .handle(RecordOrder { calls: calls.clone(), delay })
        .build()
        .unwrap()
}

const POSITION_SUM: &str = "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) AS n FROM inbox_offsets";

async fn assert_exactly_once<B: Backend>(db: &TestDb<B>, total: i64) {
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, total, "no effect lost or doubled");
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, total);
    assert_eq!(db.count("SELECT count(DISTINCT n) AS n FROM effects").await, total);
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM inbox_offsets WHERE next_offset = {}", total / 2)).await,
        2,
        "both partitions' stored positions are at their end"
    );
}

async fn aborted_consumer_restarts_without_loss_or_doubling<B: Backend>() {
    let (db, kafka, producer) = setup::<B>().await;
    produce(&producer, 0, 100).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn(inbox(&db, &kafka, &calls, Duration::from_millis(5)).await.run(CancellationToken::new()));
    let before = wait_for_count(&db, "SELECT count(*) AS n FROM effects", 40, Duration::from_secs(20)).await;
    first.abort(); // no graceful shutdown: in-flight transactions die with their connections
    assert!(first.await.unwrap_err().is_cancelled());
    let at_abort = db.count("SELECT count(*) AS n FROM effects").await;
    assert!(before >= 40 && at_abort < 200, "aborted mid-stream ({at_abort} of 200 handled)");

    let shutdown = CancellationToken::new();
    let second = tokio::spawn(inbox(&db, &kafka, &calls, Duration::ZERO).await.run(shutdown.clone()));
    // 60 s: the aborted member never left the group; a real broker (tansu) holds the rejoin for it.
    let position = wait_for_count(&db, POSITION_SUM, 200, Duration::from_secs(60)).await;
    shutdown.cancel();
    second.await.unwrap().unwrap();
    assert_eq!(position, 200);
    assert_exactly_once(&db, 200).await;
}

/// Commits offset 0 for both partitions in the group's name while no inbox runs, as
/// `kafka-consumer-groups --reset-offsets --to-earliest` would: joins the group, commits, leaves.
async fn rewind_kafka_offsets(kafka: &TestKafka, group: &str) {
    let mut cfg = inbox_kafka_config(kafka);
    cfg.set("group.id", group).set("enable.auto.commit", "false");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cfg.create().unwrap();
        consumer.subscribe(&["orders"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while consumer.assignment().unwrap().count() < 2 {
            assert!(std::time::Instant::now() < deadline, "rewinding consumer got no assignment");
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset("orders", p, Offset::Offset(0)).unwrap();
        }
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        for e in committed.elements() {
            assert_eq!(e.offset(), Offset::Offset(0), "Kafka offsets rewound");
        }
    })
    .await
    .unwrap();
}

async fn kafka_offsets_rewound_to_earliest_resume_from_database_position<B: Backend>() {
    let (db, kafka, producer) = setup::<B>().await;
    produce(&producer, 0, 50).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let first = tokio::spawn(inbox(&db, &kafka, &calls, Duration::ZERO).await.run(shutdown.clone()));
    assert_eq!(wait_for_count(&db, POSITION_SUM, 100, Duration::from_secs(20)).await, 100);
    shutdown.cancel();
    first.await.unwrap().unwrap();
    assert_eq!(AtomicUsize::load(&calls, Ordering::SeqCst), 100);

    rewind_kafka_offsets(&kafka, "inventory").await;
    // Without dedup rows only the stored position stands between a rewind and double effects.
    db.exec("DELETE FROM inbox_messages").await;
    produce(&producer, 50, 10).await;

    let second_calls = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let second = tokio::spawn(inbox(&db, &kafka, &second_calls, Duration::ZERO).await.run(shutdown.clone()));
    assert_eq!(wait_for_count(&db, POSITION_SUM, 120, Duration::from_secs(20)).await, 120);
    shutdown.cancel();
    second.await.unwrap().unwrap();

    assert_exactly_once(&db, 120).await;
    assert_eq!(
        AtomicUsize::load(&second_calls, Ordering::SeqCst),
        20,
        "after the rewind the handler ran for the new messages only"
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM inbox_messages").await,
        20,
        "old messages were skipped by position, not recognised as duplicates"
    );
}
