//! The relay's statements on SQLite (the PostgreSQL texts are in `postgres.rs`, under the same
//! names and in the same order). Times are milliseconds since the Unix epoch; ids are text; a
//! list is bound as one JSON array (`json_each`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Bool, Double, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Claimed, Failure, Fence, InFlight, MarkSql, Marked, Marks, TopicBacklog, mark_in};
use crate::db::sqlite::{SqliteConnection, json_array, now_ms};
use crate::{Error, ErrorKind, Result};

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Integer)]
    event_version: i32,
    #[diesel(sql_type = Binary)]
    payload: Vec<u8>,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Text)]
    occurred_at: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Bool)]
    blocked: bool,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

impl ClaimedRow {
    fn into_claimed(self) -> Result<Claimed> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Database, format!("outbox row {}: invalid {what}: {e}", self.seq))
        };
        Ok(Claimed {
            seq: self.seq,
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("id", &e))?,
            headers: serde_json::from_str(&self.headers).map_err(|e| corrupt("headers", &e))?,
            occurred_at: DateTime::parse_from_rfc3339(&self.occurred_at)
                .map_err(|e| corrupt("occurred_at", &e))?
                .with_timezone(&Utc),
            topic: self.topic,
            key: self.key,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            attempts: self.attempts,
            blocked: self.blocked,
        })
    }
}

/// "An earlier unsent row of m's key is held, or failing" (see db/relay/postgres.rs). The term
/// `(attempts > 0 OR held = 1)` repeats the partial index's condition word for word: SQLite uses
/// a partial index only when the query contains its terms (without it every probe scanned all
/// earlier rows).
macro_rules! blocked_by_earlier_row {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM outbox_messages b WHERE b.topic = m.topic AND b.key = m.key AND b.seq < m.seq ",
            "AND b.sent_at IS NULL AND (b.attempts > 0 OR b.held = 1) ",
            "AND (b.held = 1 OR (b.attempts > 0 AND (b.parked_at IS NOT NULL OR b.next_attempt_at > ",
            now_ms!(),
            "))))"
        )
    };
}

/// "An earlier unsent row of m's key has failed" (see db/relay/postgres.rs).
macro_rules! failing_earlier_row {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM outbox_messages b WHERE b.topic = m.topic AND b.key = m.key AND b.seq < m.seq ",
            "AND b.sent_at IS NULL AND (b.attempts > 0 OR b.held = 1) AND b.attempts > 0)"
        )
    };
}

// The same claim as PostgreSQL's (see db/relay/postgres.rs for why each clause is there). SQLite has
// one writer at a time, so seqs become visible in order and the in-flight guard never fires;
// it is kept so both backends run the same relay logic.
const CLAIM: &str = concat!(
    "SELECT seq, id, topic, key, event_type, event_version, CASE WHEN blocked THEN X'' ELSE payload END AS payload, ",
    "headers, occurred_at, attempts, blocked FROM (",
    "SELECT m.*, CASE WHEN (SELECT EXISTS (SELECT 1 FROM outbox_messages x WHERE x.sent_at IS NULL ",
    "AND (x.attempts > 0 OR x.held = 1))) THEN ",
    blocked_by_earlier_row!(),
    " ELSE 0 END AS blocked FROM outbox_messages m ",
    "WHERE m.sent_at IS NULL AND m.parked_at IS NULL AND m.held = 0 AND m.next_attempt_at <= ",
    now_ms!(),
    " AND EXISTS (SELECT 1 FROM outbox_relay_leases l WHERE l.name = ?5 AND l.owner = ?6 AND l.epoch = ?7 ",
    "AND l.expires_at > ",
    now_ms!(),
    ") AND m.seq > ?2 AND (SELECT count(*) FROM outbox_messages w WHERE w.seq <= ?2 AND ?3 <= ?2 ",
    "AND w.sent_at IS NULL AND w.parked_at IS NULL AND w.held = 0 AND w.next_attempt_at <= ",
    now_ms!(),
    ") <= ?4 ORDER BY m.seq LIMIT ?1) ORDER BY seq"
);

