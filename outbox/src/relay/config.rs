//! Relay configuration: every option, its default, and the checks made by `build()`.

use std::time::Duration;

use diesel_async::AsyncPgConnection;

use crate::db::{ConnPool, Database};

use super::Relay;
use crate::{Error, KafkaConfig, Result};

/// What the relay does with a row once Kafka acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSend {
    /// Delete it in the same statement that confirms delivery (default: least table churn).
    Delete,
    /// Keep it with `sent_at` set, for auditing or replay; a cleanup task deletes rows older
    /// than `retention` in small batches.
    Keep {
        /// How long sent rows are kept.
        retention: Duration,
    },
}

/// Relay options. Build with [`Relay::builder`]; each setter documents its default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    /// `None`: not set (on, except on a transaction-pooled pool).
    pub(crate) listen: Option<bool>,
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) after_send: AfterSend,
    pub(crate) cleanup_interval: Duration,
    pub(crate) cleanup_batch: i64,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) source: String,
    pub(crate) metrics_interval: Duration,
    /// From the Kafka configuration's `message.timeout.ms` (see `KafkaConfig::delivery_timeout`).
    pub(crate) delivery_timeout: Option<Duration>,
    pub(crate) startup_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            batch_size: 1000,
            poll_interval: Duration::from_millis(100),
            listen: None,
            lease: Duration::from_secs(15),
            max_attempts: 12,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            after_send: AfterSend::Delete,
            cleanup_interval: Duration::from_secs(30),
            cleanup_batch: 1000,
            shutdown_timeout: Duration::from_secs(10),
            startup_timeout: crate::startup::DEFAULT_STARTUP_TIMEOUT,
            source: "outbox".into(),
            metrics_interval: Duration::from_secs(10),
            delivery_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Builds a [`Relay`]; invalid settings are reported by [`build`](Self::build).
#[must_use]
pub struct RelayBuilder<C: Database = AsyncPgConnection> {
    pub(crate) pool: ConnPool<C>,
    pub(crate) kafka: KafkaConfig,
    pub(crate) config: RelayConfig,
    pub(crate) wakeup: crate::Wakeup,
}

impl<C: Database> RelayBuilder<C> {
    /// Relays with the same name share one lease: one of them publishes, the others stand by
    /// and take over within `lease` when it dies. Default `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Rows claimed, produced and marked together. Default 1000; 1 to 100,000.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }

