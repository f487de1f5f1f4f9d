//! The quickstart: orders placed in transactions (some rolled back), published by the relay,
//! handled exactly once by an inventory consumer, with a duplicate and a hostile message
//! delivered on purpose. Zero setup by default (SQLite file + librdkafka's in-process mock
//! cluster); PostgreSQL and a real broker when `DATABASE_URL` / `KAFKA_BROKERS` are set.

// A demo's own data types and diesel `table!` modules: documented where it helps the reader.
#![allow(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use inbox::{Context, Handler, HandlerError, Inbox};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use outbox::embedded::EmbeddedKafka;
use outbox::relay::Relay;
use outbox::sqlite::SqliteConnection;
use outbox::{Database, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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

diesel::table! {
    quickstart_orders (id) {
        id -> Text,
        run_id -> Text,
        sku -> Text,
        quantity -> Integer,
    }
}

// No primary key on purpose: a message handled twice would show up as two rows.
diesel::table! {
    quickstart_reservations (order_id) {
        order_id -> Text,
        run_id -> Text,
        sku -> Text,
        quantity -> Integer,
    }
}

const CREATE_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS quickstart_orders \
     (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quickstart_reservations \
     (order_id TEXT NOT NULL, run_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL)",
];

/// Creates the application's tables (idempotent); the SDK's come from [`outbox::migrate`] and
/// [`inbox::migrate`].
pub async fn create_tables<C: Shop>(conn: &mut C) -> QueryResult<()> {
    for sql in CREATE_TABLES {
        diesel_async::SimpleAsyncConnection::batch_execute(conn, sql).await?;
    }
    Ok(())
}

/// The application's own SQL. Written once with diesel's DSL and implemented for both
/// connection types, so the same handler runs on PostgreSQL and SQLite.
#[async_trait::async_trait]
pub trait Shop: Database {
    async fn insert_order(&mut self, o: &OrderPlaced) -> QueryResult<()>;
    async fn reserve(&mut self, o: &OrderPlaced) -> QueryResult<()>;
    async fn reservations(&mut self, run_id: &str) -> QueryResult<Vec<String>>;
}

macro_rules! shop_for {
    ($($conn:ty),*) => {$(
        #[async_trait::async_trait]
        impl Shop for $conn {
            async fn insert_order(&mut self, o: &OrderPlaced) -> QueryResult<()> {
                diesel::insert_into(quickstart_orders::table)
                    .values((
                        quickstart_orders::id.eq(o.order_id.to_string()),
                        quickstart_orders::run_id.eq(&o.run_id),
                        quickstart_orders::sku.eq(&o.sku),
                        quickstart_orders::quantity.eq(o.quantity),
                    ))
                    .execute(self)
                    .await
                    .map(drop)
            }

            async fn reserve(&mut self, o: &OrderPlaced) -> QueryResult<()> {
                diesel::insert_into(quickstart_reservations::table)
                    .values((
                        quickstart_reservations::order_id.eq(o.order_id.to_string()),
                        quickstart_reservations::run_id.eq(&o.run_id),
                        quickstart_reservations::sku.eq(&o.sku),
                        quickstart_reservations::quantity.eq(o.quantity),
                    ))
                    .execute(self)
                    .await
                    .map(drop)
            }

            async fn reservations(&mut self, run_id: &str) -> QueryResult<Vec<String>> {
                quickstart_reservations::table
                    .filter(quickstart_reservations::run_id.eq(run_id))
                    .select(quickstart_reservations::order_id)
                    .load(self)
                    .await
            }
        }
    )*};
}
shop_for!(AsyncPgConnection, SqliteConnection);

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

/// What happened, counted from the database, the topic and the inbox's metrics.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub database: String,
    pub broker: String,
    pub committed: usize,
    pub rolled_back: usize,
    /// Distinct orders of this run found on the topic.
    pub published: usize,
    /// Reservation rows written by the handler for this run.
    pub handled: usize,
    /// Distinct orders among those rows (less than `handled` would be a double effect).
    pub handled_distinct: usize,
    /// Messages the inbox recognised as already handled.
    pub duplicates_skipped: u64,
    pub dead_lettered: u64,
    /// Rolled-back orders that reached the topic or the handler (must be 0).
    pub rolled_back_seen: usize,
    pub elapsed: Duration,
}

