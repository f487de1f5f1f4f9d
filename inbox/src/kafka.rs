//! The Kafka side of the configuration: which brokers, and the consumer settings the inbox
//! insists on.

use rdkafka::ClientConfig;

use crate::Error;
use crate::error::config_error;

/// Where the inbox finds Kafka: a `bootstrap.servers` list, or a full [`ClientConfig`] (TLS,
/// SASL, any librdkafka property).
///
/// ```
/// # fn f(pool: diesel_async::pooled_connection::bb8::Pool<diesel_async::AsyncPgConnection>) {
/// let by_brokers = inbox::Inbox::builder(pool.clone(), "kafka-1:9092,kafka-2:9092");
/// let mut cfg = rdkafka::ClientConfig::new();
/// cfg.set("bootstrap.servers", "kafka:9093").set("security.protocol", "SSL");
/// let by_config = inbox::Inbox::builder(pool, &cfg);
/// # }
/// ```
#[derive(Clone)]
pub struct KafkaSettings(ClientConfig);

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Property values can be secrets (sasl.password, ssl.key.pem): print names only.
        f.debug_tuple("KafkaSettings").field(&self.0.config_map().keys().collect::<Vec<_>>()).finish()
    }
}

impl From<&str> for KafkaSettings {
    fn from(bootstrap_servers: &str) -> Self {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap_servers);
        Self(c)
    }
}

impl From<String> for KafkaSettings {
    fn from(bootstrap_servers: String) -> Self {
        Self::from(bootstrap_servers.as_str())
    }
}

impl From<&String> for KafkaSettings {
    fn from(bootstrap_servers: &String) -> Self {
        Self::from(bootstrap_servers.as_str())
    }
}

impl From<outbox::KafkaConfig> for KafkaSettings {
    fn from(config: outbox::KafkaConfig) -> Self {
        Self(config.to_client_config())
    }
}

impl From<&outbox::KafkaConfig> for KafkaSettings {
    fn from(config: &outbox::KafkaConfig) -> Self {
        Self(config.to_client_config())
    }
}

impl From<ClientConfig> for KafkaSettings {
    fn from(config: ClientConfig) -> Self {
        Self(config)
    }
}

impl From<&ClientConfig> for KafkaSettings {
    fn from(config: &ClientConfig) -> Self {
        Self(config.clone())
    }
}

/// Defaults applied when the user's configuration does not set them.
const DEFAULTS: &[(&str, &str)] = &[
    // A group that has never committed starts at the beginning: the inbox must not skip
    // events that were published before its first deployment.
    ("auto.offset.reset", "earliest"),
    // Feeds the `inbox_lag` gauge.
    ("statistics.interval.ms", "5000"),
];

impl KafkaSettings {
    /// The consumer configuration the inbox runs with, or a configuration error.
    pub(crate) fn consumer_config(&self, group: &str) -> Result<ClientConfig, Error> {
        let get = |k: &str| self.0.get(k).map(str::trim);
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
        let mut c = self.0.clone();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_safe_consumer_defaults() {
        let c = KafkaSettings::from("b:9092").consumer_config("g").unwrap();
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn user_settings_win_over_defaults() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "b:9092").set("auto.offset.reset", "latest").set("group.id", "g");
        let c = KafkaSettings::from(cfg).consumer_config("g").unwrap();
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
    }

    #[test]
    fn refuses_unsafe_or_invalid_settings() {
        let with = |k: &str, v: &str| {
            let mut cfg = ClientConfig::new();
            cfg.set("bootstrap.servers", "b:9092").set(k, v);
            KafkaSettings::from(cfg).consumer_config("g").unwrap_err().to_string()
        };
        assert!(with("enable.auto.offset.store", "true").contains("enable.auto.offset.store"));
        assert!(with("group.id", "other").contains("group.id=other"));
        assert!(with("no.such.property", "1").contains("no.such.property"));
        assert!(with("session.timeout.ms", "soon").contains("session.timeout.ms"));
        let missing = KafkaSettings::from(ClientConfig::new()).consumer_config("g");
        assert!(missing.unwrap_err().to_string().contains("bootstrap.servers"));
    }
}
