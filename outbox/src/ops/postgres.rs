//! The operations' SQL on PostgreSQL.

use diesel::QueryResult;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::sql::{Lease, Sql, TopicCounts, Totals};
use super::{ParkedAction, ParkedMessage};
use crate::Result;
// The rows the relay held behind a retried or discarded row go back to the pending index in the
// same transaction, unless another row of their key has failed: the relay's own release.
use crate::db::relay::postgres::RELEASE_KEYS as RELEASE_HELD;

// Unsent rows only, per topic. Ages are computed by the server, against the server's
// created_at, so client clock skew does not distort them.
const STATUS_TOPICS: &str = "
SELECT topic,
       count(*) FILTER (WHERE parked_at IS NULL) AS pending,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8 AS oldest_pending_secs
FROM outbox_messages WHERE sent_at IS NULL
GROUP BY topic ORDER BY topic";

// Kept sent rows are counted through the partial index outbox_messages_sent.
const STATUS_TOTALS: &str = "
SELECT (SELECT count(*) FROM outbox_messages WHERE sent_at IS NOT NULL) AS sent_kept";

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    owner: Option<Uuid>,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = Nullable<Double>)]
    expires_in_secs: Option<f64>,
}

// Relays normally share one name, so one row; should there be several, a live one comes first.
// The CASE computes the remaining time only for a future expiry: a released lease expires at
// '-infinity', and subtracting from an infinite timestamp is an error before PostgreSQL 17.
const STATUS_LEASE: &str = "
SELECT name, owner, epoch,
       CASE WHEN expires_at > now() THEN extract(epoch FROM expires_at - now())::float8 END AS expires_in_secs
FROM outbox_relay_leases
ORDER BY (owner IS NOT NULL AND expires_at > now()) DESC, expires_at DESC, name
LIMIT 1";

// In seq order, which is the order they block their keys in and the order a retry sends them.
const LIST_PARKED: &str = "
SELECT seq, id, topic, key, event_type, event_version, attempts, last_error, parked_at, created_at
FROM outbox_messages
WHERE parked_at IS NOT NULL AND ($2::text IS NULL OR topic = $2)
ORDER BY seq
LIMIT $1";

// The row becomes what a freshly written one is (no attempts, due now), so the next claim takes
// it at its place in seq order, ahead of its key's held messages, and it gets a full set of
// attempts. last_error stays as the record of what happened. `parked_at IS NOT NULL` guarantees
// a pending row (possibly in a relay's current batch) is never touched.
const RETRY_PARKED: &str = "
UPDATE outbox_messages SET parked_at = NULL, attempts = 0, next_attempt_at = '-infinity'
WHERE parked_at IS NOT NULL
  AND ($1::uuid[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR topic = $2)
RETURNING topic, key";

// Parked rows only: a parked row is never in a relay's batch, so deleting it cannot race a delivery.
const DISCARD_PARKED: &str = "
DELETE FROM outbox_messages
WHERE parked_at IS NOT NULL
  AND ($1::uuid[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR topic = $2)
RETURNING topic, key";

#[derive(QueryableByName)]
struct Touched {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
}

#[async_trait::async_trait]
impl Sql for AsyncPgConnection {
    async fn ops_status_topics(&mut self) -> QueryResult<Vec<TopicCounts>> {
        diesel::sql_query(STATUS_TOPICS).load(self).await
    }

    async fn ops_status_totals(&mut self) -> QueryResult<Totals> {
        diesel::sql_query(STATUS_TOTALS).get_result(self).await
    }

    async fn ops_status_lease(&mut self) -> Result<Option<Lease>> {
        let rows: Vec<LeaseRow> = diesel::sql_query(STATUS_LEASE).load(self).await?;
        Ok(rows.into_iter().next().map(|l| Lease {
            name: l.name,
            owner: l.owner,
            epoch: l.epoch,
            expires_in_secs: l.expires_in_secs,
        }))
    }

    async fn ops_list_parked(&mut self, limit: i64, topic: Option<&str>) -> Result<Vec<ParkedMessage>> {
        Ok(diesel::sql_query(LIST_PARKED).bind::<BigInt, _>(limit).bind::<Nullable<Text>, _>(topic).load(self).await?)
    }

    async fn ops_update_parked(
        &mut self,
        action: ParkedAction,
        ids: Option<&[Uuid]>,
        topic: Option<&str>,
    ) -> QueryResult<Vec<(String, Option<String>)>> {
        let sql = match action {
            ParkedAction::Retry => RETRY_PARKED,
            ParkedAction::Discard => DISCARD_PARKED,
        };
        let touched: Vec<Touched> = diesel::sql_query(sql)
            .bind::<Nullable<Array<SqlUuid>>, _>(ids)
            .bind::<Nullable<Text>, _>(topic)
            .load(self)
            .await?;
        Ok(touched.into_iter().map(|t| (t.topic, t.key)).collect())
    }

    async fn ops_release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize> {
        diesel::sql_query(RELEASE_HELD)
            .bind::<Array<Text>, _>(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .execute(self)
            .await
    }
}
