//! The migration runner: a [`Migrations`] set is the embedded schema migrations of one crate (the
//! outbox's [`outbox::MIGRATIONS`](crate::MIGRATIONS), the inbox's `inbox::MIGRATIONS`), applied
//! with [`apply`](Migrations::apply) and checked with [`missing`](Migrations::missing).
//!
//! Every set records its versions in one table, `outbox_schema_migrations` (not diesel's own,
//! so `diesel migration redo` in the application never tries to revert ours), and versions are
//! unique across the sets: the repository's top-level `migrations/` lists them all in one order
//! for diesel CLI. The sets do not depend on each other's tables, so they can be applied in
//! either order. Each crate applies its own set (`outbox::migrate`, `inbox::migrate`); the
//! `outbox migrate` command applies both.
//!
//! A start-up check ([`startup::wait_for_schema`](crate::startup::wait_for_schema)) asks a set
//! what is [`missing`](Migrations::missing) and refuses to start a service on a schema that is
//! behind.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Text};
use diesel_async::RunQueryDsl;

use crate::db::{Backend, Database};
use crate::{Error, ErrorKind, Result};

/// One embedded migration: `(version, up.sql)`. The version is the migration's folder name
/// (`00000000000001_outbox`), what `outbox_schema_migrations` records.
pub type Migration = (&'static str, &'static str);

/// The embedded migrations of one crate's tables, for each backend, in order. The runner is the
/// same for every set: [`apply`](Self::apply) and [`missing`](Self::missing).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    name: &'static str,
    postgres: &'static [Migration],
    sqlite: &'static [Migration],
}

/// `$body` with `$c` bound to the concrete connection behind `$conn` (a `&mut C`,
/// `C: Database`): one statement, run the same way on each backend.
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn.backend() {
            Backend::Postgres($c) => $body,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($c) => $body,
        }
    };
}

#[derive(QueryableByName)]
struct Present {
    #[diesel(sql_type = Bool)]
    present: bool,
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Text)]
    version: String,
}

/// What the catalog says the role may do (PostgreSQL; see `MigrationSql::rights`).
#[derive(QueryableByName)]
struct Rights {
    #[diesel(sql_type = Bool)]
    readable: bool,
    #[diesel(sql_type = Bool)]
    recordable: bool,
    #[diesel(sql_type = Bool)]
    creatable: bool,
    #[diesel(sql_type = Text)]
    schema: String,
    #[diesel(sql_type = Text)]
    role: String,
}

impl Migrations {
    /// A set named `name` (the crate whose function applies it, for logs and errors:
    /// `"outbox"` gives `outbox::migrate: ...`) of these PostgreSQL and SQLite migrations.
    /// Versions must be unique across every set applied to one database.
    pub const fn new(name: &'static str, postgres: &'static [Migration], sqlite: &'static [Migration]) -> Self {
        Migrations { name, postgres, sqlite }
    }

    /// The set's name, e.g. `"outbox"` or `"inbox"`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The PostgreSQL migrations, in order.
    pub const fn postgres(&self) -> &'static [Migration] {
        self.postgres
    }

    /// The SQLite migrations, in order.
    pub const fn sqlite(&self) -> &'static [Migration] {
        self.sqlite
    }

    /// The migrations for `C`'s backend, in order.
    pub fn versions<C: Database>(&self) -> &'static [Migration] {
        if C::MIGRATION_SQL.sqlite { self.sqlite } else { self.postgres }
    }

    /// The migrations of this set not applied to the database behind `conn` (all of them when
    /// it was never migrated), in order. Only reads: any role with SELECT on
    /// `outbox_schema_migrations` may ask.
    pub async fn missing<C: Database>(&self, conn: &mut C) -> Result<Vec<&'static str>> {
        let sql = C::MIGRATION_SQL;
        // In a transaction: behind a transaction pooler (outbox::pooler) a lone statement's
        // prepare and run may reach two server connections.
        let applied: Vec<Applied> = crate::db::read(conn, async |tx| {
            let table: Present = on_backend!(tx, c => diesel::sql_query(sql.table_exists).get_result(c).await)?;
            if table.present {
                let applied = on_backend!(tx, c => {
                    diesel::sql_query("SELECT version FROM outbox_schema_migrations").load(c).await
                })?;
                Ok(applied)
            } else {
                Ok(Vec::new())
            }
        })
        .await?;
        Ok(self.versions::<C>().iter().map(|(v, _)| *v).filter(|v| !applied.iter().any(|a| a.version == *v)).collect())
    }

    /// Creates or upgrades this set's tables: applies the migrations the database lacks, in
    /// order. Applying twice is a no-op.
    ///
    /// Runs in one transaction (PostgreSQL: under a transaction-level advisory lock shared by
    /// every set; SQLite: `BEGIN IMMEDIATE`), so instances starting together do not race, and a
    /// failed upgrade leaves nothing half-applied. A database that is current is left before any
    /// statement that needs the schema owner's rights, so services running as least-privilege
    /// roles can call it at start-up. On PostgreSQL the role's rights are asked of the catalog
    /// first (SELECT and INSERT on `outbox_schema_migrations`, CREATE on the current schema):
    /// a role that may not read the versions, or may not apply the missing ones, gets an error
    /// that says which grant or role it needs (docs/roles.md).
    pub async fn apply<C: Database>(&self, conn: &mut C) -> Result<()> {
        let sql = C::MIGRATION_SQL;
        let rights: Option<Rights> = match sql.rights {
            Some(rights) => Some(
                crate::db::read(conn, async |tx| {
                    Ok(on_backend!(tx, c => diesel::sql_query(rights).get_result(c).await)?)
                })
                .await?,
            ),
            None => None,
        };
        if let Some(r) = &rights
            && !r.readable
        {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "{}::migrate: role {} may not read the applied migrations (no SELECT on \
                     outbox_schema_migrations); grant SELECT on outbox_schema_migrations (docs/grants.sql) \
                     or run migrate as the schema owner",
                    self.name, r.role
                ),
            ));
        }
        let missing = self.missing(conn).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if let Some(r) = &rights
            && !(r.creatable && r.recordable)
        {
            let lacks = match (r.creatable, r.recordable) {
                (false, false) => format!("CREATE on schema {} and INSERT on outbox_schema_migrations", r.schema),
                (false, true) => format!("CREATE on schema {}", r.schema),
                _ => "INSERT on outbox_schema_migrations".to_owned(),
            };
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "{}::migrate: {} of {} migrations are not applied ({}) and role {} may not apply them \
                     (it lacks {lacks}); run migrate as the schema owner (docs/roles.md)",
                    self.name,
                    missing.len(),
                    self.versions::<C>().len(),
                    missing.join(", "),
                    r.role
                ),
            ));
        }
        crate::transaction(conn, async |tx| {
            if let Some(lock) = sql.lock {
                on_backend!(tx, c => diesel::sql_query(lock).execute(c).await)?;
            }
            on_backend!(tx, c => diesel::sql_query(sql.create_table).execute(c).await)?;
            for (version, up) in self.versions::<C>() {
                // Recorded first, in the same transaction: a runner that waited on the lock
                // finds the versions the one before it applied, and skips them.
                let inserted =
                    on_backend!(tx, c => diesel::sql_query(sql.record).bind::<Text, _>(*version).execute(c).await)?;
                if inserted == 1 {
                    tracing::info!(version, set = self.name, backend = C::NAME, "applying migration");
                    on_backend!(tx, c => diesel_async::SimpleAsyncConnection::batch_execute(c, up).await)?;
                }
            }
            Ok::<_, Error>(())
        })
        .await
    }
}
