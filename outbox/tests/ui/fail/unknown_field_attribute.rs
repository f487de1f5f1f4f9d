use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
struct OrderPlaced {
    #[event(primary)]
    order_id: uuid::Uuid,
    #[event(kye)]
    customer_id: uuid::Uuid,
}

fn main() {}
