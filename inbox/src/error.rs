//! The inbox reports errors with the outbox's error type, so applications match on one
//! [`ErrorKind`](outbox::ErrorKind) across both crates.

use outbox::{Error, ErrorKind};

pub(crate) fn config_error(message: impl Into<String>) -> Error {
    Error::other(ErrorKind::Config, message, None)
}

pub(crate) fn kafka_error(message: impl Into<String>, source: rdkafka::error::KafkaError) -> Error {
    Error::other(ErrorKind::Kafka, message, Some(Box::new(source)))
}
