//! Guarantee 8: hostile input — unknown type, unsupported version, missing or non-UUID id,
//! oversized payload (checked before parsing), malformed, mis-shaped or deeply nested JSON,
//! missing or undecodable headers — gets one dead-letter row with its reason, no handler runs
//! on it, and the good message after it is handled. Unknown types can be skipped instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox, UnknownTypePolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(
    each_hostile_input_is_dead_lettered_batch_mode,
    each_hostile_input_is_dead_lettered_one_message_mode,
    unknown_types_can_be_skipped,
);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 2)]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    lines: Vec<String>,
}

struct RecordOrder {
    calls: Arc<AtomicUsize>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, _: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        Ok(())
    }
}

fn good() -> CloudEvent {
    CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), lines: vec!["book".into()] }).partition(0)
}

const MAX_PAYLOAD: usize = 1024;

/// Each hostile message with the dead-letter reason it must get.
fn hostile() -> Vec<(CloudEvent, &'static str)> {
    let mut oversized = br#"{"order_id": "#.to_vec();
    oversized.resize(MAX_PAYLOAD * 4, b' '); // also malformed: the size check must come first
    vec![
        (good().header("ce_type", "order.cancelled"), "unknown_type"),
        (good().header("ce_typeversion", "3"), "unsupported_version"),
        (good().header("ce_typeversion", "0"), "unsupported_version"),
        (good().without("ce_id"), "missing_id"),
        (good().header("ce_id", "42"), "invalid_id"),
        (good().header("ce_id", ""), "invalid_id"),
        (good().header_bytes("ce_type", Some(vec![0xff, 0xfe])), "invalid_type"),
        (good().without("ce_specversion"), "missing_specversion"),
        (CloudEvent::raw("orders").partition(0).payload("{}"), "missing_specversion"),
        (good().payload(oversized), "payload_too_large"),
        (good().payload(r#"{"order_id": "#), "malformed_payload"),
        (good().payload(r#"{"order_id": 7, "lines": []}"#), "malformed_payload"),
        (good().payload("[".repeat(MAX_PAYLOAD - 1)), "payload_too_deep"),
        (good().no_payload(), "malformed_payload"),
    ]
}

async fn setup<B: Backend>() -> (TestDb<B>, TestKafka) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    (db, kafka)
}

async fn run_until<B: Backend>(db: &TestDb<B>, inbox: Inbox<B::Conn>, position: i64) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let reached = wait_for_count(
        db,
        "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets",
        position,
        Duration::from_secs(20),
    )
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(reached, position, "the partition moved past every message");
}

async fn each_hostile_input_is_dead_lettered<B: Backend>(batch_size: usize) {
    let (db, kafka) = setup::<B>().await;
    let cases = hostile();
    let mut input = Vec::new();
    let mut goods = Vec::new();
    for (bad, _) in &cases {
        input.push(bad.clone());
        let g = good();
        goods.push(g.id().unwrap());
        input.push(g);
    }
    TestProducer::new(&kafka).send_all(&input).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("inventory")
        .batch_size(batch_size)
        .max_payload_bytes(MAX_PAYLOAD)
        .max_json_depth(32)
        .handle(RecordOrder { calls: calls.clone() })
        .build()
        .unwrap();
    run_until(&db, inbox, input.len() as i64).await;

    let dead = db.conn().await.dead_letters().await;
    let got: BTreeMap<i64, &str> = dead.iter().map(|d| (d.kafka_offset, d.reason.as_str())).collect();
    let want: BTreeMap<i64, &str> = cases.iter().enumerate().map(|(i, (_, reason))| (2 * i as i64, *reason)).collect();
    assert_eq!(got, want, "one dead letter per hostile message, with its reason");
    for d in &dead {
        assert!(!d.error.is_empty());
        let (bad, _) = &cases[(d.kafka_offset / 2) as usize];
        assert_eq!(d.message_id, bad.id(), "the id is kept whenever it is a valid UUID");
    }
    assert_eq!(AtomicUsize::load(&calls, Ordering::SeqCst), goods.len(), "no handler ran on hostile input");
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, goods.len() as i64);
    for id in goods {
        assert_eq!(
            db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await,
            1,
            "the good message after each hostile one was handled"
        );
    }
}

async fn each_hostile_input_is_dead_lettered_batch_mode<B: Backend>() {
    each_hostile_input_is_dead_lettered::<B>(100).await;
}

async fn each_hostile_input_is_dead_lettered_one_message_mode<B: Backend>() {
    each_hostile_input_is_dead_lettered::<B>(1).await;
}

async fn unknown_types_can_be_skipped<B: Backend>() {
    let (db, kafka) = setup::<B>().await;
    let unknown = good().header("ce_type", "order.cancelled");
    let next = good();
    TestProducer::new(&kafka).send_all(&[unknown.clone(), next.clone()]).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("inventory")
        .unknown_types(UnknownTypePolicy::Skip)
        .handle(RecordOrder { calls: calls.clone() })
        .build()
        .unwrap();
    run_until(&db, inbox, 2).await;

    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
    let id = unknown.id().unwrap();
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM inbox_messages WHERE message_id = '{id}'")).await,
        1,
        "a skipped message is recorded as handled"
    );
    assert_eq!(AtomicUsize::load(&calls, Ordering::SeqCst), 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
}
