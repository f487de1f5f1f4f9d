//! The inbox's storage: its statements on `inbox_messages` (dedup), `inbox_offsets` (positions)
//! and `inbox_dead_letters`, one [`InboxStore`] implementation per backend (`postgres.rs`,
//! `sqlite.rs`); the control flow around them (process.rs, dead_letters/, prune.rs) is written
//! once. The tables themselves are created by [`crate::migrate`] (docs/databases.md).
//!
//! The inbox is generic over `C: outbox::Database`; [`store`] picks this crate's implementation
//! for the concrete connection behind `C` ([`outbox::db::Database::backend`]).

use std::collections::HashMap;
use std::time::Duration;

use diesel::QueryResult;
use outbox::Database;
use outbox::db::Backend;
use uuid::Uuid;

/// A `count(*) AS n`, the same column type on both backends.
#[derive(diesel::QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// A dead letter's `id`, the same column type on both backends.
#[derive(diesel::QueryableByName)]
pub(super) struct DeadLetterId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
}

mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// The statements of the inbox, one implementation per backend. Crate-private, so sealed.
#[async_trait::async_trait]
pub(crate) trait InboxStore: Send {
    /// Records these messages as handled; returns the ids that were new (a duplicate of a
    /// committed or concurrent transaction's id is skipped, and waits for its outcome).
    async fn insert_dedup(&mut self, rows: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>>;
    /// [`same_transaction`](Self::same_transaction) and then [`insert_dedup`](Self::insert_dedup),
    /// in one statement where the backend can (PostgreSQL: one round trip per message of a
    /// batch, which checks the previous handler and records the next message). `None`: the
    /// transaction is no longer the one `token` names, and nothing was inserted.
    async fn insert_dedup_in(&mut self, token: i64, rows: &[NewDedup<'_>]) -> QueryResult<Option<Vec<Uuid>>> {
        if !self.same_transaction(token).await? {
            return Ok(None);
        }
        self.insert_dedup(rows).await.map(Some)
    }
    async fn insert_dead_letters(&mut self, rows: &[NewDeadLetter<'_>]) -> QueryResult<()>;
    async fn store_position(&mut self, position: &NewPosition<'_>) -> QueryResult<()>;
    async fn load_positions(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> QueryResult<HashMap<i32, StoredPosition>>;
    /// Deletes at most `limit` of `group`'s dedup rows older than `window`. Returns how many.
    async fn prune_dedup(&mut self, group: &str, window: Duration, limit: i64) -> QueryResult<usize>;
    /// Dead letters of one consumer group, for the `inbox_dead_letters` gauge.
    async fn dead_letter_count(&mut self, group: &str) -> QueryResult<i64>;

    // Dead-letter replay and retention (docs/dead-letters.md).
    /// The ids of the dead letters `filter` matches, above `after`, in id order, at most `limit`.
    async fn dead_letter_ids(&mut self, filter: &DeadLetterFilter<'_>, after: i64, limit: i64)
    -> QueryResult<Vec<i64>>;
    /// In the open transaction: dead letter `id` of `group` (with a replay request, if
    /// `requested`), locked for this transaction. `None` when it is gone, belongs to another
    /// group, has no request (when asked for one), or (PostgreSQL) another transaction holds it
    /// (`FOR UPDATE SKIP LOCKED`); SQLite's `BEGIN IMMEDIATE` already excludes every other writer.
    async fn claim_dead_letter(
        &mut self,
        group: &str,
        id: i64,
        requested: bool,
    ) -> QueryResult<Option<StoredDeadLetter>>;
    /// Deletes dead letter `id` (in the replay's transaction). Returns how many rows went.
    async fn delete_dead_letter(&mut self, id: i64) -> QueryResult<usize>;
    /// Restarts the dedup window of `group`'s `message_id` now (in a replay's transaction: its
    /// effects commit now, so its duplicates must be recognised for a whole window from now).
    async fn renew_dedup(&mut self, group: &str, message_id: Uuid) -> QueryResult<usize>;
    /// Records a failed replay of dead letter `id`, if its attempt count is still `seen` (no
    /// other replay recorded one meanwhile): the new reason and error, one more attempt, and
    /// the replay request cleared. Returns how many rows changed.
    async fn record_replay_failure(&mut self, id: i64, seen: i32, reason: &str, error: &str) -> QueryResult<usize>;
    /// Deletes at most `limit` of `group`'s dead letters older than `retention` that have no
    /// replay request. Returns how many.
    async fn prune_dead_letters(&mut self, group: &str, retention: Duration, limit: i64) -> QueryResult<usize>;

    /// A token naming the open transaction, taken right after BEGIN, for
    /// [`same_transaction`](Self::same_transaction). PostgreSQL: `txid_current()` (assigns the
    /// transaction id). SQLite: nothing to take (0).
    async fn transaction_token(&mut self) -> QueryResult<i64>;
    /// Whether the transaction [`transaction_token`](Self::transaction_token) named is still the
    /// open one, checked after each handler: a handler that sent a raw `COMMIT` or `ROLLBACK`
    /// leaves the connection outside it. PostgreSQL compares `txid_current_if_assigned()` (NULL
    /// outside a transaction, another id in a new one) and fails when the transaction is
    /// aborted. SQLite probes with `BEGIN`, which fails only inside a transaction (when it
    /// succeeds, the transaction it opened is rolled back with the rest).
    async fn same_transaction(&mut self, token: i64) -> QueryResult<bool>;
}

/// The inbox's statements for `conn`'s backend.
pub(crate) fn store<C: Database>(conn: &mut C) -> &mut dyn InboxStore {
    match conn.backend() {
        Backend::Postgres(conn) => conn,
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(conn) => conn,
        // Zero-sized: leaking it allocates nothing.
        _ => Box::leak(Box::new(Unsupported)),
    }
}

/// Whether this build of the inbox has statements for backend `C` (the builder refuses the
/// others with a configuration error before anything runs).
pub(crate) fn supported<C: Database>() -> bool {
    C::NAME == "postgres" || (cfg!(feature = "sqlite") && C::NAME == "sqlite")
}

/// A backend this build has no statements for (`outbox/sqlite` without `inbox/sqlite`): every
/// statement fails with an error that says so. The builder refuses such an inbox up front
/// ([`supported`]); this only keeps [`store`] total.
struct Unsupported;

impl Unsupported {
    fn error<T>(&self) -> QueryResult<T> {
        Err(diesel::result::Error::QueryBuilderError(
            "the inbox crate was built without support for this database (enable its `sqlite` feature)".into(),
        ))
    }
}

#[async_trait::async_trait]
impl InboxStore for Unsupported {
    async fn insert_dedup(&mut self, _: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>> {
        self.error()
    }
    async fn insert_dead_letters(&mut self, _: &[NewDeadLetter<'_>]) -> QueryResult<()> {
        self.error()
    }
    async fn store_position(&mut self, _: &NewPosition<'_>) -> QueryResult<()> {
        self.error()
    }
    async fn load_positions(&mut self, _: &str, _: &str, _: &[i32]) -> QueryResult<HashMap<i32, StoredPosition>> {
        self.error()
    }
    async fn prune_dedup(&mut self, _: &str, _: Duration, _: i64) -> QueryResult<usize> {
        self.error()
    }
    async fn dead_letter_count(&mut self, _: &str) -> QueryResult<i64> {
        self.error()
    }
    async fn dead_letter_ids(&mut self, _: &DeadLetterFilter<'_>, _: i64, _: i64) -> QueryResult<Vec<i64>> {
        self.error()
    }
    async fn claim_dead_letter(&mut self, _: &str, _: i64, _: bool) -> QueryResult<Option<StoredDeadLetter>> {
        self.error()
    }
    async fn delete_dead_letter(&mut self, _: i64) -> QueryResult<usize> {
        self.error()
    }
    async fn renew_dedup(&mut self, _: &str, _: Uuid) -> QueryResult<usize> {
        self.error()
    }
    async fn record_replay_failure(&mut self, _: i64, _: i32, _: &str, _: &str) -> QueryResult<usize> {
        self.error()
    }
    async fn prune_dead_letters(&mut self, _: &str, _: Duration, _: i64) -> QueryResult<usize> {
        self.error()
    }
    async fn transaction_token(&mut self) -> QueryResult<i64> {
        self.error()
    }
    async fn same_transaction(&mut self, _: i64) -> QueryResult<bool> {
        self.error()
    }
}

/// `in_tx!(conn, tx => body)`: runs `body` (an expression using `tx`, giving a `QueryResult`)
/// in a transaction (a savepoint when one is open), so that behind a transaction pooler a
/// statement's prepare and its run reach one server connection (`outbox::pooler`). Used by the
/// statements that run on their own, seconds apart (positions on assignment, pruning, gauges).
macro_rules! in_tx {
    ($conn:expr, $tx:ident => $body:expr) => {
        diesel_async::AsyncConnection::transaction::<_, diesel::result::Error, _>($conn, async |$tx| $body).await
    };
}
pub(crate) use in_tx;

/// One inbox dedup row: (group, message id) plus where the message was read.
#[derive(Debug)]
pub(crate) struct NewDedup<'a> {
    pub consumer_group: &'a str,
    pub message_id: Uuid,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// One inbox dead-letter row.
#[derive(Debug)]
pub(crate) struct NewDeadLetter<'a> {
    pub consumer_group: &'a str,
    pub message_id: Option<Uuid>,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Display form only (escaped text, see [`outbox::raw_headers::display_json`]).
    pub headers: serde_json::Value,
    /// The headers byte for byte ([`outbox::raw_headers::encode`]).
    pub raw_headers: Vec<u8>,
    pub reason: &'a str,
    pub error: String,
    pub attempts: i32,
}

/// Which dead letters a replay acts on: every given condition holds (`None`: any).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeadLetterFilter<'a> {
    pub group: Option<&'a str>,
    pub ids: Option<&'a [i64]>,
    pub reason: Option<&'a str>,
    /// Only rows with a replay request.
    pub requested: bool,
}

/// A dead letter as a replay reads it back: the stored record and its bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct StoredDeadLetter {
    pub id: i64,
    pub message_id: Option<Uuid>,
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The display form (rows written before migration 3 have only this).
    pub headers: serde_json::Value,
    /// The lossless headers ([`outbox::raw_headers::encode`]); `None` before migration 3.
    pub raw_headers: Option<Vec<u8>>,
    pub attempts: i32,
}

/// A consumer position to store: the next offset of a partition, and what log it is in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewPosition<'a> {
    pub consumer_group: &'a str,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub next_offset: i64,
    /// The Kafka cluster id, when the cluster reported one.
    pub cluster_id: Option<&'a str>,
    /// Fingerprint of the record at `next_offset - 1`.
    pub fingerprint: Option<i64>,
    /// Overwrite the stored position even when it is higher: the log changed (new cluster,
    /// recreated topic) and the old offsets mean nothing in the new one.
    pub replace: bool,
}

/// A stored consumer position and the identity of the log it was stored for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredPosition {
    pub next_offset: i64,
    /// `None`: unknown (the cluster reported none, or the row predates migration 3).
    pub cluster_id: Option<String>,
    /// `None`: unknown (a row written before migration 3, or by hand).
    pub fingerprint: Option<i64>,
}
