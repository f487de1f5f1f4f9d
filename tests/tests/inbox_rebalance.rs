//! Guarantee 6, rebalances: two consumers of one group share four partitions; one of them is
//! stopped while it is processing (its task aborted, or shut down gracefully), the other takes
//! its partitions over from their stored positions, and every message takes effect exactly once.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(consumer_aborted_mid_stream, consumer_shut_down_mid_stream,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
}

/// Records which consumer handled which message.
struct RecordOrder {
    consumer: &'static str,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let (id, partition) = (cx.message_id(), cx.partition());
        cx.conn()
            .insert_effect(Effect {
                n: Some(e.n),
                kafka_partition: Some(partition),
                consumer: Some(self.consumer),
                ..Effect::of(id)
            })
            .await?;
        // Slow enough that the first consumer is stopped with work in hand.
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

const PER_PARTITION: i64 = 100;
const TOTAL: i64 = PER_PARTITION * 4;

async fn consumer<B: Backend>(db: &TestDb<B>, kafka: &TestKafka, name: &'static str) -> Inbox<B::Conn> {
    Inbox::builder(db.pool(6).await, inbox_kafka_config(kafka))
        .group("inventory")
        .batch_size(10)
        .handle(RecordOrder { consumer: name })
        .build()
        .unwrap()
}

/// Runs two consumers, calls `stop_a` once some work is committed, waits for the rest.
async fn one_consumer_stops_mid_stream<B: Backend>(abort: bool) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 4).await;
    db.create_effects().await;
    let mut events = Vec::new();
    for n in 0..PER_PARTITION {
        for p in 0..4 {
            let event = OrderPlaced { order_id: Uuid::now_v7(), n: n * 4 + i64::from(p) };
            events.push(CloudEvent::of(&event).partition(p));
        }
    }
    TestProducer::new(&kafka).send_all(&events).await;

    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(consumer(&db, &kafka, "a").await.run(stop_a.clone()));
    let b = tokio::spawn(consumer(&db, &kafka, "b").await.run(stop_b.clone()));

    // Both members have work committed before one of them goes.
    let both = "SELECT count(DISTINCT consumer) AS n FROM effects";
    assert_eq!(wait_for_count(&db, both, 2, Duration::from_secs(20)).await, 2, "both consumers got partitions");
    if abort {
        a.abort();
        assert!(a.await.unwrap_err().is_cancelled());
    } else {
        stop_a.cancel();
        a.await.unwrap().unwrap();
    }
    let at_stop = db.count("SELECT count(*) AS n FROM effects").await;
    assert!(at_stop < TOTAL, "stopped mid-stream ({at_stop} of {TOTAL} handled)");
    // The partitions `a` had worked on and not finished when it went: `b` must take them over.
    // (`a` may have finished a partition on its own while `b` was still joining the group.)
    let mut taken_over = Vec::new();
    for p in 0..4 {
        let by_a = db
            .count(&format!("SELECT count(*) AS n FROM effects WHERE consumer = 'a' AND kafka_partition = {p}"))
            .await;
        let done = db.count(&format!("SELECT count(*) AS n FROM effects WHERE kafka_partition = {p}")).await;
        if by_a > 0 && done < PER_PARTITION {
            taken_over.push(p);
        }
    }
    println!("stopped with {at_stop} of {TOTAL} handled; partitions left unfinished by a: {taken_over:?}");
    // On SQLite one transaction writes at a time and its busy-wait is not fair, so `a` can finish
    // its partitions before `b` commits anything; on tansu the group's rebalance takes seconds,
    // long enough for `a` to finish the partitions it keeps (seen: 260 of 400 handled, none of
    // a's left). On PostgreSQL with the mock cluster the stop reliably leaves work, and this
    // pass is the one that must take it over; the checks below hold either way.
    if <B::Conn as outbox::Database>::NAME == "postgres" && kafka.mock().is_some() {
        assert!(!taken_over.is_empty(), "a had unfinished partitions when it stopped (nothing to take over otherwise)");
    }

    let position = wait_for_count(
        &db,
        "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) AS n FROM inbox_offsets",
        TOTAL,
        Duration::from_secs(25),
    )
    .await;
    stop_b.cancel();
    b.await.unwrap().unwrap();

    assert_eq!(position, TOTAL);
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, TOTAL, "no effect lost or doubled");
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, TOTAL);
    assert_eq!(db.count("SELECT count(DISTINCT n) AS n FROM effects").await, TOTAL);
    for p in taken_over {
        assert!(
            db.count(&format!("SELECT count(*) AS n FROM effects WHERE consumer = 'b' AND kafka_partition = {p}"))
                .await
                > 0,
            "the remaining consumer took over partition {p}, which the stopped one left unfinished"
        );
    }
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM inbox_offsets WHERE next_offset = {PER_PARTITION}")).await,
        4
    );
}

async fn consumer_aborted_mid_stream<B: Backend>() {
    one_consumer_stops_mid_stream::<B>(true).await;
}

async fn consumer_shut_down_mid_stream<B: Backend>() {
    one_consumer_stops_mid_stream::<B>(false).await;
}
