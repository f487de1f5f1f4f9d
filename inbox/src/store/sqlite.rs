//! The inbox's statements on SQLite (the PostgreSQL texts are in `postgres.rs`, in the same
//! order). Times are milliseconds since the Unix epoch (outbox's SQLite migrations); ids and
//! JSON are text.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Bool, Integer, Nullable, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use outbox::sqlite::SqliteConnection;
use uuid::Uuid;

use super::{Count, DeadLetterId};
use super::{DeadLetterFilter, InboxStore, NewDeadLetter, NewDedup, NewPosition, StoredDeadLetter, StoredPosition};

/// Milliseconds since the Unix epoch, in SQL (as the outbox's SQLite statements compute it).
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}
pub(crate) use now_ms;

// One statement per row (SQLite runs in-process; a round trip is a function call). ON CONFLICT
// DO NOTHING under the write lock: exactly one transaction sees an id as new.
const INSERT_DEDUP: &str = "INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, \
    kafka_offset) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING";

const INSERT_DEAD_LETTER: &str = "INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, \
    kafka_offset, key, payload, headers, reason, error, attempts, raw_headers) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

// Never backwards (a consumer that lost the partition and commits late), unless the log changed
// (?7); the identity columns always describe the row's next_offset.
const STORE_POSITION: &str = concat!(
    "INSERT INTO inbox_offsets (consumer_group, topic, kafka_partition, next_offset, cluster_id, ",
    "last_fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ",
    "ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET ",
    "cluster_id = CASE WHEN ?7 OR excluded.next_offset >= next_offset ",
    "THEN excluded.cluster_id ELSE cluster_id END, ",
    "last_fingerprint = CASE WHEN ?7 OR excluded.next_offset >= next_offset ",
    "THEN excluded.last_fingerprint ELSE last_fingerprint END, ",
    "next_offset = CASE WHEN ?7 THEN excluded.next_offset ELSE max(next_offset, excluded.next_offset) END, ",
    "updated_at = ",
    now_ms!()
);

const LOAD_POSITIONS: &str = "SELECT kafka_partition, next_offset, cluster_id, last_fingerprint FROM inbox_offsets \
    WHERE consumer_group = ?1 AND topic = ?2 AND kafka_partition IN (SELECT value FROM json_each(?3))";

const PRUNE_DEDUP: &str = concat!(
    "DELETE FROM inbox_messages WHERE consumer_group = ?1 AND message_id IN (",
    "SELECT message_id FROM inbox_messages WHERE consumer_group = ?1 AND handled_at < ",
    now_ms!(),
    " - ?2 LIMIT ?3)"
);

const DEAD_LETTER_COUNT: &str = "SELECT count(*) AS n FROM inbox_dead_letters WHERE consumer_group = ?1";

// Dead-letter replay. Unset filters (?1..?3 NULL) match any row.
const DEAD_LETTER_IDS: &str = "SELECT id FROM inbox_dead_letters WHERE (?1 IS NULL OR consumer_group = ?1) \
    AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2))) AND (?3 IS NULL OR reason = ?3) AND id > ?4 \
    ORDER BY id LIMIT ?5";

const DEAD_LETTER_IDS_REQUESTED: &str = "SELECT id FROM inbox_dead_letters \
    WHERE (?1 IS NULL OR consumer_group = ?1) AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2))) \
    AND (?3 IS NULL OR reason = ?3) AND id > ?4 AND replay_requested_at IS NOT NULL ORDER BY id LIMIT ?5";

// Inside BEGIN IMMEDIATE: no other writer until this transaction ends (no row lock to take).
const CLAIM_DEAD_LETTER: &str = "SELECT id, message_id, topic, kafka_partition, kafka_offset, key, payload, headers, \
    raw_headers, attempts FROM inbox_dead_letters \
    WHERE id = ?1 AND consumer_group = ?2 AND (NOT ?3 OR replay_requested_at IS NOT NULL)";

const DELETE_DEAD_LETTER: &str = "DELETE FROM inbox_dead_letters WHERE id = ?1";

const RENEW_DEDUP: &str =
    concat!("UPDATE inbox_messages SET handled_at = ", now_ms!(), " WHERE consumer_group = ?1 AND message_id = ?2");

