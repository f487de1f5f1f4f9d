//! The dead letter as the Kafka record it was, rebuilt from its row for the handler to run on
//! (see the parent module for why a replay does not produce a copy to the topic).

use outbox::raw_headers::escape;
use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

use super::failure::Failure;
use crate::store::StoredDeadLetter;

/// The dead letter as the Kafka record it was: key, payload, headers byte for byte (rows written
/// before migration 3 have only the display form of their headers, which is used instead).
pub(super) fn stored_record(row: &StoredDeadLetter) -> Result<OwnedMessage, Failure> {
    let malformed = |error: String| Failure::new("malformed_headers", error);
    let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = match &row.raw_headers {
        Some(bytes) => outbox::raw_headers::decode(bytes)
            .ok_or_else(|| malformed("the stored raw_headers are not in the documented format".into()))?,
        None => match &row.headers {
            serde_json::Value::Object(map) => {
                map.iter().map(|(k, v)| (k.clone().into_bytes(), v.as_str().map(|v| v.as_bytes().to_vec()))).collect()
            }
            _ => return Err(malformed("the stored headers are not a JSON object".into())),
        },
    };
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in &headers {
        // rdkafka takes header keys as text; such a record was dead-lettered for this reason.
        let key = std::str::from_utf8(key).map_err(|_| {
            malformed(format!("header key `{}` is not UTF-8 (the raw headers are kept in raw_headers)", escape(key)))
        })?;
        owned = owned.insert(Header { key, value: value.as_deref() });
    }
    Ok(OwnedMessage::new(
        row.payload.clone(),
        row.key.clone(),
        row.topic.clone(),
        Timestamp::NotAvailable,
        row.kafka_partition,
        row.kafka_offset,
        Some(owned),
    ))
}
