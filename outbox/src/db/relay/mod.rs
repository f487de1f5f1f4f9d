//! The relay's statements: [`RelayStore`], implemented in `relay/postgres.rs` and
//! `relay/sqlite.rs` (the two dialects of each statement under the same name, in the same
//! order), the rows they take and return, and the mark transaction's control flow, written once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ConnPool;

pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
use crate::Result;

/// The relay's statements: claim, lease, mark, cleanup, backlog, listen. Sealed; a supertrait
/// of [`Database`](super::Database), so every `C: Database` has them. Public so tests and
/// tools can drive one step of the relay at a time (the claim against a superseded lease, for
/// example); the relay itself is [`Relay`](crate::relay::Relay).
#[async_trait::async_trait]
pub trait RelayStore: super::private::Sealed + Send {
    /// Claims at most `limit` due rows, in `seq` order, besides the rows `in_flight`, if `holder`
    /// still holds its lease (in the same statement: a relay whose lease was taken over claims
    /// nothing).
    async fn claim(&mut self, limit: i64, in_flight: InFlight, holder: Fence<'_>) -> Result<Vec<Claimed>>;
    /// [`claim`](Self::claim) in a transaction of its own: behind a transaction pooler (see
    /// [`pooler`](super::pooler)) the statement's prepare and its run must reach one server
    /// connection.
    async fn claim_in_transaction(
        &mut self,
        limit: i64,
        in_flight: InFlight,
        holder: Fence<'_>,
    ) -> Result<Vec<Claimed>> {
        self.claim(limit, in_flight, holder).await
    }
    /// Takes or renews lease `name` for `owner` for `lease`; returns the fencing epoch, `None`
    /// when another owner holds it.
    async fn acquire_lease(&mut self, name: &str, owner: Uuid, lease: Duration) -> Result<Option<i64>>;
    /// The name of a relay other than `name` that holds a live lease on this outbox, if any.
    async fn rival_lease(&mut self, name: &str) -> Result<Option<String>>;
    /// Gives lease `name` up, if `owner` still holds it at `epoch`.
    async fn release_lease(&mut self, name: &str, owner: Uuid, epoch: i64) -> Result<()>;
    /// Records what a finished batch did, in one transaction fenced by `fence`: `None` when the
    /// lease was lost (nothing recorded).
    async fn mark(&mut self, fence: Fence<'_>, marks: &Marks<'_>) -> Result<Option<Marked>>;
    /// Releases held rows whose key no longer has a failing row ahead of them (a hold that raced
    /// an operator's retry or discard). Returns how many were released.
    async fn release_orphans(&mut self) -> Result<usize>;
    /// Deletes at most `batch` sent rows older than `retention`. Returns how many.
    async fn cleanup_sent(&mut self, retention: Duration, batch: i64) -> Result<usize>;
    /// Pending and parked rows per topic, for the relay's gauges and health.
    async fn backlog(&mut self) -> Result<Vec<TopicBacklog>>;
    /// Wakes `wake` whenever another process commits outbox rows (PostgreSQL LISTEN/NOTIFY when
    /// the trigger is enabled). Returns when `shutdown` fires or when the backend has no such
    /// mechanism.
    async fn listen(_pool: ConnPool<Self>, _wake: Arc<Notify>, _shutdown: CancellationToken)
    where
        Self: Sized,
    {
    }
}

/// The statements of one mark transaction, per backend (`postgres.rs`: one statement per step
/// over arrays; `sqlite.rs`: JSON arrays, one failure at a time). [`mark_in`] runs them.
#[async_trait::async_trait]
pub(crate) trait MarkSql: Send {
    /// Whether `fence` still holds its lease (and no other relay holds a live one).
    async fn fence_held(&mut self, fence: Fence<'_>) -> QueryResult<bool>;
    /// Marks these rows sent (deletes them when `delete`). Returns how many.
    async fn mark_sent(&mut self, seqs: &[i64], delete: bool) -> QueryResult<usize>;
    /// Records the failures; returns (failures recorded, rows parked).
    async fn record_failures(&mut self, failures: &[Failure], max_attempts: i32) -> QueryResult<(usize, usize)>;
    /// Releases the held rows of these (topic, key) pairs unless a failing row still blocks them.
    async fn release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize>;
    /// Holds these rows if a failing earlier row of their key still blocks them.
    async fn hold(&mut self, seqs: &[i64]) -> QueryResult<usize>;
}

/// The mark transaction's body, written once for both backends (the caller opens the
/// transaction: PostgreSQL `BEGIN`, SQLite `BEGIN IMMEDIATE`): the fence first, so a relay that
/// lost its lease records nothing (`None`); then sent, failed, released and held rows.
pub(crate) async fn mark_in<C: MarkSql>(
    tx: &mut C,
    fence: Fence<'_>,
    marks: &Marks<'_>,
) -> QueryResult<Option<Marked>> {
    if !tx.fence_held(fence).await? {
        return Ok(None);
    }
    let mut marked = Marked::default();
    if !marks.sent.is_empty() {
        marked.sent = tx.mark_sent(marks.sent, marks.delete_sent).await?;
    }
    if !marks.failures.is_empty() {
        (marked.failed, marked.parked) = tx.record_failures(marks.failures, fence.max_attempts).await?;
    }
    if !marks.release.is_empty() {
        marked.released = tx.release_keys(marks.release).await?;
    }
    if !marks.hold.is_empty() {
        marked.held = tx.hold(marks.hold).await?;
    }
    Ok(Some(marked))
}

/// A claimed row, ready to produce.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Position in the outbox (claim order).
    pub seq: i64,
    /// The message id (`ce_id`).
    pub id: Uuid,
    /// The Kafka topic.
    pub topic: String,
    /// The Kafka key.
    pub key: Option<String>,
    /// The event type (`ce_type`).
    pub event_type: String,
    /// The event schema version.
    pub event_version: i32,
    /// The encoded payload (empty when [`blocked`](Self::blocked)).
    pub payload: Vec<u8>,
    /// The Kafka headers to send, as JSON.
    pub headers: serde_json::Value,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// Failed deliveries counted so far.
    pub attempts: i32,
    /// An earlier row of its key is failing: not produced; the mark holds it (see [`Marks::hold`]).
    /// Its payload is not loaded.
    pub blocked: bool,
}

/// Everything one fenced mark transaction records for a finished batch.
#[derive(Debug, Default)]
pub struct Marks<'a> {
    /// Acknowledged by Kafka: deleted, or kept with `sent_at`.
    pub sent: &'a [i64],
    /// Delete the sent rows (no retention) instead of keeping them with `sent_at`.
    pub delete_sent: bool,
    /// Failed deliveries.
    pub failures: &'a [Failure],
    /// Rows the claim found blocked by a failing earlier row of their key: held (out of the
    /// pending index) if they are still blocked now.
    pub hold: &'a [i64],
    /// (topic, key) of sent rows that had failed before: their key's held rows are released.
    pub release: &'a [(String, String)],
}