    /// How often the relay looks for rows when nothing woke it. Default 100 ms (an empty claim
    /// is one index probe). Relays in the writer's process are woken at once by `publish`.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.config.poll_interval = d;
        self
    }

    /// LISTEN for the `outbox_messages` NOTIFY of the insert trigger, which wakes this relay
    /// when another process writes. Default `true`; it only matters once the trigger is enabled
    /// with [`crate::set_notify`] (it is off by default: it halves concurrent commit
    /// throughput); while it is off the relay holds no LISTEN connection and rechecks every
    /// 30 s. LISTEN needs a session of its own: on a pool built with
    /// [`outbox::pooler::Manager`](crate::pooler::Manager) (a transaction pooler such as
    /// PgBouncer's transaction mode) it is off by default, and `listen(true)` is refused by
    /// [`build`](Self::build). Behind a pooler in session mode it works.
    pub fn listen(mut self, on: bool) -> Self {
        self.config.listen = Some(on);
        self
    }

    /// Leadership lease: a dead relay's work is taken over within this time. Default 15 s;
    /// at least 1 s.
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.lease = d;
        self
    }

    /// Attempts before a row is parked. Default 12 (about 17 minutes with the default backoff).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }

    /// Retry delay after the first failure, doubled each attempt up to `max`, with jitter
    /// (a random delay between half and all of it). Default 500 ms to 5 min.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max;
        self
    }

    /// Delete rows once sent (default) or keep them for a retention period.
    pub fn after_send(mut self, policy: AfterSend) -> Self {
        self.config.after_send = policy;
        self
    }

    /// How often, and how many rows at a time, the retention cleanup deletes. Default every 30 s,
    /// 1000 rows per statement.
    pub fn cleanup(mut self, interval: Duration, batch: i64) -> Self {
        self.config.cleanup_interval = interval;
        self.config.cleanup_batch = batch;
        self
    }

    /// After shutdown is requested, how long an in-flight batch may take to be acknowledged
    /// before its unacknowledged messages are abandoned (left unsent, so re-published later).
    /// Default 10 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.config.shutdown_timeout = d;
        self
    }

    /// The CloudEvents `ce_source` of every message, e.g. `"/order-service"`. Default `"outbox"`.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.config.source = source.into();
        self
    }

    /// How long [`Relay::run`] waits at start-up for the database (reachable, schema migrated)
    /// and for a broker to answer before it returns an error. Default 30 s. A missing schema or
    /// grant fails at once; brokers refusing the TLS handshake or the credentials fail at the
    /// deadline, with librdkafka's reason in the error.
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.config.startup_timeout = d;
        self
    }

    /// How often the backlog gauges (`outbox_pending`, ...) are refreshed. Default 10 s.
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.config.metrics_interval = d;
        self
    }

    /// Checks the settings and creates the Kafka producer.
    pub fn build(self) -> Result<Relay<C>> {
        let c = &self.config;
        let bad = |what: String| Err(Error::config(format!("relay: {what}")));
        if c.name.is_empty() {
            return bad("name must not be empty".into());
        }
        if !(1..=100_000).contains(&c.batch_size) {
            return bad(format!("batch_size {} is out of range 1..=100000", c.batch_size));
        }
        if c.poll_interval.is_zero() {
            return bad("poll_interval must be positive".into());
        }
        if c.lease < Duration::from_secs(1) {
            return bad(format!("lease {:?} is shorter than 1 s", c.lease));
        }
        if c.max_attempts == 0 || c.max_attempts > i32::MAX as u32 {
            return bad("max_attempts must be at least 1".into());
        }
        if c.backoff_base.is_zero() || c.backoff_base > c.backoff_max {
            return bad(format!(
                "backoff base {:?} must be positive and at most max {:?}",
                c.backoff_base, c.backoff_max
            ));
        }
        if let AfterSend::Keep { retention } = c.after_send {
            if retention.is_zero() {
                return bad("retention must be positive (or use AfterSend::Delete)".into());
            }
            if c.cleanup_batch < 1 || c.cleanup_interval.is_zero() {
                return bad("cleanup interval and batch must be positive".into());
            }
        }
        if c.source.is_empty() {
            return bad("source must not be empty".into());
        }
        if c.metrics_interval.is_zero() {
            return bad("metrics_interval must be positive".into());
        }
        if c.startup_timeout.is_zero() {
            return bad("startup_timeout must be positive".into());
        }
        if self.pool.transaction_pooled() && c.listen == Some(true) {
            return bad("listen(true) needs a session of its own, and a pool built with outbox::pooler::Manager \
                 goes through a transaction pooler, where LISTEN cannot work (PgBouncer would deliver \
                 NOTIFY to whichever client next uses that server connection): remove listen(true); the \
                 relay then polls every poll_interval, and relays in the writer's process are woken by \
                 publish"
                .into());
        }
        let mut producer_config = self.kafka.producer_config()?;
        let mut config = self.config;
        config.delivery_timeout = self.kafka.delivery_timeout()?;
        // The queue must hold a whole batch: the relay produces it without awaiting each message.
        let queue = (config.batch_size * 2).max(100_000).to_string();
        if self.kafka.get("queue.buffering.max.messages").is_none() {
            producer_config.set("queue.buffering.max.messages", &queue);
        }
        let producer = producer_config
            .create()
            .map_err(|e| Error::with_source(crate::ErrorKind::Config, format!("kafka producer: {e}"), e))?;
        crate::metrics::describe();
        let owner = uuid::Uuid::now_v7();
        let health = crate::health::RelayHealth::new(&config.name, owner);
        Ok(Relay {
            pool: self.pool,
            producer,
            producer_config,
            config,
            marked: false,
            purged: Default::default(),
            owner,
            health,
            delivery_failed: false,
            wakeup: self.wakeup,
        })
    }
}
