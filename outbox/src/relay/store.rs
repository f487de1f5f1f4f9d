//! The relay's SQL. Every statement is one round trip; the claim and the marks are shaped so
//! that per-key order, fencing and out-of-order commits are handled by the database.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{
    Array, BigInt, Bytea, Double, Integer, Interval, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::Result;

/// A claimed row, ready to produce.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub topic: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub key: Option<String>,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Integer)]
    pub event_version: i32,
    #[diesel(sql_type = Bytea)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = Jsonb)]
    pub headers: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// A failed delivery to record.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub seq: i64,
    pub error: String,
    pub retry_in: std::time::Duration,
    /// Park now regardless of the attempt count (the record itself is unacceptable).
    pub park_now: bool,
    /// Whether this failure counts as an attempt. Only the first failing row of a key in a
    /// batch counts (it is the key's head); the key's later rows failed with it and just wait.
    pub counted: bool,
}

// Due, unsent, unparked rows in seq order. The NOT EXISTS keeps per-key order across retries:
// a row waits while an earlier row of its key is parked or waiting for its retry. Only rows that
// already failed (attempts > 0) can block, so the probe uses the small partial index
// outbox_messages_key_blocked. No high-water mark: a row whose transaction committed late (lower
// seq than rows already sent) is simply picked up by the next claim.
const CLAIMABLE: &str = "
FROM outbox_messages m
WHERE m.sent_at IS NULL AND m.parked_at IS NULL AND m.next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM outbox_messages b
      WHERE b.topic = m.topic AND b.key = m.key AND b.seq < m.seq
        AND b.sent_at IS NULL AND b.attempts > 0
        AND (b.parked_at IS NOT NULL OR b.next_attempt_at > now()))";

// While batches are in flight, their rows fill [$3, $2]. The InitPlan counts the due, unsent
// rows there: more than the $4 in flight means a transaction committed late with a seq inside
// the window, and then nothing above it is claimed (the relay drains the window first), so the
// late row goes out before any later row of its key. Check and claim share one snapshot: a
// later row of the key cannot be visible while the late row is not. (A due row of a held key
// in the range is a false alarm that only costs one round without pipelining.)
const CLAIM_ABOVE_WINDOW: &str = "
  AND m.seq > $2
  AND (SELECT count(*) FROM outbox_messages w
       WHERE w.seq <= $2 AND $3 <= $2 AND w.sent_at IS NULL AND w.parked_at IS NULL
         AND w.next_attempt_at <= now()) <= $4";

/// The rows in flight: seq range `first..=last` holding `rows` claimed rows (`rows == 0`: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    pub first: i64,
    pub last: i64,
    pub rows: i64,
}

