//! Operations: what an operator asks of a running outbox, and the repairs they make.
//!
//! The `outbox` command-line binary (crate `outbox-cli`) is a thin shell over these functions; call
//! them directly to build an admin endpoint or a health check. They take any [`Database`]
//! connection: PostgreSQL's `AsyncPgConnection` (also one from [`outbox::pooler`](crate::pooler))
//! or, with the `sqlite` feature, [`outbox::sqlite::SqliteConnection`](crate::sqlite::SqliteConnection),
//! with the same results on both. Each one is a few statements in a transaction of its own (a
//! savepoint inside one you opened; on SQLite the repairs start with `BEGIN IMMEDIATE`, the
//! reads with a plain `BEGIN`), and none of them stops a relay.
//!
//! ```no_run
//! # async fn run(conn: &mut diesel_async::AsyncPgConnection) -> outbox::Result<()> {
//! use outbox::ops::{self, Selection};
//!
//! let status = ops::status(conn).await?;
//! println!("{} pending, {} parked", status.pending, status.parked);
//! for m in ops::list_parked(conn, 100, Some("orders")).await? {
//!     println!("{} {:?}: {}", m.id, m.key, m.last_error.as_deref().unwrap_or(""));
//! }
//! // The broker's size limit was raised: let every parked `orders` message go again.
//! let retried = ops::retry_parked(conn, Selection::All { topic: Some("orders".into()) }).await?;
//! # Ok(()) }
//! ```
//!
//! Generic code takes `C: outbox::Database` and works on either backend:
//!
//! ```no_run
//! async fn parked_count<C: outbox::Database>(conn: &mut C) -> outbox::Result<i64> {
//!     Ok(outbox::ops::status(conn).await?.parked)
//! }
//! ```
//!
//! # Parked messages
//! The relay parks a message after `max_attempts` failed deliveries, or at once when Kafka can
//! never accept it (e.g. larger than `message.max.bytes`). A parked message holds back the later
//! messages of its key, so per-key order survives; other keys keep flowing. The operator then
//! either fixes the cause and [retries](retry_parked) it, or [discards](discard_parked) it.
//!
//! # Inbox dead letters
//! Messages the inbox refused or whose handler kept failing. A dead letter keeps the record's
//! key, payload and headers, so it can be replayed: the handler runs again on the stored record,
//! inside the consumer process that has the handlers, and the dead letter is deleted in the
//! handler's transaction. Producing the record to its topic again would not replay it: the inbox
//! recorded the message id when it dead-lettered it, and skips it as a duplicate.
//! [`request_replay`] marks dead letters for replay; a running inbox of their consumer group
//! picks them up (`InboxBuilder::replay_poll_interval`, 5 s by default), or the application
//! replays them at once with the `inbox` crate's `Inbox::replayer`. [`discard_dead_letters`]
//! deletes dead letters that need no replay. See docs/dead-letters.md.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use serde::Serialize;
use uuid::Uuid;

use self::sql::Sql;
use crate::db::Backend;
use crate::{Database, Result};

mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A snapshot of the outbox, the relay lease and the inbox dead letters. See [`status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Messages waiting to be published (not sent, not parked), including those held back behind
    /// a parked message of their key and those waiting for a retry.
    pub pending: i64,
    /// Parked messages: see [`list_parked`].
    pub parked: i64,
    /// Sent messages still stored because the relay keeps them for a retention period.
    pub sent_kept: i64,
    /// Age of the oldest pending message (time since it was written). `None` when nothing is pending.
    /// In JSON: `oldest_pending_age_secs`, in seconds.
    #[serde(rename = "oldest_pending_age_secs", serialize_with = "secs::serialize")]
    pub oldest_pending_age: Option<Duration>,
    /// The same figures per topic, for topics with pending or parked messages, by topic name.
    pub per_topic: Vec<TopicStatus>,
    /// The relay lease; `None` when no relay has ever run on this database.
    pub lease: Option<LeaseInfo>,
    /// Rows in the inbox's dead-letter table, all consumer groups.
    pub dead_letters: i64,
}

/// Pending and parked messages of one topic. Part of [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopicStatus {
    /// The Kafka topic.
    pub topic: String,
    /// Messages waiting to be published.
    pub pending: i64,
    /// Parked messages.
    pub parked: i64,
    /// Age of the topic's oldest pending message. In JSON: `oldest_pending_age_secs`, in seconds.
    #[serde(rename = "oldest_pending_age_secs", serialize_with = "secs::serialize")]
    pub oldest_pending_age: Option<Duration>,
}

/// The relay lease: which relay process publishes. Part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The relay name (`RelayBuilder::name`, `OUTBOX_RELAY_NAME`).
    pub name: String,
    /// The relay process that holds or last held it; `None` after a graceful shutdown released it.
    pub owner: Option<Uuid>,
    /// The fencing epoch: incremented each time another relay takes the lease over.
    pub epoch: i64,
    /// Time left before the lease expires unless renewed; `None` when it has expired or was
    /// released, i.e. no relay is publishing right now. In JSON: `expires_in_secs`, in seconds.
    #[serde(rename = "expires_in_secs", serialize_with = "secs::serialize")]
    pub expires_in: Option<Duration>,
}

/// A parked outbox message, as listed by [`list_parked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Position in the outbox (claim order).
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// The message id (`ce_id`); what [`Selection::Ids`] takes.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The Kafka topic.
    #[diesel(sql_type = Text)]
    pub topic: String,
    /// The Kafka key; the key's later messages wait behind this one.
    #[diesel(sql_type = Nullable<Text>)]
    pub key: Option<String>,
    /// The event type (`ce_type`).
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// The event schema version.
    #[diesel(sql_type = Integer)]
    pub event_version: i32,
    /// Failed deliveries counted against it.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The last delivery error.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// When it was parked.
    #[diesel(sql_type = Timestamptz)]
    pub parked_at: DateTime<Utc>,
    /// When it was written.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// Which parked messages [`retry_parked`] and [`discard_parked`] act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These message ids; ids of messages that are not parked (sent, pending, unknown) are ignored.
    Ids(Vec<Uuid>),
    /// Every parked message, or every parked message of one topic.
    All {
        /// Only this topic.
        topic: Option<String>,
    },
}

/// An inbox dead letter, as listed by [`list_dead_letters`]. The stored key and payload are not
/// loaded here; they stay in the row for replay. The headers are decoded from the lossless
/// `raw_headers` column and escaped for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Row id; what [`DeadLetterSelection::Ids`] takes.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The consumer group that dead-lettered it.
    #[diesel(sql_type = Text)]
    pub consumer_group: String,
    /// The message id (`ce_id`); `None` when the record had no valid one.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub message_id: Option<Uuid>,
    /// The Kafka topic it was read from.
    #[diesel(sql_type = Text)]
    pub topic: String,
    /// The Kafka partition.
    #[diesel(sql_type = Integer, column_name = kafka_partition)]
    pub partition: i32,
    /// The Kafka offset.
    #[diesel(sql_type = BigInt, column_name = kafka_offset)]
    pub offset: i64,
    /// Machine-readable kind, e.g. `unknown_type`, `handler_failed`.
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// Human-readable detail.
    #[diesel(sql_type = Text)]
    pub error: String,
    /// Handler attempts made.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// When it was dead-lettered.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The record's headers in order, duplicates included (empty for rows written before
    /// migration 3).
    #[diesel(sql_type = Nullable<diesel::sql_types::Bytea>, column_name = raw_headers, deserialize_as = RawHeadersColumn)]
    pub headers: DisplayHeaders,
    /// When a replay was requested ([`request_replay`]) that no inbox has run yet; `None`
    /// without a pending request (a replay that failed again clears it).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub replay_requested_at: Option<DateTime<Utc>>,
}

/// Kafka headers for display: `(key, value)` pairs, each escaped with
/// [`raw_headers::escape`](crate::raw_headers::escape) (bytes that are not printable UTF-8
/// appear as `\xHH` / `\u{..}`); `None` is a header without a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DisplayHeaders(pub Vec<(String, Option<String>)>);

impl std::fmt::Display for DisplayHeaders {
    /// `key=value, key2=value2` (`key` alone for a header without a value).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match v {
                Some(v) => write!(f, "{k}={v}")?,
                None => f.write_str(k)?,
            }
        }
        Ok(())
    }
}

