//! The operations' SQL on SQLite: the same statements as PostgreSQL's (`ops/postgres.rs`) over
//! SQLite's columns (times in integer milliseconds since the epoch, ids as text, no arrays: id
//! lists are bound as one JSON array and read with `json_each`).

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::sql::{Lease, Sql, TopicCounts, Totals};
use super::{ParkedAction, ParkedMessage};
use crate::db::relay::sqlite::RELEASE_KEYS as RELEASE_HELD;
use crate::db::sqlite::{SqliteConnection, json_array, now_ms};
use crate::{Error, ErrorKind, Result};

// SUM of a comparison counts the rows where it holds (SQLite has no boolean type).
const STATUS_TOPICS: &str = concat!(
    "SELECT topic, SUM(parked_at IS NULL) AS pending, SUM(parked_at IS NOT NULL) AS parked, (",
    now_ms!(),
    " - MIN(CASE WHEN parked_at IS NULL THEN created_at END)) / 1000.0 AS oldest_pending_secs ",
    "FROM outbox_messages WHERE sent_at IS NULL GROUP BY topic ORDER BY topic"
);

const STATUS_TOTALS: &str = "SELECT (SELECT count(*) FROM outbox_messages WHERE sent_at IS NOT NULL) AS sent_kept";

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = Nullable<Double>)]
    expires_in_secs: Option<f64>,
}

// As on PostgreSQL: a live lease first. A released lease expires at 0.
const STATUS_LEASE: &str = concat!(
    "SELECT name, owner, epoch, CASE WHEN expires_at > ",
    now_ms!(),
    " THEN (expires_at - ",
    now_ms!(),
    ") / 1000.0 END AS expires_in_secs FROM outbox_relay_leases ORDER BY (owner IS NOT NULL AND expires_at > ",
    now_ms!(),
    ") DESC, expires_at DESC, name LIMIT 1"
);

#[derive(QueryableByName)]
struct ParkedRow {
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
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = BigInt)]
    parked_at: i64,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

const LIST_PARKED: &str = "SELECT seq, id, topic, key, event_type, event_version, attempts, last_error, parked_at, \
                           created_at FROM outbox_messages WHERE parked_at IS NOT NULL AND (?2 IS NULL OR topic = ?2) \
                           ORDER BY seq LIMIT ?1";

// Fresh rows are due at 0 (the column's default), as PostgreSQL's are at '-infinity'.
const RETRY_PARKED: &str = "UPDATE outbox_messages SET parked_at = NULL, attempts = 0, next_attempt_at = 0 \
                            WHERE parked_at IS NOT NULL AND (?1 IS NULL OR id IN (SELECT value FROM json_each(?1))) \
                            AND (?2 IS NULL OR topic = ?2) RETURNING topic, key";

const DISCARD_PARKED: &str = "DELETE FROM outbox_messages \
                              WHERE parked_at IS NOT NULL AND (?1 IS NULL OR id IN (SELECT value FROM json_each(?1))) \
                              AND (?2 IS NULL OR topic = ?2) RETURNING topic, key";

#[derive(QueryableByName)]
struct Touched {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
}

/// A stored row that does not decode (written by hand, or by something else than the SDK).
fn corrupt(what: String, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Database, format!("sqlite: {what}: {e}"))
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
    async fn ops_status_topics(&mut self) -> QueryResult<Vec<TopicCounts>> {
        diesel::sql_query(STATUS_TOPICS).load(self).await
    }

    async fn ops_status_totals(&mut self) -> QueryResult<Totals> {
        diesel::sql_query(STATUS_TOTALS).get_result(self).await
    }

    async fn ops_status_lease(&mut self) -> Result<Option<Lease>> {
        let rows: Vec<LeaseRow> = diesel::sql_query(STATUS_LEASE).load(self).await?;
        rows.into_iter()
            .next()
            .map(|l| {
                let owner = match &l.owner {
                    Some(owner) => Some(uuid(owner, || format!("the owner of relay lease `{}`", l.name))?),
                    None => None,
                };
                Ok(Lease { name: l.name, owner, epoch: l.epoch, expires_in_secs: l.expires_in_secs })
            })
            .transpose()
    }

    async fn ops_list_parked(&mut self, limit: i64, topic: Option<&str>) -> Result<Vec<ParkedMessage>> {
        let rows: Vec<ParkedRow> =
            diesel::sql_query(LIST_PARKED).bind::<BigInt, _>(limit).bind::<Nullable<Text>, _>(topic).load(self).await?;
        rows.into_iter()
            .map(|r| {
                let seq = r.seq;
                Ok(ParkedMessage {
                    seq,
                    id: uuid(&r.id, || format!("the id of outbox row {seq}"))?,
                    parked_at: time(r.parked_at, || format!("parked_at of outbox row {seq}"))?,
                    created_at: time(r.created_at, || format!("created_at of outbox row {seq}"))?,
                    topic: r.topic,
                    key: r.key,
                    event_type: r.event_type,
                    event_version: r.event_version,
                    attempts: r.attempts,
                    last_error: r.last_error,
                })
            })
            .collect()
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
        // Uuid serializes as the hyphenated lower-case text the writer stores.
        let touched: Vec<Touched> = diesel::sql_query(sql)
            .bind::<Nullable<Text>, _>(ids.map(json_array))
            .bind::<Nullable<Text>, _>(topic)
            .load(self)
            .await?;
        Ok(touched.into_iter().map(|t| (t.topic, t.key)).collect())
    }

    async fn ops_release_keys(&mut self, keys: &[(String, String)]) -> QueryResult<usize> {
        // The relay's release: a JSON array of [topic, key] pairs.
        diesel::sql_query(RELEASE_HELD).bind::<Text, _>(json_array(keys)).execute(self).await
    }
}
