//! The inbox's statements on PostgreSQL (the SQLite texts are in `sqlite.rs`, in the same order).

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use outbox::db::prepared::prepared;
use outbox::schema::{inbox_dead_letters, inbox_offsets};
use uuid::Uuid;

use super::{Count, DeadLetterId};
use super::{
    DeadLetterFilter, InboxStore, NewDeadLetter, NewDedup, NewPosition, StoredDeadLetter, StoredPosition, in_tx,
};

// The dedup records of one transaction, one prepared statement for any count. ON CONFLICT DO
// NOTHING instead of select-then-insert: a concurrent transaction inserting the same id makes
// this one wait for its outcome, so exactly one sees the id as new.
const INSERT_DEDUP: &str = "
INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int4[], $5::int8[])
ON CONFLICT DO NOTHING RETURNING message_id";

// The same, inserting only while the open transaction is still the one $6 names (see
// `same_transaction`): after a handler's raw COMMIT this runs in an implicit transaction of its
// own, which has no id when `t` is read, so nothing is inserted and `same` is false. One row
// always comes back (message_id NULL when nothing was inserted).
const INSERT_DEDUP_IN: &str = "
WITH t AS (SELECT txid_current_if_assigned() AS x),
ins AS (
  INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset)
  SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int4[], $5::int8[])
   WHERE (SELECT x FROM t) = $6
  ON CONFLICT DO NOTHING RETURNING message_id)
SELECT COALESCE((SELECT x FROM t) = $6, false) AS same, ins.message_id
  FROM (SELECT 1) AS one LEFT JOIN ins ON true";

// Never backwards (a consumer that lost the partition in a rebalance and commits late), unless
// the log changed ($7): then the new log's offsets replace the old ones. The identity columns
// always describe the row's next_offset.
const STORE_POSITION: &str = "
INSERT INTO inbox_offsets (consumer_group, topic, kafka_partition, next_offset, cluster_id, last_fingerprint)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET
  next_offset = CASE WHEN $7 OR EXCLUDED.next_offset >= inbox_offsets.next_offset
      THEN EXCLUDED.next_offset ELSE inbox_offsets.next_offset END,
  cluster_id = CASE WHEN $7 OR EXCLUDED.next_offset >= inbox_offsets.next_offset
      THEN EXCLUDED.cluster_id ELSE inbox_offsets.cluster_id END,
  last_fingerprint = CASE WHEN $7 OR EXCLUDED.next_offset >= inbox_offsets.next_offset
      THEN EXCLUDED.last_fingerprint ELSE inbox_offsets.last_fingerprint END,
  updated_at = now()";

// Bounded by LIMIT so each statement holds its locks briefly; served by the
// (consumer_group, handled_at) index.
const PRUNE_DEDUP: &str = "
DELETE FROM inbox_messages WHERE consumer_group = $1 AND message_id IN (
    SELECT message_id FROM inbox_messages
    WHERE consumer_group = $1 AND handled_at < now() - $2::float8 * interval '1 millisecond'
    LIMIT $3)";

const DEAD_LETTER_COUNT: &str = "SELECT count(*) AS n FROM inbox_dead_letters WHERE consumer_group = $1";

// Dead-letter replay and retention (docs/dead-letters.md). Unset filters ($1..$3 NULL) match any row.
const DEAD_LETTER_IDS: &str = "
SELECT id FROM inbox_dead_letters
WHERE ($1::text IS NULL OR consumer_group = $1) AND ($2::bigint[] IS NULL OR id = ANY($2))
  AND ($3::text IS NULL OR reason = $3) AND id > $4
ORDER BY id LIMIT $5";

// The inboxes' poll names the partial index's condition literally, so it is used.
const DEAD_LETTER_IDS_REQUESTED: &str = "
SELECT id FROM inbox_dead_letters
WHERE ($1::text IS NULL OR consumer_group = $1) AND ($2::bigint[] IS NULL OR id = ANY($2))
  AND ($3::text IS NULL OR reason = $3) AND id > $4 AND replay_requested_at IS NOT NULL
ORDER BY id LIMIT $5";

// SKIP LOCKED: a row another inbox is replaying right now is left to it (it deletes the row or
// records the failure); this one moves on instead of waiting and then running it a second time.
const CLAIM_DEAD_LETTER: &str = "
SELECT id, message_id, topic, kafka_partition, kafka_offset, key, payload, headers, raw_headers, attempts
FROM inbox_dead_letters
WHERE id = $1 AND consumer_group = $2 AND (NOT $3 OR replay_requested_at IS NOT NULL)
FOR UPDATE SKIP LOCKED";

