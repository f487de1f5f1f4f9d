//! What `#[derive(Event)]` generates: constants, defaults, `key()`, generics and the schema.

use outbox::Event;
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "orders", name = "order.placed", version = 3)]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    total_cents: i64,
}

#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "customers.v1_eu-west")]
struct CustomerRenamed {
    #[event(key)]
    customer: String,
    new_name: String,
}

/// Attributes split over several `#[event(...)]`.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "stock")]
#[event(version = 2)]
struct StockChanged {
    note: String,
    #[event(key)]
    sku: u64,
    delta: i32,
}

/// No key: `key()` is `None`.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "audit", name = "audit.entry")]
struct AuditEntry {
    message: String,
}

/// A unit struct is an event without a payload.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "heartbeats")]
struct Heartbeat;

/// A tuple struct may be an event, without a key.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "pings")]
struct Ping(u32);

/// Generic payload: the parameters need no bounds of their own.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "envelopes", name = "wrapped")]
struct Wrapped<T> {
    #[event(key)]
    id: i32,
    payload: T,
}

/// Generic key, with a lifetime and an explicit where clause.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "borrowed")]
struct Borrowed<'a, K>
where
    K: std::fmt::Display,
{
    #[event(key)]
    key: K,
    text: &'a str,
}

/// A raw identifier as the struct's name and the key field.
#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "raw")]
#[allow(non_camel_case_types)]
struct r#match {
    #[event(key)]
    r#type: String,
}

#[test]
fn constants_from_attributes() {
    assert_eq!(OrderPlaced::TOPIC, "orders");
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(OrderPlaced::VERSION, 3);
}

#[test]
fn name_defaults_to_the_struct_name_and_version_to_one() {
    assert_eq!(CustomerRenamed::TOPIC, "customers.v1_eu-west");
    assert_eq!(CustomerRenamed::NAME, "CustomerRenamed");
    assert_eq!(CustomerRenamed::VERSION, 1);
    assert_eq!(Heartbeat::NAME, "Heartbeat");
    assert_eq!(r#match::NAME, "match");
}

#[test]
fn split_attributes() {
    assert_eq!(StockChanged::TOPIC, "stock");
    assert_eq!(StockChanged::NAME, "StockChanged");
    assert_eq!(StockChanged::VERSION, 2);
}

#[test]
fn uuid_key() {
    let id = Uuid::parse_str("0190d2a4-7b3c-7e41-9a3f-6c1d2e3f4a5b").unwrap();
    let event = OrderPlaced { order_id: id, total_cents: 100 };
    assert_eq!(event.key().as_deref(), Some("0190d2a4-7b3c-7e41-9a3f-6c1d2e3f4a5b"));
}

#[test]
fn string_key() {
    let event = CustomerRenamed { customer: "cust-42".into(), new_name: "Ada".into() };
    assert_eq!(event.key(), Some("cust-42".to_owned()));
    let raw = r#match { r#type: "t".into() };
    assert_eq!(raw.key().as_deref(), Some("t"));
}

#[test]
fn integer_key() {
    let event = StockChanged { note: String::new(), sku: 18_446_744_073_709_551_615, delta: -1 };
    assert_eq!(event.key().as_deref(), Some("18446744073709551615"));
}

#[test]
fn no_key() {
    assert_eq!(AuditEntry { message: "hi".into() }.key(), None);
    assert_eq!(Heartbeat.key(), None);
    assert_eq!(Ping(7).key(), None);
    assert_eq!(AuditEntry::NAME, "audit.entry");
}

#[test]
fn generic_structs() {
    assert_eq!(Wrapped::<String>::TOPIC, "envelopes");
    assert_eq!(Wrapped::<Vec<u8>>::NAME, "wrapped");
    assert_eq!(Wrapped::<()>::VERSION, 1);
    let event = Wrapped { id: -5, payload: vec!["a".to_owned()] };
    assert_eq!(event.key().as_deref(), Some("-5"));

    let text = String::from("borrowed text");
    let event = Borrowed { key: 'k', text: &text };
    assert_eq!(event.key().as_deref(), Some("k"));
    assert_eq!(Borrowed::<'_, char>::NAME, "Borrowed");
}

/// The derived impl is usable through a generic bound, as the outbox's writer uses it.
fn describe<E: Event>(event: &E) -> (&'static str, &'static str, u32, Option<String>) {
    (E::TOPIC, E::NAME, E::VERSION, event.key())
}

#[test]
fn usable_as_a_bound() {
    let event = Wrapped { id: 1, payload: 2.5_f64 };
    assert_eq!(describe(&event), ("envelopes", "wrapped", 1, Some("1".to_owned())));
}

#[test]
fn schema_contains_the_fields() {
    let schema = OrderPlaced::schema();
    let value = schema.as_value();
    let properties = &value["properties"];
    assert!(properties["order_id"].is_object(), "{value:#}");
    assert!(properties["total_cents"].is_object(), "{value:#}");
    assert_eq!(value["title"], "OrderPlaced");

    let schema = Wrapped::<String>::schema();
    let properties = &schema.as_value()["properties"];
    assert!(properties["id"].is_object());
    assert_eq!(properties["payload"]["type"], "string");
}
