//! What the harness reads back from the SDK's tables (handled counts, stored positions, dead
//! letters, the outbox's backlog), one SQL text for both backends and the sealed [`Store`]
//! trait implemented for each. Separate from the [`Harness`](super::Harness) because it is the
//! per-backend part: a backend is added here and nowhere else.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use outbox::Database;

/// A dead letter as the harness reads it back: see `docs/dead-letters.md` for the reasons.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message id (`ce_id`); `None` when the record had no valid one.
    #[diesel(sql_type = Nullable<Text>)]
    pub message_id: Option<String>,
    /// The topic it was read from.
    #[diesel(sql_type = Text)]
    pub topic: String,
    /// Its partition.
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// Its offset.
    #[diesel(sql_type = BigInt)]
    pub offset: i64,
    /// Machine-readable kind, e.g. `unknown_type`, `invalid_payload`, `handler_failed`.
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// Human-readable detail.
    #[diesel(sql_type = Text)]
    pub error: String,
    /// Handler attempts made.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The record's payload, as received.
    #[diesel(sql_type = Nullable<Binary>)]
    pub payload: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    pub(super) consumer_group: String,
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Text)]
    consumer_group: String,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

#[derive(QueryableByName)]
struct GroupCount {
    #[diesel(sql_type = Text)]
    consumer_group: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

// The same text on both backends, without parameters (the harness filters by group itself):
// its tables hold one test's rows.
const HANDLED: &str = "SELECT m.consumer_group, count(*) AS n FROM inbox_messages m \
     WHERE NOT EXISTS (SELECT 1 FROM inbox_dead_letters d \
                       WHERE d.consumer_group = m.consumer_group AND d.message_id = m.message_id) \
     GROUP BY m.consumer_group";
const POSITIONS: &str = "SELECT consumer_group, topic, kafka_partition, next_offset FROM inbox_offsets";
const DEAD_LETTERS: &str = "SELECT consumer_group, CAST(message_id AS TEXT) AS message_id, topic, \
     kafka_partition AS partition, kafka_offset AS \"offset\", reason, error, attempts, payload \
     FROM inbox_dead_letters ORDER BY id";
const PENDING: &str = "SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL AND parked_at IS NULL";

/// The databases the harness runs on: PostgreSQL (`AsyncPgConnection`) and, with the `sqlite`
/// feature, SQLite. Sealed.
#[async_trait::async_trait]
pub trait Store: Database + private::Sealed {
    /// diesel-async's pool manager of this connection type.
    type Manager: bb8::ManageConnection<Connection = Self, Error = diesel_async::pooled_connection::PoolError>;
    #[doc(hidden)]
    async fn handled(&mut self) -> diesel::QueryResult<Vec<(String, i64)>>;
    #[doc(hidden)]
    async fn positions(&mut self) -> diesel::QueryResult<Vec<(String, String, i32, i64)>>;
    #[doc(hidden)]
    async fn dead_letters(&mut self) -> diesel::QueryResult<Vec<DeadLetter>>;
    #[doc(hidden)]
    async fn pending(&mut self) -> diesel::QueryResult<i64>;
}

mod private {
    pub trait Sealed {}
}

macro_rules! store {
    ($conn:ty) => {
        impl private::Sealed for $conn {}

        #[async_trait::async_trait]
        impl Store for $conn {
            type Manager = AsyncDieselConnectionManager<$conn>;
            async fn handled(&mut self) -> diesel::QueryResult<Vec<(String, i64)>> {
                let rows: Vec<GroupCount> = diesel_async::RunQueryDsl::load(diesel::sql_query(HANDLED), self).await?;
                Ok(rows.into_iter().map(|r| (r.consumer_group, r.n)).collect())
            }
            async fn positions(&mut self) -> diesel::QueryResult<Vec<(String, String, i32, i64)>> {
                let rows: Vec<Position> = diesel_async::RunQueryDsl::load(diesel::sql_query(POSITIONS), self).await?;
                Ok(rows.into_iter().map(|r| (r.consumer_group, r.topic, r.kafka_partition, r.next_offset)).collect())
            }
            async fn dead_letters(&mut self) -> diesel::QueryResult<Vec<DeadLetter>> {
                diesel_async::RunQueryDsl::load(diesel::sql_query(DEAD_LETTERS), self).await
            }
            async fn pending(&mut self) -> diesel::QueryResult<i64> {
                let row: Count = diesel_async::RunQueryDsl::get_result(diesel::sql_query(PENDING), self).await?;
                Ok(row.n)
            }
        }
    };
}

store!(AsyncPgConnection);
#[cfg(feature = "sqlite")]
store!(outbox::sqlite::SqliteConnection);
