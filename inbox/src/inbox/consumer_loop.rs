//! The consumer loop's events: messages, rebalances, finished partition tasks, shutdown; the
//! opening of a partition's task on assignment and the bounded close of them all at the end.
//! Separate from where each partition starts (`position`), which this loop asks on every
//! assignment and every message.

use std::sync::Arc;
use std::time::Duration;

use outbox::db::Database;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tracing::Instrument;

use super::position::Start;
use super::{Loop, Slot, close};
use crate::Error;
use crate::error::kafka_error;
use crate::flow::Flow;
use crate::partition::PartitionWorker;
use crate::rebalance::RebalanceEvent;

impl<C: Database> Loop<C> {
    pub(super) async fn run(&mut self, mut events: UnboundedReceiver<RebalanceEvent>) -> Result<(), Error> {
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                // Rebalance callbacks run inside recv(); their events are served before the
                // next message, so a partition's slot exists before its first message arrives.
                Some(event) = events.recv() => self.on_rebalance(event).await,
                Some(joined) = self.workers.join_next(), if !self.workers.is_empty() => {
                    if let Err(e) = joined && e.is_panic() {
                        // Handler panics are caught; a panic here is a bug in the inbox itself.
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
                // A seek librdkafka refused right after the assignment is tried again until it
                // succeeds or the partition's first message does it: when Kafka's committed
                // offset is at the log end (a database restored behind it), no message would come.
                _ = tokio::time::sleep(Duration::from_millis(100)), if self.has_deferred_seeks() => self.retry_seeks(),
                received = consumer.recv() => match received {
                    Ok(m) => self.route(m.detach()),
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) if is_fatal(&e) => {
                        return Err(kafka_error("kafka: fatal consumer error", e));
                    }
                    Err(e) => tracing::warn!(error = %e, "inbox: kafka error"),
                },
            }
        }
    }

    async fn on_rebalance(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Revoked(partitions) => {
                for (topic, partition) in partitions {
                    if let Some(slot) = self.slots.get_mut(&topic).and_then(|m| m.remove(&partition)) {
                        close(slot);
                    }
                    self.shared.health.cleared(&topic, partition);
                }
            }
            RebalanceEvent::Assigned(partitions) => {
                let positions = self.load_positions(&partitions).await;
                for (topic, partition) in partitions {
                    let stored = positions.get(&(topic.clone(), partition));
                    let (start, replace) = self.start(&topic, partition, stored);
                    self.open(topic, partition, start, replace);
                }
            }
        }
    }

    fn open(&mut self, topic: String, partition: i32, start: Start, replace: bool) {
        if let Some(old) = self.slots.get_mut(&topic).and_then(|m| m.remove(&partition)) {
            close(old);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let o = &self.shared.options;
        let flow = Arc::new(Flow::new(
            self.consumer.clone(),
            &topic,
            partition,
            o.batch_size,
            o.max_buffered_bytes,
            self.shared.high_water.clone(),
        ));
        if replace {
            flow.replace_position();
        }
        let stop = self.stop.child_token();
        let worker = PartitionWorker {
            shared: self.shared.clone(),
            consumer: self.consumer.clone(),
            topic: topic.clone(),
            partition,
            rx,
            flow: flow.clone(),
            stop: stop.clone(),
        };
        let span = tracing::info_span!("inbox.partition", topic = %topic, partition);
        self.workers.spawn(worker.run().instrument(span));
        let position = self.initial_seek(&topic, partition, start);
        self.slots.entry(topic).or_default().insert(partition, Slot { position, tx, flow, stop });
    }

    /// Stops the partitions, bounded by `shutdown_timeout`, commits the offset hints and
    /// closes the consumer.
    pub(super) async fn finish(mut self) {
        let shared = self.shared.clone();
        let o = &shared.options;
        self.stop.cancel();
        for (_, partitions) in self.slots.drain() {
            for (_, slot) in partitions {
                close(slot);
            }
        }
        let drained =
            tokio::time::timeout(o.shutdown_timeout, async { while self.workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(timeout = ?o.shutdown_timeout,
                "inbox: batches still running at the shutdown timeout are abandoned (rolled back, redelivered later)");
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
        }
        // Commit and close block on the network: do them off the runtime, bounded.
        let Loop { consumer, .. } = self;
        let close = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::debug!(error = %e, "inbox: final offset hint commit failed"),
            }
            drop(consumer); // the last reference: leaves the group
        });
        if tokio::time::timeout(o.shutdown_timeout, close).await.is_err() {
            tracing::warn!("inbox: the Kafka consumer is still closing; not waiting for it");
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}
