//! [`Inbox`] and its consumer loop: one task polls Kafka, serves rebalances, puts each
//! partition back at its stored position and hands messages to the partition tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use outbox::db::{ConnPool, Database};
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::config::InboxConfig;
use crate::error::kafka_error;
use crate::flow::Flow;
use crate::health::{InboxHealth, InboxState};
use crate::partition::PartitionWorker;
use crate::rebalance::{InboxContext, RebalanceEvent, TopicPartition};
use crate::registry::Registry;
use crate::shared::{Consumer, Shared};
use crate::store::{StoredPosition, store};

/// The most bytes (keys, payloads, headers) one partition of an [`Inbox`] has held in its
/// buffer and its batch in hand since the inbox was built: at most `max_buffered_bytes`
/// unless a single record is larger than that (see
/// [`InboxBuilder::max_buffered_bytes`](crate::InboxBuilder::max_buffered_bytes)).
/// A cheap handle; take it before [`Inbox::run`] consumes the inbox.
#[derive(Debug, Clone)]
pub struct BufferWatermark(Arc<AtomicUsize>);

impl BufferWatermark {
    /// The high-water mark, in bytes.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
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
        options: InboxConfig,
        wakeup: outbox::Wakeup,
    ) -> Self {
        let health = InboxHealth::new(&options.group);
        let shared = Shared {
            pool,
            registry,
            options,
            cluster_id: OnceLock::new(),
            high_water: Arc::new(AtomicUsize::new(0)),
            health,
            wakeup,
        };
        Self { shared: Arc::new(shared), consumer_config }
    }

    /// A handle on the bytes buffered per partition (its high-water mark), for tests and
    /// diagnostics.
    pub fn buffer_watermark(&self) -> BufferWatermark {
        BufferWatermark(self.shared.high_water.clone())
    }

    /// A handle that replays this group's dead letters with this inbox's handlers, now (see
    /// [`Replayer`](crate::Replayer)). Take it before [`run`](Self::run) consumes the inbox; it
    /// works whether or not the inbox runs. Replays an operator requests with
    /// `outbox dead-letters replay` are picked up by [`run`](Self::run) without it (see
    /// [`InboxBuilder::replay_poll_interval`](crate::InboxBuilder::replay_poll_interval)).
    pub fn replayer(&self) -> crate::Replayer<C> {
        crate::Replayer::new(self.shared.clone())
    }

    /// A cheap, cloneable handle on this inbox's health (running, stuck partitions), for a
    /// readiness endpoint; take it before [`run`](Self::run) consumes the inbox.
    pub fn health(&self) -> InboxHealth {
        self.shared.health.clone()
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
    /// Start-up fails with an error instead of retrying: a schema that is missing or behind
    /// (`ErrorKind::Schema`, at once), a database that cannot be used, brokers refusing the TLS
    /// handshake or the credentials (librdkafka's reason is logged in the first round), brokers none of which
    /// answered, or a subscribed topic that does not exist, each within
    /// [`startup_timeout`](crate::InboxBuilder::startup_timeout).
    ///
    /// After a healthy start, database outages do not end the loop: the affected partitions
    /// retry with backoff. It returns an error only when the Kafka consumer cannot be created
    /// or subscribed, or librdkafka reports a fatal error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let health = self.shared.health.clone();
        let result = self.run_inner(shutdown).await;
        health.set_state(InboxState::Stopped);
        result
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = self.shared;
        let deadline = tokio::time::Instant::now() + shared.options.startup_timeout;
        if !outbox::startup::wait_for_schema(&shared.pool, &crate::MIGRATIONS, deadline, &shutdown).await? {
            return Ok(());
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let context = InboxContext { events: events_tx, group: shared.options.group.clone() };
        let consumer: Consumer = self
            .consumer_config
            .create_with_context(context)
            .map_err(|e| kafka_error("kafka: cannot create the inbox consumer", e))?;
        let consumer = Arc::new(consumer);
        // What stored positions are positions in (see `Loop::on_rebalance`).
        let probe = consumer.clone();
        let cluster_id = tokio::task::spawn_blocking(move || probe.client().fetch_cluster_id(Duration::from_secs(10)))
            .await
            .unwrap_or(None);
        if cluster_id.is_none() {
            tracing::warn!(
                "inbox: the Kafka cluster reported no cluster id; stored positions are checked by record only"
            );
        }
        let _ = shared.cluster_id.set(cluster_id);
        let topics = shared.registry.topics();
        consumer.subscribe(&topics).map_err(|e| kafka_error(format!("kafka: cannot subscribe to {topics:?}"), e))?;
        let span = tracing::info_span!("inbox", group = %shared.options.group);
        // The brokers and topics are probed beside the loop (an inbox started while a topic is
        // being created consumes as soon as it exists); a probe that fails stops the inbox like
        // a shutdown would, and `run` returns its error.
        let stop = shutdown.child_token();
        let probe_stop = stop.clone();
        let startup_failed: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
        let probe = {
            let (config, stop, failed) = (self.consumer_config.clone(), stop.clone(), startup_failed.clone());
            let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
            tokio::spawn(async move {
                let kind = outbox::startup::ClientKind::Consumer;
                if let Err(e) = outbox::startup::wait_for_brokers(&config, kind, &topics, deadline, &stop).await {
                    tracing::error!(error = %e, "inbox start-up failed");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop.cancel();
                }
            })
        };
        let result = async move {
            tracing::info!(?topics, "inbox: started");
            shared.health.set_state(InboxState::Running);
            let mut background = JoinSet::new();
            background.spawn(crate::prune::run(shared.clone(), stop.clone()));
            background.spawn(crate::dead_letters::run_requested(shared.clone(), stop.clone()));
            background.spawn(crate::gauges::dead_letter_depth(shared.clone(), stop.clone()));
            let mut lp = Loop { shared, consumer, slots: HashMap::new(), workers: JoinSet::new(), stop };
            let result = lp.run(events).await;
            lp.finish().await;
            background.abort_all();
            while background.join_next().await.is_some() {}
            tracing::info!("inbox: stopped");
            result
        }
        .instrument(span)
        .await;
        probe_stop.cancel(); // ends the probe's thread too
        probe.abort();
        match startup_failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => result,
        }
    }
}

