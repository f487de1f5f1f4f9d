//! The events `order-service` publishes and `inventory-service` handles, defined once.
//!
//! The derive fixes the wire contract: the topic, the `ce_type` name and the schema version.
//! Both sides use this one type, so they cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order was placed: stock has to be reserved for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 1)]
pub struct OrderPlaced {
    /// The order; also the Kafka key, so the events of one order stay in order.
    #[event(key)]
    pub order_id: Uuid,
    /// The article ordered.
    pub sku: String,
    /// How many of it.
    pub quantity: i32,
    /// The order's total, in cents.
    pub total_cents: i64,
}
