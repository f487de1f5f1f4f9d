//! Retention: the background task deletes the group's dedup rows older than the dedup window,
//! in batches of `prune_batch_size`, and leaves recent rows and other groups' rows alone.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::{TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    id: u32,
}

struct Ignore;

#[inbox::async_trait]
impl Handler<OrderPlaced> for Ignore {
    async fn handle(&self, _: OrderPlaced, _: &mut Context<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn insert_rows(db: &TestDb, group: &str, count: i64, age: &str) {
    diesel::sql_query(format!(
        "INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset, handled_at) \
         SELECT '{group}', gen_random_uuid(), 'orders', 0, g, now() - interval '{age}' \
         FROM generate_series(1, {count}) AS g"
    ))
    .execute(&mut db.conn().await)
    .await
    .unwrap();
}

#[tokio::test]
async fn dedup_rows_older_than_the_window_are_pruned() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    insert_rows(&db, "inventory", 2_500, "3 days").await;
    insert_rows(&db, "inventory", 10, "1 day").await;
    insert_rows(&db, "billing", 5, "3 days").await;

    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(2).await, kafka.brokers())
        .group("inventory")
        .dedup_window(Duration::from_secs(2 * 24 * 60 * 60))
        .prune_interval(Duration::from_millis(100))
        .prune_batch_size(100)
        .handle(Ignore)
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let old = "SELECT count(*) AS n FROM inbox_messages \
               WHERE consumer_group = 'inventory' AND handled_at < now() - interval '2 days'";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.count(old).await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(db.count(old).await, 0, "rows older than the window are gone");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = 'inventory'").await,
        10,
        "rows inside the window are kept"
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = 'billing'").await,
        5,
        "other groups are not touched"
    );
}
