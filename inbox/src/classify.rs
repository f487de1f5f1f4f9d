//! Deciding, before any transaction, what happens to a message: handle it, record it, or
//! dead-letter it. Everything a hostile producer controls is checked here, cheapest first, and
//! nothing here can panic or allocate in proportion to anything but the (capped) payload.

use std::any::Any;

use outbox::Envelope;
use outbox::raw_headers::escape;
use rdkafka::message::{Message, OwnedMessage};
use uuid::Uuid;

use crate::raw_headers::{self, RawHeader};

use crate::UnknownTypePolicy;
use crate::config::InboxConfig;
use outbox::Database;

use crate::registry::{Registry, Route};

/// What to do with one message.
pub(crate) enum Plan<C: Database> {
    /// Run `route`'s handler. `decoded` is the event, decoded once here and consumed by the
    /// first call; retries decode the payload again.
    Handle { envelope: Box<Envelope>, route: Route<C>, decoded: Option<Box<dyn Any + Send + Sync>> },
    /// Record as handled without running anything (unknown type under the skip policy).
    Record { id: Uuid },
    /// Never handled: a dead-letter row with this reason. With a valid id it also gets a dedup
    /// row, so a redelivery is not dead-lettered twice.
    DeadLetter { id: Option<Uuid>, reason: String, error: String },
}

impl<C: Database> Plan<C> {
    pub(crate) fn id(&self) -> Option<Uuid> {
        match self {
            Plan::Handle { envelope, .. } => Some(envelope.id),
            Plan::Record { id } => Some(*id),
            Plan::DeadLetter { id, .. } => *id,
        }
    }

    fn dead(id: Option<Uuid>, reason: impl Into<String>, error: impl Into<String>) -> Self {
        Plan::DeadLetter { id, reason: reason.into(), error: error.into() }
    }
}

pub(crate) fn classify<C: Database>(registry: &Registry<C>, options: &InboxConfig, msg: &OwnedMessage) -> Plan<C> {
    // Raw bytes, not rdkafka's `Headers::iter` (it panics on a key that is not UTF-8).
    let raw = raw_headers::read(msg);
    let mut text = Vec::with_capacity(raw.len());
    for &(key, value) in &raw {
        match std::str::from_utf8(key) {
            Ok(key) => text.push((key, value)),
            Err(_) => {
                return Plan::dead(
                    header_id(&raw),
                    "malformed_headers",
                    format!("header key `{}` is not UTF-8 (the raw headers are kept in raw_headers)", escape(key)),
                );
            }
        }
    }
    let envelope = match Envelope::from_headers(text) {
        Ok(e) => e,
        Err(e) => return Plan::dead(header_id(&raw), e.reason(), e.to_string()),
    };
    let id = Some(envelope.id);
    let Some(route) = registry.get(msg.topic(), &envelope.event_type) else {
        return match options.unknown_types {
            UnknownTypePolicy::Skip => Plan::Record { id: envelope.id },
            UnknownTypePolicy::DeadLetter => Plan::dead(
                id,
                "unknown_type",
                format!(
                    "no handler for event type `{}` on topic `{}` in this consumer group",
                    escape(envelope.event_type.as_bytes()),
                    msg.topic()
                ),
            ),
        };
    };
    if envelope.version == 0 || envelope.version > route.version() {
        return Plan::dead(
            id,
            "unsupported_version",
            format!(
                "`{}` version {} is not supported: handler `{}` accepts versions 1 to {}",
                escape(envelope.event_type.as_bytes()),
                envelope.version,
                route.handler_name(),
                route.version()
            ),
        );
    }
    let Some(payload) = msg.payload() else {
        return Plan::dead(id, "malformed_payload", "the message has no payload");
    };
    if payload.len() > options.max_payload_bytes {
        return Plan::dead(
            id,
            "payload_too_large",
            format!(
                "payload is {} bytes; the limit is {} (max_payload_bytes)",
                payload.len(),
                options.max_payload_bytes
            ),
        );
    }
    if let Some(depth) = exceeds_depth(payload, options.max_json_depth) {
        return Plan::dead(
            id,
            "payload_too_deep",
            format!("JSON nesting reaches depth {depth}; the limit is {} (max_json_depth)", options.max_json_depth),
        );
    }
    match route.decode(payload) {
        Ok(decoded) => Plan::Handle { envelope: Box::new(envelope), route: route.clone(), decoded: Some(decoded) },
        Err(e) => Plan::dead(
            id,
            "malformed_payload",
            format!("payload is not a valid `{}`: {e}", escape(envelope.event_type.as_bytes())),
        ),
    }
}

/// The message id, if `ce_id` is a valid UUID even though another header is not. The last
/// `ce_id` counts, as in [`Envelope::from_headers`].
fn header_id(headers: &[RawHeader<'_>]) -> Option<Uuid> {
    headers
        .iter()
        .rev()
        .find(|(key, _)| key.eq_ignore_ascii_case(b"ce_id"))
        .and_then(|(_, value)| *value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| Uuid::try_parse(s).ok())
}

/// Returns the depth reached as soon as JSON nesting goes deeper than `max`, scanning bytes
/// only (strings are skipped, so brackets inside them do not count). Malformed JSON is left to
/// the parser.
pub(crate) fn exceeds_depth(json: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The headers for the dead-letter row: losslessly encoded, and as escaped display JSON.
pub(crate) fn dead_letter_headers(msg: &OwnedMessage) -> (Vec<u8>, serde_json::Value) {
    let raw = raw_headers::read(msg);
    (outbox::raw_headers::encode(raw.iter().copied()), outbox::raw_headers::display_json(raw.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::exceeds_depth;

    #[test]
    fn depth_scan() {
        assert_eq!(exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 3), None);
        assert_eq!(exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 2), Some(3));
        assert_eq!(exceeds_depth(br#"{"a":"[[[[[[\"[[["}"#, 1), None);
        let deep = "[".repeat(100_000);
        assert_eq!(exceeds_depth(deep.as_bytes(), 64), Some(65));
        assert_eq!(exceeds_depth(b"]]]]", 1), None);
    }
}
