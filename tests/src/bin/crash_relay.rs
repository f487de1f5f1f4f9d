//! Crash suite relay: runs the outbox relay until SIGTERM (a clean stop that must exit 0);
//! SIGKILL simply ends it.
//!
//! Configuration (environment): DATABASE_URL (with its application_name), KAFKA_BROKERS,
//! CRASH_LEASE (the lease name shared by all relays), CRASH_BATCH (rows per batch, default 100),
//! CRASH_KEEP_SENT=1 (keep sent rows instead of deleting them), CRASH_KAFKA_DEBUG (librdkafka `debug`),
//! CRASH_RELAY_KAFKA (extra producer properties, `key=value,key=value`).

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use outbox::KafkaConfig;
use outbox::relay::{AfterSend, Relay};
use tests::crash::{env_or, init_child_tracing, shutdown_on_sigterm};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init_child_tracing();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS");
    let shutdown = shutdown_on_sigterm();
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    let pool = Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .await
        .expect("connection pool");
    // Short lease and polls so a killed relay is replaced quickly; attempts high enough that
    // the injected faults never park a message (parking has suites of its own).
    let mut kafka = KafkaConfig::new(brokers);
    if let Ok(debug) = std::env::var("CRASH_KAFKA_DEBUG") {
        kafka = kafka.set("debug", debug);
    }
    for (k, v) in std::env::var("CRASH_RELAY_KAFKA").unwrap_or_default().split(',').filter_map(|p| p.split_once('=')) {
        kafka = kafka.set(k.trim(), v.trim());
    }
    let relay = Relay::builder(pool, kafka)
        .name(env_or("CRASH_LEASE", "crash".to_owned()))
        .batch_size(env_or("CRASH_BATCH", 100))
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(50), Duration::from_secs(1))
        .max_attempts(1000)
        .shutdown_timeout(Duration::from_secs(5))
        .metrics_interval(Duration::from_secs(1))
        .source("/crash-suite")
        .after_send(if env_or("CRASH_KEEP_SENT", 0u8) == 1 {
            AfterSend::Keep { retention: Duration::from_secs(24 * 3600) }
        } else {
            AfterSend::Delete
        })
        .build()
        .expect("relay");
    relay.run(shutdown).await.expect("relay run");
    tracing::info!("relay exited cleanly");
}