/// The `raw_headers` column as loaded, decoded into [`DisplayHeaders`].
#[doc(hidden)]
#[derive(Debug)]
pub struct RawHeadersColumn(Option<Vec<u8>>);

impl diesel::deserialize::FromSql<Nullable<diesel::sql_types::Bytea>, diesel::pg::Pg> for RawHeadersColumn {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        <Vec<u8> as diesel::deserialize::FromSql<diesel::sql_types::Bytea, diesel::pg::Pg>>::from_sql(bytes)
            .map(|b| RawHeadersColumn(Some(b)))
    }

    fn from_nullable_sql(bytes: Option<diesel::pg::PgValue<'_>>) -> diesel::deserialize::Result<Self> {
        match bytes {
            Some(b) => Self::from_sql(b),
            None => Ok(RawHeadersColumn(None)),
        }
    }
}

impl From<RawHeadersColumn> for DisplayHeaders {
    fn from(column: RawHeadersColumn) -> Self {
        let decoded = column.0.as_deref().and_then(crate::raw_headers::decode).unwrap_or_default();
        DisplayHeaders(
            decoded
                .into_iter()
                .map(|(k, v)| (crate::raw_headers::escape(&k), v.map(|v| crate::raw_headers::escape(&v))))
                .collect(),
        )
    }
}

/// Which dead letters [`discard_dead_letters`] deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSelection {
    /// These row ids ([`DeadLetter::id`]), whatever their group.
    Ids(Vec<i64>),
    /// Every dead letter of this consumer group.
    Group(String),
}

/// Which dead letters a replay acts on: every condition given holds. Built from
/// [`all`](Self::all) or [`ids`](Self::ids), narrowed with [`in_group`](Self::in_group) and
/// [`with_reason`](Self::with_reason).
///
/// ```
/// use outbox::ops::ReplaySelection;
/// // Everything the `inventory` group refused as a version it did not know yet.
/// let after_upgrade = ReplaySelection::all().in_group("inventory").with_reason("unsupported_version");
/// let two = ReplaySelection::ids([17, 18]);
/// # let _ = (after_upgrade, two);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplaySelection {
    /// Only these dead-letter ids ([`DeadLetter::id`]); `None`: any. An empty list matches nothing.
    pub ids: Option<Vec<i64>>,
    /// Only this consumer group; `None`: any.
    pub group: Option<String>,
    /// Only this reason (e.g. `unsupported_version`); `None`: any.
    pub reason: Option<String>,
}

impl ReplaySelection {
    /// Every dead letter (of every group, until narrowed).
    pub fn all() -> Self {
        Self::default()
    }

    /// These dead-letter ids.
    pub fn ids(ids: impl IntoIterator<Item = i64>) -> Self {
        Self { ids: Some(ids.into_iter().collect()), ..Self::default() }
    }

    /// Only dead letters of this consumer group.
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Only dead letters with this reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// What the operations take: a [`Database`] connection (`&mut AsyncPgConnection`, `&mut
/// SqliteConnection`, `&mut C` in code generic over `C: Database`), or a connection checked out
/// of a bb8 pool of them (`&mut pool.get().await?`, which a function taking `&mut
/// AsyncPgConnection` accepts through deref, and a generic one would not).
///
/// Holding a `&mut` to a connection already (a transaction's `tx`, a function's `conn: &mut C`
/// parameter), pass it as it is: `ops::status(tx)` (`&mut tx` works too for the concrete
/// `AsyncPgConnection` and `SqliteConnection`, not in code generic over `C`). Implement the trait
/// for a wrapper of your own that holds a connection.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a connection `outbox::ops` can run on",
    note = "pass a Database connection (`&mut AsyncPgConnection`, `&mut SqliteConnection`) or a pooled one \
            (`&mut pool.get().await?`); when you hold a `&mut` to the connection already, pass it as it is \
            (`ops::status(conn)`, not `ops::status(&mut conn)`)"
)]
pub trait Connection: Send {
    /// The connection's type.
    type Database: Database;
    /// The connection to run the statements on.
    fn database(&mut self) -> &mut Self::Database;
}

impl<C: Database> Connection for C {
    type Database = C;
    fn database(&mut self) -> &mut C {
        self
    }
}

