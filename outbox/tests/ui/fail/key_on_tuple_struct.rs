use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
struct OrderPlaced(#[event(key)] uuid::Uuid, i64);

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders", key)]
struct OrderCancelled(uuid::Uuid);

fn main() {}
