//! The two storage backends the writer, relay and inbox suites run against, and the few pieces of
//! SQL that differ between them.
//!
//! A suite writes each test once as `async fn name<B: Backend>()` and lists it in
//! [`backends!`](crate::backends), which generates `postgres::name` (a fresh database on the
//! `DATABASE_URL` server) and `sqlite::name` (a fresh file in a temporary directory).
//!
//! Test code that has to touch the database with backend-specific SQL (handlers writing their
//! effects, loading full rows) goes through [`TestConn`], implemented once per connection type.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use outbox::sqlite::SqliteConnection;
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

impl Backend for Pg {
    const NAME: &'static str = "postgres";
    const MIGRATIONS: usize = outbox::POSTGRES_MIGRATIONS.len() + inbox::POSTGRES_MIGRATIONS.len();
    type Conn = AsyncPgConnection;
    type Manager = AsyncDieselConnectionManager<AsyncPgConnection>;

    async fn create() -> Store {
        let name = fresh_name();
        let mut admin = AsyncPgConnection::establish(&crate::server_url()).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
        let url = crate::with_database(&crate::server_url(), &name);
        Store { url, name, dir: None }
    }

    async fn connect(url: &str) -> AsyncPgConnection {
        AsyncPgConnection::establish(url).await.expect("connect to test database")
    }

    async fn pool(url: &str, size: u32) -> bb8::Pool<Self::Manager> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        bb8::Pool::builder().max_size(size).build(manager).await.expect("pool")
    }
}

impl Backend for Sqlite {
    const NAME: &'static str = "sqlite";
    const MIGRATIONS: usize = outbox::SQLITE_MIGRATIONS.len() + inbox::SQLITE_MIGRATIONS.len();
    type Conn = SqliteConnection;
    type Manager = AsyncDieselConnectionManager<SqliteConnection>;

    async fn create() -> Store {
        let name = fresh_name();
        let dir = TempDir::new(&name);
        let url = dir.path().join("test.db").to_str().expect("utf-8 temp path").to_owned();
        Store { url, name, dir: Some(dir) }
    }

    async fn connect(url: &str) -> SqliteConnection {
        outbox::sqlite::connect(url).await.expect("open test database")
    }

