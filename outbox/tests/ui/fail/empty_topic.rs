use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
