//! [`InboxConfig`]: every option of an inbox that is data, with its default, and its checks.

use std::time::Duration;

use outbox::RetryPolicy;

use crate::Error;
use crate::error::config_error;

/// What to do with a message whose `ce_type` has no registered handler on its topic.
///
/// Topics are often shared by several event types of which a service handles only some, so
/// [`Skip`](Self::Skip) is a legitimate choice; the default keeps the message visible instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownTypePolicy {
    /// Write a dead-letter row with reason `unknown_type` (default).
    #[default]
    DeadLetter,
    /// Record the message as handled (a dedup row, the position moves on) without a dead letter.
    Skip,
}

// PostgreSQL takes at most 65,535 bind parameters per statement; a dead-letter row binds 12.
pub(crate) const MAX_BATCH_SIZE: usize = 5_000;

/// Every option of an inbox, as data: [`Default`] holds the defaults (each field's doc says
/// which), [`InboxBuilder::config`](crate::InboxBuilder::config) takes a whole configuration, and the builder's setters change
/// one field. It reads from and writes to any serde format; durations are written in
/// [humantime](https://docs.rs/humantime) form (`"100ms"`, `"30s"`, `"7days"`), a missing field
/// keeps its default, and an unknown field is an error. See docs/configuration.md.
///
/// ```
/// let config: inbox::InboxConfig = serde_json::from_str(
///     r#"{ "group": "inventory", "max_attempts": 8, "retry": { "base": "200ms", "max": "30s" } }"#,
/// ).unwrap();
/// assert_eq!(config.max_attempts, 8);
/// assert_eq!(config.batch_size, inbox::InboxConfig::default().batch_size);
/// ```
///
/// Checked by [`InboxBuilder::build`](crate::InboxBuilder::build) (and [`validate`](Self::validate)), not on deserialising.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// The consumer group (required, no default). It is the Kafka `group.id` and the dedup
    /// namespace: each message id takes effect once per group. Two services that both need
    /// every event use two groups.
    pub group: String,
    /// How many messages of one partition share one transaction. Default 100; 1 to 5,000 (see
    /// [`InboxBuilder::batch_size`](crate::InboxBuilder::batch_size)).
    pub batch_size: usize,
    /// How many times a handler is called for a message that keeps failing with a transient
    /// error before the message is dead-lettered with reason `retries_exhausted`, counting the
    /// first call. Default 5; at least 1.
    pub max_attempts: u32,
    /// The delay before each retry of a failing message (the partition waits meanwhile; others
    /// keep flowing), and between attempts to load stored positions. Default base 200 ms doubling
    /// to 10 s, with jitter (each delay between half and all of it: 100–200 ms first), so the
    /// default 5 attempts take 1.5–3 s before a dead letter.
    pub retry: RetryPolicy,
    /// The largest payload handed to a handler, in bytes; larger messages are dead-lettered as
    /// `payload_too_large`. Default 1 MiB (1048576); at least 1.
    pub max_payload_bytes: usize,
    /// The deepest JSON nesting accepted in a payload; deeper payloads are dead-lettered as
    /// `payload_too_deep`. Default 64; at least 1.
    pub max_json_depth: usize,
    /// What to do with event types that have no handler on their topic. Default
    /// [`UnknownTypePolicy::DeadLetter`] (`"dead_letter"`); or `"skip"`.
    pub unknown_types: UnknownTypePolicy,
    /// How long dedup rows are kept (see [`InboxBuilder::dedup_window`](crate::InboxBuilder::dedup_window)). Default 7 days;
    /// positive.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How often the background task deletes dedup rows older than the window (and expired dead
    /// letters). Default 60 s; positive.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// How many rows one pruning DELETE removes at most; small batches keep locks and WAL
    /// bursts short. Default 1000; positive.
    pub prune_batch_size: i64,
    /// How long [`Inbox::run`](crate::Inbox::run) waits, after the shutdown token fires, for the batches in hand to
    /// commit before it abandons them (rolled back, redelivered later). Default 30 s; positive.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long one handler call may take before it is abandoned and counted as a transient
    /// failure (see [`InboxBuilder::handler_timeout`](crate::InboxBuilder::handler_timeout)). Default 60 s; positive.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// The most bytes (keys + payloads + headers) one partition holds between Kafka and its
    /// handler (see [`InboxBuilder::max_buffered_bytes`](crate::InboxBuilder::max_buffered_bytes)). Default 16 MiB (16777216); at least 1.
    pub max_buffered_bytes: usize,
    /// Where a partition with no stored position starts: `false` at the beginning of its log,
    /// `true` at the group's committed Kafka offset (see
    /// [`InboxBuilder::trust_committed_offsets`](crate::InboxBuilder::trust_committed_offsets)). Default `false`.
    pub trust_committed_offsets: bool,
    /// How long [`Inbox::run`](crate::Inbox::run) waits at start-up for the database, a broker and every subscribed
    /// topic before it returns an error. Default 30 s; positive.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How often a running inbox looks for dead letters whose replay an operator requested.
    /// Default 5 s; positive.
    #[serde(with = "humantime_serde")]
    pub replay_poll_interval: Duration,
    /// Dead letters stored longer ago than this are deleted by the pruning task (except those
    /// waiting for a requested replay). Default (absent, `None`): kept forever; positive.
    #[serde(with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub dead_letter_retention: Option<Duration>,
    /// How often the `inbox_dead_letters` gauge is read from the database. Default 10 s;
    /// positive.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            group: String::new(),
            batch_size: 100,
            max_attempts: 5,
            retry: RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10)),
            max_payload_bytes: 1024 * 1024,
            max_json_depth: 64,
            unknown_types: UnknownTypePolicy::DeadLetter,
            dedup_window: Duration::from_secs(7 * 24 * 60 * 60),
            prune_interval: Duration::from_secs(60),
            prune_batch_size: 1_000,
            shutdown_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(60),
            max_buffered_bytes: 16 * 1024 * 1024,
            trust_committed_offsets: false,
            startup_timeout: outbox::startup::DEFAULT_STARTUP_TIMEOUT,
            replay_poll_interval: Duration::from_secs(5),
            dead_letter_retention: None,
            metrics_interval: Duration::from_secs(10),
        }
    }
}

