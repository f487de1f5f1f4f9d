use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
    #[event(key)]
    customer_id: uuid::Uuid,
}

fn main() {}
