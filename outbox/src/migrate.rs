//! The outbox's embedded schema migrations, applied by [`migrate`].

use diesel_async::AsyncPgConnection;

use crate::Result;
use crate::db::Database;
use crate::migrations::{Migration, Migrations};

/// The embedded PostgreSQL migrations of the outbox's tables, in order: `(version, up.sql)`.
///
/// The same folders (`migrations/postgres/*/{up,down}.sql`, shipped inside this crate's package and
/// linked, with the inbox's, from the repository's top-level `migrations/`) are diesel-CLI
/// migrations, so teams that manage their schema with `diesel migration run` can copy them
/// instead of calling [`migrate`].
pub const POSTGRES_MIGRATIONS: &[Migration] = crate::db::postgres::MIGRATIONS;

/// The embedded SQLite migrations of the outbox's tables (`migrations/sqlite`), in order:
/// `(version, up.sql)`.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub const SQLITE_MIGRATIONS: &[Migration] = crate::db::sqlite::MIGRATIONS;

/// The outbox's migration set ([`POSTGRES_MIGRATIONS`] and the SQLite ones): what [`migrate`]
/// applies and the relay's start-up check requires.
pub const MIGRATIONS: Migrations = Migrations::new("outbox", crate::db::postgres::MIGRATIONS, SQLITE);

#[cfg(feature = "sqlite")]
const SQLITE: &[Migration] = crate::db::sqlite::MIGRATIONS;
#[cfg(not(feature = "sqlite"))]
const SQLITE: &[Migration] = &[];

/// Creates or upgrades the outbox's tables (`outbox_messages`, the relay's leases and held
/// keys): applies [`MIGRATIONS`] ([`Migrations::apply`]). Applying twice is a no-op. The
/// inbox's tables are the `inbox` crate's (`inbox::migrate`); the `outbox migrate` command
/// applies both.
///
/// Runs in one transaction (PostgreSQL: under a transaction-level advisory lock; SQLite:
/// `BEGIN IMMEDIATE`), so instances starting together do not race, and a failed upgrade leaves
/// nothing half-applied. Applied versions are recorded in `outbox_schema_migrations` (not
/// diesel's own table, so `diesel migration redo` in the application never tries to revert ours).
///
/// ```no_run
/// # async fn run() -> outbox::Result<()> {
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// let mut conn = AsyncPgConnection::establish("postgres://localhost/app").await?;
/// outbox::migrate(&mut conn).await?;
/// # Ok(()) }
/// ```
pub async fn migrate<C: Database>(conn: &mut C) -> Result<()> {
    MIGRATIONS.apply(conn).await
}

/// Turns the insert trigger's `NOTIFY outbox_messages` on or off (it is **off** after
/// [`migrate`]). PostgreSQL only.
///
/// Relays running in the writer's own process are woken in-process by `publish`, at no cost.
/// NOTIFY also wakes relays in other processes within milliseconds, but PostgreSQL serialises
/// the commits of notifying transactions on one global lock: with 8 concurrent writers and
/// fsync on, pgbench measured about half the transactions per second (docs/relay.md, "Wake-up").
/// With it off, other processes' relays find new rows by polling (`RelayBuilder::poll_interval`).
pub async fn set_notify(conn: &mut AsyncPgConnection, on: bool) -> Result<()> {
    crate::db::postgres::set_notify(conn, on).await
}
