use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topik = "orders")]
struct Typo {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", partitions = 12)]
struct Unknown {
    id: u64,
}

fn main() {}