// `&mut conn` where `conn` is a `&mut` already (what a function taking `&mut AsyncPgConnection`
// accepted through deref). Concrete types only: a generic `&mut T` would overlap the impl above.
impl Connection for &mut diesel_async::AsyncPgConnection {
    type Database = diesel_async::AsyncPgConnection;
    fn database(&mut self) -> &mut Self::Database {
        self
    }
}

#[cfg(feature = "sqlite")]
impl Connection for &mut crate::sqlite::SqliteConnection {
    type Database = crate::sqlite::SqliteConnection;
    fn database(&mut self) -> &mut Self::Database {
        self
    }
}

impl<M> Connection for bb8::PooledConnection<'_, M>
where
    M: bb8::ManageConnection,
    M::Connection: Database,
{
    type Database = M::Connection;
    fn database(&mut self) -> &mut M::Connection {
        self
    }
}

/// Pending and parked counts (in total and per topic), the oldest pending message's age, the
/// relay lease and the number of inbox dead letters.
///
/// Counts every unsent row, so it costs a scan of the backlog: fine for a status command or a
/// health check every few seconds, not for every request. The relay publishes the same figures
/// as `metrics` gauges (`outbox_pending`, `outbox_parked`, `outbox_oldest_pending_seconds`).
///
/// Ages are computed by the database, against its own clock and the rows' `created_at`, so a
/// skewed client clock does not distort them.
pub async fn status(conn: &mut impl Connection) -> Result<Status> {
    let conn = conn.database();
    // One read transaction: the three queries see one snapshot. On PostgreSQL it also keeps a
    // transaction pooler from preparing a statement on one server connection and running it on
    // another (`outbox::pooler`).
    let (topics, totals, lease) = read(conn, async |tx| {
        let topics = sql(tx).ops_status_topics().await?;
        let totals = sql(tx).ops_status_totals().await?;
        let lease = sql(tx).ops_status_lease().await?;
        Ok((topics, totals, lease))
    })
    .await?;
    // The totals are summed from the per-topic rows so they always agree with them.
    let per_topic: Vec<TopicStatus> = topics
        .into_iter()
        .map(|t| TopicStatus {
            topic: t.topic,
            pending: t.pending,
            parked: t.parked,
            oldest_pending_age: t.oldest_pending_secs.and_then(duration),
        })
        .collect();
    Ok(Status {
        pending: per_topic.iter().map(|t| t.pending).sum(),
        parked: per_topic.iter().map(|t| t.parked).sum(),
        sent_kept: totals.sent_kept,
        oldest_pending_age: per_topic.iter().filter_map(|t| t.oldest_pending_age).max(),
        per_topic,
        lease: lease.map(|l| LeaseInfo {
            name: l.name,
            owner: l.owner,
            epoch: l.epoch,
            expires_in: l.expires_in_secs.and_then(duration),
        }),
        dead_letters: totals.dead_letters,
    })
}

/// Parked messages, oldest first (in `seq` order: the order they block their keys in and the
/// order a retry sends them), at most `limit`, optionally of one topic only.
pub async fn list_parked(conn: &mut impl Connection, limit: u32, topic: Option<&str>) -> Result<Vec<ParkedMessage>> {
    read(conn.database(), async |tx| sql(tx).ops_list_parked(i64::from(limit), topic).await).await
}

/// Un-parks the selected messages: the relay publishes them again with a fresh set of
/// attempts, and once a key's head is sent, the messages it held back follow in their order.
/// Returns how many messages were un-parked.
///
/// A retried message becomes what a freshly written one is (no attempts, due now), so the next
/// claim takes it at its place in `seq` order, ahead of its key's held messages. Retry after
/// fixing the cause (raised the broker's size limit, created the topic, ...); otherwise the
/// message fails and parks again. The last error is kept until it is sent.
pub async fn retry_parked(conn: &mut impl Connection, selection: Selection) -> Result<u64> {
    update_parked(conn.database(), ParkedAction::Retry, selection).await
}

/// Deletes the selected parked messages: they are never published. Returns how many were deleted.
///
/// The later messages of a discarded message's key are released and published in their order,
/// so consumers see that key's stream without the discarded event; nothing else changes. Only
/// parked messages are deleted: a pending message selected by id is left alone (a parked row is
/// never in a relay's batch, so deleting it cannot race a delivery).
pub async fn discard_parked(conn: &mut impl Connection, selection: Selection) -> Result<u64> {
    update_parked(conn.database(), ParkedAction::Discard, selection).await
}

