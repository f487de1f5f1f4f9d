//! Reading the embedded cluster's log directly, off the harness's consumers: the log end of
//! each partition (for the quiet check) and the record of a message id (for a redelivery).
//! Separate because these are blocking librdkafka calls, run on `spawn_blocking` threads.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use super::{KAFKA_TIMEOUT, kafka_error};
use crate::Error;

fn consumer(brokers: &str) -> Result<BaseConsumer, Error> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "inbox-harness")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kafka_error("cannot create a consumer", e))
}

/// A topic and one of its partitions.
pub(super) type Partition = (String, i32);

/// The log end (high watermark) of every partition of `topics`.
pub(super) fn log_ends(brokers: &str, topics: &[&str]) -> Result<Vec<(Partition, i64)>, Error> {
    let consumer = consumer(brokers)?;
    let mut ends = Vec::new();
    for topic in topics {
        let metadata =
            consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).map_err(|e| kafka_error("cannot read metadata", e))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)
                    .map_err(|e| kafka_error("cannot read watermarks", e))?;
                ends.push(((topic.to_string(), p.id()), high));
            }
        }
    }
    Ok(ends)
}

type Found = (String, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

/// Reads `topics` from the beginning up to their current ends for the record whose `ce_id`
/// header is `id`.
pub(super) fn find_record(brokers: &str, topics: &[&str], id: &str) -> Result<Option<Found>, Error> {
    let ends = log_ends(brokers, topics)?;
    let consumer = consumer(brokers)?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for ((topic, partition), end) in &ends {
        if *end > 0 {
            assignment
                .add_partition_offset(topic, *partition, rdkafka::Offset::Beginning)
                .map_err(|e| kafka_error("cannot assign", e))?;
            remaining += 1;
        }
    }
    consumer.assign(&assignment).map_err(|e| kafka_error("cannot assign", e))?;
    let ends: HashMap<Partition, i64> = ends.into_iter().collect();
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg.map_err(|e| kafka_error("cannot read", e))?;
        if let Some(headers) = msg.headers()
            && headers.iter().any(|h| h.key == "ce_id" && h.value == Some(id.as_bytes()))
        {
            let headers = headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
            return Ok(Some((
                msg.topic().to_owned(),
                msg.key().map(<[u8]>::to_vec),
                msg.payload().map(<[u8]>::to_vec),
                headers,
            )));
        }
        if ends.get(&(msg.topic().to_owned(), msg.partition())).is_some_and(|end| msg.offset() + 1 >= *end) {
            remaining -= 1;
        }
    }
    Ok(None)
}
