//! [`Inbox`] and its consumer loop: one task polls Kafka, serves rebalances, puts each
//! partition back at its stored position and hands messages to the partition tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use outbox::db::{ConnPool, Database};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::builder::Options;
use crate::error::kafka_error;
use crate::partition::{Flow, PartitionWorker};
use crate::rebalance::{InboxContext, RebalanceEvent, TopicPartition};
use crate::registry::Registry;

pub(crate) type Consumer = StreamConsumer<InboxContext>;

/// What every task of one inbox shares.
pub(crate) struct Shared<C: Database> {
    pub pool: ConnPool<C>,
    pub registry: Registry<C>,
    pub options: Options,
}

/// A built inbox: a consumer group, its handlers and options. Start it with [`run`](Self::run).
///
/// Built by [`Inbox::builder`]; see the crate documentation for the guarantees.
pub struct Inbox<C: Database = AsyncPgConnection> {
    shared: Arc<Shared<C>>,
    consumer_config: ClientConfig,
}

impl<C: Database> std::fmt::Debug for Inbox<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("group", &self.shared.options.group)
            .field("topics", &self.topics())
            .finish_non_exhaustive()
    }
}

impl<C: Database> Inbox<C> {
    pub(crate) fn new(
        pool: ConnPool<C>,
        consumer_config: ClientConfig,
        registry: Registry<C>,
        options: Options,
    ) -> Self {
        Self { shared: Arc::new(Shared { pool, registry, options }), consumer_config }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.options.group
    }

    /// The topics the inbox subscribes to: those of the registered events.
    pub fn topics(&self) -> Vec<&'static str> {
        self.shared.registry.topics()
    }

    /// Consumes and handles messages until `shutdown` is cancelled.
    ///
    /// On shutdown it stops reading, lets every partition finish and commit the batch in hand
    /// (for at most the configured `shutdown_timeout`; what is still running then is rolled
    /// back and will be redelivered), commits the Kafka offset hints and leaves the group.
    ///
    /// Database outages do not end the loop: the affected partitions retry with backoff.
    /// It returns an error only when the Kafka consumer cannot be created or subscribed, or
    /// librdkafka reports a fatal error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = self.shared;
        let (events_tx, events) = mpsc::unbounded_channel();
        let context = InboxContext { events: events_tx, group: shared.options.group.clone() };
        let consumer: Consumer = self
            .consumer_config
            .create_with_context(context)
            .map_err(|e| kafka_error("kafka: cannot create the inbox consumer", e))?;
        let consumer = Arc::new(consumer);
        let topics = shared.registry.topics();
        consumer.subscribe(&topics).map_err(|e| kafka_error(format!("kafka: cannot subscribe to {topics:?}"), e))?;
        let span = tracing::info_span!("inbox", group = %shared.options.group);
        async move {
            tracing::info!(?topics, "inbox: started");
            let stop = shutdown.child_token();
            let mut background = JoinSet::new();
            background.spawn(crate::prune::run(shared.clone(), stop.clone()));
            let mut lp = Loop { shared, consumer, slots: HashMap::new(), workers: JoinSet::new(), stop };
            let result = lp.run(events).await;
            lp.finish().await;
            background.abort_all();
            while background.join_next().await.is_some() {}
            tracing::info!("inbox: stopped");
            result
        }
        .instrument(span)
        .await
    }
}

/// Where a newly assigned partition stands relative to its stored position.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// No message seen yet in this assignment; the stored position, if there is one.
    Start(Option<i64>),
    /// Sought to the stored position; everything librdkafka returns from now on is from there.
    Sought(i64),
    /// Forwarding; the next offset expected.
    Active(i64),
}

struct Slot {
    position: Position,
    tx: UnboundedSender<OwnedMessage>,
    flow: Arc<Flow>,
    stop: CancellationToken,
}

struct Loop<C: Database> {
    shared: Arc<Shared<C>>,
    consumer: Arc<Consumer>,
    slots: HashMap<String, HashMap<i32, Slot>>,
    workers: JoinSet<()>,
    stop: CancellationToken,
}

