//! Kafka client configuration with production-safe defaults and redacted secrets.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::{Error, Result};

/// The properties librdkafka itself flags as sensitive (`_RK_SENSITIVE` in `rdkafka_conf.c` of
/// librdkafka 2.12): their values never appear in `Debug` output or logs.
const SECRET_KEYS: &[&str] = &[
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.password",
    "sasl.username",
    "ssl.ca.pem",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// librdkafka's sensitive list, plus any property whose name says it holds a credential (for
/// properties added by later librdkafka versions and for plugin properties).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str())
        || ["password", "secret", "private", "passphrase", "token", "credential"].iter().any(|w| key.contains(w))
}

/// Kafka client settings: `bootstrap.servers` plus any librdkafka property (TLS, SASL, ...).
///
/// The one Kafka configuration type of both sides: the relay's producer
/// ([`Relay::builder`](crate::relay::Relay::builder)) and the inbox's consumer (`inbox::Inbox::builder`)
/// take it, each adding and refusing the settings its guarantees depend on when it is built.
/// `Debug` prints every property but redacts the values of secret ones (librdkafka's sensitive
/// properties and any name containing `password`, `secret`, `private`, `passphrase`, `token` or
/// `credential`). It converts from a `bootstrap.servers` string and from an rdkafka
/// [`ClientConfig`] (whose properties it copies; the `ClientConfig`'s log level is not kept).
///
/// Deserialisable, so it can live in the application's own configuration file:
///
/// ```
/// let cfg: outbox::KafkaConfig = serde_json::from_str(
///     r#"{"bootstrap.servers": "kafka:9092", "security.protocol": "SASL_SSL", "sasl.password": "hunter2"}"#,
/// ).unwrap();
/// assert!(!format!("{cfg:?}").contains("hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaConfig {
    properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Settings for the given `bootstrap.servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self::default().set("bootstrap.servers", bootstrap_servers)
    }

    /// `KAFKA_BROKERS` plus every `KAFKA_<PROPERTY>` variable, e.g. `KAFKA_SECURITY_PROTOCOL`
    /// becomes `security.protocol` (underscores become dots). Variables the Kafka tools
    /// themselves use (`KAFKA_HOME`, `KAFKA_OPTS`, `KAFKA_HEAP_OPTS`, ...) are ignored.
    pub fn from_env() -> Result<Self> {
        let brokers = std::env::var("KAFKA_BROKERS")
            .map_err(|_| Error::config("KAFKA_BROKERS is not set (e.g. KAFKA_BROKERS=localhost:9092)"))?;
        let mut cfg = Self::new(brokers);
        for (k, v) in std::env::vars() {
            if let Some(prop) = k.strip_prefix("KAFKA_").filter(|p| *p != "BROKERS" && !is_tooling_variable(p)) {
                cfg = cfg.set(prop.to_ascii_lowercase().replace('_', "."), v);
            }
        }
        Ok(cfg)
    }

    /// Sets a librdkafka property.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The value of a property, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// These properties as an rdkafka [`ClientConfig`], unchanged (no defaults added).
    pub fn to_client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The producer configuration the relay uses: the user's properties on top of safe defaults,
    /// refusing any setting that would weaken delivery guarantees.
    pub(crate) fn producer_config(&self) -> Result<ClientConfig> {
        if self.get("bootstrap.servers").is_none_or(str::is_empty) {
            return Err(Error::config("kafka: `bootstrap.servers` is required"));
        }
        let refuse = |key: &str, safe: &[&str], why: &str| -> Result<()> {
            match self.get(key) {
                Some(v) if !safe.contains(&v.to_ascii_lowercase().as_str()) => Err(Error::config(format!(
                    "kafka: `{key}={v}` is refused: {why}; the relay requires {key}={}",
                    safe[0]
                ))),
                _ => Ok(()),
            }
        };
        refuse("enable.idempotence", &["true"], "without idempotence a retried batch can be duplicated or reordered")?;
        refuse("acks", &["all", "-1"], "a message is marked sent only once every in-sync replica has it")?;
        refuse(
            "request.required.acks",
            &["all", "-1"],
            "a message is marked sent only once every in-sync replica has it",
        )?;
        refuse("transactional.id", &[""], "the relay does not use Kafka transactions")?;
        refuse(
            "enable.gapless.guarantee",
            &["true"],
            "a batch the broker rejects must stop the producer before a later record of its key is sent",
        )?;
        let mut c = self.to_client_config();
        c.set("enable.idempotence", "true").set("acks", "all");
        // linger.ms=1: the relay hands librdkafka a whole batch at once, so lingering buys no
        // batching, only latency on the last messages of each batch.
        for (k, v) in [("linger.ms", "1"), ("compression.type", "lz4")] {
            if self.get(k).is_none() {
                c.set(k, v);
            }
        }
        // librdkafka times messages out one by one and then sends the later messages of the same
        // partition (it bumps the idempotent producer's epoch and goes on), so a key's later
        // message could be acknowledged after an earlier one failed. The relay keeps the timeout
        // itself (`delivery_timeout`) and, when it expires, purges everything in flight at once:
        // what reaches the broker is then a prefix of each partition's messages.
        self.delivery_timeout()?;
        c.remove("delivery.timeout.ms");
        c.set("message.timeout.ms", "0");
        // And a batch the broker rejects for good must stop the producer before it sends the
        // partition's next batch: otherwise the next one (a later record of the same key) can be
        // acknowledged first. With gapless on, librdkafka raises a fatal error instead of going on;
        // the relay recreates the producer and the later records are sent again, after the failed
        // one is parked or retried. (Its one exception, message timeouts, cannot happen with the
        // timeout above.)
        c.set("enable.gapless.guarantee", "true");
        Ok(c)
    }

    /// How long the relay waits for a batch's acknowledgements before it fails every message
    /// still in flight: `message.timeout.ms` (or its alias `delivery.timeout.ms`), default
    /// 300,000 ms as in librdkafka. `0` means wait forever.
    pub(crate) fn delivery_timeout(&self) -> Result<Option<std::time::Duration>> {
        let key = if self.get("message.timeout.ms").is_some() { "message.timeout.ms" } else { "delivery.timeout.ms" };
        let ms = match self.get(key) {
            None => 300_000,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| Error::config(format!("kafka: `{key}={v}` is not a number of milliseconds")))?,
        };
        Ok((ms > 0).then(|| std::time::Duration::from_millis(ms)))
    }
}

impl From<&str> for KafkaConfig {
    /// Settings for the given `bootstrap.servers`.
    fn from(bootstrap_servers: &str) -> Self {
        Self::new(bootstrap_servers)
    }
}

impl From<String> for KafkaConfig {
    /// Settings for the given `bootstrap.servers`.
    fn from(bootstrap_servers: String) -> Self {
        Self::new(bootstrap_servers)
    }
}

impl From<&String> for KafkaConfig {
    /// Settings for the given `bootstrap.servers`.
    fn from(bootstrap_servers: &String) -> Self {
        Self::new(bootstrap_servers.as_str())
    }
}

impl From<&KafkaConfig> for KafkaConfig {
    fn from(config: &KafkaConfig) -> Self {
        config.clone()
    }
}

impl From<&ClientConfig> for KafkaConfig {
    /// The `ClientConfig`'s properties (its log level is not kept).
    fn from(config: &ClientConfig) -> Self {
        Self { properties: config.config_map().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }
}

impl From<ClientConfig> for KafkaConfig {
    /// The `ClientConfig`'s properties (its log level is not kept).
    fn from(config: ClientConfig) -> Self {
        Self::from(&config)
    }
}

/// Environment variables of the Kafka distribution's scripts and images, not client properties.
fn is_tooling_variable(suffix: &str) -> bool {
    matches!(suffix, "HOME" | "DEBUG" | "CLUSTER_ID" | "VERSION")
        || suffix.ends_with("_OPTS")
        || suffix == "OPTS"
        || suffix.starts_with("CFG_")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.properties {
            if is_secret(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut c = KafkaConfig::new("b:9092").set("client.id", "visible-client");
        let mut secrets = Vec::new();
        // librdkafka 2.12's sensitive properties, written out here (not read from SECRET_KEYS),
        // plus names only the rule catches.
        let names = [
            "sasl.oauthbearer.assertion.private.key.file",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.password",
            "sasl.username",
            "ssl.ca.pem",
            "ssl.key.location",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "ssl_key",
            "SASL.Password",
            "plugin.access.token",
            "x.private.key",
        ];
        for (i, key) in names.into_iter().enumerate() {
            let value = format!("s3cr3t-{i}");
            c = c.set(key, &value);
            secrets.push(value);
        }
        let debug = format!("{c:?}");
        for secret in &secrets {
            assert!(!debug.contains(secret.as_str()), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("visible-client") && debug.contains("<redacted>"));
    }

    #[test]
    fn weakening_delivery_is_refused() {
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("acks", "0"),
            ("transactional.id", "x"),
            ("enable.gapless.guarantee", "false"),
        ] {
            let err = KafkaConfig::new("b:9092").set(k, v).producer_config().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert!(err.to_string().contains(k), "{err}");
        }
        assert!(KafkaConfig::default().producer_config().is_err(), "bootstrap.servers required");
        let ok = KafkaConfig::new("b:9092").set("acks", "all").set("linger.ms", "20").producer_config().unwrap();
        assert_eq!(ok.get("enable.idempotence"), Some("true"));
        assert_eq!(ok.get("linger.ms"), Some("20"));
    }
}
