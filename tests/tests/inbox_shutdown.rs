//! Graceful shutdown: when the token fires, each partition finishes and commits the batch in
//! hand, starts no other, and `run` returns; a handler that never returns is abandoned after
//! `shutdown_timeout` (its transaction rolled back) and its message is handled after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(shutdown_commits_the_batch_in_hand, a_hanging_handler_is_abandoned_after_the_shutdown_timeout,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
}

/// Cancels `shutdown` from inside the first call, then keeps going slowly (or hangs).
struct StopsTheInbox {
    shutdown: CancellationToken,
    calls: Arc<AtomicUsize>,
    hang: bool,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for StopsTheInbox {
    async fn handle(&self, _: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        self.shutdown.cancel();
        if self.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
}

struct RecordOrder;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, _: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        Ok(())
    }
}

async fn setup<B: Backend>(messages: usize) -> (TestDb<B>, TestKafka) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    let events: Vec<CloudEvent> =
        (0..messages).map(|_| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7() }).partition(0)).collect();
    TestProducer::new(&kafka).send_all(&events).await;
    (db, kafka)
}

/// Fails the test instead of hanging it if `run` never returns.
const GUARD: Duration = Duration::from_secs(20);

async fn shutdown_commits_the_batch_in_hand<B: Backend>() {
    let (db, kafka) = setup::<B>(50).await;
    let shutdown = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka))
        .group("inventory")
        .batch_size(10)
        .handle(StopsTheInbox { shutdown: shutdown.clone(), calls: calls.clone(), hang: false })
        .build()
        .unwrap();
    tokio::time::timeout(GUARD, inbox.run(shutdown)).await.expect("run returns after shutdown").unwrap();

    let handled = AtomicUsize::load(&calls, Ordering::SeqCst) as i64;
    assert!(handled > 0 && handled < 50, "stopped early ({handled} calls)");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM effects").await,
        handled,
        "every handler call of the batch in hand was committed, none abandoned"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_messages").await, handled);
    assert_eq!(
        db.count("SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets").await,
        handled,
        "the stored position is right after the committed batch"
    );
}

async fn a_hanging_handler_is_abandoned_after_the_shutdown_timeout<B: Backend>() {
    let (db, kafka) = setup::<B>(3).await;
    let shutdown = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka))
        .group("inventory")
        .shutdown_timeout(Duration::from_millis(500))
        .handle(StopsTheInbox { shutdown: shutdown.clone(), calls: calls.clone(), hang: true })
        .build()
        .unwrap();
    tokio::time::timeout(GUARD, inbox.run(shutdown)).await.expect("run returns although a handler never does").unwrap();
    assert_eq!(AtomicUsize::load(&calls, Ordering::SeqCst), 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_offsets").await, 0, "nothing committed");

    // The abandoned transaction was rolled back; a restart handles everything once.
    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka))
        .group("inventory")
        .handle(RecordOrder)
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let position =
        wait_for_count(&db, "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets", 3, Duration::from_secs(20))
            .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(position, 3);
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 3);
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, 3);
}
