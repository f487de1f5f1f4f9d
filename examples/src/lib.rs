//! Runnable examples of the outbox and inbox crates; see `examples/`.
//!
//! - [`quickstart`]: the whole flow with zero setup (SQLite + embedded broker) or on PostgreSQL
//!   and Kafka by configuration; `cargo run --example quickstart`, run by the test suite too.
//! - The two services — `order-service` (writes orders and publishes [`events::OrderPlaced`]
//!   through the outbox) and `inventory-service` (reserves stock for each order through the
//!   inbox) — share this library: the event types are defined once in [`events`], each
//!   service's logic is in [`orders`] and [`inventory`], and [`service`] holds their common
//!   start-up code. The example binaries only read the environment and wire these together,
//!   and the end-to-end suite (`tests/tests/services.rs`) runs the same functions in-process.

pub mod events;
pub mod inventory;
pub mod orders;
pub mod quickstart;
pub mod service;