// As on PostgreSQL: no lease while a relay of another name holds a live one (db/relay/postgres.rs).
const ACQUIRE: &str = concat!(
    "INSERT INTO outbox_relay_leases (name, owner, epoch, expires_at) SELECT ?1, ?2, 1, ",
    now_ms!(),
    " + ?3 WHERE NOT EXISTS (SELECT 1 FROM outbox_relay_leases r WHERE r.name <> ?1 AND r.owner IS NOT NULL ",
    "AND r.expires_at > ",
    now_ms!(),
    " AND (r.name < ?1 OR NOT EXISTS (SELECT 1 FROM outbox_relay_leases s WHERE s.name = ?1 AND s.owner = ?2 ",
    "AND s.expires_at > ",
    now_ms!(),
    "))) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, ",
    "epoch = CASE WHEN outbox_relay_leases.owner = excluded.owner THEN outbox_relay_leases.epoch ",
    "ELSE outbox_relay_leases.epoch + 1 END, expires_at = excluded.expires_at ",
    "WHERE outbox_relay_leases.owner = excluded.owner OR outbox_relay_leases.owner IS NULL ",
    "OR outbox_relay_leases.expires_at < ",
    now_ms!(),
    " RETURNING epoch"
);

const RIVAL: &str = concat!(
    "SELECT name FROM outbox_relay_leases WHERE name <> ?1 AND owner IS NOT NULL AND expires_at > ",
    now_ms!(),
    " ORDER BY name LIMIT 1"
);

const RELEASE: &str = "UPDATE outbox_relay_leases SET owner = NULL, expires_at = 0 \
                       WHERE name = ?1 AND owner = ?2 AND epoch = ?3";

const FENCE: &str = concat!(
    "SELECT epoch FROM outbox_relay_leases WHERE name = ?1 AND owner = ?2 AND epoch = ?3 ",
    "AND NOT EXISTS (SELECT 1 FROM outbox_relay_leases r WHERE r.name <> ?1 AND r.owner IS NOT NULL AND r.expires_at > ",
    now_ms!(),
    ")"
);

const DELETE_SENT: &str = "DELETE FROM outbox_messages WHERE seq IN (SELECT value FROM json_each(?1))";
const MARK_SENT: &str = concat!(
    "UPDATE outbox_messages SET sent_at = ",
    now_ms!(),
    ", last_error = NULL WHERE seq IN (SELECT value FROM json_each(?1))"
);

// Only a key's head (counted) gets a retry delay; its later rows stay due (db/relay/postgres.rs).
const RECORD_FAILURE: &str = concat!(
    "UPDATE outbox_messages SET attempts = attempts + ?2, last_error = ?3, next_attempt_at = CASE WHEN ?2 = 1 THEN ",
    now_ms!(),
    " + ?4 ELSE next_attempt_at END, parked_at = CASE WHEN ?2 = 1 AND (?5 OR attempts + 1 >= ?6) THEN ",
    now_ms!(),
    " END WHERE seq = ?1 RETURNING parked_at IS NOT NULL AS parked"
);

const HOLD: &str = concat!(
    "UPDATE outbox_messages AS m SET held = 1 WHERE m.seq IN (SELECT value FROM json_each(?1)) ",
    "AND m.sent_at IS NULL AND m.parked_at IS NULL AND m.held = 0 AND ",
    blocked_by_earlier_row!()
);

pub(crate) const RELEASE_KEYS: &str = concat!(
    "UPDATE outbox_messages AS m SET held = 0 WHERE m.sent_at IS NULL AND m.held = 1 AND EXISTS (SELECT 1 FROM json_each(?1) r ",
    "WHERE json_extract(r.value, '$[0]') = m.topic AND json_extract(r.value, '$[1]') = m.key) AND NOT ",
    failing_earlier_row!()
);

const RELEASE_ORPHANS: &str = concat!(
    "UPDATE outbox_messages AS m SET held = 0 WHERE m.sent_at IS NULL AND m.held = 1 AND NOT ",
    failing_earlier_row!()
);

const CLEANUP: &str = concat!(
    "DELETE FROM outbox_messages WHERE seq IN (SELECT seq FROM outbox_messages WHERE sent_at < ",
    now_ms!(),
    " - ?1 ORDER BY sent_at LIMIT ?2)"
);

const BACKLOG: &str = concat!(
    "SELECT topic, COALESCE(SUM(parked_at IS NULL), 0) AS pending, COALESCE(SUM(parked_at IS NOT NULL), 0) AS parked, (",
    now_ms!(),
    " - MIN(CASE WHEN parked_at IS NULL THEN created_at END)) / 1000.0 AS oldest_pending_secs ",
    "FROM outbox_messages WHERE sent_at IS NULL GROUP BY topic"
);

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(QueryableByName)]
struct ParkedRow {
    #[diesel(sql_type = Bool)]
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

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait::async_trait]
impl super::RelayStore for SqliteConnection {
    async fn claim(&mut self, limit: i64, in_flight: InFlight, holder: Fence<'_>) -> Result<Vec<Claimed>> {
        let rows: Vec<ClaimedRow> = diesel::sql_query(CLAIM)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(in_flight.last)
            .bind::<BigInt, _>(in_flight.first)
            .bind::<BigInt, _>(in_flight.rows)
            .bind::<Text, _>(holder.lease)
            .bind::<Text, _>(holder.owner.hyphenated().to_string())
            .bind::<BigInt, _>(holder.epoch)
            .load(self)
            .await?;
        rows.into_iter().map(ClaimedRow::into_claimed).collect()
    }