    async fn pool(url: &str, size: u32) -> bb8::Pool<Self::Manager> {
        outbox::sqlite::pool(url, size).await.expect("pool")
    }
}

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

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct TextValue {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

#[derive(QueryableByName)]
struct FollowUpRow {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    headers: String,
}

// Both backends load dead letters with uuid and json columns as text.
#[derive(QueryableByName)]
struct DeadLetterText {
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

impl From<DeadLetterText> for DeadLetterRow {
    fn from(r: DeadLetterText) -> Self {
        DeadLetterRow {
            message_id: r.message_id.map(|id| id.parse().expect("dead letter message_id is a uuid")),
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            headers: serde_json::from_str(&r.headers).expect("dead letter headers are JSON"),
            reason: r.reason,
            error: r.error,
            attempts: r.attempts,
        }
    }
}

#[derive(QueryableByName)]
struct RawDeadLetterRow {
    #[diesel(sql_type = Text)]
    consumer_group: String,
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    raw_headers: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
}

impl From<RawDeadLetterRow> for crate::inbox_support::RawDeadLetter {
    fn from(r: RawDeadLetterRow) -> Self {
        crate::inbox_support::RawDeadLetter {
            consumer_group: r.consumer_group,
            message_id: r.message_id,
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            raw_headers: r.raw_headers,
            reason: r.reason,
            error: r.error,
        }
    }
}

// The same text on both backends (CAST AS TEXT: uuid on PostgreSQL, text already on SQLite).
const RAW_DEAD_LETTERS: &str = "SELECT consumer_group, CAST(message_id AS TEXT) AS message_id, kafka_partition, \
    kafka_offset, key, payload, raw_headers, reason, error FROM inbox_dead_letters WHERE consumer_group = ";

fn follow_up(r: FollowUpRow) -> (String, String, serde_json::Value) {
    (r.topic, r.event_type, serde_json::from_str(&r.headers).expect("outbox headers are JSON"))
}

#[async_trait::async_trait]
impl TestConn for AsyncPgConnection {
    const EFFECTS: &'static str = "CREATE TABLE effects (message_id uuid NOT NULL, grp text, n bigint, \
                                   attempt int, kafka_partition int, consumer text)";

    async fn count(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).await.expect(sql).n
    }

    async fn exec(&mut self, sql: &str) {
        self.batch_execute(sql).await.expect(sql)
    }

    async fn insert_effect(&mut self, e: Effect<'_>) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO effects (message_id, grp, n, attempt, kafka_partition, consumer) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind::<diesel::sql_types::Uuid, _>(e.message_id)
        .bind::<Nullable<Text>, _>(e.grp)
        .bind::<Nullable<BigInt>, _>(e.n)
        .bind::<Nullable<Integer>, _>(e.attempt)
        .bind::<Nullable<Integer>, _>(e.kafka_partition)
        .bind::<Nullable<Text>, _>(e.consumer)
        .execute(self)
        .await
        .map(drop)
    }

    async fn outbox_rows(&mut self) -> Vec<OutboxRow> {
        use diesel::sql_types::{Jsonb, Timestamptz};
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            seq: i64,
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: Uuid,
            #[diesel(sql_type = Text)]
            topic: String,
            #[diesel(sql_type = Nullable<Text>)]
            key: Option<String>,
            #[diesel(sql_type = Text)]
            event_type: String,
            #[diesel(sql_type = Integer)]
            event_version: i32,
            #[diesel(sql_type = Binary)]
            payload: Vec<u8>,
            #[diesel(sql_type = Jsonb)]
            headers: serde_json::Value,
            #[diesel(sql_type = Timestamptz)]
            occurred_at: chrono::DateTime<chrono::Utc>,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Text>)]
            last_error: Option<String>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            sent_at: Option<chrono::DateTime<chrono::Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            parked_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT * FROM outbox_messages ORDER BY seq").load(self).await.expect("outbox rows");
        rows.into_iter()
            .map(|r| OutboxRow {
                seq: r.seq,
                id: r.id,
                topic: r.topic,
                key: r.key,
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload,
                headers: r.headers,
                occurred_at: r.occurred_at,
                attempts: r.attempts,
                last_error: r.last_error,
                sent_at: r.sent_at,
                parked_at: r.parked_at,
            })
            .collect()
    }

    async fn dead_letters(&mut self) -> Vec<DeadLetterRow> {
        let rows: Vec<DeadLetterText> = diesel::sql_query(
            "SELECT message_id::text AS message_id, kafka_offset, key, payload, headers::text AS headers, reason, \
             error, attempts FROM inbox_dead_letters ORDER BY kafka_offset",
        )
        .load(self)
        .await
        .expect("dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn raw_dead_letters(&mut self, group: &str) -> Vec<crate::inbox_support::RawDeadLetter> {
        let sql = format!("{RAW_DEAD_LETTERS}$1 ORDER BY kafka_partition, kafka_offset");
        let rows: Vec<RawDeadLetterRow> =
            diesel::sql_query(sql).bind::<Text, _>(group).load(self).await.expect("raw dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn outbox_insert_statements(&mut self) -> Option<i64> {
        // Distinct cmin values: one command id means one statement.
        Some(self.count("SELECT count(DISTINCT cmin::text) AS n FROM outbox_messages").await)
    }

    async fn follow_ups(&mut self, causation_id: &str) -> Vec<(String, String, serde_json::Value)> {
        let rows: Vec<FollowUpRow> = diesel::sql_query(
            "SELECT topic, event_type, headers::text AS headers FROM outbox_messages \
             WHERE headers->>'ce_causationid' = $1",
        )
        .bind::<Text, _>(causation_id)
        .load(self)
        .await
        .expect("follow-ups");
        rows.into_iter().map(follow_up).collect()
    }

    async fn inbox_snapshot(&mut self, group: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for sql in [
            "SELECT string_agg(message_id::text || ':' || n, ',' ORDER BY message_id, n) AS v \
             FROM effects WHERE grp = $1",
            "SELECT string_agg(message_id::text || '@' || topic || '/' || kafka_partition || '/' || kafka_offset, \
             ',' ORDER BY message_id) AS v FROM inbox_messages WHERE consumer_group = $1",
            "SELECT string_agg(concat_ws('|', message_id, topic, kafka_partition, kafka_offset, reason, attempts, \
             md5(payload), md5(key), headers->>'ce_id'), ',' ORDER BY kafka_partition, kafka_offset) AS v \
             FROM inbox_dead_letters WHERE consumer_group = $1",
            "SELECT string_agg(topic || '/' || kafka_partition || '=' || next_offset, ',' \
             ORDER BY topic, kafka_partition) AS v FROM inbox_offsets WHERE consumer_group = $1",
        ] {
            let row: TextValue = diesel::sql_query(sql).bind::<Text, _>(group).get_result(self).await.expect(sql);
            out.push(row.v);
        }
        out
    }

    async fn insert_aged_dedup_rows(&mut self, group: &str, count: i64, age: Duration) {
        let sql = format!(
            "INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset, handled_at) \
             SELECT '{group}', gen_random_uuid(), 'orders', 0, g, {} FROM generate_series(1, {count}) AS g",
            Self::sql_ago(age)
        );
        self.exec(&sql).await
    }

    fn sql_ago(age: Duration) -> String {
        format!("now() - interval '{} seconds'", age.as_secs())
    }
}

const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).expect("a time in range")
}

#[async_trait::async_trait]
impl TestConn for SqliteConnection {
    const EFFECTS: &'static str = "CREATE TABLE effects (message_id TEXT NOT NULL, grp TEXT, n INTEGER, \
                                   attempt INTEGER, kafka_partition INTEGER, consumer TEXT)";

