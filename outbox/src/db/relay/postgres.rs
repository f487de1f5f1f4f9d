//! The relay's statements on PostgreSQL (the SQLite texts are in `sqlite.rs`, under the same
//! names and in the same order).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Double, Integer, Interval, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Claimed, Failure, Fence, InFlight, MarkSql, Marked, Marks, TopicBacklog, mark_in};
use crate::Result;
use crate::db::ConnPool;
use crate::db::postgres::{in_tx, listen};
use crate::db::prepared::prepared;

#[derive(QueryableByName)]
struct ClaimedRow {
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
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub blocked: bool,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

// "An earlier unsent row of m's key is held, or failing (parked, or waiting for its retry)".
// Only rows that failed (attempts > 0) or are held can block, so the probe uses the small
// partial index outbox_messages_key_blocked, which holds a hash of the key (a long key cannot
// overflow a btree entry); key = key confirms the hash.
macro_rules! blocked_by_earlier_row {
    () => {
        "EXISTS (SELECT 1 FROM outbox_messages b
          WHERE b.topic = m.topic AND hashtextextended(b.key, 0) = hashtextextended(m.key, 0)
            AND b.key = m.key AND b.seq < m.seq AND b.sent_at IS NULL
            AND (b.held OR (b.attempts > 0 AND (b.parked_at IS NOT NULL OR b.next_attempt_at > now()))))"
    };
}

// "An earlier unsent row of m's key has failed", whether or not its retry is due yet: held rows
// stay held until that row is sent, retried or discarded. Held rows do not count, so a key's held
// rows are released together, in one statement; the earliest row that failed is released too
// and is the next one claimed.
macro_rules! failing_earlier_row {
    () => {
        "EXISTS (SELECT 1 FROM outbox_messages b
          WHERE b.topic = m.topic AND hashtextextended(b.key, 0) = hashtextextended(m.key, 0)
            AND b.key = m.key AND b.seq < m.seq AND b.sent_at IS NULL AND b.attempts > 0)"
    };
}

