//! The dead-letter operations' SQL on PostgreSQL.

use diesel::QueryResult;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use outbox::Result;

use super::DeadLetter;
use super::sql::Sql;
use crate::store::Count;

const DEAD_LETTER_TOTAL: &str = "SELECT count(*) AS n FROM inbox_dead_letters";

// Newest first, served by the index inbox_dead_letters_group when a group is given.
const LIST_DEAD_LETTERS: &str = "
SELECT id, consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, error, attempts, created_at,
       raw_headers, replay_requested_at
FROM inbox_dead_letters
WHERE ($1::text IS NULL OR consumer_group = $1)
ORDER BY created_at DESC, id DESC
LIMIT $2";

// Exactly one of $1 / $2 is non-NULL (see DeadLetterSelection), so this never deletes every row.
const DISCARD_DEAD_LETTERS: &str = "
DELETE FROM inbox_dead_letters
WHERE ($1::bigint[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR consumer_group = $2)";

#[async_trait::async_trait]
impl Sql for AsyncPgConnection {
    async fn ops_dead_letter_total(&mut self) -> QueryResult<i64> {
        diesel::sql_query(DEAD_LETTER_TOTAL).get_result::<Count>(self).await.map(|c| c.n)
    }

    async fn ops_list_dead_letters(&mut self, group: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>> {
        Ok(diesel::sql_query(LIST_DEAD_LETTERS)
            .bind::<Nullable<Text>, _>(group)
            .bind::<BigInt, _>(limit)
            .load(self)
            .await?)
    }

    async fn ops_discard_dead_letters(&mut self, ids: Option<&[i64]>, group: Option<&str>) -> QueryResult<usize> {
        diesel::sql_query(DISCARD_DEAD_LETTERS)
            .bind::<Nullable<Array<BigInt>>, _>(ids)
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
            .bind::<Nullable<Array<BigInt>>, _>(ids)
            .bind::<Nullable<Text>, _>(reason)
            .execute(self)
            .await
    }
}

// Unset filters ($1..$3 NULL) match any row.
const REQUEST_REPLAY: &str = "
UPDATE inbox_dead_letters SET replay_requested_at = now()
WHERE ($1::text IS NULL OR consumer_group = $1) AND ($2::bigint[] IS NULL OR id = ANY($2))
  AND ($3::text IS NULL OR reason = $3)";
