//! Retention: the background task deletes the group's dedup rows older than the dedup window,
//! in batches of `prune_batch_size`, and leaves recent rows and other groups' rows alone.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::{Backend, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

tests::backends!(dedup_rows_older_than_the_window_are_pruned,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    id: u32,
}

struct Ignore;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for Ignore {
    async fn handle(&self, _: OrderPlaced, _: &mut Context<'_, C>) -> Result<(), HandlerError> {
        Ok(())
    }
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

async fn insert_rows<B: Backend>(db: &TestDb<B>, group: &str, count: i64, age: Duration) {
    db.conn().await.insert_aged_dedup_rows(group, count, age).await;
}

async fn dedup_rows_older_than_the_window_are_pruned<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    insert_rows(&db, "inventory", 2_500, 3 * DAY).await;
    insert_rows(&db, "inventory", 10, DAY).await;
    insert_rows(&db, "billing", 5, 3 * DAY).await;

    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(2).await, tests::produce::inbox_kafka_config(&kafka))
        .group("inventory")
        .dedup_window(Duration::from_secs(2 * 24 * 60 * 60))
        .prune_interval(Duration::from_millis(100))
        .prune_batch_size(100)
        .handle(Ignore)
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let old = &format!(
        "SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = 'inventory' AND handled_at < {}",
        B::Conn::sql_ago(2 * DAY)
    );
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