impl InboxConfig {
    /// Checks every value (what [`InboxBuilder::build`](crate::InboxBuilder::build) checks, except the handlers and the
    /// Kafka properties); the error is [`ErrorKind::Config`](outbox::ErrorKind::Config) and
    /// names the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.group.trim().is_empty() {
            return Err(config_error("inbox: the consumer group is required: .group(\"my-service\")"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(config_error(format!(
                "inbox: batch_size must be between 1 and {MAX_BATCH_SIZE}, not {}",
                self.batch_size
            )));
        }
        if self.max_attempts == 0 {
            return Err(config_error("inbox: max_attempts must be at least 1"));
        }
        self.retry.validate("inbox: retry (retry_backoff)").map_err(config_error)?;
        let positive = [
            (self.max_payload_bytes == 0, "max_payload_bytes must be at least 1"),
            (self.max_json_depth == 0, "max_json_depth must be at least 1"),
            (
                self.dedup_window.is_zero(),
                "dedup_window must be longer than zero (redeliveries would be handled twice)",
            ),
            (
                self.prune_interval.is_zero() || self.prune_batch_size <= 0,
                "prune_interval and prune_batch_size must be greater than zero",
            ),
            (self.handler_timeout.is_zero(), "handler_timeout must be longer than zero"),
            (self.max_buffered_bytes == 0, "max_buffered_bytes must be at least 1"),
            (self.startup_timeout.is_zero(), "startup_timeout must be longer than zero"),
            (self.shutdown_timeout.is_zero(), "shutdown_timeout must be longer than zero"),
            (self.replay_poll_interval.is_zero(), "replay_poll_interval must be longer than zero"),
            (
                self.dead_letter_retention.is_some_and(|r| r.is_zero()),
                "dead_letter_retention must be longer than zero (every dead letter would be deleted at once)",
            ),
            (self.metrics_interval.is_zero(), "metrics_interval must be longer than zero"),
        ];
        if let Some((_, what)) = positive.iter().find(|(bad, _)| *bad) {
            return Err(config_error(format!("inbox: {what}")));
        }
        Ok(())
    }
}
