use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = 2)]
#[event(topic = "payments", version = 2)]
struct OrderPlaced {
    #[event(key, key)]
    order_id: uuid::Uuid,
}

fn main() {}
