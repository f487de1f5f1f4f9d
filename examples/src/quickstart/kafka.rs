//! The quickstart's Kafka helpers, beside what the SDK does: reading this run's records back
//! from the topic ([`read_run`]) and creating the topic on a real broker ([`create_topic`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{BoxError, OrderPlaced, TOPIC};

pub(super) struct RunRecord {
    pub(super) order_id: String,
    pub(super) key: Vec<u8>,
    pub(super) payload: Vec<u8>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
}

/// Reads the topic from the beginning and keeps this run's records, until `expected` distinct
/// orders were seen or `timeout` passed.
pub(super) async fn read_run(
    brokers: &str,
    run_id: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<RunRecord>, BoxError> {
    let brokers = brokers.to_owned();
    let run_id = run_id.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<RunRecord>, BoxError> {
        // Every partition from its beginning, assigned rather than subscribed: a one-off read
        // joins no consumer group (a group join takes seconds on some brokers) and commits
        // nothing. librdkafka still wants a group id for an assignment.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "quickstart-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
        let mut partitions = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions.add_partition_offset(TOPIC, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&partitions)?;
        let mut out: HashMap<String, RunRecord> = HashMap::new();
        let deadline = Instant::now() + timeout;
        while out.len() < expected && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let Some(payload) = m.payload() else { continue };
            let Ok(order) = serde_json::from_slice::<OrderPlaced>(payload) else { continue };
            if order.run_id != run_id {
                continue;
            }
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            let id = order.order_id.to_string();
            out.insert(
                id.clone(),
                RunRecord {
                    order_id: id,
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: payload.to_vec(),
                    headers,
                },
            );
        }
        Ok(out.into_values().collect())
    })
    .await?
}

pub(super) async fn create_topic(brokers: &str) -> Result<(), BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics = [NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1))];
    // An existing topic is fine; other failures show up when the relay produces.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await?;
    Ok(())
}
