use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "heartbeats")]
#[event(key)]
struct Heartbeat;

fn main() {}
