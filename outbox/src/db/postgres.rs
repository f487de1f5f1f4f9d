//! PostgreSQL: the migration runner's SQL, the writer's statements and the NOTIFY listener (the
//! relay's statements are in `relay/postgres.rs`, the inbox's in the inbox crate). Every statement
//! on the writer's and the relay's paths is a prepared statement (one round trip after its first
//! run, see `prepared`); the claim and the marks are shaped so that per-key order, fencing and
//! out-of-order commits are handled by the database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use super::prepared::prepared;
use super::{ConnPool, Database, NewMessage};
use crate::Result;
use crate::cancel::sleep_or_cancel;
use crate::schema::outbox_messages;

impl super::private::Sealed for AsyncPgConnection {}

/// `in_tx!(conn, tx => body)`: runs `body` (an expression using `tx`, giving a `QueryResult`)
/// in a transaction (a savepoint when one is open). The relay's, the inbox's and the
/// operations' statements that would otherwise run on their own do, so that behind a
/// transaction pooler their prepare and their run reach one server connection (`pooler`). They
/// all run seconds apart (lease, gauges, cleanup, positions on assignment, pruning): the two
/// extra round trips do not matter. The hot one (the claim) only does behind a pooler.
macro_rules! in_tx {
    ($conn:expr, $tx:ident => $body:expr) => {
        diesel_async::AsyncConnection::transaction::<_, diesel::result::Error, _>($conn, async |$tx| $body).await
    };
}
pub(crate) use in_tx;

// Any number of events in one statement with eight array binds, so one prepared statement
// serves every batch size (diesel's multi-row VALUES is a new statement text per row count,
// never cached). Rows are inserted, and get their seq, in array order.
const INSERT_MESSAGES: &str = "
INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, headers, occurred_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::bytea[], $7::jsonb[],
                     $8::timestamptz[])";

// 'D' = disabled (outbox::set_notify(conn, false), the default after migrate).
const NOTIFY_ENABLED: &str = "
SELECT COALESCE(bool_or(tgenabled <> 'D'), false) AS enabled FROM pg_trigger
WHERE tgname = 'outbox_messages_notify' AND tgrelid = 'outbox_messages'::regclass";

#[derive(QueryableByName)]
struct Enabled {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    enabled: bool,
}

/// One event, as diesel inserts it. A `None` key is bound as NULL rather than written as
/// DEFAULT, which keeps the statement text fixed and so cacheable.
#[derive(Insertable)]
#[diesel(table_name = outbox_messages, treat_none_as_default_value = false)]
struct Row<'a> {
    id: Uuid,
    topic: &'a str,
    key: Option<&'a str>,
    event_type: &'a str,
    event_version: i32,
    payload: &'a [u8],
    headers: &'a serde_json::Value,
    occurred_at: DateTime<Utc>,
}

/// The embedded PostgreSQL migrations of the outbox's tables, in order: `(version, up.sql)`.
pub(crate) const MIGRATIONS: &[(&str, &str)] = &[
    ("00000000000001_outbox", include_str!("../../migrations/postgres/00000000000001_outbox/up.sql")),
    ("00000000000004_relay_held_keys", include_str!("../../migrations/postgres/00000000000004_relay_held_keys/up.sql")),
];

// The search path as the role's session names it: the first schema it lists that exists
// (whether or not the role may use it: PostgreSQL skips a schema without USAGE, so to that role
// current_schema() is a later one, or NULL, and every table looks absent). "$user" is the
// role's own schema; a quoted name keeps its case. A comma inside a quoted name is not handled.
macro_rules! path_cte {
    () => {
        "WITH path AS (
            SELECT n.nspname::text AS name, p.ord
            FROM unnest(string_to_array(current_setting('search_path'), ',')) WITH ORDINALITY AS p(entry, ord)
            JOIN pg_namespace n ON n.nspname = CASE
                WHEN btrim(p.entry) IN ('$user', '\"$user\"') THEN current_user::text
                WHEN btrim(p.entry) LIKE '\"%\"' THEN replace(substr(btrim(p.entry), 2, length(btrim(p.entry)) - 2), '\"\"', '\"')
                ELSE lower(btrim(p.entry)) END
        ) "
    };
}

// Where the version table is and where new tables would go, one row (`Placement`): the
// runner refuses when they differ, since CREATE TABLE IF NOT EXISTS would then make a second,
// empty set of tables in current_schema() that hides the first (outbox::migrations).
macro_rules! placement_columns {
    () => {
        "current_schema()::text AS current_schema,
         (SELECT name FROM path ORDER BY ord LIMIT 1) AS path_schema,
         COALESCE(has_schema_privilege((SELECT name FROM path ORDER BY ord LIMIT 1), 'USAGE'), true) AS usable,
         (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = to_regclass('outbox_schema_migrations')) AS found_in,
         current_setting('search_path') AS search_path,
         current_user::text AS role"
    };
}