// Due, unsent, unparked, unheld rows in seq order, each with whether it is blocked (see above).
// Blocked rows are returned too, without their payload, and take a place in the batch: the mark
// holds them, so a blocked key's backlog is walked once, not by every claim. No high-water mark:
// a row whose transaction committed late (lower seq than rows already sent) is simply picked up
// by the next claim. The lease check ($5..$7) is in the same statement, so a relay that was
// paused past its lease claims nothing once another relay took over.
//
// The per-row probe is a correlated subplan (it compares seqs, so it cannot become a hashed
// anti-join). The InitPlan in front of it asks once per claim whether any row is failing or held
// at all; in the usual case none is and no row is probed (B1: 30 % of the relay's rate without it).
const CLAIMABLE: &str = concat!(
    "
FROM outbox_messages m CROSS JOIN LATERAL (SELECT CASE WHEN (SELECT EXISTS (SELECT 1 FROM outbox_messages x
          WHERE x.sent_at IS NULL AND (x.attempts > 0 OR x.held))) THEN ",
    blocked_by_earlier_row!(),
    " ELSE false END AS blocked) k
WHERE m.sent_at IS NULL AND m.parked_at IS NULL AND NOT m.held AND m.next_attempt_at <= now()
  AND EXISTS (SELECT 1 FROM outbox_relay_leases l
               WHERE l.name = $5 AND l.owner = $6 AND l.epoch = $7 AND l.expires_at > now())"
);

// While batches are in flight, their rows fill [$3, $2]. The InitPlan counts the due, unsent
// rows there: more than the $4 in flight means a transaction committed late with a seq inside
// the window, and then nothing above it is claimed (the relay drains the window first), so the
// late row goes out before any later row of its key. Check and claim share one snapshot: a
// later row of the key cannot be visible while the late row is not. (A due row of a held key
// in the range is a false alarm that only costs one round without pipelining.)
//
// The count stops at $4 + 1 rows and walks the pending index in seq order: with statistics
// from an earlier, larger backlog (a bulk load, a refill after TRUNCATE) an unbounded count was
// planned as a sequential scan of the whole table on every claim (B1: 27 ms of a 30 ms claim).
const CLAIM_ABOVE_WINDOW: &str = "
  AND m.seq > $2
  AND (SELECT count(*) FROM (
         SELECT 1 FROM outbox_messages w
          WHERE w.seq <= $2 AND $3 <= $2 AND w.sent_at IS NULL AND w.parked_at IS NULL AND NOT w.held
            AND w.next_attempt_at <= now()
          ORDER BY w.seq LIMIT $4 + 1) AS due) <= $4";

// Takes the lease when it is free or expired (bumping the fencing epoch), or keeps it when it is
// already ours. A plain row, not an advisory lock: survives PgBouncer's transaction mode.
//
// Relays of different names over one table would each publish everything, so none takes its
// lease while a relay of another name holds a live one; if two got in at once, the lower name
// keeps it and the other stands by at its next renewal.
const ACQUIRE: &str = "
INSERT INTO outbox_relay_leases AS l (name, owner, epoch, expires_at)
SELECT $1, $2, 1, now() + $3
 WHERE NOT EXISTS (
       SELECT 1 FROM outbox_relay_leases r
        WHERE r.name <> $1 AND r.owner IS NOT NULL AND r.expires_at > now()
          AND (r.name < $1 OR NOT EXISTS (
               SELECT 1 FROM outbox_relay_leases s
                WHERE s.name = $1 AND s.owner = $2 AND s.expires_at > now())))
ON CONFLICT (name) DO UPDATE
   SET owner = EXCLUDED.owner,
       epoch = CASE WHEN l.owner = EXCLUDED.owner THEN l.epoch ELSE l.epoch + 1 END,
       expires_at = EXCLUDED.expires_at
 WHERE l.owner = EXCLUDED.owner OR l.owner IS NULL OR l.expires_at < now()
RETURNING l.epoch";

const RIVAL: &str = "
SELECT name FROM outbox_relay_leases
 WHERE name <> $1 AND owner IS NOT NULL AND expires_at > now() ORDER BY name LIMIT 1";

// Lets another relay take over at once after a graceful shutdown.
const RELEASE: &str = "
UPDATE outbox_relay_leases SET owner = NULL, expires_at = '-infinity'
WHERE name = $1 AND owner = $2 AND epoch = $3";

// The fence: FOR SHARE makes a concurrent takeover (an UPDATE of this row) wait until the marks
// commit, and a relay whose epoch is stale finds no row and marks nothing. A relay of another
// name can only have taken its lease once ours expired (see ACQUIRE), so a live one fences us too.
//
// The mark transaction commits without waiting for its WAL flush (synchronous_commit=off, set in
// the same statement): a PostgreSQL crash can forget the last fraction of a second of marks, and
// those rows — already acknowledged by Kafka — are published again, which at-least-once delivery
// allows and the inbox deduplicates. Nothing is ever marked that was not acknowledged, and the
// business transactions keep their own durability. The relay no longer waits for an fsync per
// batch (docs/relay.md, "Marks and `synchronous_commit`").
const FENCE: &str = "
SELECT epoch, set_config('synchronous_commit', 'off', true) AS async_commit
  FROM outbox_relay_leases l WHERE name = $1 AND owner = $2 AND epoch = $3
   AND NOT EXISTS (SELECT 1 FROM outbox_relay_leases r
                    WHERE r.name <> $1 AND r.owner IS NOT NULL AND r.expires_at > now())
   FOR SHARE OF l";

const DELETE_SENT: &str = "DELETE FROM outbox_messages WHERE seq = ANY($1)";

const MARK_SENT: &str = "UPDATE outbox_messages SET sent_at = now(), last_error = NULL WHERE seq = ANY($1)";

// One statement for every failure of the batch, each with its own error. Only a key's head
// (counted) gets a retry delay; the key's later rows stay due and are held behind it.
const RECORD_FAILURES: &str = "
UPDATE outbox_messages m
   SET attempts = m.attempts + f.counted::int,
       last_error = f.error,
       next_attempt_at = CASE WHEN f.counted THEN now() + make_interval(secs => f.retry_secs)
                              ELSE m.next_attempt_at END,
       parked_at = CASE WHEN f.counted AND (f.park_now OR m.attempts + 1 >= $5) THEN now() END
  FROM UNNEST($1::bigint[], $2::text[], $3::float8[], $4::bool[], $6::bool[])
       AS f(seq, error, retry_secs, park_now, counted)
 WHERE m.seq = f.seq
RETURNING m.seq, m.parked_at IS NOT NULL AS parked";

// The rows a claim found blocked, if they still are (checked under the fence, after this
// batch's failures are recorded).
const HOLD: &str = concat!(
    "
UPDATE outbox_messages m SET held = true
 WHERE m.seq = ANY($1) AND m.sent_at IS NULL AND m.parked_at IS NULL AND NOT m.held AND ",
    blocked_by_earlier_row!()
);

// A sent row that had failed was its key's head: the rows held behind it go back to the pending
// index, unless another failing row of the key still blocks them.
pub(crate) const RELEASE_KEYS: &str = concat!(
    "
UPDATE outbox_messages m SET held = false
  FROM unnest($1::text[], $2::text[]) AS r(topic, key)
 WHERE m.sent_at IS NULL AND m.held AND m.topic = r.topic
   AND hashtextextended(m.key, 0) = hashtextextended(r.key, 0) AND m.key = r.key AND NOT ",
    failing_earlier_row!()
);

// Held rows with nothing failing ahead of them any more. `sent_at IS NULL` (always true of a held
// row) lets it walk the small key_blocked index instead of the table.
const RELEASE_ORPHANS: &str = concat!(
    "UPDATE outbox_messages m SET held = false WHERE m.sent_at IS NULL AND m.held AND NOT ",
    failing_earlier_row!()
);

// Retention mode: sent rows older than the retention period, a small batch at a time so the
// cleanup never holds long locks or produces one huge WAL burst.
const CLEANUP: &str = "
DELETE FROM outbox_messages WHERE seq IN (
    SELECT seq FROM outbox_messages WHERE sent_at < now() - $1 ORDER BY sent_at LIMIT $2)";

// For the gauges; uses the partial indexes, so it stays cheap while the backlog is small.
const BACKLOG: &str = "
SELECT topic,
       count(*) FILTER (WHERE parked_at IS NULL) AS pending,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8 AS oldest_pending_secs
FROM outbox_messages WHERE sent_at IS NULL GROUP BY topic";

// The claim's SQL, built once.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT m.seq, m.id, m.topic, m.key, m.event_type, m.event_version, \
         CASE WHEN k.blocked THEN ''::bytea ELSE m.payload END AS payload, m.headers, m.occurred_at, \
         m.attempts, k.blocked {CLAIMABLE} {CLAIM_ABOVE_WINDOW} ORDER BY m.seq LIMIT $1"
    )
});

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(QueryableByName)]
struct ParkedRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    parked: bool,
}

