//! The two storage backends the writer, relay and inbox suites run against, and the few pieces of
//! SQL that differ between them.
//!
//! A suite writes each test once as `async fn name<B: Backend>()` and lists it in
//! [`backends!`](crate::backends), which generates `postgres::name` (a fresh database on the
//! `DATABASE_URL` server) and `sqlite::name` (a fresh file in a temporary directory).
//!
//! Test code that has to touch the database with backend-specific SQL (handlers writing their
//! effects, loading full rows) goes through [`TestConn`], implemented once per connection type.//!
//! This module holds the traits, the backend types and the rows the suites compare; `postgres`
//! and `sqlite` implement them (the per-backend SQL), `query` holds the row types both
//! implementations load.

mod postgres;
mod query;
mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncConnection;
use uuid::Uuid;

/// A storage backend of the suites.
pub trait Backend: Send + Sync + Sized + 'static {
    /// `"postgres"` or `"sqlite"`.
    const NAME: &'static str;
    /// How many migrations `outbox::migrate` and `inbox::migrate` record on this backend.
    const MIGRATIONS: usize;
    /// The SDK connection type.
    type Conn: outbox::Database + TestConn;
    /// The bb8 manager of [`pool`](Self::pool)'s pools.
    type Manager: bb8::ManageConnection<Connection = Self::Conn, Error: std::error::Error> + Send + Sync;

    /// A fresh, empty (unmigrated) database: its URL, a name for logs, and what to keep alive
    /// while it is in use.
    fn create() -> impl Future<Output = Store> + Send;
    /// One connection to `url`.
    fn connect(url: &str) -> impl Future<Output = Self::Conn> + Send;
    /// A pool of at most `size` connections to `url`.
    fn pool(url: &str, size: u32) -> impl Future<Output = bb8::Pool<Self::Manager>> + Send;
}

/// A database made by [`Backend::create`].
pub struct Store {
    pub url: String,
    pub name: String,
    pub dir: Option<TempDir>,
}

/// A directory removed on drop (the SQLite database file and its WAL live in it).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new directory under the system's temp dir.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join("outbox-tests").join(name);
        std::fs::create_dir_all(&path).expect("create the test directory");
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fresh_name() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// PostgreSQL: a new database on the `DATABASE_URL` server per test.
pub struct Pg;

/// SQLite: a new database file in a temporary directory per test.
pub struct Sqlite;

/// One row of `outbox_messages`, the same on both backends.
#[derive(Debug)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub parked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One row of `inbox_dead_letters`, the same on both backends.
#[derive(Debug)]
pub struct DeadLetterRow {
    pub message_id: Option<Uuid>,
    pub kafka_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: serde_json::Value,
    pub reason: String,
    pub error: String,
    pub attempts: i32,
}

/// One row of the suites' `effects` table (every column but `message_id` is optional, so each
/// suite sets the ones it checks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Effect<'a> {
    pub message_id: Uuid,
    pub grp: Option<&'a str>,
    pub n: Option<i64>,
    pub attempt: Option<i32>,
    pub kafka_partition: Option<i32>,
    pub consumer: Option<&'a str>,
}

impl Effect<'_> {
    pub fn of(message_id: Uuid) -> Self {
        Effect { message_id, ..Default::default() }
    }
}

/// The test side's SQL on one connection type: what a generic handler or test needs and cannot
/// write once for both backends (placeholders, uuid vs text, jsonb vs text, timestamps vs ms).
#[async_trait::async_trait]
pub trait TestConn: AsyncConnection + Send + 'static {
    /// Runs a one-value query such as `SELECT count(*) AS n FROM outbox_messages` (the value
    /// must be an integer named `n`).
    async fn count(&mut self, sql: &str) -> i64;

    /// Runs SQL statements (no results).
    async fn exec(&mut self, sql: &str);

    /// Creates the suites' `effects` table: `message_id` (uuid / text), `grp`, `n`, `attempt`,
    /// `kafka_partition`, `consumer`.
    async fn create_effects(&mut self) {
        self.exec(Self::EFFECTS).await
    }

    #[doc(hidden)]
    const EFFECTS: &'static str;

    /// Inserts one `effects` row (from a handler, inside the inbox transaction).
    async fn insert_effect(&mut self, effect: Effect<'_>) -> QueryResult<()>;

    /// Every `outbox_messages` row, in seq order.
    async fn outbox_rows(&mut self) -> Vec<OutboxRow>;

    /// `(id, last_error, attempts)` of the parked outbox rows.
    async fn parked_rows(&mut self) -> Vec<(Uuid, Option<String>, i32)> {
        self.outbox_rows()
            .await
            .into_iter()
            .filter(|r| r.parked_at.is_some())
            .map(|r| (r.id, r.last_error, r.attempts))
            .collect()
    }

    /// Every `inbox_dead_letters` row, in offset order.
    async fn dead_letters(&mut self) -> Vec<DeadLetterRow>;

    /// `group`'s dead letters with their raw headers, in (partition, offset) order.
    async fn raw_dead_letters(&mut self, group: &str) -> Vec<crate::inbox_support::RawDeadLetter>;

    /// How many statements inserted the current `outbox_messages` rows, where the backend can
    /// tell (PostgreSQL: distinct command ids); `None` on SQLite.
    async fn outbox_insert_statements(&mut self) -> Option<i64>;

    /// `(topic, event_type, headers)` of the outbox rows whose `ce_causationid` header is `id`.
    async fn follow_ups(&mut self, causation_id: &str) -> Vec<(String, String, serde_json::Value)>;

    /// `group`'s rows in every inbox table and in `effects`, as comparable text.
    async fn inbox_snapshot(&mut self, group: &str) -> Vec<Option<String>>;

    /// Inserts `count` dedup rows for `group`, handled `age` ago.
    async fn insert_aged_dedup_rows(&mut self, group: &str, count: i64, age: Duration);

    /// An SQL expression for "`age` before now" in the type of the inbox's `handled_at`.
    fn sql_ago(age: Duration) -> String
    where
        Self: Sized;
}

/// Generates one test per backend from generic `async fn name<B: Backend>()` functions:
/// `postgres::name` and `sqlite::name`, each on a multi-threaded runtime.
///
/// ```text
/// async fn delivers<B: Backend>() { let db = TestDb::<B>::fresh().await; .. }
/// tests::backends!(delivers, retries);
/// ```
#[macro_export]
macro_rules! backends {
    ($($test:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<$crate::Pg>().await
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<$crate::Sqlite>().await
                }
            )+
        }
    };
}
