//! Guarantee 6, redelivery: the same message id delivered five times, at five different offsets,
//! takes effect once, in batch mode (duplicates inside one multi-row dedup INSERT) and in
//! one-message mode (duplicates across transactions).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(same_id_five_times_batch_mode, same_id_five_times_one_message_mode,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
}

struct RecordOrder {
    calls: Arc<AtomicUsize>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect { n: Some(e.n), ..Effect::of(id) }).await?;
        Ok(())
    }
}

fn order(n: i64) -> CloudEvent {
    CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), n }).partition(0)
}

async fn same_id_five_times<B: Backend>(batch_size: usize) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;

    let dup = order(0);
    let input =
        vec![dup.clone(), order(1), dup.clone(), order(2), dup.clone(), dup.clone(), order(3), order(4), dup.clone()];
    let producer = TestProducer::new(&kafka);
    let sent = producer.send_all(&input).await;
    let offsets: Vec<i64> = sent.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (0..9).collect::<Vec<_>>(), "five copies at five different offsets");

    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("inventory")
        .batch_size(batch_size)
        .handle(RecordOrder { calls: calls.clone() })
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let position =
        wait_for_count(&db, "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets", 9, Duration::from_secs(20))
            .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(position, 9, "every message was consumed");
    let dup_id = dup.id().unwrap();
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{dup_id}'")).await,
        1,
        "the redelivered message took effect once"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 5);
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, 5);
    assert_eq!(AtomicUsize::load(&calls, Ordering::SeqCst), 5, "the handler never ran for a duplicate");
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_messages").await, 5);
    assert_eq!(
        db.count(&format!("SELECT kafka_offset AS n FROM inbox_messages WHERE message_id = '{dup_id}'")).await,
        0,
        "the dedup row records the first delivery"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
}

async fn same_id_five_times_batch_mode<B: Backend>() {
    same_id_five_times::<B>(100).await;
}

async fn same_id_five_times_one_message_mode<B: Backend>() {
    same_id_five_times::<B>(1).await;
}
