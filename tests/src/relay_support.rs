//! Shared pieces of the relay suites: a keyed test event, writers, and the delivery oracle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use diesel_async::AsyncConnection;
use outbox::KafkaConfig;
use outbox::relay::{Relay, RelayBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka::Record;
use crate::{Backend, TestDb, TestKafka};

pub const TOPIC: &str = "relay.test";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "relay.test", name = "test.happened", version = 2)]
pub struct Happened {
    #[event(key)]
    pub key: String,
    pub n: u64,
    pub pad: String,
}

impl Happened {
    pub fn new(key: impl Into<String>, n: u64) -> Self {
        Happened { key: key.into(), n, pad: "x".repeat(200) }
    }
}

/// Writes `n` events over `keys` keys (event i has key `k{i % keys}`), `per_tx` events per
/// transaction. Returns the message ids in write order.
pub async fn write_events<B: Backend>(db: &TestDb<B>, n: u64, keys: u64, per_tx: u64) -> Vec<Uuid> {
    let mut conn = db.conn().await;
    let mut ids = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let events: Vec<Happened> =
            (i..(i + per_tx).min(n)).map(|j| Happened::new(format!("k{}", j % keys), j)).collect();
        let batch_ids = conn
            .transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &events).await)
            .await
            .expect("write events");
        ids.extend(batch_ids);
        i += per_tx;
    }
    ids
}

/// Publishes `n` events (key `k`) one transaction at a time, `gap` apart, through
/// `outbox::transaction` (each commit wakes an in-process relay), then checks that the running
/// relay put every one of them on [`TOPIC`] and drained the outbox. Returns their ids.
pub async fn publish_one_at_a_time<B: Backend>(db: &TestDb<B>, kafka: &TestKafka, n: u64, gap: Duration) -> Vec<Uuid> {
    let mut conn = db.conn().await;
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let id = outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &Happened::new("k", i)).await)
            .await
            .expect("publish");
        ids.push(id);
        tokio::time::sleep(gap).await;
    }
    let records = kafka.read_all(TOPIC, ids.len(), Duration::from_secs(20), Duration::from_millis(200)).await;
    let report = check_delivery(&records, &ids, &HashSet::new());
    assert_eq!(report.distinct, ids.len(), "{report:?}");
    wait_drained(db, Duration::from_secs(10)).await;
    ids
}

/// A relay on any backend's pool (`db.pool(n)`) with test-friendly timings.
pub fn relay<M>(db_pool: bb8::Pool<M>, kafka: &TestKafka) -> RelayBuilder<M::Connection>
where
    M: bb8::ManageConnection<Connection: outbox::Database>,
    M::Error: std::error::Error,
{
    relay_with(db_pool, KafkaConfig::new(kafka.brokers()))
}

/// A relay with test-friendly timings and the given Kafka settings.
pub fn relay_with<M>(db_pool: bb8::Pool<M>, kafka: KafkaConfig) -> RelayBuilder<M::Connection>
where
    M: bb8::ManageConnection<Connection: outbox::Database>,
    M::Error: std::error::Error,
{
    Relay::builder(db_pool, kafka)
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(3))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Starts a relay task; cancel the returned token to stop it.
pub fn spawn<C: outbox::Database>(relay: Relay<C>) -> (CancellationToken, JoinHandle<outbox::Result<()>>) {
    let token = CancellationToken::new();
    let handle = tokio::spawn(relay.run(token.clone()));
    (token, handle)
}

/// Waits until the outbox holds no unsent, unparked row (or panics after `timeout`).
pub async fn wait_drained<B: Backend>(db: &TestDb<B>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left =
            db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL AND parked_at IS NULL").await;
        if left == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained: {left} rows left after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the topic held, checked against what was written.
#[derive(Debug)]
pub struct DeliveryReport {
    pub records: usize,
    pub distinct: usize,
    pub duplicates: usize,
}

/// The oracle: every expected id is on the topic, nothing unexpected is, and per key the first
/// occurrences are in write order. Returns the counts (duplicates are allowed and reported).
pub fn check_delivery(records: &[Record], expected: &[Uuid], forbidden: &HashSet<Uuid>) -> DeliveryReport {
    let position: HashMap<Uuid, usize> = expected.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut seen = HashSet::new();
    let mut last_per_key: BTreeMap<String, usize> = BTreeMap::new();
    // Records of one key live in one partition; order within a partition is by offset.
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let id: Uuid = r.header("ce_id").expect("ce_id header").parse().expect("ce_id is a uuid");
        assert!(!forbidden.contains(&id), "a rolled-back message was produced: {id}");
        let pos = *position.get(&id).unwrap_or_else(|| panic!("unexpected message on the topic: {id}"));
        if !seen.insert(id) {
            continue; // a duplicate: allowed (at-least-once), counted below
        }
        let key = r.key.clone().expect("keyed record");
        if let Some(prev) = last_per_key.insert(key.clone(), pos) {
            assert!(prev < pos, "key {key}: message #{pos} first seen after #{prev}: per-key order broken");
        }
    }
    let missing: Vec<_> = expected.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} committed messages never reached the topic, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    DeliveryReport { records: records.len(), distinct: seen.len(), duplicates: records.len() - seen.len() }
}

pub async fn read_topic(kafka: &TestKafka, expected: usize) -> Vec<Record> {
    kafka.read_all(TOPIC, expected, Duration::from_secs(60), Duration::from_millis(500)).await
}
