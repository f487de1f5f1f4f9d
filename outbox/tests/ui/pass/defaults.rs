// Only the topic is required; unit and tuple structs are events too (without a key).
use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
struct OrderPlaced {
    total_cents: i64,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "heartbeats")]
struct Heartbeat;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "pings")]
struct Ping(u32, String);

fn main() {
    assert_eq!(OrderPlaced::NAME, "OrderPlaced");
    assert_eq!(OrderPlaced::VERSION, 1);
    assert_eq!(OrderPlaced { total_cents: 1 }.key(), None);
    assert_eq!(Heartbeat::NAME, "Heartbeat");
    assert_eq!(Heartbeat.key(), None);
    assert_eq!(Ping(1, String::new()).key(), None);
}
