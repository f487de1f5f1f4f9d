//! The quickstart: orders placed in transactions (some rolled back), published by the relay,
//! handled exactly once by an inventory consumer, with a duplicate and a hostile message
//! delivered on purpose. Zero setup by default (SQLite file + librdkafka's in-process mock
//! cluster); PostgreSQL and a real broker when `DATABASE_URL` / `KAFKA_BROKERS` are set.
//!
//! This module is the tour: the event, the handler, the options and the flow ([`run`], then
//! `flow`, step by step). The application's tables and SQL are in `shop`, the [`Report`] and
//! its checks in `report`, the Kafka helpers (reading the run back, creating the topic) in
//! `kafka`, the inbox's counters in `metrics`.

// A demo's own data types and diesel `table!` modules: documented where it helps the reader.
#![allow(missing_docs)]

mod kafka;
mod metrics;
mod report;
mod shop;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::KafkaConfig;
use outbox::embedded::EmbeddedKafka;
use outbox::relay::Relay;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use kafka::{RunRecord, create_topic, read_run};
use metrics::{counters, metrics_snapshotter};
pub use report::Report;
pub use shop::{Shop, create_tables, quickstart_orders, quickstart_reservations};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The event: a plain struct; the derive gives it a topic, a name, a version and a key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "quickstart.orders", name = "order.placed", version = 1)]
pub struct OrderPlaced {
    #[event(key)]
    pub order_id: Uuid,
    pub run_id: String,
    pub sku: String,
    pub quantity: i32,
}

const TOPIC: &str = <OrderPlaced as outbox::Event>::TOPIC;

/// The inventory consumer's handler: its write commits in the inbox transaction, together
/// with the message's dedup row, so a redelivered order reserves stock once.
pub struct ReserveStock;

#[inbox::async_trait]
impl<C: Shop> Handler<OrderPlaced, C> for ReserveStock {
    async fn handle(&self, order: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        cx.conn().reserve(&order).await?;
        Ok(())
    }
}

/// Where to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `postgres://...` for PostgreSQL; `sqlite://path` or unset for a SQLite file in a
    /// temporary directory.
    pub database_url: Option<String>,
    /// A real Kafka cluster; unset: librdkafka's in-process mock cluster.
    pub kafka_brokers: Option<String>,
    /// Orders to place (every fourth one is rolled back).
    pub orders: usize,
}

impl Options {
    /// From `DATABASE_URL` and `KAFKA_BROKERS` (empty counts as unset), 20 orders.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        Options { database_url: var("DATABASE_URL"), kafka_brokers: var("KAFKA_BROKERS"), orders: 20 }
    }
}

/// Runs the whole flow once and reports what happened.
pub async fn run(options: Options) -> Result<Report, BoxError> {
    let started = Instant::now();
    metrics_snapshotter(); // the recorder must be installed before the inbox reports
    let run_id = Uuid::now_v7().simple().to_string();
    let mut embedded = None;
    let (brokers, broker) = match &options.kafka_brokers {
        Some(b) => (b.clone(), format!("Kafka at {b}")),
        None => {
            // librdkafka's in-process mock cluster; the topic the event type names.
            let kafka = EmbeddedKafka::with_brokers(1)?;
            kafka.create_topic_for::<OrderPlaced>(3)?;
            let b = kafka.bootstrap_servers().to_owned();
            embedded = Some(kafka);
            (b, "outbox::embedded::EmbeddedKafka (librdkafka's in-process mock cluster)".to_owned())
        }
    };
    if embedded.is_none() {
        create_topic(&brokers).await?;
    }
    let report = match options.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
            // LIFO: the relay and the inbox get back the connection they just used (docs/relay.md, "Pools").
            let pool = bb8::Pool::builder().max_size(8).queue_strategy(bb8::QueueStrategy::Lifo).build(manager).await?;
            let mut conn = AsyncPgConnection::establish(url).await?;
            flow(&mut conn, pool, &brokers, &run_id, &options).await?.with_database("PostgreSQL")
        }
        url => {
            let (path, _dir) = match url {
                Some(u) => (u.to_owned(), None),
                None => {
                    let dir = TempDir::new(&run_id)?;
                    (dir.0.join("quickstart.db").display().to_string(), Some(dir))
                }
            };
            let pool = outbox::sqlite::pool(&path, 4).await?;
            let mut conn = outbox::sqlite::connect(&path).await?;
            flow(&mut conn, pool, &brokers, &run_id, &options).await?.with_database(&format!("SQLite file {path}"))
        }
    };
    drop(embedded); // the in-process broker lives until the flow is done
    Ok(Report { broker, elapsed: started.elapsed(), ..report })
}

