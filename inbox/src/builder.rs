//! [`InboxBuilder`]: handler registration and every option, with its default.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use outbox::db::{ConnPool, Database};
use outbox::{Event, RetryPolicy, Wakeup};
use serde::de::DeserializeOwned;

use crate::config::{InboxConfig, UnknownTypePolicy};
use crate::error::config_error;
use crate::handler::{ErasedHandler, Typed};
use crate::registry::Registry;
use crate::{Error, Handler, Inbox, KafkaConfig};

/// Configures an [`Inbox`]: its consumer group, its handlers and its options.
///
/// Every option has a production-safe default; [`build`](Self::build) checks them all and the
/// Kafka properties, so a mistake fails at startup, not at the first message.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize}; use schemars::JsonSchema;
/// # #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
/// # #[event(topic = "orders", name = "order.placed")]
/// # struct OrderPlaced { order_id: uuid::Uuid }
/// # struct ReserveStock;
/// # #[inbox::async_trait]
/// # impl inbox::Handler<OrderPlaced> for ReserveStock {
/// #     async fn handle(&self, _: OrderPlaced, _: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> { Ok(()) }
/// # }
/// # async fn run(pool: diesel_async::pooled_connection::bb8::Pool<diesel_async::AsyncPgConnection>)
/// #     -> Result<(), inbox::Error> {
/// use std::time::Duration;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// inbox::Inbox::builder(pool, "localhost:9092")
///     .group("inventory")
///     .handle(ReserveStock)
///     .max_attempts(8)
///     .retry_backoff(Duration::from_millis(200), Duration::from_secs(30))
///     .build()?
///     .run(shutdown)
///     .await
/// # }
/// ```
#[must_use = "an inbox does nothing until it is built and run"]
pub struct InboxBuilder<C: Database = AsyncPgConnection> {
    pool: ConnPool<C>,
    kafka: KafkaConfig,
    handlers: Vec<Arc<dyn ErasedHandler<C>>>,
    options: InboxConfig,
    wakeup: Wakeup,
}

