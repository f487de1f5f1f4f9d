//! A test harness for your handlers (feature `testing`): a database, an in-process Kafka
//! cluster, the relay and your inboxes running, and ways to wait for and look at what they did.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize}; use schemars::JsonSchema;
//! # use inbox::{Context, Handler, HandlerError};
//! # #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
//! # #[event(topic = "orders", name = "order.placed")]
//! # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid }
//! # struct Reserve;
//! # #[inbox::async_trait]
//! # impl Handler<OrderPlaced, outbox::sqlite::SqliteConnection> for Reserve {
//! #     async fn handle(&self, _: OrderPlaced, _: &mut Context<'_, outbox::sqlite::SqliteConnection>)
//! #         -> Result<(), HandlerError> { Ok(()) }
//! # }
//! # async fn test() -> Result<(), inbox::Error> {
//! use std::time::Duration;
//! use inbox::testing::Harness;
//!
//! let mut h = Harness::sqlite().await?; // a new SQLite file, migrated; an embedded Kafka cluster
//! h.create_topic::<OrderPlaced>(3)?;
//! h.start(h.inbox_builder().group("inventory").handle(Reserve).build()?)?; // and the relay
//! let id = h.publish(&OrderPlaced { order_id: uuid::Uuid::now_v7() }).await?;
//! h.until_handled("inventory", 1, Duration::from_secs(30)).await?;
//! h.redeliver(id).await?; // the same record once more: a duplicate delivery
//! h.until_quiet(Duration::from_secs(30)).await?;
//! assert!(h.dead_letters("inventory").await?.is_empty());
//! h.shutdown().await
//! # }
//! ```
//!
//! What it runs: the SDK itself, unchanged — the writer, one [`Relay`], and each inbox you
//! [`start`](Harness::start), against a real database (a fresh SQLite file, or the PostgreSQL
//! database you name) and librdkafka's mock cluster ([`EmbeddedKafka`]). The waits poll the
//! SDK's own tables (dedup rows, stored positions, the outbox) until a condition holds or the
//! deadline passes, and return at once with its error if the relay or an inbox stopped.
//!
//! Not `Send` (the embedded cluster is not): keep the harness in the test's body.

mod kafka;
mod store;
mod waits;

pub use store::{DeadLetter, Store};

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use outbox::embedded::EmbeddedKafka;
use outbox::relay::Relay;
use outbox::{ErrorKind, Event, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Error, Inbox, InboxBuilder};

use kafka::find_record;

/// The pool type the harness hands out: diesel-async's bb8 pool of `C`.
pub type Pool<C> = bb8::Pool<<C as Store>::Manager>;

/// How long one Kafka request of the harness may take (metadata, watermarks, a produce).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK running against a database and an in-process Kafka cluster. See the
/// [module docs](self).
pub struct Harness<C: Store> {
    kafka: EmbeddedKafka,
    pool: Pool<C>,
    stop: CancellationToken,
    relay: Option<JoinHandle<outbox::Result<()>>>,
    inboxes: Vec<Running>,
    producer: Option<FutureProducer>,
    // Dropped last: the SQLite file lives in it.
    _dir: Option<tempfile::TempDir>,
}

struct Running {
    group: String,
    topics: Vec<&'static str>,
    task: JoinHandle<Result<(), Error>>,
}

impl<C: Store> std::fmt::Debug for Harness<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("kafka", &self.kafka)
            .field("groups", &self.inboxes.iter().map(|r| &r.group).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "sqlite")]
impl Harness<outbox::sqlite::SqliteConnection> {
    /// A harness on a new SQLite database in a temporary directory (removed when the harness is
    /// dropped), migrated, with an embedded Kafka cluster.
    pub async fn sqlite() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("inbox-harness-")
            .tempdir()
            .map_err(|e| fail(ErrorKind::Database, "harness: cannot create a temporary directory", e))?;
        let path = dir.path().join("harness.db");
        let url =
            path.to_str().ok_or_else(|| plain(ErrorKind::Config, "harness: the temporary directory is not UTF-8"))?;
        let pool = outbox::sqlite::pool(url, 8).await?;
        let mut harness = Self::with_pool(pool).await?;
        harness._dir = Some(dir);
        Ok(harness)
    }
}

impl Harness<AsyncPgConnection> {
    /// A harness on the PostgreSQL database at `url`, migrated (give each test a database of
    /// its own, or tables will hold other tests' rows), with an embedded Kafka cluster.
    pub async fn postgres(url: &str) -> Result<Self, Error> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = bb8::Pool::builder()
            .max_size(8)
            .build(manager)
            .await
            .map_err(|e| fail(ErrorKind::Database, "harness: cannot open the database pool", e))?;
        Self::with_pool(pool).await
    }
}

impl<C: Store> Harness<C> {
    /// A harness on `pool`'s database (migrated here), with an embedded Kafka cluster.
    pub async fn with_pool(pool: Pool<C>) -> Result<Self, Error> {
        {
            let mut conn = pool.get().await.map_err(pool_error)?;
            outbox::migrate(&mut *conn).await?;
            crate::migrate(&mut *conn).await?;
        }
        Ok(Self {
            kafka: EmbeddedKafka::start()?,
            pool,
            stop: CancellationToken::new(),
            relay: None,
            inboxes: Vec::new(),
            producer: None,
            _dir: None,
        })
    }

    /// The database pool: set up your tables, read your handlers' effects.
    pub fn pool(&self) -> Pool<C> {
        self.pool.clone()
    }

    /// The Kafka cluster: its address, more topics, fault injection ([`EmbeddedKafka::mock`]).
    pub fn kafka(&self) -> &EmbeddedKafka {
        &self.kafka
    }