const DELETE_DEAD_LETTER: &str = "DELETE FROM inbox_dead_letters WHERE id = $1";

const RENEW_DEDUP: &str = "UPDATE inbox_messages SET handled_at = now() WHERE consumer_group = $1 AND message_id = $2";

// `attempts = $2`: the failure is recorded once even if another inbox replayed the row between
// this one's rollback and this statement.
const RECORD_REPLAY_FAILURE: &str = "
UPDATE inbox_dead_letters SET reason = $3, error = $4, attempts = attempts + 1, replay_requested_at = NULL
WHERE id = $1 AND attempts = $2";

// Bounded like the dedup pruning; served by (consumer_group, created_at). Rows waiting for a
// requested replay are kept.
const PRUNE_DEAD_LETTERS: &str = "
DELETE FROM inbox_dead_letters WHERE id IN (
    SELECT id FROM inbox_dead_letters
    WHERE consumer_group = $1 AND created_at < now() - $2::float8 * interval '1 millisecond'
      AND replay_requested_at IS NULL
    ORDER BY created_at LIMIT $3)";

#[derive(QueryableByName)]
struct Inserted {
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
}

#[derive(QueryableByName)]
struct InsertedIn {
    #[diesel(sql_type = Bool)]
    same: bool,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    message_id: Option<Uuid>,
}

#[derive(Insertable)]
#[diesel(table_name = inbox_dead_letters)]
struct DeadLetterRow<'a> {
    consumer_group: &'a str,
    message_id: Option<Uuid>,
    topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: &'a serde_json::Value,
    raw_headers: &'a [u8],
    reason: &'a str,
    error: &'a str,
    attempts: i32,
}

#[derive(QueryableByName)]
struct StoredDeadLetterRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    message_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Bytea>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Jsonb)]
    headers: serde_json::Value,
    #[diesel(sql_type = Nullable<Bytea>)]
    raw_headers: Option<Vec<u8>>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = Nullable<BigInt>)]
    token: Option<i64>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The dedup rows as the five arrays `INSERT_DEDUP` and `INSERT_DEDUP_IN` take.