async fn flow<C, M>(
    conn: &mut C,
    pool: bb8::Pool<M>,
    brokers: &str,
    run_id: &str,
    options: &Options,
) -> Result<Report, BoxError>
where
    C: Shop,
    M: bb8::ManageConnection<Connection = C>,
    M::Error: std::error::Error,
{
    // 1. Schema: the SDK's tables, then the application's.
    outbox::migrate(conn).await?;
    inbox::migrate(conn).await?;
    create_tables(conn).await?;
    let group = format!("quickstart-inventory-{run_id}");

    // 2. The relay (publishes the outbox) and the inventory consumer, until `shutdown`.
    let shutdown = CancellationToken::new();
    let relay = Relay::builder(pool.clone(), KafkaConfig::new(brokers)).build()?;
    let inbox = Inbox::builder(pool, brokers).group(&group).handle(ReserveStock).build()?;
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let inbox_task = tokio::spawn(inbox.run(shutdown.clone()));

    // 3. Orders: the order row and its event in one transaction; every fourth is rolled back
    //    after publishing, so its event must never leave the database.
    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for i in 0..options.orders {
        let order = OrderPlaced {
            order_id: Uuid::now_v7(),
            run_id: run_id.to_owned(),
            sku: format!("sku-{}", i % 3),
            quantity: 1 + (i % 4) as i32,
        };
        let roll_back = i % 4 == 3;
        // `outbox::transaction` is diesel's `transaction` plus a wake-up of the relay after COMMIT.
        let result = outbox::transaction(conn, async |tx| {
            tx.insert_order(&order).await?;
            outbox::publish(tx, &order).await?;
            if roll_back { Err(diesel::result::Error::RollbackTransaction) } else { Ok(()) }
        })
        .await;
        match result {
            Ok(()) => committed.insert(order.order_id.to_string()),
            Err(diesel::result::Error::RollbackTransaction) => rolled_back.insert(order.order_id.to_string()),
            Err(e) => return Err(e.into()),
        };
    }

    // 4. Wait until the consumer has handled every committed order.
    let deadline = Instant::now() + Duration::from_secs(60);
    while conn.reservations(run_id).await?.len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 5. What reached the topic; then deliver one of those records a second time, as a
    //    producer retry or a replay would, and one hostile message (valid id, broken payload).
    let records = read_run(brokers, run_id, committed.len(), Duration::from_secs(30)).await?;
    let published: HashSet<&str> = records.iter().map(|r| r.order_id.as_str()).collect();
    let rolled_back_on_topic = published.iter().filter(|id| rolled_back.contains(**id)).count();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    if let Some(again) = <[RunRecord]>::first(&records) {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &again.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
        }
        let record = FutureRecord::to(TOPIC).key(&again.key).payload(&again.payload).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let hostile_id = Uuid::now_v7().to_string();
    let hostile = OwnedHeaders::new()
        .insert(Header { key: "ce_specversion", value: Some("1.0") })
        .insert(Header { key: "ce_id", value: Some(hostile_id.as_str()) })
        .insert(Header { key: "ce_type", value: Some("order.placed") })
        .insert(Header { key: "ce_source", value: Some("quickstart") })
        .insert(Header { key: "content-type", value: Some("application/json") });
    let record = FutureRecord::to(TOPIC).key("hostile").payload("{\"order_id\": 42").headers(hostile);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;

    // 6. Wait for the consumer to skip the duplicate and dead-letter the hostile message.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut duplicates, mut dead) = counters(&group);
    while (duplicates < 1 || dead < 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (duplicates, dead) = counters(&group);
    }

    shutdown.cancel();
    relay_task.await??;
    inbox_task.await??;

    let handled = conn.reservations(run_id).await?;
    let distinct: HashSet<&String> = handled.iter().collect();
    let rolled_back_handled = handled.iter().filter(|id| rolled_back.contains(*id)).count();
    Ok(Report {
        committed: committed.len(),
        rolled_back: rolled_back.len(),
        published: published.len(),
        handled: handled.len(),
        handled_distinct: distinct.len(),
        duplicates_skipped: duplicates,
        dead_lettered: dead,
        rolled_back_seen: rolled_back_on_topic + rolled_back_handled,
        ..Report::default()
    })
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("outbox-quickstart-{name}"));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
