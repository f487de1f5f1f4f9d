//! Transactional inbox: typed Kafka event handlers whose effects, dedup record and stored
//! position commit in one database transaction (PostgreSQL, or SQLite with the `sqlite`
//! feature), so each message id takes effect once per consumer group, whatever redeliveries,
//! restarts or rebalances happen.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use schemars::JsonSchema;
//! use diesel_async::RunQueryDsl;
//! use inbox::{Context, Handler, HandlerError, Inbox};
//!
//! #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
//! #[event(topic = "orders", name = "order.placed", version = 1)]
//! struct OrderPlaced {
//!     #[event(key)]
//!     order_id: uuid::Uuid,
//!     total_cents: i64,
//! }
//!
//! struct ReserveStock;
//!
//! #[inbox::async_trait]
//! impl Handler<OrderPlaced> for ReserveStock {
//!     async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
//!         diesel::sql_query("INSERT INTO reservations (order_id) VALUES ($1)")
//!             .bind::<diesel::sql_types::Uuid, _>(e.order_id)
//!             .execute(cx.conn()) // the inbox transaction
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run(pool: diesel_async::pooled_connection::bb8::Pool<diesel_async::AsyncPgConnection>)
//! #     -> Result<(), inbox::Error> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! Inbox::builder(pool, "localhost:9092")
//!     .group("inventory")
//!     .handle(ReserveStock)
//!     .build()?
//!     .run(shutdown)
//!     .await
//! # }
//! ```
//!
//! The tables are created by [`migrate`] (or the `outbox migrate` command, which also creates
//! the outbox's). See the crate README for error semantics, every option, the dedup window
//! trade-off, metric names and the tests behind each guarantee.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod classify;
mod config;
mod context;
mod dead_letters;
mod error;
mod flow;
mod gauges;
mod handler;
pub mod health;
mod inbox;
mod kafka;
mod message;
pub mod metrics;
mod migrate;
pub mod ops;
mod otel;
mod partition;
mod process;
mod prune;
mod raw_headers;
mod rebalance;
mod registry;
mod shared;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use builder::InboxBuilder;
pub use config::{InboxConfig, UnknownTypePolicy};
pub use context::Context;
pub use dead_letters::{ReplayReport, Replayer};
pub use handler::{Handler, HandlerError};
pub use health::{InboxHealth, InboxThresholds};
pub use inbox::{BufferWatermark, Inbox};
#[cfg(feature = "sqlite")]
pub use migrate::SQLITE_MIGRATIONS;
pub use migrate::{MIGRATIONS, POSTGRES_MIGRATIONS, migrate};
pub use ops::ReplaySelection;
pub use outbox::{Error, ErrorKind, KafkaConfig};

/// Re-exported so handlers can be written as `#[inbox::async_trait] impl Handler<E> for H`.
pub use async_trait::async_trait;

// Keeps the README's examples compiling.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
