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

/// A snapshot of the outbox and the relay lease. See [`status`].
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
/// relay lease. The inbox's figures (its dead letters) are `inbox::ops::status`.
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
    let (topics, totals, lease) = crate::db::read(conn, async |tx| {
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
    })
}

/// Parked messages, oldest first (in `seq` order: the order they block their keys in and the
/// order a retry sends them), at most `limit`, optionally of one topic only.
pub async fn list_parked(conn: &mut impl Connection, limit: u32, topic: Option<&str>) -> Result<Vec<ParkedMessage>> {
    crate::db::read(conn.database(), async |tx| sql(tx).ops_list_parked(i64::from(limit), topic).await).await
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

    use super::{ParkedAction, ParkedMessage};
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

    /// Kept sent rows.
    #[derive(Debug, QueryableByName)]
    pub struct Totals {
        /// Sent rows still stored (retention).
        #[diesel(sql_type = BigInt)]
        pub sent_kept: i64,
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
        /// Kept sent rows.
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
