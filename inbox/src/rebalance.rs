//! The consumer context: rebalance callbacks become events for the consumer loop, and
//! librdkafka statistics become the `inbox_lag` gauge.

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc::UnboundedSender;

/// A partition, by topic and number.
pub(crate) type TopicPartition = (String, i32);

#[derive(Debug)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Runs inside librdkafka's poll, on the consumer loop's task: it only forwards, never blocks.
pub(crate) struct InboxContext {
    pub events: UnboundedSender<RebalanceEvent>,
    pub group: String,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ClientContext for InboxContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 || !p.desired {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 { p.consumer_lag_stored } else { p.consumer_lag };
                if lag >= 0 {
                    metrics::gauge!(crate::metrics::LAG,
                        "group" => self.group.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for InboxContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::debug!(partitions = ?partitions(tpl), "inbox: partitions revoked");
            // A closed channel means the loop has stopped; nothing is waiting for the event.
            let _ = self.events.send(RebalanceEvent::Revoked(partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::debug!(partitions = ?partitions(tpl), "inbox: partitions assigned");
                let _ = self.events.send(RebalanceEvent::Assigned(partitions(tpl)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "inbox: rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // Kafka's committed offsets are only a hint (the database position is the truth).
        if let Err(e) = result {
            tracing::debug!(error = %e, "inbox: offset hint commit failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lag_from_librdkafka_statistics() {
        use rdkafka::ClientContext;
        use rdkafka::statistics::{Partition, Statistics, Topic};
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let context = super::InboxContext { events, group: "inventory".into() };
        let mut topic = Topic::default();
        let partition =
            |id, desired, lag| Partition { partition: id, desired, consumer_lag_stored: lag, ..Partition::default() };
        topic.partitions.insert(3, partition(3, true, 42));
        topic.partitions.insert(-1, partition(-1, true, 7)); // librdkafka's internal partition
        topic.partitions.insert(4, partition(4, false, 9)); // not assigned here
        let mut stats = Statistics::default();
        stats.topics.insert("orders".into(), topic);
        let capture = crate::metrics::tests::Capture::default();
        metrics::with_local_recorder(&capture, || context.stats(stats));
        assert_eq!(capture.lines(), ["inbox_lag{group=inventory,topic=orders,partition=3} 42"]);
    }
}
