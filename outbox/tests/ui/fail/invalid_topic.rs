use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "order events")]
struct Space {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders/eu")]
struct Slash {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "commandé")]
struct Accent {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "..")]
struct Reserved {
    id: u64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(
    topic = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)]
struct TooLong {
    id: u64,
}

fn main() {}
