//! Putting CloudEvents messages on Kafka for the inbox suites, well-formed or hostile, and
//! waiting for the inbox to catch up.
//!
//! ```text
//! let producer = TestProducer::new(&kafka);
//! let good = CloudEvent::of(&OrderPlaced { .. }).partition(0);
//! let evil = CloudEvent::of(&OrderPlaced { .. }).header("ce_id", "not-a-uuid");
//! producer.send_all(&[good.clone(), evil, good]).await; // the same id twice
//! ```

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::{Backend, TestDb, TestKafka};

/// One Kafka record to produce: topic, partition, key, headers and payload, each settable to
/// anything, including values the wire format forbids.
#[derive(Debug, Clone)]
pub struct CloudEvent {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<Vec<u8>>,
}

impl CloudEvent {
    /// A valid CloudEvents binary-mode record of `event`, with a fresh UUIDv7 id, exactly as
    /// the relay would produce it.
    pub fn of<E: outbox::Event>(event: &E) -> Self {
        let envelope = outbox::Envelope {
            id: Uuid::now_v7(),
            event_type: E::NAME.to_owned(),
            version: E::VERSION,
            source: "/tests".to_owned(),
            time: chrono::Utc::now(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            headers: Default::default(),
        };
        CloudEvent {
            topic: E::TOPIC.to_owned(),
            partition: None,
            key: event.key().map(String::into_bytes),
            headers: envelope.to_headers().into_iter().map(|(k, v)| (k, Some(v.into_bytes()))).collect(),
            payload: Some(serde_json::to_vec(event).expect("serialise test event")),
        }
    }

    /// A record with no headers and no payload.
    pub fn raw(topic: &str) -> Self {
        CloudEvent { topic: topic.to_owned(), partition: None, key: None, headers: Vec::new(), payload: None }
    }

    /// The `ce_id` header, if it is a UUID.
    pub fn id(&self) -> Option<Uuid> {
        self.headers
            .iter()
            .find(|(k, _)| k == "ce_id")
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| Uuid::try_parse(v).ok())
    }

    /// Sets (or replaces) a header to a text value.
    /// The value of header `name`, when it is set and UTF-8.
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
    }

    pub fn header(self, name: &str, value: impl Into<String>) -> Self {
        self.header_bytes(name, Some(value.into().into_bytes()))
    }

    /// Sets (or replaces) a header to raw bytes, or to a header without a value.
    pub fn header_bytes(mut self, name: &str, value: Option<Vec<u8>>) -> Self {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_owned(), value));
        self
    }

    /// Removes a header.
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| k != name);
        self
    }

    /// Sets the message id (`ce_id`).
    pub fn with_id(self, id: Uuid) -> Self {
        self.header("ce_id", id.to_string())
    }

    /// Replaces the payload bytes.
    pub fn payload(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(bytes.into());
        self
    }

    /// Removes the payload (a tombstone).
    pub fn no_payload(mut self) -> Self {
        self.payload = None;
        self
    }

    /// Sends to this partition instead of the key's.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// A producer for the test cluster; sends one record at a time, in order.
pub struct TestProducer {
    producer: FutureProducer,
}

impl TestProducer {
    pub fn new(kafka: &TestKafka) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", kafka.brokers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .expect("test producer");
        TestProducer { producer }
    }

    /// The underlying producer (for [`crate::raw`]).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Produces `event` and waits for the broker's ack; returns (partition, offset).
    pub async fn send(&self, event: &CloudEvent) -> (i32, i64) {
        let headers = event
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: v.as_deref() }));
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&event.topic).headers(headers);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &event.payload {
            record = record.payload(p.as_slice());
        }
        if let Some(p) = event.partition {
            record = record.partition(p);
        }
        let delivery =
            self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce test record");
        (delivery.partition, delivery.offset)
    }

    /// Produces every event in order, each acked before the next is sent.
    pub async fn send_all(&self, events: &[CloudEvent]) -> Vec<(i32, i64)> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.send(e).await);
        }
        out
    }
}

/// Polls `sql` (a one-value `... AS n` query) until it returns at least `expected`, or
/// `timeout` passes; returns the last value. A guard against hanging, not a timing assertion:
/// callers assert on the value.
pub async fn wait_for_count<B: Backend>(db: &TestDb<B>, sql: &str, expected: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = db.count(sql).await;
        if n >= expected || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kafka settings for an inbox under test: the test cluster with a short session timeout.
/// The mock cluster holds a group's rebalance open for `session.timeout.ms - 1 s` after a
/// member leaves or dies (a real broker empties the group at once), so tests that stop and
/// restart consumers would otherwise wait 44 s. `max.poll.interval.ms` is the rebalance timeout
/// a member sends in JoinGroup: tansu held a restarted group's rejoin for a member that died
/// without leaving (an aborted inbox) for longer than 60 s, up to that timeout (300 s by default).
pub fn inbox_kafka_config(kafka: &TestKafka) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", kafka.brokers())
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "10000");
    cfg
}