/// Claims up to `limit` claimable rows above the rows in flight, or none when a late commit
/// landed inside them.
pub(crate) async fn claim(conn: &mut AsyncPgConnection, limit: i64, in_flight: InFlight) -> Result<Vec<Claimed>> {
    let sql = format!(
        "SELECT m.seq, m.id, m.topic, m.key, m.event_type, m.event_version, m.payload, m.headers, m.occurred_at, \
         m.attempts {CLAIMABLE} {CLAIM_ABOVE_WINDOW} ORDER BY m.seq LIMIT $1"
    );
    Ok(diesel::sql_query(sql)
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(in_flight.last)
        .bind::<BigInt, _>(in_flight.first)
        .bind::<BigInt, _>(in_flight.rows)
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

// Takes the lease when it is free or expired (bumping the fencing epoch), or keeps it when it is
// already ours. A plain row, not an advisory lock: survives PgBouncer's transaction mode.
const ACQUIRE: &str = "
INSERT INTO outbox_relay_leases AS l (name, owner, epoch, expires_at)
VALUES ($1, $2, 1, now() + $3)
ON CONFLICT (name) DO UPDATE
   SET owner = EXCLUDED.owner,
       epoch = CASE WHEN l.owner = EXCLUDED.owner THEN l.epoch ELSE l.epoch + 1 END,
       expires_at = EXCLUDED.expires_at
 WHERE l.owner = EXCLUDED.owner OR l.owner IS NULL OR l.expires_at < now()
RETURNING l.epoch";

/// Returns the fencing epoch when this relay holds the lease after the call.
pub(crate) async fn acquire_lease(
    conn: &mut AsyncPgConnection,
    name: &str,
    owner: Uuid,
    lease: std::time::Duration,
) -> Result<Option<i64>> {
    let rows: Vec<Epoch> = diesel::sql_query(ACQUIRE)
        .bind::<Text, _>(name)
        .bind::<SqlUuid, _>(owner)
        .bind::<Interval, _>(interval(lease))
        .load(conn)
        .await?;
    Ok(rows.into_iter().next().map(|r| r.epoch))
}

// Lets another relay take over at once after a graceful shutdown.
const RELEASE: &str = "
UPDATE outbox_relay_leases SET owner = NULL, expires_at = '-infinity'
WHERE name = $1 AND owner = $2 AND epoch = $3";

pub(crate) async fn release_lease(conn: &mut AsyncPgConnection, name: &str, owner: Uuid, epoch: i64) -> Result<()> {
    diesel::sql_query(RELEASE)
        .bind::<Text, _>(name)
        .bind::<SqlUuid, _>(owner)
        .bind::<BigInt, _>(epoch)
        .execute(conn)
        .await?;
    Ok(())
}

// The fence: FOR SHARE makes a concurrent takeover (an UPDATE of this row) wait until the marks
// commit, and a relay whose epoch is stale finds no row and marks nothing.
const FENCE: &str = "
SELECT epoch FROM outbox_relay_leases WHERE name = $1 AND owner = $2 AND epoch = $3 FOR SHARE";

const DELETE_SENT: &str = "DELETE FROM outbox_messages WHERE seq = ANY($1)";
const MARK_SENT: &str = "UPDATE outbox_messages SET sent_at = now(), last_error = NULL WHERE seq = ANY($1)";

// One statement for every failure of the batch, each with its own error and retry delay.
const RECORD_FAILURES: &str = "
UPDATE outbox_messages m
   SET attempts = m.attempts + f.counted::int,
       last_error = f.error,
       next_attempt_at = now() + make_interval(secs => f.retry_secs),
       parked_at = CASE WHEN f.counted AND (f.park_now OR m.attempts + 1 >= $5) THEN now() END
  FROM UNNEST($1::bigint[], $2::text[], $3::float8[], $4::bool[], $6::bool[])
       AS f(seq, error, retry_secs, park_now, counted)
 WHERE m.seq = f.seq
RETURNING m.seq, m.parked_at IS NOT NULL AS parked";

/// What a mark did.
#[derive(Debug, Default)]
pub(crate) struct Marked {
    pub sent: usize,
    pub failed: usize,
    pub parked: usize,
}

#[derive(QueryableByName)]
struct ParkedRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    parked: bool,
}

/// Marks the sent rows (delete or set `sent_at`) and records failures, in one transaction under
/// the fence. Returns `None` when this relay has been fenced off (nothing was marked).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn mark(
    conn: &mut AsyncPgConnection,
    lease_name: &str,
    owner: Uuid,
    epoch: i64,
    sent: &[i64],
    failures: &[Failure],
    delete_sent: bool,
    max_attempts: i32,
) -> Result<Option<Marked>> {
    conn.transaction::<_, crate::Error, _>(async |tx| {
        let fence: Vec<Epoch> = diesel::sql_query(FENCE)
            .bind::<Text, _>(lease_name)
            .bind::<SqlUuid, _>(owner)
            .bind::<BigInt, _>(epoch)
            .load(tx)
            .await?;
        if fence.is_empty() {
            return Ok(None);
        }
        let mut marked = Marked::default();
        if !sent.is_empty() {
            let sql = if delete_sent { DELETE_SENT } else { MARK_SENT };
            marked.sent = diesel::sql_query(sql).bind::<Array<BigInt>, _>(sent).execute(tx).await?;
        }
        if !failures.is_empty() {
            let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
            let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
            let delays: Vec<f64> = failures.iter().map(|f| f.retry_in.as_secs_f64()).collect();
            let park: Vec<bool> = failures.iter().map(|f| f.park_now).collect();
            let counted: Vec<bool> = failures.iter().map(|f| f.counted).collect();
            let rows: Vec<ParkedRow> = diesel::sql_query(RECORD_FAILURES)
                .bind::<Array<BigInt>, _>(seqs)
                .bind::<Array<Text>, _>(errors)
                .bind::<Array<Double>, _>(delays)
                .bind::<Array<diesel::sql_types::Bool>, _>(park)
                .bind::<Integer, _>(max_attempts)
                .bind::<Array<diesel::sql_types::Bool>, _>(counted)
                .load(tx)
                .await?;
            marked.failed = rows.len();
            marked.parked = rows.iter().filter(|r| r.parked).count();
        }
        Ok(Some(marked))
    })
    .await
}

// Retention mode: sent rows older than the retention period, a small batch at a time so the
// cleanup never holds long locks or produces one huge WAL burst.
const CLEANUP: &str = "
DELETE FROM outbox_messages WHERE seq IN (
    SELECT seq FROM outbox_messages WHERE sent_at < now() - $1 ORDER BY sent_at LIMIT $2)";

pub(crate) async fn cleanup_sent(
    conn: &mut AsyncPgConnection,
    retention: std::time::Duration,
    batch: i64,
) -> Result<usize> {
    Ok(diesel::sql_query(CLEANUP)
        .bind::<Interval, _>(interval(retention))
        .bind::<BigInt, _>(batch)
        .execute(conn)
        .await?)
}

#[derive(QueryableByName)]
pub(crate) struct Backlog {
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub parked: i64,
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_pending_secs: Option<f64>,
}

// For the gauges; uses the partial indexes, so it stays cheap while the backlog is small.
const BACKLOG: &str = "
SELECT count(*) FILTER (WHERE parked_at IS NULL) AS pending,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8 AS oldest_pending_secs
FROM outbox_messages WHERE sent_at IS NULL";

pub(crate) async fn backlog(conn: &mut AsyncPgConnection) -> Result<Backlog> {
    Ok(diesel::sql_query(BACKLOG).get_result(conn).await?)
}

#[derive(QueryableByName)]
struct Enabled {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    enabled: bool,
}

// 'D' = disabled (outbox::set_notify(conn, false), the default after migrate).
const NOTIFY_ENABLED: &str = "
SELECT COALESCE(bool_or(tgenabled <> 'D'), false) AS enabled FROM pg_trigger
WHERE tgname = 'outbox_messages_notify' AND tgrelid = 'outbox_messages'::regclass";

/// Whether the insert trigger sends NOTIFY, i.e. whether LISTENing can hear anything.
pub(crate) async fn notify_enabled(conn: &mut AsyncPgConnection) -> Result<bool> {
    let e: Enabled = diesel::sql_query(NOTIFY_ENABLED).get_result(conn).await?;
    Ok(e.enabled)
}

fn interval(d: std::time::Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