impl<C: Database> Loop<C> {
    async fn run(&mut self, mut events: UnboundedReceiver<RebalanceEvent>) -> Result<(), Error> {
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
                }
            }
            RebalanceEvent::Assigned(partitions) => {
                let positions = self.load_positions(&partitions).await;
                for (topic, partition) in partitions {
                    let stored = positions.get(&(topic.clone(), partition)).copied();
                    self.open(topic, partition, stored);
                }
            }
        }
    }

    /// Stored positions of the assigned partitions, retried until the database answers (or
    /// shutdown): starting without them could skip messages.
    async fn load_positions(&self, partitions: &[TopicPartition]) -> HashMap<TopicPartition, i64> {
        let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
        for (t, p) in partitions {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let o = &self.shared.options;
        let mut delay = o.backoff_base;
        'retry: loop {
            let mut out = HashMap::new();
            let mut failure = None;
            match self.shared.pool.get().await {
                Ok(mut conn) => {
                    for (topic, parts) in &by_topic {
                        match conn.load_positions(&o.group, topic, parts).await {
                            Ok(found) => out.extend(found.into_iter().map(|(p, n)| ((topic.to_string(), p), n))),
                            Err(e) => {
                                failure = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(e) => failure = Some(e.to_string()),
            }
            let Some(error) = failure else {
                return out;
            };
            tracing::warn!(%error, "inbox: cannot load stored positions; retrying");
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return HashMap::new(),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(o.backoff_max);
            continue 'retry;
        }
    }

    fn open(&mut self, topic: String, partition: i32, stored: Option<i64>) {
        if let Some(old) = self.slots.get_mut(&topic).and_then(|m| m.remove(&partition)) {
            close(old);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let flow = Arc::new(Flow::new(self.consumer.clone(), &topic, partition, self.shared.options.batch_size));
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
        self.slots
            .entry(topic)
            .or_default()
            .insert(partition, Slot { position: Position::Start(stored), tx, flow, stop });
    }

    /// Hands a message to its partition's task, after putting the partition at its stored
    /// position: the first message of an assignment decides whether to seek there (Kafka's
    /// committed offset is only a hint, and may be behind or, after a restore, ahead).
    fn route(&mut self, msg: OwnedMessage) {
        let Some(slot) = self.slots.get_mut(msg.topic()).and_then(|m| m.get_mut(&msg.partition())) else {
            tracing::trace!(
                topic = msg.topic(),
                partition = msg.partition(),
                "inbox: message of an unassigned partition dropped"
            );
            return;
        };
        let offset = msg.offset();
        match slot.position {
            Position::Start(Some(stored)) if offset != stored => {
                // seek() bumps the partition's fetch version at once: nothing read before it
                // is returned after it, so the next message of this partition is from `stored`.
                match self.consumer.seek(msg.topic(), msg.partition(), Offset::Offset(stored), Duration::from_secs(10))
                {
                    Ok(()) => {
                        tracing::debug!(
                            topic = msg.topic(),
                            partition = msg.partition(),
                            from = offset,
                            to = stored,
                            "inbox: resuming from the stored position"
                        );
                        slot.position = Position::Sought(stored);
                    }
                    // Stay in Start: the next message tries again; nothing below `stored` is
                    // ever forwarded, and nothing is committed past a message not handled.
                    Err(e) => tracing::warn!(error = %e, topic = msg.topic(), partition = msg.partition(),
                        "inbox: cannot seek to the stored position"),
                }
                return;
            }
            Position::Sought(stored) if offset < stored => {
                // Nothing read before the seek comes back after it, so a lower offset means
                // librdkafka found `stored` out of range and reset: the log no longer reaches
                // the stored position (topic deleted and recreated, or a new cluster). Skipping
                // would lose the new log's messages; handle them, dedup by message id keeps
                // anything already handled from taking effect twice.
                tracing::warn!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    stored,
                    offset,
                    "inbox: the partition's log restarts below the stored position (topic recreated?); \
                     handling from this offset. Delete the group's rows for this topic from inbox_offsets \
                     once the new log is past the old position."
                );
            }
            Position::Active(next) if offset < next => return,
            Position::Start(_) | Position::Sought(_) | Position::Active(_) => {}
        }
        slot.position = Position::Active(offset + 1);
        if slot.tx.send(msg).is_ok() {
            slot.flow.pushed();
        }
    }

    /// Stops the partitions, bounded by `shutdown_timeout`, commits the offset hints and
    /// closes the consumer.
    async fn finish(mut self) {
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

fn close(slot: Slot) {
    slot.stop.cancel();
    slot.flow.close();
}

fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}
