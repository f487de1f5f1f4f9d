//! Invalid configuration fails in `build()` with `ErrorKind::Config` and a message that names
//! the problem; a valid one derives its topics from the registered events. No database or
//! broker is contacted.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use inbox::{Context, ErrorKind, Handler, HandlerError, Inbox, InboxBuilder};
use rdkafka::ClientConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 2)]
struct OrderPlaced {
    id: u32,
}

/// Another Rust type for the same wire type, at another version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 3)]
struct OrderPlacedV3 {
    id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "payments", name = "payment.captured")]
struct PaymentCaptured {
    id: u32,
}

struct Reserve;
struct ReserveV3;
struct Multi;

#[inbox::async_trait]
impl Handler<OrderPlaced> for Reserve {
    async fn handle(&self, _: OrderPlaced, _: &mut Context<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[inbox::async_trait]
impl Handler<OrderPlacedV3> for ReserveV3 {
    async fn handle(&self, _: OrderPlacedV3, _: &mut Context<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[inbox::async_trait]
impl Handler<OrderPlaced> for Multi {
    async fn handle(&self, _: OrderPlaced, _: &mut Context<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[inbox::async_trait]
impl Handler<PaymentCaptured> for Multi {
    async fn handle(&self, _: PaymentCaptured, _: &mut Context<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn pool() -> Pool<AsyncPgConnection> {
    // Never connects: build() must not need the database.
    Pool::builder().build_unchecked(AsyncDieselConnectionManager::new("postgres://nobody@127.0.0.1:1/none"))
}

fn builder() -> InboxBuilder {
    Inbox::builder(pool(), "127.0.0.1:1").group("inventory")
}

#[track_caller]
fn config_error(b: InboxBuilder, expected: &str) {
    let err = b.build().expect_err(expected);
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains(expected), "`{err}` should mention `{expected}`");
}

fn kafka(k: &str, v: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", "127.0.0.1:1").set(k, v);
    c
}

#[tokio::test]
async fn invalid_configuration_fails_at_build() {
    config_error(Inbox::builder(pool(), "127.0.0.1:1").handle(Reserve), "consumer group is required");
    config_error(builder(), "no handler registered");
    config_error(builder().handle(Reserve).handle(Reserve), "has two handlers");
    config_error(builder().handle(Reserve).handle(ReserveV3), "has two handlers");
    config_error(builder().handle(Reserve).batch_size(0), "batch_size");
    config_error(builder().handle(Reserve).batch_size(5_001), "batch_size");
    config_error(builder().handle(Reserve).max_attempts(0), "max_attempts");
    config_error(
        builder().handle(Reserve).retry_backoff(Duration::from_secs(2), Duration::from_secs(1)),
        "retry_backoff",
    );
    config_error(builder().handle(Reserve).dedup_window(Duration::ZERO), "dedup_window");
    config_error(builder().handle(Reserve).max_payload_bytes(0), "max_payload_bytes");
    config_error(builder().handle(Reserve).shutdown_timeout(Duration::ZERO), "shutdown_timeout");
    config_error(builder().handle(Reserve).handler_timeout(Duration::ZERO), "handler_timeout");
    config_error(builder().handle(Reserve).max_buffered_bytes(0), "max_buffered_bytes");
    config_error(Inbox::builder(pool(), ClientConfig::new()).group("g").handle(Reserve), "bootstrap.servers");
    config_error(
        Inbox::builder(pool(), kafka("enable.auto.offset.store", "true")).group("g").handle(Reserve),
        "enable.auto.offset.store",
    );
    config_error(Inbox::builder(pool(), kafka("group.id", "billing")).group("g").handle(Reserve), "group.id=billing");
    config_error(
        Inbox::builder(pool(), kafka("fetch.max.bytes", "lots")).group("g").handle(Reserve),
        "fetch.max.bytes",
    );
    config_error(Inbox::builder(pool(), kafka("no.such.property", "1")).group("g").handle(Reserve), "no.such.property");
}

#[tokio::test]
async fn topics_come_from_the_registered_events() {
    let inbox = builder().handle::<OrderPlaced, _>(Multi).handle::<PaymentCaptured, _>(Multi).build().unwrap();
    assert_eq!(inbox.group(), "inventory");
    assert_eq!(inbox.topics(), vec!["orders", "payments"]);
    let cfg = kafka("group.id", "inventory");
    assert!(Inbox::builder(pool(), &cfg).group("inventory").handle(Reserve).build().is_ok());
}
