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
//!
//! On PostgreSQL, where the tables are is the search path's business, so the runner and the check
//! refuse a search path that hides the tables: one whose first schema the role may not use
//! (PostgreSQL skips it silently) or that names no existing schema. The runner also refuses one
//! whose first schema is not the one the version table was found in (`CREATE TABLE IF NOT EXISTS`
//! would make a second, empty set of tables there, and the services would switch to it,
//! stranding the rows of the first); the check does not, since the services' statements find
//! the same tables it does.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text};
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

/// Where the version table is and where new tables would go (PostgreSQL; see
/// `MigrationSql::placement`).
#[derive(QueryableByName)]
struct Placement {
    /// The first schema of the search path the role may use (where CREATE TABLE creates).
    #[diesel(sql_type = Nullable<Text>)]
    current_schema: Option<String>,
    /// The first schema the search path names that exists, usable or not.
    #[diesel(sql_type = Nullable<Text>)]
    path_schema: Option<String>,
    /// Whether the role has USAGE on `path_schema` (true when there is none).
    #[diesel(sql_type = Bool)]
    usable: bool,
    /// The schema of the `outbox_schema_migrations` the search path finds.
    #[diesel(sql_type = Nullable<Text>)]
    found_in: Option<String>,
    #[diesel(sql_type = Text)]
    search_path: String,
    #[diesel(sql_type = Text)]
    role: String,
}

impl Placement {
    /// Refuses a search path on which `what` (`outbox::migrate`, or the set's name for the
    /// start-up check) would not see the tables, or (`migrating`) would create them elsewhere.
    fn check(&self, what: &str, migrating: bool) -> Result<()> {
        let Placement { current_schema, path_schema, usable, found_in, search_path, role } = self;
        let message = match (path_schema, current_schema, found_in) {
            (Some(first), _, _) if !usable => format!(
                "{what}: role {role} has no USAGE on schema {first}, the first schema of its search_path \
                 ({search_path}), so PostgreSQL skips that schema and the tables in it look absent; grant USAGE \
                 on schema {first} to {role} (docs/roles.sql)"
            ),
            (_, None, _) => format!(
                "{what}: no schema of role {role}'s search_path ({search_path}) exists, so there is no schema \
                 to find or create the tables in; set its search_path to the tables' schema (docs/databases.md)"
            ),
            (_, Some(current), Some(found)) if migrating && current != found => format!(
                "{what}: the version table outbox_schema_migrations is in schema {found}, but schema {current} \
                 comes first in role {role}'s search_path ({search_path}): migrating would create a second, \
                 empty set of tables in {current}, and the services would use those; put {found} first in the \
                 search_path (ALTER ROLE {role} SET search_path = {found}, ...) or move the tables to \
                 {current} (docs/databases.md)"
            ),
            _ => return Ok(()),
        };
        Err(Error::new(ErrorKind::Config, message))
    }
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
    /// Our tables in the schema that the role does not own: `name (owner role), ...`.
    #[diesel(sql_type = Nullable<Text>)]
    foreign_tables: Option<String>,
    #[diesel(embed)]
    placement: Placement,
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
    ///
    /// On PostgreSQL, fails ([`ErrorKind::Config`]) when the search path hides the tables (no
    /// USAGE on its first schema) or names no existing schema. A version table found in another
    /// schema than the first is not refused here, only by [`apply`](Self::apply): the services'
    /// statements find the same tables as this check, so a service on current tables works, and
    /// only migrating through that search path would create a second set.
    pub async fn missing<C: Database>(&self, conn: &mut C) -> Result<Vec<&'static str>> {
        self.missing_checked(conn, true).await
    }

    /// [`missing`](Self::missing), checking the placement first when `placement` (not when
    /// `apply` has, in its rights query).
    async fn missing_checked<C: Database>(&self, conn: &mut C, placement: bool) -> Result<Vec<&'static str>> {
        let sql = C::MIGRATION_SQL;
        // In a transaction: behind a transaction pooler (outbox::pooler) a lone statement's
        // prepare and run may reach two server connections.
        let applied: Vec<Applied> = crate::db::read(conn, async |tx| {
            if let Some(query) = sql.placement.filter(|_| placement) {
                let p: Placement = on_backend!(tx, c => diesel::sql_query(query).get_result(c).await)?;
                p.check(self.name, false)?;
            }
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
    /// first, in one query: where the version table is (see [`missing`](Self::missing)), SELECT
    /// and INSERT on `outbox_schema_migrations`, CREATE on the current schema and, while
    /// migrations are pending, the ownership of our tables there. A role that may not read the
    /// versions, or may not apply the missing ones, gets an error that says which grant or role
    /// it needs (docs/roles.md).
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
        let what = format!("{}::migrate", self.name);
        if let Some(r) = &rights {
            r.placement.check(&what, true)?;
        }
        if let Some(r) = &rights
            && !r.readable
        {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "{}::migrate: role {} may not read the applied migrations (no SELECT on \
                     outbox_schema_migrations); grant SELECT on outbox_schema_migrations (docs/grants.sql) \
                     or run migrate as the schema owner",
                    self.name, r.placement.role
                ),
            ));
        }
        let missing = self.missing_checked(conn, rights.is_none()).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if let Some(r) = &rights
            && !(r.creatable && r.recordable && r.foreign_tables.is_none())
        {
            // The placement check has made sure there is a current schema.
            let schema = r.placement.current_schema.as_deref().unwrap_or_default();
            let lacks = match (r.creatable, r.recordable, &r.foreign_tables) {
                (false, false, _) => format!("CREATE on schema {schema} and INSERT on outbox_schema_migrations"),
                (false, true, _) => format!("CREATE on schema {schema}"),
                (true, false, _) => "INSERT on outbox_schema_migrations".to_owned(),
                // ALTER TABLE in a pending migration: PostgreSQL allows it to the owner only.
                (true, true, tables) => format!(
                    "the ownership of tables {}: the pending migrations alter them",
                    tables.as_deref().unwrap_or_default()
                ),
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
                    r.placement.role
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
