use outbox::Event;

// Values of the wrong kind, or no value at all.
#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = orders, name = 7)]
struct NotStrings {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic, version)]
struct NoValues {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", crate = "not a path")]
struct BadCrate {
    id: u64,
}

fn main() {}
