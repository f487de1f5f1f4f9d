//! The migration runner's SQL, one text per backend (`postgres.rs`, `sqlite.rs`): the control
//! flow is written once, in [`outbox::migrations`](crate::migrations). Crate-private.

/// The statements of the migration runner for one backend. Every one reads or writes
/// `outbox_schema_migrations`, the one version table of every set (the outbox's and the inbox's).
pub struct MigrationSql {
    /// One row, `present` (bool): whether the version table exists.
    pub table_exists: &'static str,
    /// One row of where the version table is and where new tables would go (`current_schema`,
    /// `path_schema`, `found_in`: nullable text; `usable`: bool; `search_path`, `role`: text),
    /// asked before the versions are read. `None`: the backend has one namespace (SQLite).
    pub placement: Option<&'static str>,
    /// One row of the role's rights (`readable`, `recordable`, `creatable`: bools;
    /// `foreign_tables`: nullable text) and the placement's columns, asked of the catalog before
    /// anything is applied. `None`: the backend has no privileges (SQLite: the file's
    /// permissions decide).
    pub rights: Option<&'static str>,
    /// Run first in the applying transaction, to serialise concurrent runners; `None` when the
    /// transaction's start takes the lock already (SQLite's `BEGIN IMMEDIATE`).
    pub lock: Option<&'static str>,
    /// Creates the version table when it does not exist.
    pub create_table: &'static str,
    /// Records one version (bound as the one parameter), doing nothing when it is recorded:
    /// reports one row when this call recorded it.
    pub record: &'static str,
    /// Whether this backend applies a set's SQLite half (else its PostgreSQL half).
    pub sqlite: bool,
}

/// What a backend gives the migration runner: its SQL.
pub trait MigrationStore: Send {
    /// The runner's statements on this backend.
    const MIGRATION_SQL: &'static MigrationSql;
}
