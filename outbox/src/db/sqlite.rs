//! SQLite, through diesel-async's `SyncConnectionWrapper` (each statement runs on tokio's
//! blocking pool): the connection, its set-up and pool, the migrations and the writer's statements
//! (the relay's are in `relay/sqlite.rs`, the inbox's in the inbox crate). Same tables and the same semantics as PostgreSQL, with these differences:
//! times the relay computes with are integer milliseconds, ids and headers are text, there is
//! no LISTEN/NOTIFY (relays in other processes poll), and SQLite has one writer at a time, so
//! every transaction the SDK opens is `BEGIN IMMEDIATE` and connections wait for the lock up to
//! `busy_timeout` instead of failing.

use std::time::Duration;

use diesel::connection::AnsiTransactionManager;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};

use super::{Database, NewMessage};
use crate::{Error, ErrorKind, Result};

/// The SQLite connection type the SDK works with.
pub type SqliteConnection = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>;

impl super::private::Sealed for SqliteConnection {}

/// The embedded SQLite migrations of the outbox's tables, in order: `(version, up.sql)`.
pub(crate) const MIGRATIONS: &[(&str, &str)] = &[
    ("00000000000001_outbox", include_str!("../../migrations/sqlite/00000000000001_outbox/up.sql")),
    ("00000000000004_relay_held_keys", include_str!("../../migrations/sqlite/00000000000004_relay_held_keys/up.sql")),
];

/// Milliseconds since the Unix epoch, in SQL.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}
pub(crate) use now_ms;

mod schema {
    diesel::table! {
        outbox_messages (seq) {
            seq -> BigInt,
            id -> Text,
            topic -> Text,
            key -> Nullable<Text>,
            event_type -> Text,
            event_version -> Integer,
            payload -> Binary,
            headers -> Text,
            occurred_at -> Text,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = schema::outbox_messages, treat_none_as_null = true)]
struct Row {
    id: String,
    topic: &'static str,
    key: Option<String>,
    event_type: &'static str,
    event_version: i32,
    payload: Vec<u8>,
    headers: String,
    occurred_at: String,
}

pub(crate) fn json_array<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

impl super::migrations::MigrationStore for SqliteConnection {
    const MIGRATION_SQL: &'static super::migrations::MigrationSql = &super::migrations::MigrationSql {
        // SQLite resolves names at prepare time: the table is looked up before it is read.
        table_exists: "SELECT count(*) > 0 AS present FROM sqlite_master WHERE type = 'table' \
                       AND name = 'outbox_schema_migrations'",
        placement: None,
        rights: None,
        // The runner's transaction starts with BEGIN IMMEDIATE: the write lock is taken then.
        lock: None,
        create_table: concat!(
            "CREATE TABLE IF NOT EXISTS outbox_schema_migrations (version TEXT PRIMARY KEY, ",
            "applied_at INTEGER NOT NULL DEFAULT (",
            now_ms!(),
            "))"
        ),
        record: "INSERT OR IGNORE INTO outbox_schema_migrations (version) VALUES (?1)",
        sqlite: true,
    };
}

#[async_trait::async_trait]
impl super::WriterStore for SqliteConnection {
    async fn begin_write(&mut self) -> QueryResult<()> {
        self.spawn_blocking(|conn| AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE")).await
    }

    async fn insert_messages(&mut self, rows: &[NewMessage]) -> Result<()> {
        let values: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                id: r.id.hyphenated().to_string(),
                topic: r.topic,
                key: r.key.clone(),
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload.clone(),
                headers: r.headers.to_string(),
                occurred_at: crate::envelope::format_time(r.occurred_at),
            })
            .collect();
        // One hop to the blocking pool for the whole batch; diesel's synchronous SQLite
        // connection inserts the rows with one prepared statement.
        self.spawn_blocking(move |conn| {
            diesel::RunQueryDsl::execute(diesel::insert_into(schema::outbox_messages::table).values(values), conn)
        })
        .await?;
        Ok(())
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
impl Database for SqliteConnection {
    const NAME: &'static str = "sqlite";

