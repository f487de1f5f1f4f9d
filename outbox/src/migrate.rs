//! Embedded schema migrations, applied by [`migrate`].

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::Result;

/// The embedded PostgreSQL migrations, in order: `(version, up.sql)`.
///
/// The same folders (`migrations/postgres/*/{up,down}.sql`) are diesel-CLI migrations, so teams
/// that manage their schema with `diesel migration run` can copy them instead of calling [`migrate`].
pub const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    ("00000000000001_outbox", include_str!("../../migrations/postgres/00000000000001_outbox/up.sql")),
    ("00000000000002_inbox", include_str!("../../migrations/postgres/00000000000002_inbox/up.sql")),
];

// Serialises concurrent `migrate` calls (several service instances starting at once).
const MIGRATION_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

/// Creates or upgrades the outbox and inbox tables. Applying twice is a no-op.
///
/// Runs in one transaction under a transaction-level advisory lock, so instances starting
/// together do not race, and a failed upgrade leaves nothing half-applied. Applied versions are
/// recorded in `outbox_schema_migrations` (not diesel's own table, so `diesel migration redo` in
/// the application never tries to revert ours).
///
/// ```no_run
/// # async fn run() -> outbox::Result<()> {
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// let mut conn = AsyncPgConnection::establish("postgres://localhost/app").await?;
/// outbox::migrate(&mut conn).await?;
/// # Ok(()) }
/// ```
pub async fn migrate(conn: &mut AsyncPgConnection) -> Result<()> {
    conn.transaction::<_, crate::Error, _>(async |tx| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
            .execute(tx)
            .await?;
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS outbox_schema_migrations (
                version TEXT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(tx)
        .await?;
        for (version, up) in POSTGRES_MIGRATIONS {
            let inserted =
                diesel::sql_query("INSERT INTO outbox_schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind::<diesel::sql_types::Text, _>(*version)
                    .execute(tx)
                    .await?;
            if inserted == 1 {
                tracing::info!(version, "applying outbox migration");
                diesel_async::SimpleAsyncConnection::batch_execute(tx, up).await?;
            }
        }
        Ok(())
    })
    .await
}

/// Turns the insert trigger's `NOTIFY outbox_messages` on or off (it is **off** after
/// [`migrate`]).
///
/// Relays running in the writer's own process are woken in-process by `publish`, at no cost.
/// NOTIFY also wakes relays in other processes within milliseconds, but PostgreSQL serialises
/// the commits of notifying transactions on one global lock: with 8 concurrent writers and
/// fsync on, pgbench measured about half the transactions per second (README, "Performance").
/// With it off, other processes' relays find new rows by polling (`RelayBuilder::poll_interval`).
pub async fn set_notify(conn: &mut AsyncPgConnection, on: bool) -> Result<()> {
    let sql = if on {
        "ALTER TABLE outbox_messages ENABLE TRIGGER outbox_messages_notify"
    } else {
        "ALTER TABLE outbox_messages DISABLE TRIGGER outbox_messages_notify"
    };
    diesel::sql_query(sql).execute(conn).await?;
    Ok(())
}
