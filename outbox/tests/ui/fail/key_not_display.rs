use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema)]
struct OrderId(u64);

// The key is formatted with `Display`; the error points at the key field's type.
#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "orders")]
struct OrderPlaced {
    #[event(key)]
    order_id: OrderId,
}

fn main() {}
