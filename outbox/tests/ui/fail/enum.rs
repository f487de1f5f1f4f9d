use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
enum OrderEvent {
    Placed { order_id: uuid::Uuid },
    Cancelled { order_id: uuid::Uuid },
}

fn main() {}
