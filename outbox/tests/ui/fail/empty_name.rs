use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", name = "")]
struct OrderPlaced {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", name = "  ")]
struct OrderCancelled {
    id: u64,
}

fn main() {}
