//! The storage backends. Every SQL statement of the writer, the relay and the inbox lives behind
//! [`Database`], implemented for PostgreSQL (`AsyncPgConnection`) and, with the `sqlite` feature,
//! for SQLite (`outbox::sqlite::SqliteConnection`). The rest of the SDK is written once against it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::AsyncConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Result;

pub use pool::{ConnPool, Pooled};

mod pool;
pub mod pooler;
pub(crate) mod postgres;
mod prepared;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

mod private {
    pub trait Sealed {}
}

/// A database the outbox and the inbox can store their tables in: PostgreSQL's
/// `diesel_async::AsyncPgConnection`, or with the `sqlite` feature
/// [`outbox::sqlite::SqliteConnection`](crate::sqlite::SqliteConnection).
///
/// Sealed: the methods are the SDK's SQL, not an extension point. Write your own code against
/// the concrete connection type (`Handler<E, C>` and `Context<C>` in the inbox crate give you
/// `&mut C`). Every `Database` runs the operations of [`outbox::ops`](crate::ops).
#[async_trait::async_trait]
pub trait Database: AsyncConnection + Send + 'static + private::Sealed + crate::ops::sql::Sql {
    /// A short name for logs and errors: `"postgres"` or `"sqlite"`.
    const NAME: &'static str;

    /// How many migrations this build has for the backend.
    #[doc(hidden)]
    const MIGRATION_COUNT: usize;

    #[doc(hidden)]
    async fn migrate_schema(&mut self) -> Result<()>;

    /// The migrations of this build not applied to this database (all of them when it was
    /// never migrated), in order.
    #[doc(hidden)]
    async fn missing_migrations(&mut self) -> Result<Vec<&'static str>>;

    /// Opens a transaction that will write. PostgreSQL: `BEGIN`. SQLite: `BEGIN IMMEDIATE`, so
    /// the write lock is taken up front (waiting up to `busy_timeout`) instead of failing with
    /// `SQLITE_BUSY` when a read transaction tries to upgrade.
    #[doc(hidden)]
    async fn begin_write(&mut self) -> QueryResult<()>;

    #[doc(hidden)]
    async fn insert_messages(&mut self, rows: &[NewMessage]) -> Result<()>;

    // The relay.
    #[doc(hidden)]
    async fn claim(&mut self, limit: i64, in_flight: InFlight, holder: Fence<'_>) -> Result<Vec<Claimed>>;
    /// [`claim`](Self::claim) in a transaction of its own: behind a transaction pooler (see
    /// [`pooler`]) the statement's prepare and its run must reach one server connection.
    #[doc(hidden)]
    async fn claim_in_transaction(
        &mut self,
        limit: i64,
        in_flight: InFlight,
        holder: Fence<'_>,
    ) -> Result<Vec<Claimed>> {
        self.claim(limit, in_flight, holder).await
    }
    #[doc(hidden)]
    async fn acquire_lease(&mut self, name: &str, owner: Uuid, lease: Duration) -> Result<Option<i64>>;
    /// The name of a relay other than `name` that holds a live lease on this outbox, if any.
    #[doc(hidden)]
    async fn rival_lease(&mut self, name: &str) -> Result<Option<String>>;
    #[doc(hidden)]
    async fn release_lease(&mut self, name: &str, owner: Uuid, epoch: i64) -> Result<()>;
    #[doc(hidden)]
    async fn mark(&mut self, fence: Fence<'_>, marks: &Marks<'_>) -> Result<Option<Marked>>;
    /// Releases held rows whose key no longer has a failing row ahead of them (a hold that raced
    /// an operator's retry or discard). Returns how many were released.
    #[doc(hidden)]
    async fn release_orphans(&mut self) -> Result<usize>;
    #[doc(hidden)]
    async fn cleanup_sent(&mut self, retention: Duration, batch: i64) -> Result<usize>;
    /// Pending and parked rows per topic, for the relay's gauges and health.
    #[doc(hidden)]
    async fn backlog(&mut self) -> Result<Vec<TopicBacklog>>;
    /// Dead letters of one consumer group, for the inbox's `inbox_dead_letters` gauge.
    #[doc(hidden)]
    async fn dead_letter_count(&mut self, group: &str) -> Result<i64>;

    /// Wakes `wake` whenever another process commits outbox rows (PostgreSQL LISTEN/NOTIFY when
    /// the trigger is enabled). Returns when `shutdown` fires or when the backend has no such
    /// mechanism.
    #[doc(hidden)]
    async fn listen(_pool: ConnPool<Self>, _wake: Arc<Notify>, _shutdown: CancellationToken)
    where
        Self: Sized,
    {
    }

    // The inbox.
    #[doc(hidden)]
    async fn insert_dedup(&mut self, rows: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>>;
    #[doc(hidden)]
    async fn insert_dead_letters(&mut self, rows: &[NewDeadLetter<'_>]) -> QueryResult<()>;
    #[doc(hidden)]
    async fn store_position(&mut self, position: &NewPosition<'_>) -> QueryResult<()>;
    #[doc(hidden)]
    async fn load_positions(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> QueryResult<std::collections::HashMap<i32, StoredPosition>>;
    #[doc(hidden)]
    async fn prune_dedup(&mut self, group: &str, window: Duration, limit: i64) -> QueryResult<usize>;

    // Dead-letter replay and retention (docs/dead-letters.md).
    /// The ids of the dead letters `filter` matches, above `after`, in id order, at most `limit`.
    #[doc(hidden)]
    async fn dead_letter_ids(&mut self, filter: &DeadLetterFilter<'_>, after: i64, limit: i64)
    -> QueryResult<Vec<i64>>;
    /// In the open transaction: dead letter `id` of `group` (with a replay request, if
    /// `requested`), locked for this transaction. `None` when it is gone, belongs to another
    /// group, has no request (when asked for one), or (PostgreSQL) another transaction holds it
    /// (`FOR UPDATE SKIP LOCKED`); SQLite's `BEGIN IMMEDIATE` already excludes every other writer.
    #[doc(hidden)]
    async fn claim_dead_letter(
        &mut self,
        group: &str,
        id: i64,
        requested: bool,
    ) -> QueryResult<Option<StoredDeadLetter>>;
    /// Deletes dead letter `id` (in the replay's transaction). Returns how many rows went.
    #[doc(hidden)]
    async fn delete_dead_letter(&mut self, id: i64) -> QueryResult<usize>;
    /// Restarts the dedup window of `group`'s `message_id` now (in a replay's transaction: its
    /// effects commit now, so its duplicates must be recognised for a whole window from now).
    #[doc(hidden)]
    async fn renew_dedup(&mut self, group: &str, message_id: Uuid) -> QueryResult<usize>;
    /// Records a failed replay of dead letter `id`, if its attempt count is still `seen` (no
    /// other replay recorded one meanwhile): the new reason and error, one more attempt, and
    /// the replay request cleared. Returns how many rows changed.
    #[doc(hidden)]
    async fn record_replay_failure(&mut self, id: i64, seen: i32, reason: &str, error: &str) -> QueryResult<usize>;
    /// Sets `replay_requested_at` on the dead letters `filter` matches. Returns how many.
    #[doc(hidden)]
    async fn request_replay(&mut self, filter: &DeadLetterFilter<'_>) -> QueryResult<usize>;
    /// Deletes at most `limit` of `group`'s dead letters older than `retention` that have no
    /// replay request. Returns how many.
    #[doc(hidden)]
    async fn prune_dead_letters(&mut self, group: &str, retention: Duration, limit: i64) -> QueryResult<usize>;

    /// A token naming the open transaction, taken right after BEGIN, for
    /// [`same_transaction`](Self::same_transaction). PostgreSQL: `txid_current()` (assigns the
    /// transaction id). SQLite: nothing to take (0).
    #[doc(hidden)]
    async fn transaction_token(&mut self) -> QueryResult<i64>;

    /// Whether the transaction [`transaction_token`](Self::transaction_token) named is still the
    /// open one, checked after each handler: a handler that sent a raw `COMMIT` or `ROLLBACK`
    /// leaves the connection outside it. PostgreSQL compares `txid_current_if_assigned()` (NULL
    /// outside a transaction, another id in a new one) and fails when the transaction is
    /// aborted. SQLite probes with `BEGIN`, which fails only inside a transaction (when it
    /// succeeds, the transaction it opened is rolled back with the rest).
    #[doc(hidden)]
    async fn same_transaction(&mut self, token: i64) -> QueryResult<bool>;

    /// [`same_transaction`](Self::same_transaction) and then [`insert_dedup`](Self::insert_dedup),
    /// in one statement where the backend can (PostgreSQL: one round trip per message of a
    /// batch, which checks the previous handler and records the next message). `None`: the
    /// transaction is no longer the one `token` names, and nothing was inserted.
    #[doc(hidden)]
    async fn insert_dedup_in(&mut self, token: i64, rows: &[NewDedup<'_>]) -> QueryResult<Option<Vec<Uuid>>> {
        if !self.same_transaction(token).await? {
            return Ok(None);
        }
        self.insert_dedup(rows).await.map(Some)
    }
}

/// One outbox row as the writer stores it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub topic: &'static str,
    pub key: Option<String>,
    pub event_type: &'static str,
    pub event_version: i32,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

/// A claimed row, ready to produce.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub attempts: i32,
    /// An earlier row of its key is failing: not produced; the mark holds it (see [`Marks::hold`]).
    /// Its payload is not loaded.
    pub blocked: bool,
}

/// Everything one fenced mark transaction records for a finished batch.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Marks<'a> {
    /// Acknowledged by Kafka: deleted, or kept with `sent_at`.
    pub sent: &'a [i64],
    pub delete_sent: bool,
    pub failures: &'a [Failure],
    /// Rows the claim found blocked by a failing earlier row of their key: held (out of the
    /// pending index) if they are still blocked now.
    pub hold: &'a [i64],
    /// (topic, key) of sent rows that had failed before: their key's held rows are released.
    pub release: &'a [(String, String)],
}

/// A failed delivery to record.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Failure {
    pub seq: i64,
    pub error: String,
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
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub first: i64,
    pub last: i64,
    pub rows: i64,
}

/// Who claims or marks: the lease this relay must still hold for its claim or marks to count.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub lease: &'a str,
    pub owner: Uuid,
    pub epoch: i64,
    pub max_attempts: i32,
}

/// What a mark did.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Marked {
    pub sent: usize,
    pub failed: usize,
    pub parked: usize,
    pub held: usize,
    pub released: usize,
}

/// For the relay's gauges: the unsent rows of one topic.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct TopicBacklog {
    pub topic: String,
    pub pending: i64,
    pub parked: i64,
    pub oldest_pending_secs: Option<f64>,
}

/// One inbox dedup row: (group, message id) plus where the message was read.
#[doc(hidden)]
#[derive(Debug)]
pub struct NewDedup<'a> {
    pub consumer_group: &'a str,
    pub message_id: Uuid,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// One inbox dead-letter row.
#[doc(hidden)]
#[derive(Debug)]
pub struct NewDeadLetter<'a> {
    pub consumer_group: &'a str,
    pub message_id: Option<Uuid>,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Display form only (escaped text, see [`crate::raw_headers::display_json`]).
    pub headers: serde_json::Value,
    /// The headers byte for byte ([`crate::raw_headers::encode`]).
    pub raw_headers: Vec<u8>,
    pub reason: &'a str,
    pub error: String,
    pub attempts: i32,
}

/// Which dead letters a replay, a replay request or a listing acts on: every given condition
/// holds (`None`: any).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadLetterFilter<'a> {
    pub group: Option<&'a str>,
    pub ids: Option<&'a [i64]>,
    pub reason: Option<&'a str>,
    /// Only rows with a replay request.
    pub requested: bool,
}

