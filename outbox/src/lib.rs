//! Transactional outbox for PostgreSQL (or SQLite, feature `sqlite`) and Kafka.
//!
//! Store events in the same diesel-async transaction as your business change with
//! [`publish`]; a [`Relay`](relay::Relay) publishes them to Kafka after commit and marks them
//! sent. A message is stored if and only if its transaction commits, and every stored message
//! is published at least once. See docs/guarantees.md in the repository for the guarantees
//! and how each is tested.
//!
//! ```no_run
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use diesel_async::{AsyncConnection, AsyncPgConnection};
//!
//! #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
//! #[event(topic = "orders", name = "order.placed", version = 1)]
//! struct OrderPlaced {
//!     #[event(key)]
//!     order_id: uuid::Uuid,
//!     total_cents: i64,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut conn = AsyncPgConnection::establish(&std::env::var("DATABASE_URL")?).await?;
//! outbox::migrate(&mut conn).await?;
//! conn.transaction::<_, outbox::Error, _>(async |tx| {
//!     // ... your INSERT/UPDATE of the business row ...
//!     outbox::publish(tx, &OrderPlaced { order_id: uuid::Uuid::now_v7(), total_cents: 4200 }).await?;
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod cancel;
pub mod db;
pub mod embedded;
mod envelope;
mod error;
mod event;
pub mod health;
mod kafka;
pub mod metrics;
mod migrate;
pub mod migrations;
pub mod ops;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
#[cfg(not(feature = "otel"))]
mod otel;
pub mod raw_headers;
pub mod relay;
pub mod retry;
pub mod schema;
pub mod startup;
mod wakeup;
mod writer;

pub use db::{Database, pooler};
pub use envelope::{CONTENT_TYPE, Envelope, EnvelopeError, Metadata, SPEC_VERSION};
pub use error::{Error, ErrorKind, Result, is_transient_db_error};
pub use event::{Event, validate_topic};
pub use kafka::KafkaConfig;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use migrate::SQLITE_MIGRATIONS;
pub use migrate::{MIGRATIONS, POSTGRES_MIGRATIONS, migrate, set_notify};
pub use retry::RetryPolicy;
pub use wakeup::Wakeup;
pub use writer::{Batch, publish, publish_all, publish_with, transaction};

/// The connection pool the relay and the inbox run on (bb8 over diesel-async).
pub type Pool = diesel_async::pooled_connection::bb8::Pool<diesel_async::AsyncPgConnection>;

/// SQLite support (feature `sqlite`): the connection type, a pool with the right settings, and
/// [`migrate`] / [`publish`] / the relay / the inbox work on it unchanged.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite {
    pub use crate::db::sqlite::{Pool, SqliteConnection, connect, pool};
}

/// `#[derive(Event)]`: see [`Event`](trait@Event) for its attributes.
pub use outbox_macros::Event;

// Keeps the crate README's example compiling.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde;
}