impl Report {
    /// The promises, checked: every committed order published and handled once, nothing from
    /// a rolled-back one, the deliberate duplicate skipped and the hostile message dead-lettered.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.published != self.committed {
            p.push(format!("published {} != committed {}", self.published, self.committed));
        }
        if self.handled != self.committed || self.handled_distinct != self.committed {
            p.push(format!(
                "handled {} ({} distinct) != committed {}",
                self.handled, self.handled_distinct, self.committed
            ));
        }
        if self.duplicates_skipped < 1 {
            p.push("the deliberate duplicate was not skipped".into());
        }
        if self.dead_lettered < 1 {
            p.push("the hostile message was not dead-lettered".into());
        }
        if self.rolled_back_seen > 0 {
            p.push(format!("{} rolled-back orders were seen", self.rolled_back_seen));
        }
        p
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "database          {}", self.database)?;
        writeln!(f, "broker            {}", self.broker)?;
        writeln!(f, "orders committed  {}", self.committed)?;
        writeln!(f, "orders rolled back {} (none of them may appear below)", self.rolled_back)?;
        writeln!(f, "published         {}   (distinct orders on the topic)", self.published)?;
        writeln!(f, "handled           {}   (reservation rows; {} distinct)", self.handled, self.handled_distinct)?;
        writeln!(f, "duplicates skipped {}  (one order delivered twice on purpose)", self.duplicates_skipped)?;
        writeln!(f, "dead-lettered     {}   (one hostile message on purpose)", self.dead_lettered)?;
        writeln!(f, "rolled back seen  {}", self.rolled_back_seen)?;
        write!(f, "took              {:.1} s", self.elapsed.as_secs_f64())
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

impl Report {
    fn with_database(mut self, d: &str) -> Self {
        self.database = d.to_owned();
        self
    }
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

/// The inbox reports through the `metrics` facade; the quickstart installs a recorder to read
/// its counters (an application would install Prometheus or similar instead).
fn metrics_snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _ = recorder.install(); // another recorder already installed: counters read 0
        snapshotter
    })
}

/// (duplicates skipped, dead-lettered) counted by the inbox for `group`.
fn counters(group: &str) -> (u64, u64) {
    let mut duplicates = 0;
    let mut dead = 0;
    for (key, _, _, value) in metrics_snapshotter().snapshot().into_vec() {
        let key = key.key();
        if !key.labels().any(|l| l.key() == "group" && l.value() == group) {
            continue;
        }
        if let DebugValue::Counter(n) = value {
            match key.name() {
                inbox::metrics::DUPLICATES_TOTAL => duplicates += n,
                inbox::metrics::DEAD_LETTERED_TOTAL => dead += n,
                _ => {}
            }
        }
    }
    (duplicates, dead)
}

struct RunRecord {
    order_id: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads the topic from the beginning and keeps this run's records, until `expected` distinct
/// orders were seen or `timeout` passed.
async fn read_run(brokers: &str, run_id: &str, expected: usize, timeout: Duration) -> Result<Vec<RunRecord>, BoxError> {
    let brokers = brokers.to_owned();
    let run_id = run_id.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<RunRecord>, BoxError> {
        // Every partition from its beginning, assigned rather than subscribed: a one-off read
        // joins no consumer group (a group join takes seconds on some brokers) and commits
        // nothing. librdkafka still wants a group id for an assignment.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "quickstart-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
        let mut partitions = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions.add_partition_offset(TOPIC, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&partitions)?;
        let mut out: HashMap<String, RunRecord> = HashMap::new();
        let deadline = Instant::now() + timeout;
        while out.len() < expected && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let Some(payload) = m.payload() else { continue };
            let Ok(order) = serde_json::from_slice::<OrderPlaced>(payload) else { continue };
            if order.run_id != run_id {
                continue;
            }
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            let id = order.order_id.to_string();
            out.insert(
                id.clone(),
                RunRecord {
                    order_id: id,
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: payload.to_vec(),
                    headers,
                },
            );
        }
        Ok(out.into_values().collect())
    })
    .await?
}

async fn create_topic(brokers: &str) -> Result<(), BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics = [NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1))];
    // An existing topic is fine; other failures show up when the relay produces.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await?;
    Ok(())
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
