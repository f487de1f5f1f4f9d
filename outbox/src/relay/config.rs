//! Relay configuration: every option, its default, and the checks made by `build()`.

use std::time::Duration;

use diesel_async::AsyncPgConnection;

use crate::db::{ConnPool, Database};

use super::Relay;
use crate::{Error, KafkaConfig, Result, RetryPolicy};

/// What the relay does with a row once Kafka acknowledged it.
///
/// In a configuration file: `after_send = { mode = "delete" }` or
/// `after_send = { mode = "keep", retention = "7days" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "AfterSendFields", into = "AfterSendFields")]
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

/// [`AfterSend`] as written in a file. serde's internally tagged enums ignore
/// `deny_unknown_fields` on a unit variant (serde-rs/serde#2294), which would let
/// `{ mode = "delete", retention = "7days" }` through with the retention silently dropped: the
/// fields are read flat and checked here instead.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterSendFields {
    mode: AfterSendMode,
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    retention: Option<Duration>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum AfterSendMode {
    Delete,
    Keep,
}

impl TryFrom<AfterSendFields> for AfterSend {
    type Error = String;
    fn try_from(f: AfterSendFields) -> std::result::Result<Self, String> {
        match (f.mode, f.retention) {
            (AfterSendMode::Delete, None) => Ok(AfterSend::Delete),
            (AfterSendMode::Delete, Some(_)) => {
                Err("after_send: `retention` applies to mode = \"keep\" only (mode = \"delete\" keeps nothing)".into())
            }
            (AfterSendMode::Keep, Some(retention)) => Ok(AfterSend::Keep { retention }),
            (AfterSendMode::Keep, None) => Err("after_send: mode = \"keep\" needs a `retention`".into()),
        }
    }
}

impl From<AfterSend> for AfterSendFields {
    fn from(a: AfterSend) -> Self {
        match a {
            AfterSend::Delete => AfterSendFields { mode: AfterSendMode::Delete, retention: None },
            AfterSend::Keep { retention } => AfterSendFields { mode: AfterSendMode::Keep, retention: Some(retention) },
        }
    }
}

