//! The envelope around a payload, and its CloudEvents 1.0 Kafka binary-mode mapping.
//!
//! On the wire a message is: key = the event's key, value = the payload bytes exactly as stored,
//! and these headers:
//!
//! | header | value |
//! |---|---|
//! | `ce_specversion` | `1.0` |
//! | `ce_id` | message id (UUIDv7) |
//! | `ce_type` | [`Event::NAME`](crate::Event::NAME) |
//! | `ce_source` | the producing service (relay option `source`) |
//! | `ce_time` | when the event was stored, RFC 3339 |
//! | `content-type` | `application/json` |
//! | `ce_typeversion` | [`Event::VERSION`](crate::Event::VERSION) |
//! | `ce_correlationid` | correlation id, when set |
//! | `ce_causationid` | id of the message that caused this one, when set |
//! | `traceparent` | W3C trace context, when set (feature `otel`: captured by `publish`) |
//! | `tracestate` | W3C trace state, when the captured context has one (an ordinary header otherwise) |
//! | anything else | extra headers given to [`Metadata::header`] |

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

/// `ce_specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every payload.
pub const CONTENT_TYPE: &str = "application/json";

pub(crate) const H_SPECVERSION: &str = "ce_specversion";
pub(crate) const H_ID: &str = "ce_id";
pub(crate) const H_TYPE: &str = "ce_type";
pub(crate) const H_SOURCE: &str = "ce_source";
pub(crate) const H_TIME: &str = "ce_time";
pub(crate) const H_CONTENT_TYPE: &str = "content-type";
pub(crate) const H_TYPEVERSION: &str = "ce_typeversion";
pub(crate) const H_CORRELATION: &str = "ce_correlationid";
pub(crate) const H_CAUSATION: &str = "ce_causationid";
pub(crate) const H_TRACEPARENT: &str = "traceparent";

const RESERVED: &[&str] = &[
    H_SPECVERSION,
    H_ID,
    H_TYPE,
    H_SOURCE,
    H_TIME,
    H_CONTENT_TYPE,
    H_TYPEVERSION,
    H_CORRELATION,
    H_CAUSATION,
    H_TRACEPARENT,
];

/// Optional metadata stored with an event: correlation and causation ids, trace context, headers.
///
/// ```
/// let meta = outbox::Metadata::new()
///     .correlation_id("checkout-42")
///     .header("tenant", "acme");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub(crate) message_id: Option<Uuid>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Metadata {
    /// No metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this message id instead of a fresh UUIDv7. Publishing the same id twice fails with a
    /// unique-constraint error, which makes retried publishes idempotent.
    pub fn message_id(mut self, id: Uuid) -> Self {
        self.message_id = Some(id);
        self
    }

    /// Id shared by every message of one business flow (`ce_correlationid`).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Id of the message that caused this one (`ce_causationid`).
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// W3C `traceparent` of the writer's span, restored around the consumer's handler.
    ///
    /// With the `otel` feature, `publish` captures it (and `tracestate`) from the current
    /// span when it is not set here; a value set here wins and is sent unchanged.
    pub fn traceparent(mut self, value: impl Into<String>) -> Self {
        self.traceparent = Some(value.into());
        self
    }

    /// An extra Kafka header. Names of the envelope's own headers (`ce_*` above, `content-type`,
    /// `traceparent`) are rejected when the event is published.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if let Some(name) = self.headers.keys().find(|n| RESERVED.contains(&n.to_ascii_lowercase().as_str())) {
            return Err(crate::Error::config(format!(
                "header `{name}` is set by the outbox itself; use the Metadata method for it"
            )));
        }
        Ok(())
    }

    /// The stored `headers` column: wire header name → value.
    pub(crate) fn to_stored_headers(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                map.insert(k.to_owned(), serde_json::Value::String(v.clone()));
            }
        };
        put(H_CORRELATION, &self.correlation_id);
        put(H_CAUSATION, &self.causation_id);
        put(H_TRACEPARENT, &self.traceparent);
        for (k, v) in &self.headers {
            map.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        serde_json::Value::Object(map)
    }
}

/// Everything about a message except its key and payload, as carried in Kafka headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Message id (`ce_id`): the dedup key of the inbox.
    pub id: Uuid,
    /// Event type (`ce_type`).
    pub event_type: String,
    /// Payload schema version (`ce_typeversion`).
    pub version: u32,
    /// Producing service (`ce_source`).
    pub source: String,
    /// When the event was stored (`ce_time`).
    pub time: DateTime<Utc>,
    /// Correlation id (`ce_correlationid`).
    pub correlation_id: Option<String>,
    /// Causation id (`ce_causationid`).
    pub causation_id: Option<String>,
    /// W3C trace context (`traceparent`).
    pub traceparent: Option<String>,
    /// Every other header, by name.
    pub headers: BTreeMap<String, String>,
}

