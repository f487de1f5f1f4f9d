//! An inbox handler's `cx.publish` wakes the relay of its database once the batch commits
//! (`InboxBuilder::wakeup`, through `outbox::Wakeup::signal_after`). The relay polls once an hour
//! and does not LISTEN, so after its first (empty) round only that signal can make it claim the
//! follow-up events: without it they stay in the outbox and the test times out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::Wakeup;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(a_handlers_publish_wakes_a_relay_on_its_own_line, a_handlers_publish_wakes_the_shared_line_by_default);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: u64,
}

/// Publishes one follow-up per order, in the inbox's transaction.
struct FollowUp;

#[inbox::async_trait]
impl<C: outbox::Database> Handler<OrderPlaced, C> for FollowUp {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        cx.publish(&Happened::new(e.order_id.to_string(), e.n)).await?;
        Ok(())
    }
}

async fn a_handlers_publish_wakes_a_relay_on_its_own_line<B: Backend>() {
    follow_ups_reach_kafka::<B>(Some(Wakeup::new())).await;
}

async fn a_handlers_publish_wakes_the_shared_line_by_default<B: Backend>() {
    follow_ups_reach_kafka::<B>(None).await;
}

/// `line`: the relay's own line, also given to the inbox; `None`: both on the default.
async fn follow_ups_reach_kafka<B: Backend>(line: Option<Wakeup>) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut relay = rs::relay(db.pool(4).await, &kafka).poll_interval(Duration::from_secs(3600)).listen(false);
    if let Some(line) = &line {
        relay = relay.wakeup(line.clone());
    }
    let relay = relay.build().unwrap();
    let health = relay.health();
    let (stop_relay, relay_task) = rs::spawn(relay);
    // The relay's first round (an empty claim) is over: from here on only a wake-up makes it claim.
    let started = Instant::now();
    while health.status().last_success.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay's first round did not end: {:?}",
            health.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka)).group("shipping").handle(FollowUp);
    if let Some(line) = &line {
        inbox = inbox.wakeup(line.clone());
    }
    let stop_inbox = CancellationToken::new();
    let inbox_task = tokio::spawn(inbox.build().unwrap().run(stop_inbox.clone()));
    let order_ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let orders: Vec<CloudEvent> = order_ids
        .iter()
        .zip(0..)
        .map(|(&order_id, n)| CloudEvent::of(&OrderPlaced { order_id, n }).partition(0))
        .collect();
    TestProducer::new(&kafka).send_all(&orders).await;

    let records = kafka.read_all(rs::TOPIC, orders.len(), Duration::from_secs(30), Duration::from_millis(200)).await;
    let keys: HashSet<String> = records.iter().filter_map(|r| r.key.clone()).collect();
    let expected: HashSet<String> = order_ids.iter().map(Uuid::to_string).collect();
    assert_eq!(keys, expected, "every follow-up reached Kafka through the wake-up (the relay polls once an hour)");
    stop_inbox.cancel();
    inbox_task.await.unwrap().unwrap();
    stop_relay.cancel();
    relay_task.await.unwrap().unwrap();
}