/// Every option of the relay, as data: [`Default`] holds the defaults (each field's doc says
/// which), [`RelayBuilder::config`] takes a whole configuration, and the builder's setters
/// change one field. It reads from and writes to any serde format; durations are written in
/// [humantime](https://docs.rs/humantime) form (`"100ms"`, `"15s"`, `"5m"`), a missing field
/// keeps its default, and an unknown field is an error. The `outbox` binary reads it from
/// `--config FILE` (TOML); see docs/configuration.md.
///
/// ```
/// let config: outbox::relay::RelayConfig = serde_json::from_str(
///     r#"{ "name": "orders", "poll_interval": "250ms", "retry": { "base": "1s", "max": "1m" } }"#,
/// ).unwrap();
/// assert_eq!(config.poll_interval, std::time::Duration::from_millis(250));
/// assert_eq!(config.batch_size, outbox::relay::RelayConfig::default().batch_size);
/// ```
///
/// Checked by [`RelayBuilder::build`] (and [`validate`](Self::validate)), not on deserialising.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Relays with the same name share one lease: one of them publishes, the others stand by
    /// and take over within `lease` when it dies. Default `"default"`; not empty.
    pub name: String,
    /// Rows claimed, produced and marked together. Default 1000; 1 to 100,000.
    pub batch_size: usize,
    /// How often the relay looks for rows when nothing woke it. Default 100 ms (an empty claim
    /// is one index probe); positive. Relays in the writer's process are woken at once by
    /// `publish`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// LISTEN for the `outbox_messages` NOTIFY of the insert trigger, which wakes this relay
    /// when another process writes. Default (absent, `None`): on, except on a pool built with
    /// [`outbox::pooler::Manager`](crate::pooler::Manager), where it is off and `Some(true)` is
    /// refused by [`RelayBuilder::build`]. See [`RelayBuilder::listen`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<bool>,
    /// Leadership lease: a dead relay's work is taken over within this time. Default 15 s; at
    /// least 1 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Delivery attempts before a row is parked. Default 12 (about 17 minutes with the default
    /// retry policy); at least 1.
    pub max_attempts: u32,
    /// The delay before a failed row is tried again, by its attempt count. Default 500 ms
    /// doubling to 5 min, with jitter (a random delay between half and all of it).
    pub retry: RetryPolicy,
    /// Delete rows once sent, or keep them for a retention period. Default
    /// [`AfterSend::Delete`].
    pub after_send: AfterSend,
    /// With [`AfterSend::Keep`]: how often the retention cleanup runs. Default 30 s; positive.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// With [`AfterSend::Keep`]: rows deleted per cleanup statement. Default 1000; positive.
    pub cleanup_batch: i64,
    /// After shutdown is requested, how long an in-flight batch may take to be acknowledged
    /// before its unacknowledged messages are abandoned (left unsent, so re-published later).
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long [`Relay::run`] waits at start-up for the database (reachable, schema migrated)
    /// and for a broker to answer before it returns an error. Default 30 s; positive.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// The CloudEvents `ce_source` of every message, e.g. `"/order-service"`. Default
    /// `"outbox"`; not empty.
    pub source: String,
    /// How often the backlog gauges (`outbox_pending`, ...) are refreshed. Default 10 s;
    /// positive.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
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
            retry: RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(300)),
            after_send: AfterSend::Delete,
            cleanup_interval: Duration::from_secs(30),
            cleanup_batch: 1000,
            shutdown_timeout: Duration::from_secs(10),
            startup_timeout: crate::startup::DEFAULT_STARTUP_TIMEOUT,
            source: "outbox".into(),
            metrics_interval: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// Checks every value (what [`RelayBuilder::build`] checks, except what depends on the
    /// pool); the error is [`ErrorKind::Config`](crate::ErrorKind::Config) and names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::config(format!("relay: {what}")));
        if self.name.is_empty() {
            return bad("name must not be empty".into());
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return bad(format!("batch_size {} is out of range 1..=100000", self.batch_size));
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be positive".into());
        }
        if self.lease < Duration::from_secs(1) {
            return bad(format!("lease {:?} is shorter than 1 s", self.lease));
        }
        if self.max_attempts == 0 || self.max_attempts > i32::MAX as u32 {
            return bad("max_attempts must be at least 1".into());
        }
        self.retry.validate("retry (backoff base/max)").or_else(bad)?;
        if let AfterSend::Keep { retention } = self.after_send {
            if retention.is_zero() {
                return bad("after_send retention must be positive (or use AfterSend::Delete)".into());
            }
            if self.cleanup_batch < 1 || self.cleanup_interval.is_zero() {
                return bad("cleanup_interval and cleanup_batch must be positive".into());
            }
        }
        if self.source.is_empty() {
            return bad("source must not be empty".into());
        }
        if self.metrics_interval.is_zero() {
            return bad("metrics_interval must be positive".into());
        }
        if self.startup_timeout.is_zero() {
            return bad("startup_timeout must be positive".into());
        }
        Ok(())
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
    /// Replaces the whole configuration (e.g. one read from a file); setters called after it
    /// change single fields of it. Checked by [`build`](Self::build).
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration as set so far.
    pub fn current_config(&self) -> &RelayConfig {
        &self.config
    }

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
    /// (a random delay between half and all of it). Default 500 ms to 5 min. Sets
    /// [`RelayConfig::retry`] (keeping its `jitter`); see also [`retry`](Self::retry).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.retry.base = base;
        self.config.retry.max = max;
        self
    }

    /// The retry policy of failed rows ([`RelayConfig::retry`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
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
        self.config.validate()?;
        let c = &self.config;
        let bad = |what: String| Err(Error::config(format!("relay: {what}")));
        if self.pool.transaction_pooled() && c.listen == Some(true) {
            return bad("listen(true) needs a session of its own, and a pool built with outbox::pooler::Manager \
                 goes through a transaction pooler, where LISTEN cannot work (PgBouncer would deliver \
                 NOTIFY to whichever client next uses that server connection): remove listen(true); the \
                 relay then polls every poll_interval, and relays in the writer's process are woken by \
                 publish"
                .into());
        }
        let config = self.config;
        let sink = super::sink::Kafka::new(&self.kafka, config.batch_size)?;
        crate::metrics::describe();
        let owner = uuid::Uuid::now_v7();
        let health = crate::health::RelayHealth::new(&config.name, owner);
        Ok(Relay {
            pool: self.pool,
            sink: Box::new(sink),
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
