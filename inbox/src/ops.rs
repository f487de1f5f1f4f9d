//! Operations on the inbox's tables: what an operator asks about the dead letters, and the
//! repairs they make. The `outbox` command-line binary's `dead-letters` commands are a thin shell
//! over these functions; call them directly to build an admin endpoint. They take any
//! [`outbox::Database`] connection (see [`outbox::ops::Connection`]), with the same results on
//! PostgreSQL and SQLite; each one is a few statements in a transaction of its own (a savepoint
//! inside one you opened; on SQLite the repairs start with `BEGIN IMMEDIATE`, the reads with a
//! plain `BEGIN`), and none of them stops an inbox.
//!
//! ```no_run
//! # async fn run(conn: &mut diesel_async::AsyncPgConnection) -> outbox::Result<()> {
//! use inbox::ops::{self, ReplaySelection};
//!
//! println!("{} dead letters", ops::status(conn).await?.dead_letters);
//! for d in ops::list_dead_letters(conn, Some("inventory"), 100).await? {
//!     println!("{} {}: {}", d.id, d.reason, d.error);
//! }
//! // The handler is fixed and deployed: run it again on what it refused.
//! ops::request_replay(conn, &ReplaySelection::all().in_group("inventory")).await?;
//! # Ok(()) }
//! ```
//!
//! Messages the inbox refused or whose handler kept failing. A dead letter keeps the record's
//! key, payload and headers, so it can be replayed: the handler runs again on the stored record,
//! inside the consumer process that has the handlers, and the dead letter is deleted in the
//! handler's transaction. Producing the record to its topic again would not replay it: the inbox
//! recorded the message id when it dead-lettered it, and skips it as a duplicate.
//! [`request_replay`] marks dead letters for replay; a running inbox of their consumer group
//! picks them up (`InboxBuilder::replay_poll_interval`, 5 s by default), or the application
//! replays them at once with [`Inbox::replayer`](crate::Inbox::replayer). [`discard_dead_letters`]
//! deletes dead letters that need no replay. See docs/dead-letters.md.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use outbox::ops::Connection;
use outbox::{Database, Result};
use serde::Serialize;
use uuid::Uuid;

use self::sql::sql;

mod postgres;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A snapshot of the inbox's tables. See [`status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Rows in the inbox's dead-letter table, all consumer groups.
    pub dead_letters: i64,
}

/// The inbox's figures for an operator: the dead letters of every consumer group. The outbox's
/// are [`outbox::ops::status`]; the `outbox status` command shows both.
pub async fn status(conn: &mut impl Connection) -> Result<Status> {
    let dead_letters = read(conn.database(), async |tx| Ok(sql(tx)?.ops_dead_letter_total().await?)).await?;
    Ok(Status { dead_letters })
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
/// [`outbox::raw_headers::escape`] (bytes that are not printable UTF-8
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
pub struct RawHeadersColumn(pub(crate) Option<Vec<u8>>);

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
        let decoded = column.0.as_deref().and_then(outbox::raw_headers::decode).unwrap_or_default();
        DisplayHeaders(
            decoded
                .into_iter()
                .map(|(k, v)| (outbox::raw_headers::escape(&k), v.map(|v| outbox::raw_headers::escape(&v))))
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
/// use inbox::ops::ReplaySelection;
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

/// Inbox dead letters, newest first, at most `limit`, of one consumer group or of all.
pub async fn list_dead_letters(conn: &mut impl Connection, group: Option<&str>, limit: u32) -> Result<Vec<DeadLetter>> {
    read(conn.database(), async |tx| sql(tx)?.ops_list_dead_letters(group, i64::from(limit)).await).await
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
    let n = outbox::transaction(conn, async |tx| {
        Ok::<_, outbox::Error>(sql(tx)?.ops_discard_dead_letters(ids.as_deref(), group.as_deref()).await?)
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
    let n = outbox::transaction(conn, async |tx| {
        Ok::<_, outbox::Error>(
            sql(tx)?.ops_request_replay(s.group.as_deref(), s.ids.as_deref(), s.reason.as_deref()).await?,
        )
    })
    .await?;
    Ok(n as u64)
}

/// Runs `body` in a read transaction (PostgreSQL and SQLite: a plain `BEGIN`, so SQLite does not
/// take the write lock; a savepoint inside an open transaction). The writes use
/// [`outbox::transaction`] (SQLite: `BEGIN IMMEDIATE`).
pub(crate) async fn read<C: Database, R>(conn: &mut C, body: impl AsyncFnOnce(&mut C) -> Result<R>) -> Result<R> {
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
