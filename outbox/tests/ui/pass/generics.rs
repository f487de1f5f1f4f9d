// Generic events: parameters need no bounds, and the struct's own bounds are kept.
use outbox::Event;

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "envelopes", version = 2)]
struct Wrapped<T> {
    #[event(key)]
    id: u64,
    payload: T,
}

#[derive(serde::Serialize, schemars::JsonSchema, Event)]
#[event(topic = "borrowed")]
struct Borrowed<'a, K: std::fmt::Display, const N: usize>
where
    K: Clone,
{
    #[event(key)]
    key: K,
    text: &'a str,
    counts: [u8; 4],
}

fn topic_of<E: Event>(_: &E) -> &'static str {
    E::TOPIC
}

fn main() {
    let event = Wrapped { id: 3, payload: vec![1, 2] };
    assert_eq!(topic_of(&event), "envelopes");
    assert_eq!(Wrapped::<String>::VERSION, 2);
    assert_eq!(event.key().as_deref(), Some("3"));

    let event = Borrowed::<'_, i32, 4> { key: -1, text: "x", counts: [0; 4] };
    assert_eq!(event.key().as_deref(), Some("-1"));
    assert_eq!(Borrowed::<'_, i32, 4>::NAME, "Borrowed");
}
