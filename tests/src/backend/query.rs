//! The rows both backends' [`TestConn`](super::TestConn) implementations load with
//! `sql_query` (uuid and json columns read as text where the two backends differ), and the SQL
//! they share.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};

use super::DeadLetterRow;

#[derive(QueryableByName)]
pub(super) struct N {
    #[diesel(sql_type = BigInt)]
    pub(super) n: i64,
}

#[derive(QueryableByName)]
pub(super) struct TextValue {
    #[diesel(sql_type = Nullable<Text>)]
    pub(super) v: Option<String>,
}

#[derive(QueryableByName)]
pub(super) struct FollowUpRow {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    headers: String,
}

// Both backends load dead letters with uuid and json columns as text.
#[derive(QueryableByName)]
pub(super) struct DeadLetterText {
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

impl From<DeadLetterText> for DeadLetterRow {
    fn from(r: DeadLetterText) -> Self {
        DeadLetterRow {
            message_id: r.message_id.map(|id| id.parse().expect("dead letter message_id is a uuid")),
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            headers: serde_json::from_str(&r.headers).expect("dead letter headers are JSON"),
            reason: r.reason,
            error: r.error,
            attempts: r.attempts,
        }
    }
}

#[derive(QueryableByName)]
pub(super) struct RawDeadLetterRow {
    #[diesel(sql_type = Text)]
    consumer_group: String,
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    kafka_offset: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    key: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    raw_headers: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
}

impl From<RawDeadLetterRow> for crate::inbox_support::RawDeadLetter {
    fn from(r: RawDeadLetterRow) -> Self {
        crate::inbox_support::RawDeadLetter {
            consumer_group: r.consumer_group,
            message_id: r.message_id,
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            key: r.key,
            payload: r.payload,
            raw_headers: r.raw_headers,
            reason: r.reason,
            error: r.error,
        }
    }
}

// The same text on both backends (CAST AS TEXT: uuid on PostgreSQL, text already on SQLite).
pub(super) const RAW_DEAD_LETTERS: &str = "SELECT consumer_group, CAST(message_id AS TEXT) AS message_id, kafka_partition, \
    kafka_offset, key, payload, raw_headers, reason, error FROM inbox_dead_letters WHERE consumer_group = ";

pub(super) fn follow_up(r: FollowUpRow) -> (String, String, serde_json::Value) {
    (r.topic, r.event_type, serde_json::from_str(&r.headers).expect("outbox headers are JSON"))
}
