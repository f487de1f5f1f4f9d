//! The consumer settings the inbox insists on, applied to the user's [`outbox::KafkaConfig`]
//! (the one Kafka configuration type of both sides, with one redaction rule).

use outbox::KafkaConfig;
use rdkafka::ClientConfig;

use crate::Error;
use crate::error::config_error;

/// Defaults applied when the user's configuration does not set them.
const DEFAULTS: &[(&str, &str)] = &[
    // A group that has never committed starts at the beginning: the inbox must not skip
    // events that were published before its first deployment.
    ("auto.offset.reset", "earliest"),
    // Feeds the `inbox_lag` gauge.
    ("statistics.interval.ms", "5000"),
];

/// The consumer configuration the inbox runs with, or a configuration error.
pub(crate) fn consumer_config(kafka: &KafkaConfig, group: &str) -> Result<ClientConfig, Error> {
    let get = |k: &str| kafka.get(k).map(str::trim);
    if get("bootstrap.servers").or(get("metadata.broker.list")).is_none_or(str::is_empty) {
        return Err(config_error(
            "kafka: `bootstrap.servers` is required (e.g. Inbox::builder(pool, \"localhost:9092\"))",
        ));
    }
    if let Some(id) = get("group.id")
        && id != group
    {
        return Err(config_error(format!(
            "kafka: `group.id={id}` differs from the inbox group `{group}`; the inbox sets group.id \
             itself from `.group(..)`, remove it from the client configuration"
        )));
    }
    if let Some(v) = get("enable.auto.offset.store")
        && !v.eq_ignore_ascii_case("false")
    {
        return Err(config_error(format!(
            "kafka: `enable.auto.offset.store={v}` is refused: the inbox stores an offset only \
             after the database transaction that handled the message has committed"
        )));
    }
    let mut c = kafka.to_client_config();
    c.set("group.id", group).set("enable.auto.offset.store", "false");
    for (k, v) in DEFAULTS {
        if c.get(k).is_none() {
            c.set(*k, *v);
        }
    }
    // librdkafka checks every property name and value here, so a typo fails build(), not run().
    c.create_native_config().map_err(|e| config_error(format!("kafka: invalid consumer configuration: {e}")))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_safe_consumer_defaults() {
        let c = consumer_config(&"b:9092".into(), "g").unwrap();
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn user_settings_win_over_defaults() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "b:9092").set("auto.offset.reset", "latest").set("group.id", "g");
        let c = consumer_config(&cfg.into(), "g").unwrap();
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
    }

    #[test]
    fn refuses_unsafe_or_invalid_settings() {
        let with = |k: &str, v: &str| {
            let cfg = KafkaConfig::new("b:9092").set(k, v);
            consumer_config(&cfg, "g").unwrap_err().to_string()
        };
        assert!(with("enable.auto.offset.store", "true").contains("enable.auto.offset.store"));
        assert!(with("group.id", "other").contains("group.id=other"));
        assert!(with("no.such.property", "1").contains("no.such.property"));
        assert!(with("session.timeout.ms", "soon").contains("session.timeout.ms"));
        let missing = consumer_config(&ClientConfig::new().into(), "g");
        assert!(missing.unwrap_err().to_string().contains("bootstrap.servers"));
    }

    /// The inbox prints its Kafka configuration through the same type as the relay, so the same
    /// secrets are redacted on both sides: a configuration built the inbox's way (from an
    /// rdkafka `ClientConfig`) and handed to the builder hides every secret the relay's does.
    #[tokio::test]
    async fn the_builder_redacts_the_same_secrets_as_the_relay() {
        let secrets = [
            ("sasl.password", "pw-1"),
            ("sasl.username", "user-2"),
            ("ssl.key.pem", "pem-3"),
            ("ssl.key.password", "kp-4"),
            ("sasl.oauthbearer.client.secret", "cs-5"),
            ("plugin.access.token", "tok-6"),
        ];
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", "b:9092").set("client.id", "visible-client");
        let mut relay_side = KafkaConfig::new("b:9092").set("client.id", "visible-client");
        for (k, v) in secrets {
            client.set(k, v);
            relay_side = relay_side.set(k, v);
        }
        let inbox_side: KafkaConfig = client.into();
        assert_eq!(format!("{inbox_side:?}"), format!("{relay_side:?}"));
        let builder = crate::Inbox::<diesel_async::AsyncPgConnection>::builder(
            diesel_async::pooled_connection::bb8::Pool::builder().build_unchecked(
                diesel_async::pooled_connection::AsyncDieselConnectionManager::new("postgres://unused"),
            ),
            inbox_side,
        );
        let debug = format!("{builder:?}");
        for (_, v) in secrets {
            assert!(!debug.contains(v), "{v} leaked: {debug}");
        }
        assert!(debug.contains("visible-client") && debug.contains("<redacted>"), "{debug}");
    }
}