/// A dead letter as a replay reads it back: the stored record and its bookkeeping.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub message_id: Option<Uuid>,
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The display form (rows written before migration 3 have only this).
    pub headers: serde_json::Value,
    /// The lossless headers ([`crate::raw_headers::encode`]); `None` before migration 3.
    pub raw_headers: Option<Vec<u8>>,
    pub reason: String,
    pub attempts: i32,
}

/// A consumer position to store: the next offset of a partition, and what log it is in.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct NewPosition<'a> {
    pub consumer_group: &'a str,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub next_offset: i64,
    /// The Kafka cluster id, when the cluster reported one.
    pub cluster_id: Option<&'a str>,
    /// Fingerprint of the record at `next_offset - 1`.
    pub fingerprint: Option<i64>,
    /// Overwrite the stored position even when it is higher: the log changed (new cluster,
    /// recreated topic) and the old offsets mean nothing in the new one.
    pub replace: bool,
}

/// A stored consumer position and the identity of the log it was stored for.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPosition {
    pub next_offset: i64,
    /// `None`: unknown (the cluster reported none, or the row predates migration 3).
    pub cluster_id: Option<String>,
    /// `None`: unknown (a row written before migration 3, or by hand).
    pub fingerprint: Option<i64>,
}

/// The transaction depth diesel-async tracks for `conn` (`None`: not in a transaction).
#[doc(hidden)]
pub fn transaction_depth<C: AsyncConnection>(conn: &mut C) -> QueryResult<Option<u32>> {
    use diesel_async::TransactionManager;
    C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth().map(|d| d.map(|d| d.get()))
}
