//! A stored position is a position in one log: one topic partition of one cluster. Reusing the
//! database with another log — a new cluster (the embedded mock cluster after a restart, a
//! migration), a topic deleted and recreated — whose new log has already grown past the stored
//! offset must not skip the new log's first messages: the inbox notices the log changed and
//! starts at its beginning, and dedup absorbs whatever was handled already. With no stored
//! position at all (a restored database), it starts at the beginning too, whatever offset the
//! group committed to Kafka.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::run_until_positions;
use tests::produce::{CloudEvent, TestProducer};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(
    a_new_cluster_under_the_same_database_skips_nothing,
    a_recreated_topic_skips_nothing,
    no_stored_position_starts_at_the_beginning_not_at_the_committed_offset,
);

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
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        Ok(())
    }
}

fn inbox<B: Backend>(pool: bb8::Pool<B::Manager>, kafka: &TestKafka) -> Inbox<B::Conn> {
    let cfg = tests::produce::inbox_kafka_config(kafka);
    Inbox::builder(pool, &cfg).group("inventory").handle(RecordOrder).build().unwrap()
}

async fn produce(kafka: &TestKafka, n: usize) -> Vec<Uuid> {
    let events: Vec<CloudEvent> =
        (0..n).map(|_| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7() }).partition(0)).collect();
    TestProducer::new(kafka).send_all(&events).await;
    events.iter().map(|e| e.id().unwrap()).collect()
}

async fn cluster() -> TestKafka {
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    kafka
}

/// Consumes the first life's log (5 messages) from `first`, then a second log of 8 messages.
/// Returns the effects counted after the second run.
async fn two_lives<B: Backend>(db: &TestDb<B>, first: &TestKafka, second: &TestKafka, same_cluster_id: bool) {
    let old = produce(first, 5).await;
    let reached =
        run_until_positions(db, vec![(inbox::<B>(db.pool(4).await, first), 5)], Duration::from_secs(20)).await;
    assert_eq!(reached, [5]);
    if same_cluster_id {
        // The topic was recreated on the same cluster: the stored identity names this cluster.
        let id = second.cluster_id().await;
        db.exec(&format!("UPDATE inbox_offsets SET cluster_id = '{id}'")).await;
    }
    let new = produce(second, 8).await;
    // The second life must handle all 8 new messages; it stores position 8 in the new log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(inbox::<B>(db.pool(4).await, second).run(shutdown.clone()));
    let mut handled = 0;
    while tokio::time::Instant::now() < deadline {
        handled = db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await;
        let position = db.count("SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets").await;
        if handled >= 13 && position == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let missing: Vec<Uuid> = {
        let mut m = Vec::new();
        for id in &new {
            if db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await != 1 {
                m.push(*id);
            }
        }
        m
    };
    assert!(missing.is_empty(), "messages of the new log skipped: {} of 8 ({handled} handled in all)", missing.len());
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, (old.len() + new.len()) as i64, "each once");
    assert_eq!(
        db.count("SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets").await,
        8,
        "position in the new log"
    );
}

async fn a_new_cluster_under_the_same_database_skips_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    db.create_effects().await;
    // Both clusters stay alive, so the second cannot reuse the first's address-derived id.
    let (a, b) = (cluster().await, cluster().await);
    two_lives(&db, &a, &b, false).await;
}

async fn a_recreated_topic_skips_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    db.create_effects().await;
    // librdkafka's mock cluster cannot delete a topic; a second cluster whose id the stored
    // position is rewritten to is the same thing seen from the consumer: same cluster id,
    // same topic name, a different log.
    let (a, b) = (cluster().await, cluster().await);
    two_lives(&db, &a, &b, true).await;
}

async fn no_stored_position_starts_at_the_beginning_not_at_the_committed_offset<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    db.create_effects().await;
    let kafka = cluster().await;
    let ids = produce(&kafka, 6).await;
    let reached =
        run_until_positions(&db, vec![(inbox::<B>(db.pool(4).await, &kafka), 6)], Duration::from_secs(20)).await;
    assert_eq!(reached, [6]);
    // A restore from a backup taken before any of it: the group's Kafka offset (6) survives.
    db.exec("DELETE FROM effects; DELETE FROM inbox_messages; DELETE FROM inbox_offsets").await;
    // 60 s: a real broker (tansu) can hold the group's rejoin for the previous member's session.
    let reached =
        run_until_positions(&db, vec![(inbox::<B>(db.pool(4).await, &kafka), 6)], Duration::from_secs(60)).await;
    assert_eq!(reached, [6], "the partition's position is stored again");
    for id in ids {
        assert_eq!(
            db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await,
            1,
            "every message is handled again after the restore"
        );
    }
}
