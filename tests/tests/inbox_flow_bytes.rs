//! Flow control bounds bytes, not only messages: ~1 MiB records on a partition whose handler
//! is stalled never make the inbox hold more than `max_buffered_bytes` for that partition (its
//! queue plus the batch in hand), and every record is handled once the handler is released.
//! Read from the inbox's buffer high-water mark, not from timings.
//!
//! librdkafka's mock cluster keeps at most 5 MiB per partition log (older records are deleted),
//! so the log holds 5 records of 900 kB and the bound is 2 MiB: without the byte bound the
//! stalled partition would buffer all 4.5 MB.

use std::sync::Arc;
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::run_until_positions;
use tests::produce::{CloudEvent, TestProducer};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio::sync::Semaphore;
use uuid::Uuid;

tests::backends!(large_records_on_a_stalled_partition_stay_within_the_byte_bound,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "blobs", name = "blob.stored")]
struct BlobStored {
    #[event(key)]
    blob_id: Uuid,
    data: String,
}

/// Stalls until the test adds a permit, then handles everything.
struct Stalled {
    gate: Arc<Semaphore>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<BlobStored, C> for Stalled {
    async fn handle(&self, _: BlobStored, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        drop(self.gate.acquire().await.map_err(HandlerError::permanent)?);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        Ok(())
    }
}

const RECORDS: usize = 5;
const RECORD_BYTES: usize = 900_000; // under the producer's default message.max.bytes (1,000,000)
const BOUND: usize = 2 * 1024 * 1024;

async fn large_records_on_a_stalled_partition_stay_within_the_byte_bound<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("blobs", 1).await;
    db.create_effects().await;
    let events: Vec<CloudEvent> = (0..RECORDS)
        .map(|_| CloudEvent::of(&BlobStored { blob_id: Uuid::now_v7(), data: "x".repeat(RECORD_BYTES) }).partition(0))
        .collect();
    TestProducer::new(&kafka).send_all(&events).await;

    let gate = Arc::new(Semaphore::new(0));
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("blobs")
        .max_payload_bytes(2 * RECORD_BYTES)
        .max_buffered_bytes(BOUND)
        .handle(Stalled { gate: gate.clone() })
        .build()
        .unwrap();
    let watermark = inbox.buffer_watermark();
    // While the handler is stalled the partition fills its budget; release the handler once it
    // has (or after a guard deadline: the bound is checked on the high-water mark either way).
    let release = {
        let watermark = watermark.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while watermark.bytes() < 2 * RECORD_BYTES && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let filled = watermark.bytes();
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
            filled
        })
    };
    let reached = run_until_positions(&db, vec![(inbox, RECORDS as i64)], Duration::from_secs(60)).await;
    let filled = release.await.unwrap();
    let high = watermark.bytes();
    println!("buffered while stalled: {filled} bytes; high-water mark {high} bytes; bound {BOUND} bytes");
    assert!(filled >= 2 * RECORD_BYTES, "the stalled partition buffered up to its budget ({filled} bytes)");
    assert!(high <= BOUND, "the partition held {high} bytes, over the bound of {BOUND}");
    assert_eq!(reached, [RECORDS as i64], "every record was handled after the stall");
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, RECORDS as i64);
}
