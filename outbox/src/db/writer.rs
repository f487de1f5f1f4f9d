//! The writer's statements ([`publish`](crate::publish), [`transaction`](crate::transaction)):
//! [`WriterStore`], implemented in `postgres.rs` and `sqlite.rs`.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use uuid::Uuid;

use crate::Result;

/// The writer's statements. Sealed; a supertrait of [`Database`](super::Database), so every
/// `C: Database` has them.
#[async_trait::async_trait]
pub trait WriterStore: super::private::Sealed + Send {
    /// Opens a transaction that will write. PostgreSQL: `BEGIN`. SQLite: `BEGIN IMMEDIATE`, so
    /// the write lock is taken up front (waiting up to `busy_timeout`) instead of failing with
    /// `SQLITE_BUSY` when a read transaction tries to upgrade. What [`transaction`](crate::transaction)
    /// and the inbox open their transactions with.
    async fn begin_write(&mut self) -> QueryResult<()>;

    /// Inserts outbox rows, in order (they get their `seq` in slice order).
    async fn insert_messages(&mut self, rows: &[NewMessage]) -> Result<()>;
}

/// One outbox row as the writer stores it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message id (`ce_id`).
    pub id: Uuid,
    /// The Kafka topic.
    pub topic: &'static str,
    /// The Kafka key.
    pub key: Option<String>,
    /// The event type (`ce_type`).
    pub event_type: &'static str,
    /// The event schema version.
    pub event_version: i32,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The Kafka headers to send, as JSON.
    pub headers: serde_json::Value,
    /// When the event happened (`ce_time`).
    pub occurred_at: DateTime<Utc>,
}
