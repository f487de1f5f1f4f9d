use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(name = "order.placed", version = 2)]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
}

fn main() {}