impl<C: Database> std::fmt::Debug for InboxBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxBuilder")
            .field("kafka", &self.kafka)
            .field("handlers", &self.handlers.iter().map(|h| h.handler_name()).collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<C: Database> Inbox<C> {
    /// Starts configuring an inbox that handles messages with connections from `pool`
    /// (PostgreSQL, or SQLite with the `sqlite` feature) and consumes from `kafka` (a
    /// `bootstrap.servers` string, an [`rdkafka::ClientConfig`] or an [`outbox::KafkaConfig`]).
    pub fn builder<M>(pool: bb8::Pool<M>, kafka: impl Into<KafkaConfig>) -> InboxBuilder<C>
    where
        M: bb8::ManageConnection<Connection = C>,
        M::Error: std::error::Error,
    {
        InboxBuilder {
            pool: ConnPool::new(pool),
            kafka: kafka.into(),
            handlers: Vec::new(),
            options: InboxConfig::default(),
            wakeup: Wakeup::shared(),
        }
    }
}

impl<C: Database> InboxBuilder<C> {
    /// Replaces the whole configuration (e.g. one read from a file), the group included;
    /// setters called after it change single fields of it. Checked by [`build`](Self::build).
    pub fn config(mut self, config: InboxConfig) -> Self {
        self.options = config;
        self
    }

    /// The configuration as set so far.
    pub fn current_config(&self) -> &InboxConfig {
        &self.options
    }

    /// The consumer group (required). It is the Kafka `group.id` and the dedup namespace: each
    /// message id takes effect once per group. Two services that both need every event use
    /// two groups.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.options.group = group.into();
        self
    }

    /// Registers `handler` for the event type `E` (at least one is required). The inbox
    /// subscribes to `E::TOPIC` and dispatches messages whose `ce_type` is `E::NAME` to it,
    /// for versions `1..=E::VERSION`; newer versions are dead-lettered as `unsupported_version`.
    ///
    /// A second handler for the same (topic, event type) makes [`build`](Self::build) fail.
    /// When `H` handles several event types, name the one to register: `.handle::<E, _>(h)`.
    pub fn handle<E, H>(mut self, handler: H) -> Self
    where
        E: Event + DeserializeOwned + 'static,
        H: Handler<E, C>,
    {
        self.handlers.push(Arc::new(Typed::<E, H>::new(handler)));
        self
    }

    /// How many messages of one partition share one transaction (default 100, at most 5,000).
    /// Each message's dedup row is inserted right before its handler runs, and after each
    /// handler the inbox checks that the transaction is still open and usable (one more round
    /// trip per message). If any message of a batch fails, the batch is
    /// rolled back and its messages are retried one transaction each, so only the failing
    /// message is retried or dead-lettered. `1` is one-message mode: one transaction per
    /// message. Both modes leave the database in the same state.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.options.batch_size = n;
        self
    }

    /// How many times a handler is called for a message that keeps failing with a transient
    /// error before the message is dead-lettered with reason `retries_exhausted` (default 5,
    /// counting the first call).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.options.max_attempts = n;
        self
    }

    /// The delay before the first retry and the cap on later ones; delays double per attempt,
    /// with jitter (a random delay between half and all of it) (default 200 ms and 10 s). The partition waits while a message is retried;
    /// other partitions keep flowing.
    ///
    /// Sets [`InboxConfig::retry`] (keeping its `jitter`); see also [`retry`](Self::retry).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.options.retry.base = base;
        self.options.retry.max = max;
        self
    }

    /// The retry policy of failing messages ([`InboxConfig::retry`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// The largest payload handed to a handler, in bytes (default 1 MiB). Checked before the
    /// payload is parsed; larger messages are dead-lettered as `payload_too_large`.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.options.max_payload_bytes = n;
        self
    }

    /// The deepest JSON nesting accepted in a payload (default 64). Checked by a scan before
    /// parsing; deeper payloads are dead-lettered as `payload_too_deep`.
    pub fn max_json_depth(mut self, n: usize) -> Self {
        self.options.max_json_depth = n;
        self
    }

    /// What to do with event types that have no handler on their topic (default
    /// [`UnknownTypePolicy::DeadLetter`]).
    pub fn unknown_types(mut self, policy: UnknownTypePolicy) -> Self {
        self.options.unknown_types = policy;
        self
    }

    /// How long dedup rows are kept (default 7 days, Kafka's default retention). A message
    /// redelivered with the same id after the window, e.g. re-sent by a producer or replayed
    /// from its outbox, is handled again. Normal redeliveries (rebalances, restarts) never
    /// depend on the window: the stored position skips them. Longer windows cost table size.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.options.dedup_window = window;
        self
    }

    /// How often the background task deletes dedup rows older than the window (default 60 s).
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.options.prune_interval = interval;
        self
    }

    /// How many dedup rows one pruning DELETE removes at most (default 1,000); small batches
    /// keep locks and WAL bursts short.
    pub fn prune_batch_size(mut self, n: usize) -> Self {
        self.options.prune_batch_size = i64::try_from(n).unwrap_or(i64::MAX);
        self
    }

    /// How long [`Inbox::run`] waits, after the shutdown token fires, for the batches in hand
    /// to commit before it abandons them (they are rolled back and redelivered later) (default
    /// 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// How long [`Inbox::run`] waits at start-up for the database (reachable, schema migrated),
    /// a broker to answer and every subscribed topic to exist, before it returns an error
    /// (default 30 s). A missing schema fails at once; brokers refusing the TLS handshake or the
    /// credentials fail at the deadline (librdkafka's reason is logged in the first round).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.options.startup_timeout = timeout;
        self
    }

    /// How long one handler call may take (default 60 s). A call still running then is
    /// abandoned — its transaction is rolled back and its connection dropped — and counts as a
    /// transient failure: retried with backoff, and after `max_attempts` calls dead-lettered
    /// with reason `handler_timed_out`. The partition waits meanwhile; others keep flowing.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.options.handler_timeout = timeout;
        self
    }

    /// The most bytes (keys + payloads + headers) one partition holds between Kafka and its
    /// handler — the messages waiting for it and the batch it is working on (default 16 MiB,
    /// at least 1). When the next record would go past it, the partition is paused in
    /// librdkafka and that record is read again once the partition has drained to half; a
    /// single record larger than the bound is let through alone. The memory of the inbox's
    /// own buffers is thus at most this times the number of assigned partitions, plus
    /// librdkafka's prefetch queue (bounded by its `queued.max.messages.kbytes`, 64 MiB by
    /// default, set it in the Kafka configuration). A message count bound applies as well
    /// (4 batches, at least 256 messages).
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.options.max_buffered_bytes = bytes;
        self
    }

    /// Where a partition with no stored position starts (default `false`: at the beginning of
    /// its log). The inbox's stored positions, in the database, are the truth; Kafka's
    /// committed offsets are only a hint. A partition without a stored position — a new group,
    /// or a database restored from a backup older than the group's Kafka offsets — starts at
    /// the beginning of the log, and dedup rows absorb whatever was handled already, so
    /// nothing is skipped (messages whose dedup rows are gone or pruned are handled again).
    /// `true` starts such a partition at the group's committed Kafka offset instead (or at
    /// `auto.offset.reset` without one): faster when a large retained log was consumed by an
    /// earlier consumer of the same group, at the risk of skipping what the database never saw.
    ///
    /// A stored position is also checked against the log it is in: it records the Kafka
    /// cluster id and a fingerprint of the record before it. A different cluster id, or a
    /// different record there (the topic was recreated, the database now runs against another
    /// cluster), makes the partition start at the beginning of its log as well, with a warning
    /// naming both; rdkafka exposes no topic ids, so a recreated topic is recognised by that
    /// record.
    pub fn trust_committed_offsets(mut self, trust: bool) -> Self {
        self.options.trust_committed_offsets = trust;
        self
    }

    /// How often a running inbox looks for dead letters of its group whose replay was requested
    /// with `outbox dead-letters replay` or [`inbox::ops::request_replay`](crate::ops::request_replay) (default 5 s): one
    /// indexed query per interval while there are none. Each requested dead letter is replayed
    /// once by one instance of the group (see [`Inbox::replayer`] and docs/dead-letters.md).
    pub fn replay_poll_interval(mut self, interval: Duration) -> Self {
        self.options.replay_poll_interval = interval;
        self
    }

    /// How long dead letters are kept (default: forever). With a retention set, the pruning
    /// task (every [`prune_interval`](Self::prune_interval), [`prune_batch_size`](Self::prune_batch_size)
    /// rows per DELETE) also deletes the group's dead letters stored longer ago than this,
    /// except those waiting for a requested replay. Choose it longer than the time you need to
    /// notice, fix and replay a failure.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.options.dead_letter_retention = Some(retention);
        self
    }

    /// The relays' wake-up line that handlers' [`Context::publish`](crate::Context::publish)
    /// signals (default [`Wakeup::shared`], what a relay given no handle listens to). The inbox
    /// signals it after each commit whose handlers published, so the relay claims the
    /// follow-up events at once instead of at its poll interval. Give it the handle of the relay
    /// of this inbox's database when that relay has one of its own ([`Wakeup`]).
    pub fn wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// How often the `inbox_dead_letters` gauge is read from the database (one count over the
    /// group's dead letters). Default 10 s.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.options.metrics_interval = interval;
        self
    }

    /// Checks the configuration and builds the inbox. Fails with
    /// [`ErrorKind::Config`](outbox::ErrorKind::Config) when the group or the handlers are
    /// missing, a (topic, event type) has two handlers, an option is out of range, or a Kafka
    /// property is unknown, invalid or unsafe (`enable.auto.offset.store=true`, a `group.id`
    /// other than the group).
    pub fn build(self) -> Result<Inbox<C>, Error> {
        let options = self.options;
        if !crate::store::supported::<C>() {
            return Err(config_error(format!(
                "inbox: this build of the inbox crate has no {} support: enable its `{}` feature",
                C::NAME,
                C::NAME
            )));
        }
        // The group first: without it nothing else is worth reporting.
        if options.group.trim().is_empty() {
            return Err(config_error("inbox: the consumer group is required: .group(\"my-service\")"));
        }
        if self.handlers.is_empty() {
            return Err(config_error("inbox: no handler registered: add one with .handle(MyHandler)"));
        }
        let registry = Registry::new(self.handlers).map_err(|e| config_error(format!("inbox: {e}")))?;
        options.validate()?;
        crate::metrics::describe();
        let consumer_config = crate::kafka::consumer_config(&self.kafka, &options.group)?;
        Ok(Inbox::new(self.pool, consumer_config, registry, options, self.wakeup))
    }
}
