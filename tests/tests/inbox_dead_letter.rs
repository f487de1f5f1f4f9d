//! Guarantee 7, consumer side: a message whose handler keeps failing is parked as a dead-letter
//! row (payload, headers, error, attempts) in the same transaction as its dedup row, and the
//! partition moves on. Transient failures are dead-lettered after `max_attempts` calls,
//! permanent failures and panics after one; a redelivery of a parked message is a duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(failing_messages_are_dead_lettered_batch_mode, failing_messages_are_dead_lettered_one_message_mode,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "shipments", name = "shipment.requested")]
struct ShipmentRequested {
    #[event(key)]
    shipment_id: Uuid,
    behaviour: String,
}

#[derive(Default)]
struct Ship {
    calls: Mutex<HashMap<Uuid, u32>>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<ShipmentRequested, C> for Arc<Ship> {
    async fn handle(&self, e: ShipmentRequested, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        *self.calls.lock().unwrap().entry(cx.message_id()).or_default() += 1;
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        match e.behaviour.as_str() {
            "transient" => Err(HandlerError::transient("carrier API timed out")),
            "permanent" => Err(HandlerError::permanent("address is not deliverable")),
            "panic" => panic!("carrier returned an impossible state"),
            _ => Ok(()),
        }
    }
}

async fn failing_messages_are_dead_lettered<B: Backend>(batch_size: usize) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("shipments", 1).await;
    db.create_effects().await;
    let event = |behaviour: &str| {
        CloudEvent::of(&ShipmentRequested { shipment_id: Uuid::now_v7(), behaviour: behaviour.into() })
            .partition(0)
            .header("tenant", "acme")
    };
    let transient = event("transient");
    let permanent = event("permanent");
    let panics = event("panic");
    let good: Vec<CloudEvent> = (0..3).map(|_| event("ok")).collect();
    let input = [
        transient.clone(),
        good[0].clone(),
        permanent.clone(),
        good[1].clone(),
        panics.clone(),
        good[2].clone(),
        transient.clone(), // a redelivery of the parked message
    ];
    TestProducer::new(&kafka).send_all(&input).await;

    let handler = Arc::new(Ship::default());
    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("shipping")
        .batch_size(batch_size)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handle(handler.clone())
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let position =
        wait_for_count(&db, "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets", 7, Duration::from_secs(20))
            .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(position, 7, "the partition moved past every failing message");

    let calls = handler.calls.lock().unwrap().clone();
    assert_eq!(calls[&transient.id().unwrap()], 3, "transient: max_attempts calls");
    assert_eq!(calls[&permanent.id().unwrap()], 1, "permanent: no retry");
    assert_eq!(calls[&panics.id().unwrap()], 1, "panic: no retry");

    let dead = db.conn().await.dead_letters().await;
    assert_eq!(dead.len(), 3, "one row per failing message, none for the redelivery: {dead:#?}");
    let expect = [
        (&transient, 0, "retries_exhausted", "carrier API timed out", 3),
        (&permanent, 2, "handler_failed", "address is not deliverable", 1),
        (&panics, 4, "handler_panicked", "carrier returned an impossible state", 1),
    ];
    for (row, (msg, offset, reason, error, attempts)) in dead.iter().zip(expect) {
        assert_eq!(row.message_id, msg.id());
        assert_eq!(row.kafka_offset, offset);
        assert_eq!(row.reason, reason);
        assert!(row.error.contains(error), "{}", row.error);
        assert_eq!(row.attempts, attempts);
        assert_eq!(row.payload, msg.payload, "the payload is kept for replay");
        assert_eq!(row.key, msg.key);
        assert_eq!(row.headers["tenant"], "acme");
        assert_eq!(row.headers["ce_id"], msg.id().unwrap().to_string());
        assert_eq!(row.headers["ce_type"], "shipment.requested");
    }

    // Failed attempts left nothing behind; later messages were handled.
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 3);
    for g in &good {
        let id = g.id().unwrap();
        assert_eq!(db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await, 1);
    }
    assert_eq!(
        db.count("SELECT count(*) AS n FROM inbox_messages").await,
        6,
        "dead-lettered messages are recorded as done for the group"
    );
}

async fn failing_messages_are_dead_lettered_batch_mode<B: Backend>() {
    failing_messages_are_dead_lettered::<B>(100).await;
}

async fn failing_messages_are_dead_lettered_one_message_mode<B: Backend>() {
    failing_messages_are_dead_lettered::<B>(1).await;
}