/// Why a set of Kafka headers is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    Missing(&'static str),
    /// A header is present but its value is not valid.
    #[error("invalid header `{header}`: {reason}")]
    Invalid {
        /// The header name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl EnvelopeError {
    /// A short machine-readable reason, used for dead letters: `missing_id`, `invalid_id`, ...
    pub fn reason(&self) -> String {
        let (what, header) = match self {
            EnvelopeError::Missing(h) => ("missing", *h),
            EnvelopeError::Invalid { header, .. } => ("invalid", *header),
        };
        format!("{what}_{}", header.trim_start_matches("ce_").replace('-', "_"))
    }
}

/// The one CloudEvents encoder: the Kafka headers of a stored event, as the relay produces them.
/// `stored` is the event's `headers` column (correlation and causation ids, trace context and
/// the extra headers, by wire name, as [`Metadata`] stores them); its non-string values are skipped.
pub(crate) fn encode(
    id: Uuid,
    event_type: &str,
    version: i64,
    source: &str,
    time: DateTime<Utc>,
    stored: &serde_json::Value,
) -> OwnedHeaders {
    let id = id.to_string();
    let time = format_time(time);
    let version = version.to_string();
    let fixed: [(&str, &str); 7] = [
        (H_SPECVERSION, SPEC_VERSION),
        (H_ID, &id),
        (H_TYPE, event_type),
        (H_SOURCE, source),
        (H_TIME, &time),
        (H_CONTENT_TYPE, CONTENT_TYPE),
        (H_TYPEVERSION, &version),
    ];
    let extra = stored.as_object();
    let mut h = OwnedHeaders::new_with_capacity(fixed.len() + extra.map_or(0, |m| m.len()) + 1);
    for (key, value) in fixed {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    for (key, value) in extra.into_iter().flatten() {
        if let Some(value) = value.as_str() {
            h = h.insert(Header { key, value: Some(value.as_bytes()) });
        }
    }
    h
}

impl Envelope {
    /// The Kafka headers of this envelope, in CloudEvents 1.0 binary mode: exactly what the relay
    /// produces for an event stored with these fields (one encoder serves both; with the `otel`
    /// feature the relay adds its own trace context to a record that has none).
    pub fn to_headers(&self) -> Vec<(String, String)> {
        self.to_kafka_headers()
            .iter()
            .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect()
    }

    /// [`to_headers`](Self::to_headers) as rdkafka headers.
    pub fn to_kafka_headers(&self) -> OwnedHeaders {
        let stored = Metadata {
            message_id: None,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            traceparent: self.traceparent.clone(),
            headers: self.headers.clone(),
        }
        .to_stored_headers();
        encode(self.id, &self.event_type, self.version.into(), &self.source, self.time, &stored)
    }

    /// The one CloudEvents decoder (the inbox's): parses binary-mode headers. Header names are matched case-insensitively;
    /// `ce_specversion` must be `1.0`; `ce_id` must be a UUID; `ce_typeversion` defaults to 1.
    pub fn from_headers<'a, I>(headers: I) -> Result<Self, EnvelopeError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let mut spec = None;
        let mut id = None;
        let mut event_type = None;
        let mut source = None;
        let mut time = None;
        let mut version = None;
        let mut correlation_id = None;
        let mut causation_id = None;
        let mut traceparent = None;
        let mut extra = BTreeMap::new();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            let text = |header: &'static str| -> Result<String, EnvelopeError> {
                let bytes = value.ok_or(EnvelopeError::Missing(header))?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| EnvelopeError::Invalid { header, reason: "not UTF-8".into() })
            };
            match lower.as_str() {
                H_SPECVERSION => spec = Some(text(H_SPECVERSION)?),
                H_ID => id = Some(text(H_ID)?),
                H_TYPE => event_type = Some(text(H_TYPE)?),
                H_SOURCE => source = Some(text(H_SOURCE)?),
                H_TIME => time = Some(text(H_TIME)?),
                H_TYPEVERSION => version = Some(text(H_TYPEVERSION)?),
                H_CORRELATION => correlation_id = Some(text(H_CORRELATION)?),
                H_CAUSATION => causation_id = Some(text(H_CAUSATION)?),
                H_TRACEPARENT => traceparent = Some(text(H_TRACEPARENT)?),
                H_CONTENT_TYPE => {}
                _ => {
                    if let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) {
                        extra.insert(name.to_owned(), v.to_owned());
                    }
                }
            }
        }
        let spec = spec.ok_or(EnvelopeError::Missing(H_SPECVERSION))?;
        if spec != SPEC_VERSION {
            return Err(EnvelopeError::Invalid { header: H_SPECVERSION, reason: format!("`{spec}` is not 1.0") });
        }
        let id = id.ok_or(EnvelopeError::Missing(H_ID))?;
        let id = Uuid::try_parse(&id)
            .map_err(|e| EnvelopeError::Invalid { header: H_ID, reason: format!("`{id}` is not a UUID: {e}") })?;
        let event_type = event_type.filter(|t| !t.is_empty()).ok_or(EnvelopeError::Missing(H_TYPE))?;
        let version = match version {
            None => 1,
            Some(v) => v.parse::<u32>().map_err(|_| EnvelopeError::Invalid {
                header: H_TYPEVERSION,
                reason: format!("`{v}` is not a positive integer"),
            })?,
        };
        let time = match time {
            None => DateTime::<Utc>::MIN_UTC,
            Some(t) => DateTime::parse_from_rfc3339(&t)
                .map_err(|e| EnvelopeError::Invalid { header: H_TIME, reason: format!("`{t}`: {e}") })?
                .with_timezone(&Utc),
        };
        Ok(Envelope {
            id,
            event_type,
            version,
            source: source.unwrap_or_default(),
            time,
            correlation_id,
            causation_id,
            traceparent,
            headers: extra,
        })
    }

    /// [`from_headers`](Self::from_headers) from rdkafka headers.
    pub fn from_kafka_headers<H: Headers>(headers: &H) -> Result<Self, EnvelopeError> {
        Self::from_headers(headers.iter().map(|h| (h.key, h.value)))
    }
}

