//! A Kafka cluster inside your process, for development and tests: librdkafka's mock cluster.
//!
//! [`EmbeddedKafka::start`] starts a 3-broker cluster that listens on `127.0.0.1` ports chosen by
//! the operating system. Any Kafka client can use it through
//! [`bootstrap_servers`](EmbeddedKafka::bootstrap_servers) — the relay and the inbox of this
//! process, but also other processes, since the brokers speak the Kafka protocol over TCP. It
//! stops when the value is dropped.
//!
//! ```no_run
//! use outbox::embedded::EmbeddedKafka;
//! use outbox::relay::Relay;
//! use schemars::JsonSchema;
//! use serde::Serialize;
//!
//! #[derive(Serialize, JsonSchema, outbox::Event)]
//! #[event(topic = "orders", name = "order.placed")]
//! struct OrderPlaced {
//!     #[event(key)]
//!     order_id: uuid::Uuid,
//! }
//!
//! # async fn run(pool: outbox::Pool) -> outbox::Result<()> {
//! let kafka = EmbeddedKafka::start()?;
//! kafka.create_topic_for::<OrderPlaced>(3)?; // the topic named by OrderPlaced::TOPIC
//! println!("KAFKA_BROKERS={}", kafka.bootstrap_servers());
//!
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let relay = Relay::builder(pool, kafka.kafka_config()).build()?;
//! relay.run(shutdown).await?; // `kafka` must outlive every client that uses it
//! # Ok(()) }
//! ```
//!
//! What the mock cluster is, and is not:
//!
//! - It keeps everything in memory and supports what the relay and the inbox use: the
//!   idempotent producer, consumer groups, offset commits. The topic admin API (CreateTopics) is
//!   not supported: create topics with [`create_topic`](EmbeddedKafka::create_topic). Topics a
//!   client asks for that do not exist are created on the fly with librdkafka's default
//!   partition count.
//! - [`mock`](EmbeddedKafka::mock) gives access to fault injection: take brokers down, make
//!   requests fail, add latency.
//! - It is not a replacement for a real broker in production, and it does not check everything
//!   a real broker checks (for example the idempotent producer's sequence numbers).
//! - The value is neither `Send` nor `Sync` (librdkafka's handle is a raw pointer): keep it in
//!   the task that started it — `main`, or the test body — and hand clients the
//!   [`bootstrap_servers`](EmbeddedKafka::bootstrap_servers) string.

use std::fmt;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::{Error, ErrorKind, Event, KafkaConfig, Result, validate_topic};

/// An in-process Kafka cluster (librdkafka's mock cluster); stopped when dropped.
/// See the [module docs](self).
pub struct EmbeddedKafka {
    mock: MockCluster<'static, DefaultProducerContext>,
    bootstrap_servers: String,
}

impl EmbeddedKafka {
    /// The number of brokers [`start`](Self::start) starts.
    pub const DEFAULT_BROKERS: i32 = 3;

    /// Starts a cluster of [`DEFAULT_BROKERS`](Self::DEFAULT_BROKERS) brokers.
    ///
    /// Fails with [`ErrorKind::Kafka`] when librdkafka cannot start it (e.g. no local port can
    /// be bound).
    pub fn start() -> Result<Self> {
        Self::with_brokers(Self::DEFAULT_BROKERS)
    }

    /// Starts a cluster of `brokers` brokers (at least 1; broker ids are `1..=brokers`).
    ///
    /// Fails with [`ErrorKind::Config`] when `brokers` is less than 1, and with
    /// [`ErrorKind::Kafka`] when librdkafka cannot start it.
    pub fn with_brokers(brokers: i32) -> Result<Self> {
        if brokers < 1 {
            return Err(Error::config(format!("embedded kafka: {brokers} brokers requested; at least 1 is needed")));
        }
        let mock = MockCluster::new(brokers).map_err(|e| {
            Error::with_source(ErrorKind::Kafka, format!("embedded kafka: cannot start the mock cluster: {e}"), e)
        })?;
        let bootstrap_servers = mock.bootstrap_servers();
        Ok(Self { mock, bootstrap_servers })
    }

    /// The brokers' addresses as a `bootstrap.servers` list, e.g. `127.0.0.1:40123,127.0.0.1:40125`.
    ///
    /// This is what `KAFKA_BROKERS` should be set to for a process that uses this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Client settings for this cluster, for [`Relay::builder`](crate::relay::Relay::builder)
    /// or (converted) the inbox. Add any other librdkafka property with [`KafkaConfig::set`].
    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig::new(self.bootstrap_servers.clone())
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1).
    ///
    /// Fails with [`ErrorKind::Config`] when the name is not a valid Kafka topic name (see
    /// [`validate_topic`]) or `partitions` is less than 1, and with [`ErrorKind::Kafka`] when the
    /// cluster refuses the topic, for example because it already exists.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        validate_topic(topic).map_err(|why| Error::config(format!("embedded kafka: {why}")))?;
        if partitions < 1 {
            return Err(Error::config(format!(
                "embedded kafka: topic `{topic}` with {partitions} partitions; at least 1 is needed"
            )));
        }
        self.mock.create_topic(topic, partitions, 1).map_err(|e| {
            Error::with_source(ErrorKind::Kafka, format!("embedded kafka: cannot create topic `{topic}`: {e}"), e)
        })
    }

    /// Creates each of `topics` with `partitions` partitions; a name given twice is created once.
    ///
    /// With event types at hand, pass their topics:
    /// `kafka.create_topics(&[OrderPlaced::TOPIC, StockReserved::TOPIC], 3)` (with
    /// [`Event`] in scope). Stops at the first failure (see [`create_topic`](Self::create_topic)).
    pub fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        for (i, topic) in topics.iter().enumerate() {
            if !topics[..i].contains(topic) {
                self.create_topic(topic, partitions)?;
            }
        }
        Ok(())
    }

    /// Creates the topic the event type `E` is published to ([`Event::TOPIC`]).
    pub fn create_topic_for<E: Event>(&self, partitions: i32) -> Result<()> {
        self.create_topic(E::TOPIC, partitions)
    }

    /// The underlying mock cluster, for fault injection: `broker_down(id)`, `broker_up(id)`,
    /// `request_errors(..)`, `broker_round_trip_time(..)`, ... (see [`MockCluster`]).
    pub fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.mock
    }
}

impl fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap_servers", &self.bootstrap_servers).finish_non_exhaustive()
    }
}
