//! PostgreSQL behind a transaction-pooling proxy (PgBouncer `pool_mode = transaction` before 1.21,
//! or without `max_prepared_statements`): connections whose prepared statements never outlive
//! the transaction they were made in. See `docs/pgbouncer.md` in the repository.
//!
//! Such a pooler hands each transaction — and each statement outside one — whichever server
//! connection is free. diesel-async 0.9 prepares every statement as a *named* statement
//! (`tokio_postgres::Client::prepare_typed`, named `s0`, `s1`, ...) in one round trip and runs it
//! in the next, and keeps it in a per-connection cache for later transactions: behind such a
//! pooler the next transaction runs on another server connection and fails with
//! `prepared statement "s2594" does not exist`. diesel-async has no way to use the unnamed
//! statement, so the SDK makes the named ones safe instead:
//!
//! - [`Manager`] (a bb8 manager) and [`establish`] make connections with diesel-async's statement
//!   cache **disabled** (each statement is prepared, run and closed where it is used), run the
//!   two `SET` statements diesel-async sends at connect inside a transaction, and test
//!   check-outs with a simple-protocol `SELECT 1` (diesel-async's test is a prepared statement);
//! - every statement of the writer, the relay, the inbox and [`crate::ops`] runs inside a
//!   transaction, so its Parse, Bind, Execute and Close reach one server connection. The writer's
//!   and the inbox's already do (yours: `publish` belongs in your transaction); the relay's claim
//!   gets a `BEGIN`/`COMMIT` of its own on pools built with [`Manager`], detected by the pool's
//!   manager type;
//! - the relay does not LISTEN on such a pool (LISTEN needs a session): `listen(true)` is refused
//!   by `RelayBuilder::build`, and by default the relay polls every `poll_interval`.
//!
//! Your own diesel queries on these connections work too, as long as they run inside a
//! transaction (outside one, a statement's prepare and its execution are two pooler
//! transactions). Custom PostgreSQL types (enums, domains) in your queries are a caveat:
//! tokio-postgres looks them up with a named statement it caches for the life of the connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = std::env::var("DATABASE_URL")?; // PgBouncer's address
//! let pool = bb8::Pool::builder()
//!     .queue_strategy(bb8::QueueStrategy::Lifo)
//!     .build(outbox::pooler::Manager::new(url))
//!     .await?;
//! let mut conn = pool.get().await?;
//! outbox::transaction(&mut *conn, async |tx| {
//!     // ... your business change, then outbox::publish(tx, &event) ...
//!     # let _ = tx;
//!     Ok::<_, outbox::Error>(())
//! })
//! .await?;
//! # Ok(()) }
//! ```

use diesel::ConnectionResult;
use diesel::connection::CacheSize;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;

/// A bb8 connection manager for PostgreSQL behind a transaction pooler: connections as
/// [`establish`] makes them, tested at check-out with a simple-protocol `SELECT 1`. The relay and
/// the inbox recognise pools built with it (see the [module docs](self)).
pub struct Manager {
    inner: AsyncDieselConnectionManager<AsyncPgConnection>,
}

/// A bb8 pool of [`Manager`] connections.
pub type Pool = bb8::Pool<Manager>;

impl Manager {
    /// A manager connecting to `url` (the pooler's address), like diesel-async's
    /// `AsyncDieselConnectionManager::new`.
    pub fn new(url: impl Into<String>) -> Self {
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = Box::new(|url| establish(url).boxed());
        config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
            async move { conn.batch_execute("SELECT 1").await }.boxed()
        }));
        Self { inner: AsyncDieselConnectionManager::new_with_config(url, config) }
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outbox::pooler::Manager")
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = AsyncPgConnection;
    type Error = PoolError;

    async fn connect(&self) -> Result<AsyncPgConnection, PoolError> {
        self.inner.connect().await
    }

    async fn is_valid(&self, conn: &mut AsyncPgConnection) -> Result<(), PoolError> {
        self.inner.is_valid(conn).await
    }

    fn has_broken(&self, conn: &mut AsyncPgConnection) -> bool {
        self.inner.has_broken(conn)
    }
}

/// One connection for use behind a transaction pooler (see the [module docs](self)): the
/// statement cache is disabled and diesel-async's connect-time `SET TIME ZONE 'UTC'` and
/// `SET CLIENT_ENCODING TO 'UTF8'` run inside a transaction (PgBouncer carries both settings over
/// to whichever server connection serves this client later).
pub async fn establish(url: &str) -> ConnectionResult<AsyncPgConnection> {
    let bad = |e: tokio_postgres::Error| diesel::ConnectionError::BadConnection(e.to_string());
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(bad)?;
    // The connection task is not running yet: drive it here until BEGIN is answered.
    tokio::select! {
        begun = client.batch_execute("BEGIN") => begun.map_err(bad)?,
        ended = &mut connection => {
            return Err(diesel::ConnectionError::BadConnection(match ended {
                Ok(()) => "connection closed before BEGIN was answered".into(),
                Err(e) => e.to_string(),
            }));
        }
    }
    let mut conn = AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
    conn.batch_execute("COMMIT").await.map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    Ok(conn)
}

/// Whether `M` is [`Manager`]: the relay's claim then runs in a transaction of its own and the
/// relay does not LISTEN.
pub(crate) fn is_transaction_pooled<M: 'static>() -> bool {
    std::any::TypeId::of::<M>() == std::any::TypeId::of::<Manager>()
}
