//! The inbox's embedded schema migrations, applied by [`migrate`].

use outbox::Database;
use outbox::migrations::{Migration, Migrations};

/// The embedded PostgreSQL migrations of the inbox's tables (`inbox_processed`,
/// `inbox_offsets`, `inbox_dead_letters`), in order: `(version, up.sql)`.
///
/// The folders (`migrations/postgres/*/{up,down}.sql`, shipped inside this crate's package and
/// linked, with the outbox's, from the repository's top-level `migrations/`) are diesel-CLI
/// migrations, so teams that manage their schema with `diesel migration run` can copy them
/// instead of calling [`migrate`].
pub const POSTGRES_MIGRATIONS: &[Migration] = &[
    ("00000000000002_inbox", include_str!("../migrations/postgres/00000000000002_inbox/up.sql")),
    (
        "00000000000003_inbox_raw_headers",
        include_str!("../migrations/postgres/00000000000003_inbox_raw_headers/up.sql"),
    ),
    (
        "00000000000005_inbox_dead_letter_replay",
        include_str!("../migrations/postgres/00000000000005_inbox_dead_letter_replay/up.sql"),
    ),
];

/// The embedded SQLite migrations of the inbox's tables (`migrations/sqlite`), in order:
/// `(version, up.sql)`.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub const SQLITE_MIGRATIONS: &[Migration] = SQLITE;

// Embedded whatever the features: the outbox's `sqlite` feature may be on (another crate of the
// build asked for it) while this crate's is off, and a SQLite database must then still see
// what it lacks.
const SQLITE: &[Migration] = &[
    ("00000000000002_inbox", include_str!("../migrations/sqlite/00000000000002_inbox/up.sql")),
    ("00000000000003_inbox_raw_headers", include_str!("../migrations/sqlite/00000000000003_inbox_raw_headers/up.sql")),
    (
        "00000000000005_inbox_dead_letter_replay",
        include_str!("../migrations/sqlite/00000000000005_inbox_dead_letter_replay/up.sql"),
    ),
];

/// The inbox's migration set ([`POSTGRES_MIGRATIONS`] and the SQLite ones): what [`migrate`]
/// applies and [`Inbox::run`](crate::Inbox::run) checks at start-up. Versions are recorded in
/// the outbox's table, `outbox_schema_migrations`, beside the outbox's own.
pub const MIGRATIONS: Migrations = Migrations::new("inbox", POSTGRES_MIGRATIONS, SQLITE);

/// Creates or upgrades the inbox's tables: applies [`MIGRATIONS`]
/// ([`Migrations::apply`](outbox::migrations::Migrations::apply)). Applying twice is a no-op.
/// The outbox's tables are [`outbox::migrate`]'s; the `outbox migrate` command applies both.
/// The two sets do not depend on each other: call them in either order. Handlers that publish
/// follow-ups ([`Context::publish`](crate::Context::publish)) need the outbox's tables too;
/// [`Inbox::run`](crate::Inbox::run) logs a warning at start when they are missing.
///
/// Runs in one transaction (PostgreSQL: under the advisory lock `outbox::migrate` takes too;
/// SQLite: `BEGIN IMMEDIATE`), so instances starting together do not race, and a failed upgrade
/// leaves nothing half-applied. A current schema is a no-op for any role that may read
/// `outbox_schema_migrations`.
///
/// ```no_run
/// # async fn run() -> Result<(), inbox::Error> {
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// let mut conn = AsyncPgConnection::establish("postgres://localhost/app").await?;
/// outbox::migrate(&mut conn).await?; // if this service writes to the outbox too
/// inbox::migrate(&mut conn).await?;
/// # Ok(()) }
/// ```
pub async fn migrate<C: Database>(conn: &mut C) -> outbox::Result<()> {
    MIGRATIONS.apply(conn).await
}