#[derive(QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    parked: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_pending_secs: Option<f64>,
}

#[async_trait::async_trait]
impl super::RelayStore for AsyncPgConnection {
    async fn claim(&mut self, limit: i64, in_flight: InFlight, holder: Fence<'_>) -> Result<Vec<Claimed>> {
        Ok(load_claim(self, limit, in_flight, holder).await?)
    }

    async fn claim_in_transaction(
        &mut self,
        limit: i64,
        in_flight: InFlight,
        holder: Fence<'_>,
    ) -> Result<Vec<Claimed>> {
        // Behind a transaction pooler (`pooler`); direct, the cached statement is one round trip.
        Ok(in_tx!(self, tx => load_claim(tx, limit, in_flight, holder).await)?)
    }

    async fn rival_lease(&mut self, name: &str) -> Result<Option<String>> {
        let rows: Vec<Name> = in_tx!(self, tx => prepared(RIVAL).bind::<Text, _>(name).load(tx).await)?;
        Ok(rows.into_iter().next().map(|r| r.name))
    }

    async fn release_orphans(&mut self) -> Result<usize> {
        Ok(in_tx!(self, tx => prepared(RELEASE_ORPHANS).execute(tx).await)?)
    }

    async fn acquire_lease(&mut self, name: &str, owner: Uuid, lease: Duration) -> Result<Option<i64>> {
        let rows: Vec<Epoch> = in_tx!(self, tx => {
            prepared(ACQUIRE)
                .bind::<Text, _>(name)
                .bind::<SqlUuid, _>(owner)
                .bind::<Interval, _>(interval(lease))
                .load(tx)
                .await
        })?;
        Ok(rows.into_iter().next().map(|r| r.epoch))
    }

    async fn release_lease(&mut self, name: &str, owner: Uuid, epoch: i64) -> Result<()> {
        in_tx!(self, tx => {
            prepared(RELEASE)
                .bind::<Text, _>(name)
                .bind::<SqlUuid, _>(owner)
                .bind::<BigInt, _>(epoch)
                .execute(tx)
                .await
        })?;
        Ok(())
    }

