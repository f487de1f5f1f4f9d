//! A stored position beyond the end of the partition's log (the topic was deleted and
//! recreated, or the consumer points at a new cluster with an old database) must not make the
//! inbox skip the new log's messages: every one of them is handled, once.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(stored_position_beyond_the_log_skips_nothing,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
}

struct RecordOrder;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect { n: Some(e.n), ..Effect::of(id) }).await?;
        Ok(())
    }
}

async fn stored_position_beyond_the_log_skips_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    // What an earlier life of the topic left behind: position 1,000 on partition 0.
    db.exec(
        "INSERT INTO inbox_offsets (consumer_group, topic, kafka_partition, next_offset) \
         VALUES ('inventory', 'orders', 0, 1000)",
    )
    .await;

    let input: Vec<CloudEvent> =
        (0..10).map(|n| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), n }).partition(0)).collect();
    TestProducer::new(&kafka).send_all(&input).await;

    let shutdown = CancellationToken::new();
    let inbox =
        Inbox::builder(db.pool(4).await, kafka.brokers()).group("inventory").handle(RecordOrder).build().unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let handled = wait_for_count(&db, "SELECT count(*) AS n FROM effects", 10, Duration::from_secs(30)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let distinct = db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await;
    println!("stored position 1000, new log of 10: handled {handled}, distinct {distinct}");
    assert_eq!(handled, 10, "every message of the new log was handled");
    assert_eq!(distinct, 10, "each once");
}
