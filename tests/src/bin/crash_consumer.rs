//! Crash suite consumer: runs the inbox with a handler whose only effect is one row in
//! `crash_effects`, written through `cx.conn()`, until SIGTERM (a clean stop that must exit 0);
//! SIGKILL simply ends it.
//!
//! Configuration (environment): DATABASE_URL (with its application_name), KAFKA_BROKERS,
//! CRASH_RUN, CRASH_NAME, CRASH_GROUP, CRASH_SESSION_TIMEOUT_MS, CRASH_BATCH (default 100),
//! CRASH_KAFKA_DEBUG (librdkafka `debug`).

use std::time::Duration;

use diesel::sql_query;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use inbox::{Context, Handler, HandlerError, Inbox};
use tests::crash::{OrderPlaced, env_or, init_child_tracing, shutdown_on_sigterm};

struct RecordEffect {
    run: String,
    consumer: String,
}

#[inbox::async_trait]
impl Handler<OrderPlaced> for RecordEffect {
    async fn handle(&self, order: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
        if order.run != self.run {
            return Ok(()); // another run's record on a shared broker
        }
        let group = cx.group().to_owned();
        let id = cx.message_id();
        sql_query(
            "INSERT INTO crash_effects (consumer_group, message_id, order_id, key, seq, consumer) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind::<Text, _>(group)
        .bind::<SqlUuid, _>(id)
        .bind::<BigInt, _>(order.order_id)
        .bind::<Text, _>(&order.key)
        .bind::<BigInt, _>(order.seq)
        .bind::<Text, _>(&self.consumer)
        .execute(cx.conn())
        .await?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init_child_tracing();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS");
    let group: String = env_or("CRASH_GROUP", "crash".to_owned());
    let session_ms: u64 = env_or("CRASH_SESSION_TIMEOUT_MS", 6000);
    let handler = RecordEffect {
        run: env_or("CRASH_RUN", String::new()),
        consumer: format!("{}/{}", env_or("CRASH_NAME", "consumer".to_owned()), std::process::id()),
    };
    let shutdown = shutdown_on_sigterm();
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    let pool = Pool::builder()
        .max_size(6)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .await
        .expect("connection pool");
    let mut kafka = rdkafka::ClientConfig::new();
    kafka
        .set("bootstrap.servers", brokers)
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 5).to_string())
        // Kafka's committed offsets are only a hint; committing often exercises OffsetCommit faults.
        .set("auto.commit.interval.ms", "500");
    if let Ok(debug) = std::env::var("CRASH_KAFKA_DEBUG") {
        kafka.set("debug", debug);
    }
    Inbox::builder(pool, kafka)
        .group(group)
        .handle(handler)
        .batch_size(env_or("CRASH_BATCH", 100))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .expect("inbox")
        .run(shutdown)
        .await
        .expect("inbox run");
    tracing::info!("consumer exited cleanly");
}