impl super::migrations::MigrationStore for AsyncPgConnection {
    const MIGRATION_SQL: &'static super::migrations::MigrationSql = &super::migrations::MigrationSql {
        table_exists: "SELECT to_regclass('outbox_schema_migrations') IS NOT NULL AS present",
        placement: Some(concat!(path_cte!(), "SELECT ", placement_columns!())),
        // Asked of the catalog, not read from an error's text (which lc_messages translates), in
        // one round trip with the placement. has_table_privilege of a NULL regclass (no table
        // yet) is NULL: nothing to be refused; the placement check has made sure the table
        // to_regclass finds is the one in current_schema(). CREATE on the schema is needed even
        // when every table exists: CREATE TABLE IF NOT EXISTS checks it first. `foreign`: our
        // tables in current_schema() the role neither owns nor is a member of the owner of; a
        // pending migration's ALTER TABLE on them would fail with "must be owner".
        rights: Some(concat!(
            path_cte!(),
            "SELECT COALESCE(has_table_privilege(to_regclass('outbox_schema_migrations'), 'SELECT'), true) AS readable,
                    COALESCE(has_table_privilege(to_regclass('outbox_schema_migrations'), 'INSERT'), true) AS recordable,
                    COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false) AS creatable,
                    (SELECT string_agg(format('%s (owner %s)', c.relname, pg_get_userbyid(c.relowner)), ', '
                                       ORDER BY c.relname)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
                       AND (c.relname LIKE 'outbox\\_%' OR c.relname LIKE 'inbox\\_%')
                       AND NOT pg_has_role(c.relowner, 'USAGE')) AS foreign_tables,
                    ",
            placement_columns!()
        )),
        // Serialises concurrent runs (several service instances starting at once), of either
        // crate's set: one key, "outbox" in ASCII.
        lock: Some("SELECT pg_advisory_xact_lock(122550254464888)"),
        create_table: "CREATE TABLE IF NOT EXISTS outbox_schema_migrations (
            version TEXT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        record: "INSERT INTO outbox_schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING",
        sqlite: false,
    };
}

#[async_trait::async_trait]
impl super::WriterStore for AsyncPgConnection {
    async fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction(self).await
    }

    async fn insert_messages(&mut self, rows: &[NewMessage]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if let [r] = rows {
            // One event (the common case): diesel's single-row INSERT, a statement cached by its
            // Rust type and cheaper for the server than unnest (B2: 8 writers, 0.84 → parity
            // with a hand-written INSERT).
            let row = Row {
                id: r.id,
                topic: r.topic,
                key: r.key.as_deref(),
                event_type: r.event_type,
                event_version: r.event_version,
                payload: &r.payload,
                headers: &r.headers,
                occurred_at: r.occurred_at,
            };
            diesel::insert_into(outbox_messages::table).values(&row).execute(self).await?;
            return Ok(());
        }
        prepared(INSERT_MESSAGES)
            .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.topic).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.key.as_deref()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
            .bind::<Array<Integer>, _>(rows.iter().map(|r| r.event_version).collect::<Vec<_>>())
            .bind::<Array<Bytea>, _>(rows.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
            .bind::<Array<Jsonb>, _>(rows.iter().map(|r| &r.headers).collect::<Vec<_>>())
            .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
            .execute(self)
            .await?;
        Ok(())
    }
}

impl Database for AsyncPgConnection {
    const NAME: &'static str = "postgres";

    fn backend(&mut self) -> super::Backend<'_> {
        super::Backend::Postgres(self)
    }
}

/// Turns the insert trigger's NOTIFY on or off; see [`crate::set_notify`].
pub(crate) async fn set_notify(conn: &mut AsyncPgConnection, on: bool) -> Result<()> {
    let sql = if on {
        "ALTER TABLE outbox_messages ENABLE TRIGGER outbox_messages_notify"
    } else {
        "ALTER TABLE outbox_messages DISABLE TRIGGER outbox_messages_notify"
    };
    in_tx!(conn, tx => diesel::sql_query(sql).execute(tx).await)?;
    Ok(())
}

/// Whether the insert trigger sends NOTIFY, i.e. whether LISTENing can hear anything.
async fn notify_enabled(conn: &mut AsyncPgConnection) -> Result<bool> {
    let e: Enabled = in_tx!(conn, tx => diesel::sql_query(NOTIFY_ENABLED).get_result(tx).await)?;
    Ok(e.enabled)
}

/// Wakes the relay on every NOTIFY of the insert trigger; reconnects when the session is lost.
pub(crate) async fn listen(pool: ConnPool<AsyncPgConnection>, wake: Arc<Notify>, shutdown: CancellationToken) {
    use diesel_async::SimpleAsyncConnection;
    let retry =
        |failures: u32| crate::RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10)).delay(failures);
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = pool.dedicated() => c,
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                warn!(error = %e, "relay LISTEN: no connection");
                sleep_or_cancel(&shutdown, retry(failures)).await;
                continue;
            }
        };
        // The trigger ships disabled: until someone enables it there is nothing to hear, so do
        // not pin a pooled connection; look again now and then.
        match notify_enabled(&mut conn).await {
            Ok(true) => {}
            Ok(false) => {
                drop(conn);
                sleep_or_cancel(&shutdown, Duration::from_secs(30)).await;
                continue;
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, "relay LISTEN: cannot read the trigger state");
                drop(conn);
                sleep_or_cancel(&shutdown, retry(failures)).await;
                continue;
            }
        }
        if let Err(e) = conn.batch_execute("LISTEN outbox_messages").await {
            failures += 1;
            warn!(error = %e, "relay LISTEN failed; polling only until it works");
            sleep_or_cancel(&shutdown, retry(failures)).await;
            continue;
        }
        failures = 0;
        wake.notify_one(); // catch up on anything that committed while we were not listening
        let mut stream = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = stream.next() => match n {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => { warn!(error = %e, "relay LISTEN connection lost"); break; }
                    None => break,
                },
            }
        }
    }
}
