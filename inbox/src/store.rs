//! The inbox tables: dedup rows, stored positions, dead letters. Every write here runs inside
//! the transaction of the handler's effects.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use outbox::schema::{inbox_dead_letters, inbox_messages, inbox_offsets};
use uuid::Uuid;

/// One dedup row: (group, message id) plus where the message was read.
#[derive(Debug, Insertable)]
#[diesel(table_name = inbox_messages)]
pub(crate) struct NewDedup<'a> {
    pub consumer_group: &'a str,
    pub message_id: Uuid,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// One dead-letter row.
#[derive(Debug, Insertable)]
#[diesel(table_name = inbox_dead_letters)]
pub(crate) struct NewDeadLetter<'a> {
    pub consumer_group: &'a str,
    pub message_id: Option<Uuid>,
    pub topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: serde_json::Value,
    pub reason: &'a str,
    pub error: &'a str,
    pub attempts: i32,
}

/// Inserts dedup rows and returns the ids that were new. ON CONFLICT DO NOTHING instead of a
/// select-then-insert: a concurrent transaction inserting the same id makes this one wait for
/// its outcome, so exactly one of them sees the id as new.
pub(crate) async fn insert_dedup(conn: &mut AsyncPgConnection, rows: &[NewDedup<'_>]) -> QueryResult<Vec<Uuid>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    diesel::insert_into(inbox_messages::table)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(inbox_messages::message_id)
        .get_results(conn)
        .await
}

pub(crate) async fn insert_dead_letters(conn: &mut AsyncPgConnection, rows: &[NewDeadLetter<'_>]) -> QueryResult<()> {
    if !rows.is_empty() {
        diesel::insert_into(inbox_dead_letters::table).values(rows).execute(conn).await?;
    }
    Ok(())
}

/// Stores the partition's next offset. GREATEST: a consumer that lost the partition in a
/// rebalance and commits late never moves the position back.
pub(crate) async fn store_position(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO inbox_offsets (consumer_group, topic, kafka_partition, next_offset) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE \
         SET next_offset = GREATEST(inbox_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<BigInt, _>(next_offset)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stored positions of some partitions of one topic: partition → next offset.
pub(crate) async fn load_positions(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> QueryResult<HashMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = inbox_offsets::table
        .filter(inbox_offsets::consumer_group.eq(group))
        .filter(inbox_offsets::topic.eq(topic))
        .filter(inbox_offsets::kafka_partition.eq_any(partitions))
        .select((inbox_offsets::kafka_partition, inbox_offsets::next_offset))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Deletes at most `limit` dedup rows of `group` older than `window`; returns how many.
/// Bounded by LIMIT so each statement holds its locks briefly; served by the
/// (consumer_group, handled_at) index.
pub(crate) async fn prune_dedup(
    conn: &mut AsyncPgConnection,
    group: &str,
    window: Duration,
    limit: i64,
) -> QueryResult<usize> {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    diesel::sql_query(
        "DELETE FROM inbox_messages WHERE consumer_group = $1 AND message_id IN ( \
             SELECT message_id FROM inbox_messages \
             WHERE consumer_group = $1 AND handled_at < now() - $2::float8 * interval '1 millisecond' \
             LIMIT $3)",
    )
    .bind::<Text, _>(group)
    .bind::<BigInt, _>(window_ms)
    .bind::<BigInt, _>(limit)
    .execute(conn)
    .await
}