    async fn rival_lease(&mut self, name: &str) -> Result<Option<String>> {
        let rows: Vec<Name> = diesel::sql_query(RIVAL).bind::<Text, _>(name).load(self).await?;
        Ok(rows.into_iter().next().map(|r| r.name))
    }

    async fn release_orphans(&mut self) -> Result<usize> {
        Ok(diesel::sql_query(RELEASE_ORPHANS).execute(self).await?)
    }

    async fn acquire_lease(&mut self, name: &str, owner: Uuid, lease: Duration) -> Result<Option<i64>> {
        let rows: Vec<Epoch> = diesel::sql_query(ACQUIRE)
            .bind::<Text, _>(name)
            .bind::<Text, _>(owner.hyphenated().to_string())
            .bind::<BigInt, _>(millis(lease))
            .load(self)
            .await?;
        Ok(rows.into_iter().next().map(|r| r.epoch))
    }

    async fn release_lease(&mut self, name: &str, owner: Uuid, epoch: i64) -> Result<()> {
        diesel::sql_query(RELEASE)
            .bind::<Text, _>(name)
            .bind::<Text, _>(owner.hyphenated().to_string())
            .bind::<BigInt, _>(epoch)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn mark(&mut self, fence: Fence<'_>, marks: &Marks<'_>) -> Result<Option<Marked>> {
        self.immediate_transaction::<_, Error, _>(async |tx| Ok(mark_in(tx, fence, marks).await?)).await
    }

    async fn cleanup_sent(&mut self, retention: Duration, batch: i64) -> Result<usize> {
        Ok(diesel::sql_query(CLEANUP)
            .bind::<BigInt, _>(millis(retention))
            .bind::<BigInt, _>(batch)
            .execute(self)
            .await?)
    }

    async fn backlog(&mut self) -> Result<Vec<TopicBacklog>> {
        let rows: Vec<BacklogRow> = diesel::sql_query(BACKLOG).load(self).await?;
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
}

// The binds are owned: the statement runs on the connection's blocking thread.
#[async_trait::async_trait]
impl MarkSql for SqliteConnection {
    async fn fence_held(&mut self, fence: Fence<'_>) -> QueryResult<bool> {
        let held: Vec<Epoch> = diesel::sql_query(FENCE)
            .bind::<Text, _>(fence.lease.to_owned())
            .bind::<Text, _>(fence.owner.hyphenated().to_string())
            .bind::<BigInt, _>(fence.epoch)
            .load(self)
            .await?;
        Ok(!held.is_empty())
    }

    async fn mark_sent(&mut self, seqs: &[i64], delete: bool) -> QueryResult<usize> {
        let sql = if delete { DELETE_SENT } else { MARK_SENT };
        diesel::sql_query(sql).bind::<Text, _>(json_array(seqs)).execute(self).await
    }

    async fn record_failures(&mut self, failures: &[Failure], max_attempts: i32) -> QueryResult<(usize, usize)> {
        let (mut failed, mut parked) = (0, 0);
        for f in failures {
            let rows: Vec<ParkedRow> = diesel::sql_query(RECORD_FAILURE)
                .bind::<BigInt, _>(f.seq)
                .bind::<Integer, _>(i32::from(f.counted))
                .bind::<Text, _>(f.error.clone())
                .bind::<BigInt, _>(millis(f.retry_in))
                .bind::<Bool, _>(f.park_now)
                .bind::<Integer, _>(max_attempts)
                .load(self)
                .await?;
            failed += rows.len();
            parked += rows.iter().filter(|r| r.parked).count();
        }
        Ok((failed, parked))
    }

    async fn release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize> {
        diesel::sql_query(RELEASE_KEYS).bind::<Text, _>(json_array(keys)).execute(self).await
    }

    async fn hold(&mut self, seqs: &[i64]) -> QueryResult<usize> {
        diesel::sql_query(HOLD).bind::<Text, _>(json_array(seqs)).execute(self).await
    }
}
