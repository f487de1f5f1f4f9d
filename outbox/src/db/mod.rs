//! The storage backends. Every SQL statement of the writer and the relay lives behind
//! [`Database`], implemented for PostgreSQL (`AsyncPgConnection`) and, with the `sqlite` feature,
//! for SQLite (`outbox::sqlite::SqliteConnection`). The rest of the crate is written once against
//! it. The `inbox` crate keeps its own statements (its `store` module) and reaches the concrete
//! connection through [`Database::backend`].

use diesel::QueryResult;
use diesel_async::AsyncConnection;

pub use pool::{ConnPool, Pooled};
pub use relay::{Claimed, Failure, Fence, InFlight, Marked, Marks, RelayStore, TopicBacklog};
pub use writer::{NewMessage, WriterStore};

mod migrations;
mod pool;
pub mod pooler;
pub(crate) mod postgres;
pub mod prepared;
pub mod relay;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
pub mod writer;

pub(crate) mod private {
    pub trait Sealed {}
}

/// A database the outbox (and the inbox) can store their tables in: PostgreSQL's
/// `diesel_async::AsyncPgConnection`, or with the `sqlite` feature
/// [`outbox::sqlite::SqliteConnection`](crate::sqlite::SqliteConnection). The bound every
/// generic call of the SDK takes (`C: Database`).
///
/// Sealed: the statements are the SDK's SQL, not an extension point. They are grouped by the
/// client that runs them, one sealed trait each, all of them supertraits of this one:
/// [`WriterStore`] (`publish`), [`RelayStore`] (the relay) and the migration runner's SQL
/// (crate-private, behind [`Migrations`](crate::migrations::Migrations));
/// [`outbox::ops`](crate::ops) and the inbox reach their own statements through
/// [`backend`](Self::backend). Write your own code against the concrete
/// connection type (`Handler<E, C>` and `Context<C>` in the inbox crate give you `&mut C`), or
/// match on [`backend`](Self::backend).
pub trait Database:
    AsyncConnection + Send + 'static + private::Sealed + migrations::MigrationStore + WriterStore + RelayStore
{
    /// A short name for logs and errors: `"postgres"` or `"sqlite"`.
    const NAME: &'static str;

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

/// The transaction depth diesel-async tracks for `conn` (`None`: not in a transaction; 1: a
/// transaction, 2 and more: savepoints inside it). The relay's pool and the inbox check it to
/// see whether a handler or a caller left a transaction open.
pub fn transaction_depth<C: AsyncConnection>(conn: &mut C) -> QueryResult<Option<u32>> {
    use diesel_async::TransactionManager;
    C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth().map(|d| d.map(|d| d.get()))
}

/// Runs `body` in a read transaction (PostgreSQL and SQLite: a plain `BEGIN`, so SQLite does not
/// take the write lock; a savepoint inside an open transaction). The writes use
/// `outbox::transaction` (SQLite: `BEGIN IMMEDIATE`).
pub(crate) async fn read<C: Database, R>(
    conn: &mut C,
    body: impl AsyncFnOnce(&mut C) -> crate::Result<R>,
) -> crate::Result<R> {
    use diesel_async::TransactionManager;
    C::TransactionManager::begin_transaction(conn).await?;
    match body(&mut *conn).await {
        Ok(value) => {
            C::TransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(error) => match C::TransactionManager::rollback_transaction(conn).await {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
            Err(rollback) => Err(rollback.into()),
        },
    }
}