    fn backend(&mut self) -> super::Backend<'_> {
        super::Backend::Sqlite(self)
    }
}

/// Opens one SQLite connection set up the way the SDK expects: WAL journal (readers never block
/// the writer), `busy_timeout` 10 s (wait for the write lock instead of failing),
/// `synchronous = NORMAL` (durable at checkpoints in WAL mode; FULL with `synchronous = FULL`
/// if every commit must survive power loss), foreign keys on.
///
/// `url` is a file path, a `file:` URI, or either prefixed with `sqlite://`. In-memory
/// databases are refused: each connection of a pool would get its own empty database.
pub async fn connect(url: &str) -> Result<SqliteConnection> {
    let path = normalize(url)?;
    let mut conn = SqliteConnection::establish(&path)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Database, format!("sqlite: cannot open `{path}`"), e))?;
    setup(&mut conn).await?;
    Ok(conn)
}

/// How long a connection waits for a lock: `busy_timeout`, and the retries of the switch to WAL.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the settings [`connect`] documents.
///
/// Switching a database to WAL needs an exclusive lock, and SQLite asks for it without calling
/// the busy handler: while any other connection holds even a read lock (a pool filling up,
/// several instances opening a new database at once) `PRAGMA journal_mode = WAL` fails at once
/// with `database is locked`, whatever `busy_timeout` says. So the switch is retried here, for
/// as long as `busy_timeout` would have waited (the mode is stored in the file: only a new
/// database is switched).
async fn setup(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute(&format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis())).await?;
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pauses =
        crate::RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(50)).without_jitter().delays();
    let mut pause = pauses.next().unwrap_or_default();
    loop {
        match conn.batch_execute("PRAGMA journal_mode = WAL").await {
            Ok(()) => break,
            Err(e) if is_locked(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = pauses.next().unwrap_or(pause);
            }
            Err(e) => return Err(e),
        }
    }
    conn.batch_execute("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;").await
}

/// SQLite's `SQLITE_BUSY` as diesel reports it (diesel has no kind of its own for it).
fn is_locked(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(_, info) if info.message().contains("database is locked"))
}

fn normalize(url: &str) -> Result<String> {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if path.is_empty() || path == ":memory:" || path.contains("mode=memory") {
        return Err(Error::config(format!(
            "sqlite: `{url}` is not usable: give a file path (an in-memory database is private to one \
             connection, so the relay and the inbox would not see your rows)"
        )));
    }
    Ok(path.to_owned())
}

/// A pool of SQLite connections (diesel-async's bb8 pool), for the relay, the inbox and your code.
pub type Pool = diesel_async::pooled_connection::bb8::Pool<SqliteConnection>;

/// A pool of at most `max_size` connections to the SQLite database at `url`, each opened with
/// [`connect`]'s settings. Checks that the database can be opened before returning.
///
/// SQLite has one writer at a time: the SDK's own transactions start with `BEGIN IMMEDIATE` and
/// wait for the lock. In your code, start transactions that read before they write with
/// `conn.immediate_transaction(..)` rather than `conn.transaction(..)`, or SQLite may answer
/// `database is locked` when the read has to be upgraded to a write.
pub async fn pool(url: &str, max_size: u32) -> Result<Pool> {
    use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
    use futures_util::FutureExt;
    if max_size == 0 {
        return Err(Error::config("sqlite: the pool needs at least one connection"));
    }
    let path = normalize(url)?;
    let mut config = ManagerConfig::<SqliteConnection>::default();
    config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        async move {
            let mut conn = SqliteConnection::establish(&url).await?;
            setup(&mut conn).await.map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<SqliteConnection>::new_with_config(path.clone(), config);
    Pool::builder()
        .max_size(max_size)
        .build(manager)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Database, format!("sqlite: cannot open `{path}`"), e))
}