    /// Creates the topic of `E` with `partitions` partitions.
    pub fn create_topic<E: Event>(&self, partitions: i32) -> Result<(), Error> {
        self.kafka.create_topic_for::<E>(partitions)
    }

    /// An inbox builder on the harness's pool and cluster, with a consumer session short
    /// enough for tests (the mock cluster holds a group's first join for the session timeout
    /// less a second). Add the group and handlers, build, and [`start`](Self::start) it.
    pub fn inbox_builder(&self) -> InboxBuilder<C> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.kafka.bootstrap_servers())
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
        Inbox::builder(self.pool.clone(), &cfg)
    }

    /// Runs `inbox` until [`shutdown`](Self::shutdown), and the relay if it is not running yet.
    pub fn start(&mut self, inbox: Inbox<C>) -> Result<(), Error> {
        self.start_relay()?;
        let group = inbox.group().to_owned();
        let topics = inbox.topics();
        let task = tokio::spawn(inbox.run(self.stop.child_token()));
        self.inboxes.push(Running { group, topics, task });
        Ok(())
    }

    /// Starts the relay (once; [`start`](Self::start) does it too), publishing from the
    /// harness's outbox to its cluster.
    pub fn start_relay(&mut self) -> Result<(), Error> {
        if self.relay.is_none() {
            let relay = Relay::builder(self.pool.clone(), self.kafka_config()).build()?;
            self.relay = Some(tokio::spawn(relay.run(self.stop.child_token())));
        }
        Ok(())
    }

    /// The relay's Kafka settings for this cluster.
    pub fn kafka_config(&self) -> KafkaConfig {
        self.kafka.kafka_config()
    }

    /// Publishes `event` in a transaction of its own ([`outbox::transaction`]); returns its
    /// message id. To publish together with your own changes, run `outbox::transaction` on a
    /// connection from [`pool`](Self::pool).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, Error> {
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        outbox::transaction(&mut *conn, async |tx| outbox::publish(tx, event).await).await
    }

    /// Produces a record straight to `topic`, bypassing the outbox: hostile or foreign input
    /// (any bytes, any headers, none of the SDK's). Returns its partition and offset.
    pub async fn deliver_raw(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<(i32, i64), Error> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            owned = owned.insert(Header { key: k, value: *v });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(owned);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        let producer = self.producer()?;
        let delivery = producer
            .send(record, KAFKA_TIMEOUT)
            .await
            .map_err(|(e, _)| fail(ErrorKind::Kafka, format!("harness: cannot produce to `{topic}`: {e}"), e))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Produces the record of message `id` once more, as it is on its topic (key, payload and
    /// every header): a duplicate delivery, as a producer retry or a replay would make one.
    /// Fails when no record on the topics of the started inboxes carries that id.
    pub async fn redeliver(&mut self, id: Uuid) -> Result<(i32, i64), Error> {
        let topics: Vec<&'static str> = self.topics();
        let brokers = self.kafka.bootstrap_servers().to_owned();
        let wanted = id.to_string();
        let found = tokio::task::spawn_blocking(move || find_record(&brokers, &topics, &wanted))
            .await
            .map_err(|e| fail(ErrorKind::Kafka, "harness: the record search panicked", e))??;
        let Some((topic, key, payload, headers)) = found else {
            return Err(plain(ErrorKind::Config, format!("harness: no record with ce_id {id} on the inboxes' topics")));
        };
        let headers: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        self.deliver_raw(&topic, key.as_deref(), payload.as_deref(), &headers).await
    }

    /// Messages the inbox of `group` has handled so far (see [`until_handled`](Self::until_handled)).
    pub async fn handled(&self, group: &str) -> Result<i64, Error> {
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let rows = conn.handled().await?;
        Ok(rows.into_iter().find(|(g, _)| g == group).map_or(0, |(_, n)| n))
    }

    /// The dead letters of `group`, oldest first.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<DeadLetter>, Error> {
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let rows = conn.dead_letters().await?;
        Ok(rows.into_iter().filter(|d| d.consumer_group == group).collect())
    }

    /// Stops the inboxes and the relay (each drains what it holds, as on a real shutdown) and
    /// returns the first error any of them ended with.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.cancel();
        let mut first = None;
        let tasks = self.inboxes.drain(..).map(|r| r.task).collect::<Vec<_>>();
        for task in tasks {
            if let Err(e) = joined(task.await) {
                first.get_or_insert(e);
            }
        }
        if let Some(task) = self.relay.take()
            && let Err(e) = joined(task.await)
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn topics(&self) -> Vec<&'static str> {
        let mut topics: Vec<&'static str> = self.inboxes.iter().flat_map(|r| r.topics.iter().copied()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    fn producer(&mut self) -> Result<&FutureProducer, Error> {
        if self.producer.is_none() {
            let producer = ClientConfig::new()
                .set("bootstrap.servers", self.kafka.bootstrap_servers())
                .create()
                .map_err(|e| fail(ErrorKind::Kafka, "harness: cannot create a producer", e))?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("set above"))
    }
}

/// A task's result, with its panic resumed on the caller's thread.
fn joined(result: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    match result {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()), // cancelled: only the runtime shutting down does that
    }
}

impl<C: Store> Drop for Harness<C> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn fail(kind: ErrorKind, message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::other(kind, message, Some(Box::new(source)))
}

fn plain(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::other(kind, message, None)
}

fn pool_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    fail(ErrorKind::Database, format!("harness: no database connection: {e}"), e)
}

fn kafka_error(what: &str, e: rdkafka::error::KafkaError) -> Error {
    fail(ErrorKind::Kafka, format!("harness: {what}: {e}"), e)
}
