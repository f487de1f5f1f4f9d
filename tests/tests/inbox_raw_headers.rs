//! Header bytes a producer may legally send but text columns and rdkafka's header API do not
//! take: a 0x00 in a header value, a ce_type or a correlation id (PostgreSQL's text and jsonb
//! refuse it), and a header key that is not UTF-8 (rdkafka's `Headers::iter` panics on it).
//! Each such record is dead-lettered with its raw headers stored byte for byte, or handled with
//! the invalid id left out of what it publishes; the partition never stops and nothing panics.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::{decode_raw_headers, raw_dead_letters, run_until_positions};
use tests::produce::{CloudEvent, TestProducer};
use tests::raw::RawRecord;
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(
    zero_bytes_in_dead_lettered_headers_do_not_block_the_partition,
    a_zero_byte_correlation_id_is_not_copied_into_the_outbox,
    a_header_key_that_is_not_utf8_is_dead_lettered,
);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "stock", name = "stock.reserved")]
struct StockReserved {
    #[event(key)]
    order_id: Uuid,
}

struct Reserve;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for Reserve {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        cx.publish(&StockReserved { order_id: e.order_id }).await?;
        Ok(())
    }
}

fn good() -> CloudEvent {
    CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7() }).partition(0)
}

async fn setup<B: Backend>() -> (TestDb<B>, TestKafka, TestProducer) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    let producer = TestProducer::new(&kafka);
    (db, kafka, producer)
}

fn inbox<B: Backend>(pool: bb8::Pool<B::Manager>, kafka: &TestKafka) -> Inbox<B::Conn> {
    Inbox::builder(pool, tests::produce::inbox_kafka_config(kafka))
        .group("inventory")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_attempts(2)
        .handle(Reserve)
        .build()
        .unwrap()
}

/// Produces `records`, runs the inbox until its position reaches the end, and checks every
/// record is accounted for; returns the dead letters.
async fn consume<B: Backend>(
    db: &TestDb<B>,
    kafka: &TestKafka,
    producer: &TestProducer,
    records: &[RawRecord],
) -> Vec<tests::inbox_support::RawDeadLetter> {
    for r in records {
        producer.send_raw(r).await;
    }
    let reached = run_until_positions(
        db,
        vec![(inbox::<B>(db.pool(4).await, kafka), records.len() as i64)],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(reached, [records.len() as i64], "the partition moved past every record");
    raw_dead_letters(db, "inventory").await
}

fn assert_stored_exactly(dead: &tests::inbox_support::RawDeadLetter, record: &RawRecord) {
    assert_eq!(dead.key, record.key, "key");
    assert_eq!(dead.payload, record.payload, "payload");
    let raw = dead.raw_headers.as_deref().expect("raw headers are stored");
    assert_eq!(decode_raw_headers(raw).as_ref(), Some(&record.headers), "raw headers, byte for byte");
    assert!(!dead.error.contains('\0') && !dead.reason.contains('\0'), "no NUL in text: {dead:?}");
}

async fn zero_bytes_in_dead_lettered_headers_do_not_block_the_partition<B: Backend>() {
    let (db, kafka, producer) = setup::<B>().await;
    let unknown = RawRecord::from_event(&good().header("ce_type", "order\0placed").header("tenant", "a\0b"), 0);
    let bad_id = RawRecord::from_event(&good().header("ce_id", "\0").header_bytes("trace", Some(vec![0, 0xff, 0])), 0);
    let ok = RawRecord::from_event(&good(), 0);
    let records = [unknown.clone(), bad_id.clone(), ok];
    let dead = consume(&db, &kafka, &producer, &records).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!((dead[0].kafka_offset, dead[0].reason.as_str()), (0, "unknown_type"));
    assert_eq!((dead[1].kafka_offset, dead[1].reason.as_str()), (1, "invalid_id"));
    assert!(dead[0].error.contains("order\\u{0}placed"), "the quoted type is escaped: {}", dead[0].error);
    assert_stored_exactly(&dead[0], &unknown);
    assert_stored_exactly(&dead[1], &bad_id);
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1, "the good record was handled");
}

async fn a_zero_byte_correlation_id_is_not_copied_into_the_outbox<B: Backend>() {
    let (db, kafka, producer) = setup::<B>().await;
    let input = good().header("ce_correlationid", "checkout\0-42").header("traceparent", "00-\u{1}-x");
    let id = input.id().unwrap();
    let dead = consume(&db, &kafka, &producer, &[RawRecord::from_event(&input, 0)]).await;
    assert!(dead.is_empty(), "handled, not dead-lettered: {dead:?}");
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
    let follow_ups = db.conn().await.follow_ups(&id.to_string()).await;
    assert_eq!(follow_ups.len(), 1, "one follow-up: {follow_ups:?}");
    let headers = &follow_ups[0].2;
    assert_eq!(
        headers["ce_correlationid"],
        id.to_string(),
        "the invalid correlation id was replaced by the input's id"
    );
    assert!(headers.get("traceparent").is_none(), "the invalid traceparent was dropped: {headers}");
}

async fn a_header_key_that_is_not_utf8_is_dead_lettered<B: Backend>() {
    let (db, kafka, producer) = setup::<B>().await;
    let mut bad = RawRecord::from_event(&good(), 0);
    bad.headers.push((vec![0xff, 0xfe, b'k'], Some(b"v".to_vec())));
    let ok = RawRecord::from_event(&good(), 0);
    let dead = consume(&db, &kafka, &producer, &[bad.clone(), ok]).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "malformed_headers");
    assert!(dead[0].error.contains("\\xFF\\xFEk"), "the key is named, escaped: {}", dead[0].error);
    let bad_id = bad.headers.iter().find(|(k, _)| k == b"ce_id").and_then(|(_, v)| v.clone()).unwrap();
    assert_eq!(dead[0].message_id.as_deref().map(str::as_bytes), Some(bad_id.as_slice()), "the valid ce_id is kept");
    assert_stored_exactly(&dead[0], &bad);
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1, "the good record was handled");
}

/// `inbox::ops::list_dead_letters` (and so `outbox dead-letters list`) shows the raw headers
/// decoded and escaped, in order, duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_listing_shows_raw_headers_escaped() {
    let db = TestDb::<tests::Pg>::fresh().await;
    let raw = outbox::raw_headers::encode([
        (&b"ce_id"[..], Some(&b"a\0b"[..])),
        (&[0xff, b'k'][..], None),
        (&b"ce_id"[..], Some(&b"2"[..])),
    ]);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    db.exec(&format!(
        "INSERT INTO inbox_dead_letters (consumer_group, topic, kafka_partition, kafka_offset, reason, error, \
         attempts, raw_headers) VALUES ('g', 'orders', 0, 1, 'invalid_id', 'x', 0, '\\x{hex}'::bytea)"
    ))
    .await;
    let listed = inbox::ops::list_dead_letters(&mut db.conn().await, Some("g"), 10).await.unwrap();
    let headers = &listed[0].headers;
    let want = [("ce_id", Some("a\\u{0}b")), ("\\xFFk", None), ("ce_id", Some("2"))];
    let want: Vec<(String, Option<String>)> =
        want.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect();
    assert_eq!(headers.0, want);
    assert_eq!(headers.to_string(), "ce_id=a\\u{0}b, \\xFFk, ce_id=2");
}