/// A failed delivery to record.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The row.
    pub seq: i64,
    /// The delivery error, for `last_error`.
    pub error: String,
    /// When the row is due again.
    pub retry_in: Duration,
    /// Park now regardless of the attempt count (the record itself is unacceptable).
    pub park_now: bool,
    /// Whether this failure counts as an attempt. Only the first failing row of a key in a
    /// batch counts (it is the key's head): it gets the retry delay, and holds its key back.
    /// The key's later rows failed with it and keep their due time, so they can never become
    /// due before the head (which a row of its own delay could: per-key order broken).
    pub counted: bool,
}

/// The rows in flight: seq range `first..=last` holding `rows` claimed rows (`rows == 0`: none).
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// The lowest seq in flight.
    pub first: i64,
    /// The highest seq in flight.
    pub last: i64,
    /// How many rows are in flight.
    pub rows: i64,
}

/// Who claims or marks: the lease this relay must still hold for its claim or marks to count.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The lease (relay) name.
    pub lease: &'a str,
    /// This relay process.
    pub owner: Uuid,
    /// The epoch it took the lease at.
    pub epoch: i64,
    /// Failed attempts after which a row is parked.
    pub max_attempts: i32,
}

/// What a mark did.
#[derive(Debug, Default)]
pub struct Marked {
    /// Rows marked sent (or deleted).
    pub sent: usize,
    /// Failures recorded.
    pub failed: usize,
    /// Rows parked.
    pub parked: usize,
    /// Rows held behind a failing row of their key.
    pub held: usize,
    /// Held rows released.
    pub released: usize,
}

/// For the relay's gauges: the unsent rows of one topic.
#[derive(Debug, Clone)]
pub struct TopicBacklog {
    /// The topic.
    pub topic: String,
    /// Rows waiting to be published.
    pub pending: i64,
    /// Parked rows.
    pub parked: i64,
    /// Seconds since the oldest pending row was written, by the database's clock.
    pub oldest_pending_secs: Option<f64>,
}
