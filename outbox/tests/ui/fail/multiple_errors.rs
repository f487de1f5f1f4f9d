use outbox::Event;

// Every mistake is reported in one compilation, not one per fix.
#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "order events", topik = "orders", version = 0)]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
    #[event(key)]
    customer_id: uuid::Uuid,
}

fn main() {}
