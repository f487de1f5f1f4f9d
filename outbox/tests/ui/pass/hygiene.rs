// The generated impl names everything by absolute path: local items that shadow the prelude's
// names do not leak into it.
use outbox::Event;

#[allow(dead_code)]
mod shadowed {
    pub struct Option;
    pub struct String;
    pub struct Some;
    pub struct None;
    pub trait ToString {}
    pub mod std {}
    pub mod core {}
}

mod events {
    #[allow(unused_imports)]
    use super::shadowed::{None, Option, Some, String, ToString, core, std};

    #[derive(serde::Serialize, schemars::JsonSchema, super::Event)]
    #[event(topic = "hygiene")]
    pub struct Keyed {
        #[event(key)]
        pub id: u32,
    }

    #[derive(serde::Serialize, schemars::JsonSchema, super::Event)]
    #[event(topic = "hygiene")]
    pub struct Unkeyed {
        pub id: u32,
    }

    #[derive(serde::Serialize, schemars::JsonSchema, super::Event)]
    #[event(topic = "hygiene")]
    pub struct Generic<T> {
        #[event(key)]
        pub id: u32,
        pub payload: T,
    }
}

fn main() {
    assert_eq!(events::Keyed { id: 9 }.key().as_deref(), Some("9"));
    assert_eq!(events::Unkeyed { id: 9 }.key(), None);
    let generic = events::Generic { id: 1, payload: "x" };
    assert_eq!(generic.key().as_deref(), Some("1"));
}