/// Where a newly assigned partition stands relative to its stored position.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// No message forwarded yet in this assignment (or one was left for later): where to start.
    Start(Start),
    /// Sought to the record before the stored position, to check it is the record stored there.
    Verifying { next: i64, fingerprint: i64 },
    /// Sought to the stored position; everything librdkafka returns from now on is from there.
    Sought(i64),
    /// Sought to the beginning of the log: whatever comes next is its first message.
    Beginning,
    /// Forwarding; the next offset expected.
    Active(i64),
}

/// Where a partition starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Where the group's committed Kafka offset put the consumer (`trust_committed_offsets`).
    Committed,
    /// At the beginning of the log (no stored position, or the log changed).
    Beginning,
    /// At a stored position; with the fingerprint of the record before it, when known.
    Stored { next: i64, fingerprint: Option<i64> },
}

/// A partition whose initial seek librdkafka refused (and no message arrived since).
fn is_deferred(position: Position) -> bool {
    matches!(position, Position::Start(Start::Beginning | Start::Stored { .. }))
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

    /// Where a newly assigned partition starts, and whether its stored position must be
    /// replaced because it belongs to another log.
    fn start(&self, topic: &str, partition: i32, stored: Option<&StoredPosition>) -> (Start, bool) {
        let Some(stored) = stored else {
            // No stored position (a new group, or a restored database): Kafka's committed
            // offset may be ahead of what this database holds, so start at the beginning and
            // let dedup absorb what was handled already — unless told to trust it.
            let start = if self.shared.options.trust_committed_offsets { Start::Committed } else { Start::Beginning };
            return (start, false);
        };
        let current = self.shared.cluster_id.get().and_then(Option::as_deref);
        if let (Some(old), Some(new)) = (stored.cluster_id.as_deref(), current)
            && old != new
        {
            tracing::warn!(
                topic,
                partition,
                stored = stored.next_offset,
                old_cluster = old,
                new_cluster = new,
                "inbox: the stored position was written for another Kafka cluster; handling this partition \
                 from the beginning of its log (dedup absorbs what was handled already)"
            );
            return (Start::Beginning, true);
        }
        (Start::Stored { next: stored.next_offset, fingerprint: stored.fingerprint }, false)
    }

    /// Stored positions of the assigned partitions, retried until the database answers (or
    /// shutdown): starting without them could skip messages.
    async fn load_positions(&self, partitions: &[TopicPartition]) -> HashMap<TopicPartition, StoredPosition> {
        let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
        for (t, p) in partitions {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let o = &self.shared.options;
        let mut delays = o.retry.delays();
        'retry: loop {
            let mut out = HashMap::new();
            let mut failure = None;
            match self.shared.pool.get().await {
                Ok(mut conn) => {
                    for (topic, parts) in &by_topic {
                        match store(&mut *conn).load_positions(&o.group, topic, parts).await {
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
                _ = tokio::time::sleep(delays.next().unwrap_or(o.retry.max)) => {}
            }
            continue 'retry;
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

    /// Seeks a newly assigned partition to where it starts right away, so it gets there even
    /// when no message would arrive where Kafka's committed offset put it (a restored database
    /// behind that offset, and no new traffic). When librdkafka refuses the seek this early,
    /// the first message of the partition does it (see `route`).
    fn initial_seek(&self, topic: &str, partition: i32, start: Start) -> Position {
        let (to, then) = match start {
            Start::Committed => return Position::Start(start),
            Start::Beginning => (Offset::Beginning, Position::Beginning),
            Start::Stored { next, fingerprint: Some(fingerprint) } if next > 0 => {
                (Offset::Offset(next - 1), Position::Verifying { next, fingerprint })
            }
            Start::Stored { next, .. } => (Offset::Offset(next), Position::Sought(next)),
        };
        match self.consumer.seek(topic, partition, to, Duration::from_secs(10)) {
            Ok(()) => then,
            Err(e) => {
                tracing::debug!(error = %e, topic, partition, "inbox: cannot seek yet; seeking at the first message");
                Position::Start(start)
            }
        }
    }

    fn has_deferred_seeks(&self) -> bool {
        self.slots.values().flat_map(|m| m.values()).any(|slot| is_deferred(slot.position))
    }

    fn retry_seeks(&mut self) {
        let deferred: Vec<(String, i32, Start)> = self
            .slots
            .iter()
            .flat_map(|(topic, m)| m.iter().map(move |(p, slot)| (topic, *p, slot.position)))
            .filter_map(|(topic, p, position)| match position {
                Position::Start(start) if is_deferred(position) => Some((topic.clone(), p, start)),
                _ => None,
            })
            .collect();
        for (topic, partition, start) in deferred {
            let position = self.initial_seek(&topic, partition, start);
            if let Some(slot) = self.slots.get_mut(&topic).and_then(|m| m.get_mut(&partition))
                && matches!(slot.position, Position::Start(_))
            {
                slot.position = position;
            }
        }
    }

    /// Hands a message to its partition's task, after putting the partition where it starts:
    /// the first message of an assignment decides whether to seek (Kafka's committed offset is
    /// only a hint, and may be behind or, after a restore, ahead). A stored position is checked
    /// against the log first: the record before it must be the one stored with it, or the log
    /// is another one (topic recreated, new cluster) and the partition starts at its beginning.
    fn route(&mut self, msg: OwnedMessage) {
        let (topic, partition, offset) = (msg.topic().to_owned(), msg.partition(), msg.offset());
        let Some(slot) = self.slots.get_mut(&topic).and_then(|m| m.get_mut(&partition)) else {
            tracing::trace!(topic, partition, "inbox: message of an unassigned partition dropped");
            return;
        };
        let consumer = &self.consumer;
        let seek = |to: Offset| match consumer.seek(&topic, partition, to, Duration::from_secs(10)) {
            // seek() bumps the partition's fetch version at once: nothing read before it is
            // returned after it.
            Ok(()) => true,
            // Stay put: the next message tries again; nothing is forwarded meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, topic, partition, "inbox: cannot seek");
                false
            }
        };
        match slot.position {
            Position::Start(_) if slot.flow.is_paused() => return, // read again after resume
            Position::Start(Start::Committed) => {}
            Position::Start(Start::Beginning) => {
                if seek(Offset::Beginning) {
                    slot.position = Position::Beginning;
                }
                return;
            }
            Position::Start(Start::Stored { next, fingerprint: Some(fingerprint) }) if next > 0 => {
                if offset != next - 1 {
                    if seek(Offset::Offset(next - 1)) {
                        slot.position = Position::Verifying { next, fingerprint };
                    }
                    return;
                }
                slot.position = Position::Verifying { next, fingerprint };
                return self.route(msg);
            }
            Position::Start(Start::Stored { next, .. }) if offset != next => {
                if seek(Offset::Offset(next)) {
                    tracing::debug!(
                        topic,
                        partition,
                        from = offset,
                        to = next,
                        "inbox: resuming from the stored position"
                    );
                    slot.position = Position::Sought(next);
                }
                return;
            }
            Position::Verifying { next, fingerprint } if offset == next - 1 => {
                let found = crate::raw_headers::fingerprint(&msg);
                if found == fingerprint {
                    slot.position = Position::Active(next); // handled already: the position follows it
                } else {
                    tracing::warn!(
                        topic,
                        partition,
                        stored = next,
                        old_fingerprint = format_args!("{fingerprint:016x}"),
                        new_fingerprint = format_args!("{found:016x}"),
                        cluster = self.shared.cluster_id.get().and_then(Option::as_deref).unwrap_or("unknown"),
                        "inbox: the record before the stored position is not the one handled there: this is \
                         another log (topic recreated, or another cluster); handling the partition from the \
                         beginning of its log (dedup absorbs what was handled already)"
                    );
                    slot.flow.replace_position();
                    if seek(Offset::Beginning) {
                        slot.position = Position::Beginning;
                    } else {
                        slot.position = Position::Start(Start::Beginning);
                    }
                }
                return;
            }
            Position::Verifying { next, .. } | Position::Sought(next) if offset < next => {
                // Nothing read before the seek comes back after it, so a lower offset means
                // librdkafka found the offset out of range and reset: the log no longer reaches
                // the stored position (topic deleted and recreated, or a new cluster). Skipping
                // would lose the new log's messages; handle them, dedup by message id keeps
                // anything already handled from taking effect twice, and the new log's
                // positions replace the old one.
                tracing::warn!(
                    topic,
                    partition,
                    stored = next,
                    offset,
                    "inbox: the partition's log restarts below the stored position (topic recreated?); \
                     handling from this offset"
                );
                slot.flow.replace_position();
            }
            Position::Active(next) if offset < next => return,
            Position::Start(_)
            | Position::Verifying { .. }
            | Position::Sought(_)
            | Position::Beginning
            | Position::Active(_) => {}
        }
        if !slot.flow.admit(offset, crate::raw_headers::size(&msg)) {
            // Over the partition's byte budget: drop it and read it again from here once the
            // partition has drained (it is paused now).
            slot.position = Position::Start(Start::Stored { next: offset, fingerprint: None });
            return;
        }
        slot.position = Position::Active(offset + 1);
        let _ = slot.tx.send(msg);
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
