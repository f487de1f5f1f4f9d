//! A Kafka cluster for one test: librdkafka's in-process mock cluster, or the real broker named
//! by `KAFKA_BROKERS` (then fault-injection steps that only the mock supports are skipped and say so).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct TestKafka {
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl TestKafka {
    /// A 3-broker mock cluster (or KAFKA_BROKERS).
    pub fn new() -> Self {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.is_empty() => TestKafka { mock: None, brokers },
            _ => {
                let mock = MockCluster::new(3).expect("start librdkafka mock cluster");
                let brokers = mock.bootstrap_servers();
                TestKafka { mock: Some(mock), brokers }
            }
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The mock cluster, for fault injection; `None` against a real broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.mock {
            Some(mock) => mock.create_topic(topic, partitions, 1).expect("create mock topic"),
            None => {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", &self.brokers).create().expect("admin client");
                let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
                let _ = admin.create_topics(&topics, &AdminOptions::new()).await.expect("create topic");
            }
        }
    }

    /// The cluster id the brokers report.
    pub async fn cluster_id(&self) -> String {
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("metadata client");
            consumer.client().fetch_cluster_id(Duration::from_secs(10)).expect("the cluster reports its id")
        })
        .await
        .expect("cluster id thread")
    }

    /// Reads `topic` from the beginning until `expected` records arrived or `timeout` passed,
    /// then keeps reading for `settle` to catch duplicates that arrive late.
    pub async fn read_all(&self, topic: &str, expected: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
        let brokers = self.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            let mut out = Vec::new();
            let deadline = Instant::now() + timeout;
            let mut settle_until: Option<Instant> = None;
            loop {
                let now = Instant::now();
                if out.len() >= expected && settle_until.is_none() {
                    settle_until = Some(now + settle);
                }
                if settle_until.is_some_and(|t| now >= t) || now >= deadline {
                    break;
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
            }
            out
        })
        .await
        .expect("reader thread")
    }
}

impl Default for TestKafka {
    fn default() -> Self {
        Self::new()
    }
}
