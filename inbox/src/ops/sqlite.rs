//! The dead-letter operations' SQL on SQLite: the same statements as PostgreSQL's
//! (`postgres.rs`) over SQLite's columns (times in integer milliseconds since the epoch, ids as
//! text, no arrays: id lists are bound as one JSON array and read with `json_each`).

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use outbox::sqlite::SqliteConnection;
use outbox::{Error, ErrorKind, Result};
use uuid::Uuid;

use super::sql::Sql;
use super::{DeadLetter, RawHeadersColumn};
use crate::store::Count;
use crate::store::sqlite::{json_array, now_ms};

const DEAD_LETTER_TOTAL: &str = "SELECT count(*) AS n FROM inbox_dead_letters";

#[derive(QueryableByName)]
struct DeadLetterRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    consumer_group: String,
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    raw_headers: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    replay_requested_at: Option<i64>,
}

// Newest first, served by the index inbox_dead_letters_group when a group is given.
const LIST_DEAD_LETTERS: &str = "SELECT id, consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, \
                                 error, attempts, created_at, raw_headers, replay_requested_at FROM inbox_dead_letters \
                                 WHERE (?1 IS NULL OR consumer_group = ?1) ORDER BY created_at DESC, id DESC LIMIT ?2";

// Exactly one of ?1 / ?2 is non-NULL (see DeadLetterSelection), so this never deletes every row.
const DISCARD_DEAD_LETTERS: &str = "DELETE FROM inbox_dead_letters \
                                    WHERE (?1 IS NULL OR id IN (SELECT value FROM json_each(?1))) \
                                    AND (?2 IS NULL OR consumer_group = ?2)";

/// A stored row that does not decode (written by hand, or by something else than the SDK).
fn corrupt(what: String, e: impl std::fmt::Display) -> Error {
    Error::other(ErrorKind::Database, format!("sqlite: {what}: {e}"), None)
}

fn uuid(text: &str, what: impl FnOnce() -> String) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| corrupt(format!("{} is not a UUID (`{text}`)", what()), e))
}

fn time(ms: i64, what: impl FnOnce() -> String) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| corrupt(what(), format_args!("{ms} is not a time in milliseconds since the epoch")))
}

#[async_trait::async_trait]
impl Sql for SqliteConnection {
    async fn ops_dead_letter_total(&mut self) -> QueryResult<i64> {
        diesel::sql_query(DEAD_LETTER_TOTAL).get_result::<Count>(self).await.map(|c| c.n)
    }

    async fn ops_list_dead_letters(&mut self, group: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows: Vec<DeadLetterRow> = diesel::sql_query(LIST_DEAD_LETTERS)
            .bind::<Nullable<Text>, _>(group)
            .bind::<BigInt, _>(limit)
            .load(self)
            .await?;
        rows.into_iter()
            .map(|r| {
                let id = r.id;
                Ok(DeadLetter {
                    id,
                    message_id: match &r.message_id {
                        Some(m) => Some(uuid(m, || format!("the message_id of dead letter {id}"))?),
                        None => None,
                    },
                    created_at: time(r.created_at, || format!("created_at of dead letter {id}"))?,
                    replay_requested_at: match r.replay_requested_at {
                        Some(ms) => Some(time(ms, || format!("replay_requested_at of dead letter {id}"))?),
                        None => None,
                    },
                    headers: RawHeadersColumn(r.raw_headers).into(),
                    consumer_group: r.consumer_group,
                    topic: r.topic,
                    partition: r.kafka_partition,
                    offset: r.kafka_offset,
                    reason: r.reason,
                    error: r.error,
                    attempts: r.attempts,
                })
            })
            .collect()
    }

    async fn ops_discard_dead_letters(&mut self, ids: Option<&[i64]>, group: Option<&str>) -> QueryResult<usize> {
        diesel::sql_query(DISCARD_DEAD_LETTERS)
            .bind::<Nullable<Text>, _>(ids.map(json_array))
            .bind::<Nullable<Text>, _>(group)
            .execute(self)
            .await
    }

    async fn ops_request_replay(
        &mut self,
        group: Option<&str>,
        ids: Option<&[i64]>,
        reason: Option<&str>,
    ) -> QueryResult<usize> {
        diesel::sql_query(REQUEST_REPLAY)
            .bind::<Nullable<Text>, _>(group)
            .bind::<Nullable<Text>, _>(ids.map(json_array))
            .bind::<Nullable<Text>, _>(reason)
            .execute(self)
            .await
    }
}

// Unset filters (?1..?3 NULL) match any row.
const REQUEST_REPLAY: &str = concat!(
    "UPDATE inbox_dead_letters SET replay_requested_at = ",
    now_ms!(),
    " WHERE (?1 IS NULL OR consumer_group = ?1) ",
    "AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2))) AND (?3 IS NULL OR reason = ?3)"
);
