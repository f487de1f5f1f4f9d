use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = 0)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
