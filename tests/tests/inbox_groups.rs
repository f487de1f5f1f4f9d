//! Dedup is per consumer group: the same message ids consumed by two groups take effect once in
//! each group, not once overall.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(each_group_takes_effect_once,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
}

struct RecordOrder;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, _: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let (id, group) = (cx.message_id(), cx.group().to_owned());
        cx.conn().insert_effect(Effect { grp: Some(group.as_str()), ..Effect::of(id) }).await?;
        Ok(())
    }
}

async fn each_group_takes_effect_once<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 2).await;
    db.create_effects().await;
    let events: Vec<CloudEvent> =
        (0..10).map(|i| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7() }).partition(i % 2)).collect();
    let mut input = events.clone();
    input.push(events[0].clone().partition(1)); // the same id again, on the other partition
    input.push(events[3].clone());
    TestProducer::new(&kafka).send_all(&input).await;

    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for group in ["inventory", "billing"] {
        let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
            .group(group)
            .handle(RecordOrder)
            .build()
            .unwrap();
        running.push(tokio::spawn(inbox.run(shutdown.clone())));
    }
    let consumed = wait_for_count(
        &db,
        "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) AS n FROM inbox_offsets",
        2 * input.len() as i64,
        Duration::from_secs(20),
    )
    .await;
    shutdown.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
    assert_eq!(consumed, 2 * input.len() as i64, "both groups consumed everything");

    for group in ["inventory", "billing"] {
        assert_eq!(
            db.count(&format!("SELECT count(*) AS n FROM effects WHERE grp = '{group}'")).await,
            10,
            "{group}: one effect per message id"
        );
        assert_eq!(
            db.count(&format!("SELECT count(DISTINCT message_id) AS n FROM effects WHERE grp = '{group}'")).await,
            10
        );
        assert_eq!(
            db.count(&format!("SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = '{group}'")).await,
            10
        );
    }
}