    async fn mark(&mut self, fence: Fence<'_>, marks: &Marks<'_>) -> Result<Option<Marked>> {
        self.transaction::<_, crate::Error, _>(async |tx| Ok(mark_in(tx, fence, marks).await?)).await
    }

    async fn cleanup_sent(&mut self, retention: Duration, batch: i64) -> Result<usize> {
        Ok(in_tx!(self, tx => {
            prepared(CLEANUP).bind::<Interval, _>(interval(retention)).bind::<BigInt, _>(batch).execute(tx).await
        })?)
    }

    async fn backlog(&mut self) -> Result<Vec<TopicBacklog>> {
        let rows: Vec<BacklogRow> = in_tx!(self, tx => prepared(BACKLOG).load(tx).await)?;
        Ok(rows
            .into_iter()
            .map(|b| TopicBacklog {
                topic: b.topic,
                pending: b.pending,
                parked: b.parked,
                oldest_pending_secs: b.oldest_pending_secs,
            })
            .collect())
    }

    async fn listen(pool: ConnPool<Self>, wake: Arc<Notify>, shutdown: CancellationToken) {
        listen(pool, wake, shutdown).await
    }
}

#[async_trait::async_trait]
impl MarkSql for AsyncPgConnection {
    async fn fence_held(&mut self, fence: Fence<'_>) -> QueryResult<bool> {
        let held: Vec<Epoch> = prepared(FENCE)
            .bind::<Text, _>(fence.lease)
            .bind::<SqlUuid, _>(fence.owner)
            .bind::<BigInt, _>(fence.epoch)
            .load(self)
            .await?;
        Ok(!held.is_empty())
    }

    async fn mark_sent(&mut self, seqs: &[i64], delete: bool) -> QueryResult<usize> {
        let sql = if delete { DELETE_SENT } else { MARK_SENT };
        prepared(sql).bind::<Array<BigInt>, _>(seqs).execute(self).await
    }

    async fn record_failures(&mut self, failures: &[Failure], max_attempts: i32) -> QueryResult<(usize, usize)> {
        let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<f64> = failures.iter().map(|f| f.retry_in.as_secs_f64()).collect();
        let park: Vec<bool> = failures.iter().map(|f| f.park_now).collect();
        let counted: Vec<bool> = failures.iter().map(|f| f.counted).collect();
        let rows: Vec<ParkedRow> = prepared(RECORD_FAILURES)
            .bind::<Array<BigInt>, _>(seqs)
            .bind::<Array<Text>, _>(errors)
            .bind::<Array<Double>, _>(delays)
            .bind::<Array<Bool>, _>(park)
            .bind::<Integer, _>(max_attempts)
            .bind::<Array<Bool>, _>(counted)
            .load(self)
            .await?;
        Ok((rows.len(), rows.iter().filter(|r| r.parked).count()))
    }

    async fn release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize> {
        let topics: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
        let keys: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        prepared(RELEASE_KEYS).bind::<Array<Text>, _>(topics).bind::<Array<Text>, _>(keys).execute(self).await
    }

    async fn hold(&mut self, seqs: &[i64]) -> QueryResult<usize> {
        prepared(HOLD).bind::<Array<BigInt>, _>(seqs).execute(self).await
    }
}

async fn load_claim(
    conn: &mut AsyncPgConnection,
    limit: i64,
    in_flight: InFlight,
    holder: Fence<'_>,
) -> QueryResult<Vec<Claimed>> {
    let rows: Vec<ClaimedRow> = prepared(CLAIM.as_str())
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(in_flight.last)
        .bind::<BigInt, _>(in_flight.first)
        .bind::<BigInt, _>(in_flight.rows)
        .bind::<Text, _>(holder.lease)
        .bind::<SqlUuid, _>(holder.owner)
        .bind::<BigInt, _>(holder.epoch)
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            seq: r.seq,
            id: r.id,
            topic: r.topic,
            key: r.key,
            event_type: r.event_type,
            event_version: r.event_version,
            payload: r.payload,
            headers: r.headers,
            occurred_at: r.occurred_at,
            attempts: r.attempts,
            blocked: r.blocked,
        })
        .collect())
}

fn interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