const RECORD_REPLAY_FAILURE: &str = "UPDATE inbox_dead_letters SET reason = ?3, error = ?4, attempts = attempts + 1, \
    replay_requested_at = NULL WHERE id = ?1 AND attempts = ?2";

const PRUNE_DEAD_LETTERS: &str = concat!(
    "DELETE FROM inbox_dead_letters WHERE id IN (SELECT id FROM inbox_dead_letters ",
    "WHERE consumer_group = ?1 AND created_at < ",
    now_ms!(),
    " - ?2 AND replay_requested_at IS NULL ORDER BY created_at LIMIT ?3)"
);

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
    #[diesel(sql_type = Nullable<Text>)]
    cluster_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_fingerprint: Option<i64>,
}

#[derive(QueryableByName)]
struct StoredDeadLetterRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Nullable<Binary>)]
    raw_headers: Option<Vec<u8>>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

pub(crate) fn json_array<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

#[async_trait::async_trait]
impl InboxStore for SqliteConnection {
    async fn insert_dedup(&mut self, rows: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>> {
        let mut new = Vec::with_capacity(rows.len());
        for r in rows {
            let inserted = diesel::sql_query(INSERT_DEDUP)
                .bind::<Text, _>(r.consumer_group.to_owned())
                .bind::<Text, _>(r.message_id.hyphenated().to_string())
                .bind::<Text, _>(r.topic.to_owned())
                .bind::<Integer, _>(r.kafka_partition)
                .bind::<BigInt, _>(r.kafka_offset)
                .execute(self)
                .await?;
            if inserted == 1 {
                new.push(r.message_id);
            }
        }
        Ok(new)
    }

    async fn insert_dead_letters(&mut self, rows: &[NewDeadLetter<'_>]) -> QueryResult<()> {
        for r in rows {
            diesel::sql_query(INSERT_DEAD_LETTER)
                .bind::<Text, _>(r.consumer_group.to_owned())
                .bind::<Nullable<Text>, _>(r.message_id.map(|id| id.hyphenated().to_string()))
                .bind::<Text, _>(r.topic.to_owned())
                .bind::<Integer, _>(r.kafka_partition)
                .bind::<BigInt, _>(r.kafka_offset)
                .bind::<Nullable<Binary>, _>(r.key.map(<[u8]>::to_vec))
                .bind::<Nullable<Binary>, _>(r.payload.map(<[u8]>::to_vec))
                .bind::<Text, _>(r.headers.to_string())
                .bind::<Text, _>(r.reason.to_owned())
                .bind::<Text, _>(r.error.clone())
                .bind::<Integer, _>(r.attempts)
                .bind::<Binary, _>(r.raw_headers.clone())
                .execute(self)
                .await?;
        }
        Ok(())
    }

    async fn store_position(&mut self, p: &NewPosition<'_>) -> QueryResult<()> {
        diesel::sql_query(STORE_POSITION)
            .bind::<Text, _>(p.consumer_group.to_owned())
            .bind::<Text, _>(p.topic.to_owned())
            .bind::<Integer, _>(p.kafka_partition)
            .bind::<BigInt, _>(p.next_offset)
            .bind::<Nullable<Text>, _>(p.cluster_id.map(str::to_owned))
            .bind::<Nullable<BigInt>, _>(p.fingerprint)
            .bind::<Bool, _>(p.replace)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn load_positions(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> QueryResult<HashMap<i32, StoredPosition>> {
        let rows: Vec<Position> = diesel::sql_query(LOAD_POSITIONS)
            .bind::<Text, _>(group.to_owned())
            .bind::<Text, _>(topic.to_owned())
            .bind::<Text, _>(json_array(partitions))
            .load(self)
            .await?;
        Ok(rows
            .into_iter()
            .map(|p| {
                let stored = StoredPosition {
                    next_offset: p.next_offset,
                    cluster_id: p.cluster_id,
                    fingerprint: p.last_fingerprint,
                };
                (p.kafka_partition, stored)
            })
            .collect())
    }

    async fn prune_dedup(&mut self, group: &str, window: Duration, limit: i64) -> QueryResult<usize> {
        diesel::sql_query(PRUNE_DEDUP)
            .bind::<Text, _>(group.to_owned())
            .bind::<BigInt, _>(millis(window))
            .bind::<BigInt, _>(limit)
            .execute(self)
            .await
    }

    async fn dead_letter_count(&mut self, group: &str) -> QueryResult<i64> {
        let row: Count = diesel::sql_query(DEAD_LETTER_COUNT).bind::<Text, _>(group).get_result(self).await?;
        Ok(row.n)
    }

    async fn dead_letter_ids(&mut self, f: &DeadLetterFilter<'_>, after: i64, limit: i64) -> QueryResult<Vec<i64>> {
        let sql = if f.requested { DEAD_LETTER_IDS_REQUESTED } else { DEAD_LETTER_IDS };
        let rows: Vec<DeadLetterId> = diesel::sql_query(sql)
            .bind::<Nullable<Text>, _>(f.group.map(str::to_owned))
            .bind::<Nullable<Text>, _>(f.ids.map(json_array))
            .bind::<Nullable<Text>, _>(f.reason.map(str::to_owned))
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(limit)
            .load(self)
            .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    async fn claim_dead_letter(
        &mut self,
        group: &str,
        id: i64,
        requested: bool,
    ) -> QueryResult<Option<StoredDeadLetter>> {
        let rows: Vec<StoredDeadLetterRow> = diesel::sql_query(CLAIM_DEAD_LETTER)
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(group.to_owned())
            .bind::<Bool, _>(requested)
            .load(self)
            .await?;
        let Some(r) = rows.into_iter().next() else { return Ok(None) };
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            diesel::result::Error::DeserializationError(format!("dead letter {}: invalid {what}: {e}", r.id).into())
        };
        let message_id = match r.message_id.as_deref() {
            Some(text) => Some(Uuid::parse_str(text).map_err(|e| corrupt("message_id", &e))?),
            None => None,
        };
        let headers = serde_json::from_str(&r.headers).map_err(|e| corrupt("headers", &e))?;
        Ok(Some(StoredDeadLetter {
            id: r.id,
            message_id,
            topic: r.topic,
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            headers,
            raw_headers: r.raw_headers,
            attempts: r.attempts,
        }))
    }

    async fn delete_dead_letter(&mut self, id: i64) -> QueryResult<usize> {
        diesel::sql_query(DELETE_DEAD_LETTER).bind::<BigInt, _>(id).execute(self).await
    }

    async fn renew_dedup(&mut self, group: &str, message_id: Uuid) -> QueryResult<usize> {
        diesel::sql_query(RENEW_DEDUP)
            .bind::<Text, _>(group)
            .bind::<Text, _>(message_id.hyphenated().to_string())
            .execute(self)
            .await
    }

    async fn record_replay_failure(&mut self, id: i64, seen: i32, reason: &str, error: &str) -> QueryResult<usize> {
        diesel::sql_query(RECORD_REPLAY_FAILURE)
            .bind::<BigInt, _>(id)
            .bind::<Integer, _>(seen)
            .bind::<Text, _>(reason.to_owned())
            .bind::<Text, _>(error.to_owned())
            .execute(self)
            .await
    }

    async fn prune_dead_letters(&mut self, group: &str, retention: Duration, limit: i64) -> QueryResult<usize> {
        diesel::sql_query(PRUNE_DEAD_LETTERS)
            .bind::<Text, _>(group.to_owned())
            .bind::<BigInt, _>(millis(retention))
            .bind::<BigInt, _>(limit)
            .execute(self)
            .await
    }

    async fn transaction_token(&mut self) -> QueryResult<i64> {
        Ok(0)
    }

    async fn same_transaction(&mut self, _token: i64) -> QueryResult<bool> {
        // SQLite refuses BEGIN inside a transaction, and that is the only thing this asks: any
        // failure means a transaction is open (a broken connection fails the next statement).
        // When BEGIN succeeds the handler had ended ours; the one BEGIN opened is rolled back
        // by the caller like any other.
        Ok(self.batch_execute("BEGIN").await.is_err())
    }
}
