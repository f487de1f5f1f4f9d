use outbox::Event;

// `key` belongs on a field, `topic` on the struct, and `key` takes no value.
#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", key)]
struct OrderPlaced {
    #[event(topic = "payments")]
    order_id: uuid::Uuid,
    #[event(key = "customer")]
    customer_id: uuid::Uuid,
}

fn main() {}
