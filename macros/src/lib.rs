//! `#[derive(Event)]` for the [`outbox`](https://docs.rs/outbox) crate.
//!
//! Do not depend on this crate directly: use the derive through its re-export, `outbox::Event`,
//! which is also the name of the trait it implements (like `serde::Serialize`).

mod attr;
mod check;
mod errors;
mod expand;

use proc_macro::TokenStream;

/// Implements `outbox::Event` for a struct. Use it through the `outbox` crate (this crate cannot
/// depend on it, so the example is compiled by `outbox`'s and the README's doc tests instead):
///
/// ```text
/// #[derive(serde::Serialize, schemars::JsonSchema, outbox::Event)]
/// #[event(topic = "orders", name = "order.placed", version = 2)]
/// struct OrderPlaced {
///     #[event(key)]
///     order_id: uuid::Uuid,
///     total_cents: i64,
/// }
/// ```
///
/// Container attributes, in one or several `#[event(...)]` attributes on the struct:
///
/// | attribute | meaning | default |
/// |---|---|---|
/// | `topic = "..."` | Kafka topic (1–249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`), checked at compile time | required |
/// | `name = "..."` | the event type, sent as `ce_type` and used for dispatch | the struct's name, e.g. `"OrderPlaced"` |
/// | `version = N` | schema version of the payload (an integer, at least 1) | `1` |
/// | `crate = "path"` | path to the `outbox` crate when the dependency is renamed | `::outbox` |
///
/// Field attribute: `#[event(key)]` on at most one named field makes it the Kafka key; `key()`
/// formats it with `Display`. Without it, `key()` returns `None`.
///
/// The derive does not implement `Serialize` or `JsonSchema`: derive them next to `Event`. For a
/// generic struct it adds the bound `Self: serde::Serialize + schemars::JsonSchema + Send + Sync`
/// to the impl (through `outbox::__private`), so that the parameters need no bounds of their own.
///
/// All mistakes in the attributes are reported together, each at the attribute, field or literal
/// that caused it.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::expand(input).unwrap_or_else(syn::Error::into_compile_error).into()
}