/// RFC 3339 with microseconds and `Z`, as CloudEvents' `time` attribute expects.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            event_type: "order.placed".into(),
            version: 3,
            source: "/orders".into(),
            time: DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123456Z").unwrap().with_timezone(&Utc),
            correlation_id: Some("corr".into()),
            causation_id: Some("cause".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            headers: BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]),
        }
    }

    fn roundtrip(h: &[(String, String)]) -> Result<Envelope, EnvelopeError> {
        Envelope::from_headers(h.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))))
    }

    #[test]
    fn headers_are_cloudevents_binary_mode() {
        let e = sample();
        let h = e.to_headers();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_id"), Some(e.id.to_string().as_str()));
        assert_eq!(get("ce_type"), Some("order.placed"));
        assert_eq!(get("ce_source"), Some("/orders"));
        assert_eq!(get("ce_time"), Some("2026-11-23T10:00:00.123456Z"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("ce_typeversion"), Some("3"));
        assert_eq!(get("ce_correlationid"), Some("corr"));
        assert_eq!(get("ce_causationid"), Some("cause"));
        assert_eq!(get("traceparent"), e.traceparent.as_deref());
        assert_eq!(get("tenant"), Some("acme"));
    }

    #[test]
    fn roundtrips_through_headers_and_kafka_headers() {
        let e = sample();
        assert_eq!(roundtrip(&e.to_headers()).unwrap(), e);
        assert_eq!(Envelope::from_kafka_headers(&e.to_kafka_headers()).unwrap(), e);
        let minimal =
            Envelope { correlation_id: None, causation_id: None, traceparent: None, headers: BTreeMap::new(), ..e };
        assert_eq!(roundtrip(&minimal.to_headers()).unwrap(), minimal);
    }

    #[test]
    fn rejects_bad_envelopes_with_a_reason() {
        let base = sample().to_headers();
        let without = |name: &str| base.iter().filter(|(k, _)| k != name).cloned().collect::<Vec<_>>();
        let with = |name: &str, value: &str| {
            let mut h = without(name);
            h.push((name.to_owned(), value.to_owned()));
            h
        };
        assert_eq!(roundtrip(&without("ce_id")).unwrap_err().reason(), "missing_id");
        assert_eq!(roundtrip(&with("ce_id", "42")).unwrap_err().reason(), "invalid_id");
        assert_eq!(roundtrip(&without("ce_type")).unwrap_err().reason(), "missing_type");
        assert_eq!(roundtrip(&with("ce_specversion", "0.3")).unwrap_err().reason(), "invalid_specversion");
        assert_eq!(roundtrip(&with("ce_typeversion", "-1")).unwrap_err().reason(), "invalid_typeversion");
        assert_eq!(roundtrip(&with("ce_time", "yesterday")).unwrap_err().reason(), "invalid_time");
        let no_value = Envelope::from_headers([("ce_specversion", Some(&b"1.0"[..])), ("ce_id", None)]);
        assert_eq!(no_value.unwrap_err(), EnvelopeError::Missing("ce_id"));
    }

    #[test]
    fn reserved_header_names_are_refused() {
        assert!(Metadata::new().header("CE_ID", "x").validate().is_err());
        assert!(Metadata::new().header("tenant", "x").validate().is_ok());
    }
}
