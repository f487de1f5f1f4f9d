// Every attribute of the derive, with the outbox crate under another name.
extern crate outbox as renamed;

use renamed::Event as _;

#[derive(serde::Serialize, schemars::JsonSchema, renamed::Event)]
#[event(topic = "orders.v1_eu-west", name = "order.placed")]
#[event(version = 7, crate = "renamed")]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
    total_cents: i64,
}

fn main() {
    assert_eq!(OrderPlaced::TOPIC, "orders.v1_eu-west");
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(OrderPlaced::VERSION, 7);
    let event = OrderPlaced { order_id: uuid::Uuid::nil(), total_cents: 1 };
    assert_eq!(event.key().as_deref(), Some("00000000-0000-0000-0000-000000000000"));
}