macro_rules! bind_dedup {
    ($query:expr, $rows:expr) => {
        $query
            .bind::<Array<Text>, _>($rows.iter().map(|r| r.consumer_group).collect::<Vec<_>>())
            .bind::<Array<SqlUuid>, _>($rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
            .bind::<Array<Text>, _>($rows.iter().map(|r| r.topic).collect::<Vec<_>>())
            .bind::<Array<Integer>, _>($rows.iter().map(|r| r.kafka_partition).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>($rows.iter().map(|r| r.kafka_offset).collect::<Vec<_>>())
    };
}

#[async_trait::async_trait]
impl InboxStore for AsyncPgConnection {
    async fn insert_dedup(&mut self, rows: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Inserted> = bind_dedup!(prepared(INSERT_DEDUP), rows).load(self).await?;
        Ok(ids.into_iter().map(|r| r.message_id).collect())
    }

    async fn insert_dedup_in(&mut self, token: i64, rows: &[NewDedup<'_>]) -> QueryResult<Option<Vec<Uuid>>> {
        let out: Vec<InsertedIn> =
            bind_dedup!(prepared(INSERT_DEDUP_IN), rows).bind::<BigInt, _>(token).load(self).await?;
        if !<[InsertedIn]>::first(&out).is_some_and(|r| r.same) {
            return Ok(None);
        }
        Ok(Some(out.into_iter().filter_map(|r| r.message_id).collect()))
    }

    async fn insert_dead_letters(&mut self, rows: &[NewDeadLetter<'_>]) -> QueryResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let values: Vec<DeadLetterRow<'_>> = rows
            .iter()
            .map(|r| DeadLetterRow {
                consumer_group: r.consumer_group,
                message_id: r.message_id,
                topic: r.topic,
                kafka_partition: r.kafka_partition,
                kafka_offset: r.kafka_offset,
                key: r.key,
                payload: r.payload,
                headers: &r.headers,
                raw_headers: &r.raw_headers,
                reason: r.reason,
                error: &r.error,
                attempts: r.attempts,
            })
            .collect();
        diesel::insert_into(inbox_dead_letters::table).values(&values).execute(self).await?;
        Ok(())
    }

    async fn store_position(&mut self, p: &NewPosition<'_>) -> QueryResult<()> {
        prepared(STORE_POSITION)
            .bind::<Text, _>(p.consumer_group)
            .bind::<Text, _>(p.topic)
            .bind::<Integer, _>(p.kafka_partition)
            .bind::<BigInt, _>(p.next_offset)
            .bind::<Nullable<Text>, _>(p.cluster_id)
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
        let rows: Vec<(i32, i64, Option<String>, Option<i64>)> = in_tx!(self, tx => {
            inbox_offsets::table
                .filter(inbox_offsets::consumer_group.eq(group))
                .filter(inbox_offsets::topic.eq(topic))
                .filter(inbox_offsets::kafka_partition.eq_any(partitions))
                .select((
                    inbox_offsets::kafka_partition,
                    inbox_offsets::next_offset,
                    inbox_offsets::cluster_id,
                    inbox_offsets::last_fingerprint,
                ))
                .load(tx)
                .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(p, next_offset, cluster_id, fingerprint)| {
                (p, StoredPosition { next_offset, cluster_id, fingerprint })
            })
            .collect())
    }

    async fn prune_dedup(&mut self, group: &str, window: Duration, limit: i64) -> QueryResult<usize> {
        let prune =
            prepared(PRUNE_DEDUP).bind::<Text, _>(group).bind::<BigInt, _>(millis(window)).bind::<BigInt, _>(limit);
        in_tx!(self, tx => prune.execute(tx).await)
    }

    async fn dead_letter_count(&mut self, group: &str) -> QueryResult<i64> {
        let row: Count = in_tx!(self, tx => prepared(DEAD_LETTER_COUNT).bind::<Text, _>(group).get_result(tx).await)?;
        Ok(row.n)
    }

    async fn dead_letter_ids(&mut self, f: &DeadLetterFilter<'_>, after: i64, limit: i64) -> QueryResult<Vec<i64>> {
        let sql = if f.requested { DEAD_LETTER_IDS_REQUESTED } else { DEAD_LETTER_IDS };
        let rows: Vec<DeadLetterId> = in_tx!(self, tx => {
            diesel::sql_query(sql)
                .bind::<Nullable<Text>, _>(f.group)
                .bind::<Nullable<Array<BigInt>>, _>(f.ids)
                .bind::<Nullable<Text>, _>(f.reason)
                .bind::<BigInt, _>(after)
                .bind::<BigInt, _>(limit)
                .load(tx)
                .await
        })?;
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
            .bind::<Text, _>(group)
            .bind::<Bool, _>(requested)
            .load(self)
            .await?;
        Ok(rows.into_iter().next().map(|r| StoredDeadLetter {
            id: r.id,
            message_id: r.message_id,
            topic: r.topic,
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            headers: r.headers,
            raw_headers: r.raw_headers,
            attempts: r.attempts,
        }))
    }

    async fn delete_dead_letter(&mut self, id: i64) -> QueryResult<usize> {
        diesel::sql_query(DELETE_DEAD_LETTER).bind::<BigInt, _>(id).execute(self).await
    }

    async fn renew_dedup(&mut self, group: &str, message_id: Uuid) -> QueryResult<usize> {
        diesel::sql_query(RENEW_DEDUP).bind::<Text, _>(group).bind::<SqlUuid, _>(message_id).execute(self).await
    }

    async fn record_replay_failure(&mut self, id: i64, seen: i32, reason: &str, error: &str) -> QueryResult<usize> {
        in_tx!(self, tx => {
            diesel::sql_query(RECORD_REPLAY_FAILURE)
                .bind::<BigInt, _>(id)
                .bind::<Integer, _>(seen)
                .bind::<Text, _>(reason)
                .bind::<Text, _>(error)
                .execute(tx)
                .await
        })
    }

    async fn prune_dead_letters(&mut self, group: &str, retention: Duration, limit: i64) -> QueryResult<usize> {
        in_tx!(self, tx => {
            diesel::sql_query(PRUNE_DEAD_LETTERS)
                .bind::<Text, _>(group)
                .bind::<BigInt, _>(millis(retention))
                .bind::<BigInt, _>(limit)
                .execute(tx)
                .await
        })
    }

    async fn transaction_token(&mut self) -> QueryResult<i64> {
        let row: Token = prepared("SELECT txid_current() AS token").get_result(self).await?;
        Ok(row.token.unwrap_or(-1))
    }

    async fn same_transaction(&mut self, token: i64) -> QueryResult<bool> {
        // Outside a transaction (autocommit after a raw COMMIT or ROLLBACK) the statement runs in
        // a transaction of its own that assigns no id: NULL. In a transaction the handler opened
        // after ending ours: NULL or another id. In an aborted transaction: an error.
        let row: Token = prepared("SELECT txid_current_if_assigned() AS token").get_result(self).await?;
        Ok(row.token == Some(token))
    }
}