    async fn count(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).await.expect(sql).n
    }

    async fn exec(&mut self, sql: &str) {
        self.batch_execute(sql).await.expect(sql)
    }

    async fn insert_effect(&mut self, e: Effect<'_>) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO effects (message_id, grp, n, attempt, kafka_partition, consumer) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind::<Text, _>(e.message_id.to_string())
        .bind::<Nullable<Text>, _>(e.grp)
        .bind::<Nullable<BigInt>, _>(e.n)
        .bind::<Nullable<Integer>, _>(e.attempt)
        .bind::<Nullable<Integer>, _>(e.kafka_partition)
        .bind::<Nullable<Text>, _>(e.consumer)
        .execute(self)
        .await
        .map(drop)
    }

    async fn outbox_rows(&mut self) -> Vec<OutboxRow> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            seq: i64,
            #[diesel(sql_type = Text)]
            id: String,
            #[diesel(sql_type = Text)]
            topic: String,
            #[diesel(sql_type = Nullable<Text>)]
            key: Option<String>,
            #[diesel(sql_type = Text)]
            event_type: String,
            #[diesel(sql_type = Integer)]
            event_version: i32,
            #[diesel(sql_type = Binary)]
            payload: Vec<u8>,
            #[diesel(sql_type = Text)]
            headers: String,
            #[diesel(sql_type = Text)]
            occurred_at: String,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Text>)]
            last_error: Option<String>,
            #[diesel(sql_type = Nullable<BigInt>)]
            sent_at: Option<i64>,
            #[diesel(sql_type = Nullable<BigInt>)]
            parked_at: Option<i64>,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT * FROM outbox_messages ORDER BY seq").load(self).await.expect("outbox rows");
        rows.into_iter()
            .map(|r| OutboxRow {
                seq: r.seq,
                id: r.id.parse().expect("outbox id is a uuid"),
                topic: r.topic,
                key: r.key,
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload,
                headers: serde_json::from_str(&r.headers).expect("outbox headers are JSON"),
                occurred_at: chrono::DateTime::parse_from_rfc3339(&r.occurred_at)
                    .expect("occurred_at is RFC 3339")
                    .with_timezone(&chrono::Utc),
                attempts: r.attempts,
                last_error: r.last_error,
                sent_at: r.sent_at.map(from_ms),
                parked_at: r.parked_at.map(from_ms),
            })
            .collect()
    }

    async fn dead_letters(&mut self) -> Vec<DeadLetterRow> {
        let rows: Vec<DeadLetterText> = diesel::sql_query(
            "SELECT message_id, kafka_offset, key, payload, headers, reason, error, attempts \
             FROM inbox_dead_letters ORDER BY kafka_offset",
        )
        .load(self)
        .await
        .expect("dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn raw_dead_letters(&mut self, group: &str) -> Vec<crate::inbox_support::RawDeadLetter> {
        let sql = format!("{RAW_DEAD_LETTERS}?1 ORDER BY kafka_partition, kafka_offset");
        let rows: Vec<RawDeadLetterRow> =
            diesel::sql_query(sql).bind::<Text, _>(group).load(self).await.expect("raw dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn outbox_insert_statements(&mut self) -> Option<i64> {
        None // SQLite keeps no per-row trace of the statement that wrote it
    }

    async fn follow_ups(&mut self, causation_id: &str) -> Vec<(String, String, serde_json::Value)> {
        let rows: Vec<FollowUpRow> = diesel::sql_query(
            "SELECT topic, event_type, headers FROM outbox_messages WHERE headers->>'ce_causationid' = ?1",
        )
        .bind::<Text, _>(causation_id)
        .load(self)
        .await
        .expect("follow-ups");
        rows.into_iter().map(follow_up).collect()
    }

    async fn inbox_snapshot(&mut self, group: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for sql in [
            "SELECT group_concat(message_id || ':' || n, ',' ORDER BY message_id, n) AS v \
             FROM effects WHERE grp = ?1",
            "SELECT group_concat(message_id || '@' || topic || '/' || kafka_partition || '/' || kafka_offset, \
             ',' ORDER BY message_id) AS v FROM inbox_messages WHERE consumer_group = ?1",
            "SELECT group_concat(concat_ws('|', message_id, topic, kafka_partition, kafka_offset, reason, attempts, \
             hex(payload), hex(key), headers->>'ce_id'), ',' ORDER BY kafka_partition, kafka_offset) AS v \
             FROM inbox_dead_letters WHERE consumer_group = ?1",
            "SELECT group_concat(topic || '/' || kafka_partition || '=' || next_offset, ',' \
             ORDER BY topic, kafka_partition) AS v FROM inbox_offsets WHERE consumer_group = ?1",
        ] {
            let row: TextValue = diesel::sql_query(sql).bind::<Text, _>(group).get_result(self).await.expect(sql);
            out.push(row.v);
        }
        out
    }

    async fn insert_aged_dedup_rows(&mut self, group: &str, count: i64, age: Duration) {
        let sql = format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {count}) \
             INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset, handled_at) \
             SELECT '{group}', lower(hex(randomblob(16))), 'orders', 0, i, {} FROM g",
            Self::sql_ago(age)
        );
        self.exec(&sql).await
    }

    fn sql_ago(age: Duration) -> String {
        format!("({SQLITE_NOW_MS} - {})", age.as_millis())
    }
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
