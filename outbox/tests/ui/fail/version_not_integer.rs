use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = "2")]
struct Quoted {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = 1.5)]
struct Float {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = -1)]
struct Negative {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = 5000000000)]
struct TooLarge {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = 2u8)]
struct Suffixed {
    id: u64,
}

const V: u32 = 2;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", version = V)]
struct Constant {
    id: u64,
}

fn main() {}