/// Retry or discard: change the selected parked rows, then, in the same transaction, give the
/// rows the relay held behind them back to the pending index, unless another row of their key
/// has failed (the relay's own release, `RELEASE_KEYS` of each backend).
async fn update_parked<C: Database>(conn: &mut C, action: ParkedAction, selection: Selection) -> Result<u64> {
    let (ids, topic) = match selection {
        Selection::Ids(ids) => (Some(ids), None),
        Selection::All { topic } => (None, topic),
    };
    crate::transaction(conn, async |tx| {
        let touched = sql(tx).ops_update_parked(action, ids.as_deref(), topic.as_deref()).await?;
        let keyed: Vec<(String, String)> =
            touched.iter().filter_map(|(topic, key)| Some((topic.clone(), key.clone()?))).collect();
        if !keyed.is_empty() {
            sql(tx).ops_release_keys(&keyed).await?;
        }
        Ok::<_, crate::Error>(touched.len() as u64)
    })
    .await
}

/// Inbox dead letters, newest first, at most `limit`, of one consumer group or of all.
pub async fn list_dead_letters(conn: &mut impl Connection, group: Option<&str>, limit: u32) -> Result<Vec<DeadLetter>> {
    read(conn.database(), async |tx| sql(tx).ops_list_dead_letters(group, i64::from(limit)).await).await
}

/// Deletes the selected dead letters (they will not be replayed). Returns how many were deleted.
///
/// The consumer is unaffected: it moved past these messages when it dead-lettered them.
pub async fn discard_dead_letters(conn: &mut impl Connection, selection: DeadLetterSelection) -> Result<u64> {
    let conn = conn.database();
    // Exactly one of the two is set (see DeadLetterSelection), so this never deletes every row.
    let (ids, group) = match selection {
        DeadLetterSelection::Ids(ids) => (Some(ids), None),
        DeadLetterSelection::Group(group) => (None, Some(group)),
    };
    let n = crate::transaction(conn, async |tx| {
        sql(tx).ops_discard_dead_letters(ids.as_deref(), group.as_deref()).await.map_err(crate::Error::from)
    })
    .await?;
    Ok(n as u64)
}

/// Asks for a replay of the selected dead letters: marks them (`replay_requested_at`), and a
/// running inbox of each one's consumer group replays them within its
/// `replay_poll_interval` (5 s by default). Returns how many were marked. PostgreSQL and SQLite.
///
/// The replay runs the group's handler on the stored record, in a transaction that also deletes
/// the dead letter, so each one takes effect once however many inboxes run and however often it
/// is requested. One that fails again (handler error, panic, still an unknown type or version)
/// stays a dead letter with the new reason and error, one more attempt, and no request, so it is
/// not retried in a loop; request it again after the next fix. Request replays once every
/// instance of the group runs the fixed handlers: an instance still on the old version picks
/// requests up too and records them as failed again. A replayed message runs after the later
/// messages of its key, which the inbox handled while it was a dead letter. See
/// docs/dead-letters.md.
pub async fn request_replay(conn: &mut impl Connection, selection: &ReplaySelection) -> Result<u64> {
    let conn = conn.database();
    let s = selection;
    let n = crate::transaction(conn, async |tx| {
        sql(tx)
            .ops_request_replay(s.group.as_deref(), s.ids.as_deref(), s.reason.as_deref())
            .await
            .map_err(crate::Error::from)
    })
    .await?;
    Ok(n as u64)
}

/// Runs `body` in a read transaction (PostgreSQL and SQLite: a plain `BEGIN`, so SQLite does not
/// take the write lock; a savepoint inside an open transaction). The writes use
/// [`crate::transaction`] (SQLite: `BEGIN IMMEDIATE`).
async fn read<C: Database, R>(conn: &mut C, body: impl AsyncFnOnce(&mut C) -> Result<R>) -> Result<R> {
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

/// What [`retry_parked`] and [`discard_parked`] do to the selected rows.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedAction {
    /// Un-park: no attempts, due now; `last_error` stays.
    Retry,
    /// Delete.
    Discard,
}

