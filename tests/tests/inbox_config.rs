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

/// `InboxConfig` is data: read from any serde format with humantime durations, missing fields
/// default, unknown fields and malformed durations are errors naming them, and it round-trips.
#[test]
fn inbox_config_reads_from_serde_with_humantime_durations() {
    let config: inbox::InboxConfig = serde_json::from_str(
        r#"{ "group": "inventory", "max_attempts": 8, "handler_timeout": "90s", "dedup_window": "3days",
             "dead_letter_retention": "30days", "unknown_types": "skip",
             "retry": { "base": "200ms", "max": "30s", "jitter": false } }"#,
    )
    .expect("a valid configuration");
    let defaults = inbox::InboxConfig::default();
    assert_eq!(config.max_attempts, 8);
    assert_eq!(config.handler_timeout, Duration::from_secs(90));
    assert_eq!(config.dedup_window, Duration::from_secs(3 * 24 * 3600));
    assert_eq!(config.dead_letter_retention, Some(Duration::from_secs(30 * 24 * 3600)));
    assert_eq!(config.unknown_types, inbox::UnknownTypePolicy::Skip);
    assert_eq!(
        config.retry,
        outbox::RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(30)).without_jitter()
    );
    assert_eq!(config.batch_size, defaults.batch_size, "a missing field keeps its default");
    let text = serde_json::to_string(&config).expect("serialise");
    assert!(text.contains(r#""handler_timeout":"1m 30s""#), "durations are written in humantime form: {text}");
    assert_eq!(serde_json::from_str::<inbox::InboxConfig>(&text).expect("read back"), config);

    let unknown = serde_json::from_str::<inbox::InboxConfig>(r#"{ "group": "g", "retry_backoff": "1s" }"#);
    let e = unknown.expect_err("an unknown field").to_string();
    assert!(e.contains("unknown field `retry_backoff`"), "{e}");
    let bad = serde_json::from_str::<inbox::InboxConfig>(r#"{ "handler_timeout": "soon" }"#);
    let e = bad.expect_err("a malformed duration").to_string();
    assert!(e.contains("invalid value: string \"soon\", expected a duration"), "{e}");
}

/// `.config(cfg)` replaces the whole configuration; setters after it change one field of it;
/// `build()` checks the result and names the field.
#[tokio::test]
async fn builder_config_replaces_the_options_and_build_checks_them() {
    let config = inbox::InboxConfig { group: "from-config".into(), batch_size: 10, ..Default::default() };
    let inbox = Inbox::builder(pool(), "127.0.0.1:1").config(config.clone()).handle(Reserve).build().expect("valid");
    assert_eq!(inbox.group(), "from-config");
    let b = Inbox::builder(pool(), "127.0.0.1:1").group("g").config(config.clone()).max_attempts(3);
    assert_eq!(b.current_config().group, "from-config", "config() replaces the group set before it");
    assert_eq!((b.current_config().max_attempts, b.current_config().batch_size), (3, 10));
    config_error(
        Inbox::builder(pool(), "127.0.0.1:1").config(config.clone()).handle(Reserve).max_attempts(0),
        "max_attempts",
    );
    let slow = inbox::InboxConfig {
        retry: outbox::RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(1)),
        ..config.clone()
    };
    assert!(slow.validate().is_err());
    config_error(Inbox::builder(pool(), "127.0.0.1:1").config(slow).handle(Reserve), "retry");
    let no_group = inbox::InboxConfig { group: String::new(), ..config };
    config_error(Inbox::builder(pool(), "127.0.0.1:1").config(no_group).handle(Reserve), "consumer group is required");
}

/// The relay's configuration is data in the same way, and `build()` checks what `.config()` set.
#[tokio::test]
async fn relay_config_reads_from_serde_and_build_checks_it() {
    use outbox::relay::{AfterSend, Relay, RelayConfig};
    let config: RelayConfig = serde_json::from_str(
        r#"{ "name": "orders", "lease": "20s", "after_send": { "mode": "keep", "retention": "1day" } }"#,
    )
    .expect("a valid configuration");
    assert_eq!(config.lease, Duration::from_secs(20));
    assert_eq!(config.after_send, AfterSend::Keep { retention: Duration::from_secs(24 * 3600) });
    assert_eq!(config.batch_size, RelayConfig::default().batch_size);
    let e = serde_json::from_str::<RelayConfig>(r#"{ "lease_ms": 100 }"#).expect_err("unknown field").to_string();
    assert!(e.contains("unknown field `lease_ms`"), "{e}");
    // `after_send`: delete takes no retention (serde's internally tagged unit variants would
    // ignore the field), keep needs one, an unknown field or mode is named.
    for (text, expected) in [
        (r#"{ "after_send": { "mode": "delete", "retention": "7days" } }"#, "applies to mode = \"keep\" only"),
        (r#"{ "after_send": { "mode": "keep" } }"#, "needs a `retention`"),
        (r#"{ "after_send": { "mode": "keep", "retention": "1h", "ttl": "1h" } }"#, "unknown field `ttl`"),
        (r#"{ "after_send": { "mode": "archive" } }"#, "unknown variant `archive`"),
    ] {
        let e = serde_json::from_str::<RelayConfig>(text).expect_err(text).to_string();
        assert!(e.contains(expected), "{text}: {e}");
    }
    let delete: RelayConfig = serde_json::from_str(r#"{ "after_send": { "mode": "delete" } }"#).expect("delete");
    assert_eq!(delete.after_send, AfterSend::Delete);
    let round_trip: RelayConfig =
        serde_json::from_str(&serde_json::to_string(&config).expect("serialize")).expect("read back");
    assert_eq!(round_trip, config);
    let kafka = || outbox::KafkaConfig::new("127.0.0.1:1");
    assert!(Relay::builder(pool(), kafka()).config(config.clone()).build().is_ok());
    let e = Relay::builder(pool(), kafka()).config(RelayConfig { batch_size: 0, ..config.clone() }).build();
    let e = e.expect_err("batch_size 0").to_string();
    assert!(e.contains("batch_size"), "{e}");
    let slow =
        RelayConfig { retry: outbox::RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(1)), ..config };
    let e = Relay::builder(pool(), kafka()).config(slow).build().expect_err("base > max").to_string();
    assert!(e.contains("retry"), "{e}");
}
