//! Reading [`TOPIC`] back, exactly up to its end: partitions are assigned (no consumer group,
//! so no rebalance delay) and read until each one's high watermark.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use super::{OrderPlaced, TOPIC};

/// One record of [`TOPIC`].
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// `ce_id`, when present and a UUID.
    pub id: Option<Uuid>,
    /// The payload, when it parses.
    pub order: Option<OrderPlaced>,
}

fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("crash-reader-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("topic reader")
}

/// Partition → high watermark (the offset the next record would get).
pub(crate) async fn high_watermarks(brokers: &str) -> BTreeMap<i32, i64> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&brokers);
        let timeout = Duration::from_secs(30);
        let metadata = consumer.fetch_metadata(Some(TOPIC), timeout).expect("topic metadata");
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        assert!(partitions > 0, "topic {TOPIC} has no partitions");
        (0..partitions as i32)
            .map(|p| (p, consumer.fetch_watermarks(TOPIC, p, timeout).expect("watermarks").1))
            .collect()
    })
    .await
    .expect("watermark thread")
}

/// Every record of [`TOPIC`] below `ends` (from [`high_watermarks`]).
pub(crate) async fn read_to_end(brokers: &str, ends: &BTreeMap<i32, i64>) -> Vec<TopicRecord> {
    let brokers = brokers.to_owned();
    let ends = ends.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&brokers);
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(TOPIC, *p, Offset::Beginning).expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while next.iter().any(|(p, n)| *n < ends[p]) {
            assert!(Instant::now() < deadline, "could not read {TOPIC} to its end: at {next:?}, end {ends:?}");
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let id = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "ce_id")
                            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                    });
                    let order = m.payload().and_then(|p| serde_json::from_slice(p).ok());
                    next.insert(m.partition(), m.offset() + 1);
                    if m.offset() < ends[&m.partition()] {
                        out.push(TopicRecord {
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            id,
                            order,
                        });
                    }
                }
                Some(Err(e)) => panic!("reading {TOPIC}: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .expect("reader thread")
}
