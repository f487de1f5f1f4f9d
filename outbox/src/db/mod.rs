//! The storage backends. Every SQL statement of the writer and the relay lives behind
//! [`Database`], implemented for PostgreSQL (`AsyncPgConnection`) and, with the `sqlite` feature,
//! for SQLite (`outbox::sqlite::SqliteConnection`). The rest of the crate is written once against
//! it. The `inbox` crate keeps its own statements (its `store` module) and reaches the concrete
//! connection through [`Database::backend`].

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
pub mod prepared;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

mod private {
    pub trait Sealed {}
}

/// A database the outbox (and the inbox) can store their tables in: PostgreSQL's
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
    /// Wakes `wake` whenever another process commits outbox rows (PostgreSQL LISTEN/NOTIFY when
    /// the trigger is enabled). Returns when `shutdown` fires or when the backend has no such
    /// mechanism.
    #[doc(hidden)]
    async fn listen(_pool: ConnPool<Self>, _wake: Arc<Notify>, _shutdown: CancellationToken)
    where
        Self: Sized,
    {
    }

    /// The concrete connection behind a `C: Database`, for code that keeps SQL of its own per
    /// backend (the `inbox` crate's storage does) while staying generic over `C`.
    fn backend(&mut self) -> Backend<'_>;
}

/// Which database a [`Database`] connection is, with the connection: what
/// [`Database::backend`] returns. Match on it to run backend-specific SQL from code written
/// against `C: Database`. New backends may be added (`#[non_exhaustive]`): give the other arm a
/// clear error.
#[non_exhaustive]
pub enum Backend<'a> {
    /// PostgreSQL.
    Postgres(&'a mut diesel_async::AsyncPgConnection),
    /// SQLite (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    Sqlite(&'a mut crate::sqlite::SqliteConnection),
}

impl std::fmt::Debug for Backend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Postgres(_) => "Backend::Postgres",
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "Backend::Sqlite",
        })
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

/// The transaction depth diesel-async tracks for `conn` (`None`: not in a transaction; 1: a
/// transaction, 2 and more: savepoints inside it). The relay's pool and the inbox check it to
/// see whether a handler or a caller left a transaction open.
pub fn transaction_depth<C: AsyncConnection>(conn: &mut C) -> QueryResult<Option<u32>> {
    use diesel_async::TransactionManager;
    C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth().map(|d| d.map(|d| d.get()))
}