/// The SQL of the operations, one implementation per backend (`ops/postgres.rs`,
/// `ops/sqlite.rs`); the functions above are the control flow, written once, and reach it through
/// [`sql`]. Not nameable outside the crate.
pub(crate) mod sql {
    use diesel::QueryResult;
    use diesel::QueryableByName;
    use diesel::sql_types::{BigInt, Double, Nullable, Text};
    use uuid::Uuid;

    use super::{DeadLetter, ParkedAction, ParkedMessage};
    use crate::Result;

    /// Pending and parked counts of one topic, as stored (unsent rows only).
    #[derive(Debug, QueryableByName)]
    pub struct TopicCounts {
        /// The topic.
        #[diesel(sql_type = Text)]
        pub topic: String,
        /// Unsent, not parked.
        #[diesel(sql_type = BigInt)]
        pub pending: i64,
        /// Parked.
        #[diesel(sql_type = BigInt)]
        pub parked: i64,
        /// Seconds since the oldest pending row was written, by the database's clock.
        #[diesel(sql_type = Nullable<Double>)]
        pub oldest_pending_secs: Option<f64>,
    }

    /// Kept sent rows and dead letters.
    #[derive(Debug, QueryableByName)]
    pub struct Totals {
        /// Sent rows still stored (retention).
        #[diesel(sql_type = BigInt)]
        pub sent_kept: i64,
        /// Rows of `inbox_dead_letters`.
        #[diesel(sql_type = BigInt)]
        pub dead_letters: i64,
    }

    /// The relay lease row shown by `status`.
    #[derive(Debug)]
    pub struct Lease {
        /// Relay name.
        pub name: String,
        /// Holder; `None` once released.
        pub owner: Option<Uuid>,
        /// Fencing epoch.
        pub epoch: i64,
        /// Seconds until it expires, `None` when expired or released.
        pub expires_in_secs: Option<f64>,
    }

    /// The statements behind `outbox::ops`, one implementation per backend.
    #[async_trait::async_trait]
    pub trait Sql: Send {
        /// Unsent rows per topic, by topic name.
        async fn ops_status_topics(&mut self) -> QueryResult<Vec<TopicCounts>>;
        /// Kept sent rows and dead letters.
        async fn ops_status_totals(&mut self) -> QueryResult<Totals>;
        /// The live lease first, else the most recently expiring one.
        async fn ops_status_lease(&mut self) -> Result<Option<Lease>>;
        /// Parked rows in seq order, at most `limit`, of `topic` when given.
        async fn ops_list_parked(&mut self, limit: i64, topic: Option<&str>) -> Result<Vec<ParkedMessage>>;
        /// Retries or deletes the parked rows among `ids` (all when `None`) of `topic` (any when
        /// `None`); returns each touched row's (topic, key).
        async fn ops_update_parked(
            &mut self,
            action: ParkedAction,
            ids: Option<&[Uuid]>,
            topic: Option<&str>,
        ) -> QueryResult<Vec<(String, Option<String>)>>;
        /// Releases the held rows of these (topic, key) pairs unless a failing row still blocks them.
        async fn ops_release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize>;
        /// Dead letters newest first, at most `limit`, of `group` when given.
        async fn ops_list_dead_letters(&mut self, group: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>>;
        /// Deletes the dead letters among `ids` (when given) of `group` (when given).
        async fn ops_discard_dead_letters(&mut self, ids: Option<&[i64]>, group: Option<&str>) -> QueryResult<usize>;
        /// Sets `replay_requested_at` on the dead letters of `group`, among `ids`, with `reason`
        /// (each when given). Returns how many.
        async fn ops_request_replay(
            &mut self,
            group: Option<&str>,
            ids: Option<&[i64]>,
            reason: Option<&str>,
        ) -> QueryResult<usize>;
    }
}

/// The operations' statements for `conn`'s backend. Dispatched on [`Database::backend`] rather
/// than being a supertrait of [`Database`], so that storage does not depend on this module.
fn sql<C: Database>(conn: &mut C) -> &mut dyn Sql {
    match conn.backend() {
        Backend::Postgres(conn) => conn,
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(conn) => conn,
    }
}

/// Seconds computed by the server as a duration; a negative age (server clock stepped back) is zero.
fn duration(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

/// Durations as fractional seconds in JSON, which every consumer of the output can read.
mod secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
