//! [`Inbox`] and its consumer loop: one task polls Kafka, serves rebalances, puts each
//! partition back at its stored position and hands messages to the partition tasks.
//!
//! Here: the [`Inbox`] handle and the loop's start-up and state. The loop's events (messages,
//! rebalances, shutdown) are in `consumer_loop`, where each partition starts and the checks of
//! its stored position in `position`.

mod consumer_loop;
mod position;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use outbox::db::{ConnPool, Database};
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::config::InboxConfig;
use crate::error::kafka_error;
use crate::flow::Flow;
use crate::health::{InboxHealth, InboxState};
use crate::rebalance::InboxContext;
use crate::registry::Registry;
use crate::shared::{Consumer, Shared};

use position::Position;

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
            replays_lost: Default::default(),
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
        // Handlers that publish follow-ups (`cx.publish`) write the outbox's tables, which
        // `inbox::migrate` does not create; a consumer that never publishes needs none, so this is
        // said at start, not refused.
        if let Ok(mut conn) = shared.pool.get().await {
            if let Ok(missing) = outbox::MIGRATIONS.missing(&mut *conn).await
                && !missing.is_empty()
            {
                tracing::warn!(
                    group = %shared.options.group,
                    missing = ?missing,
                    "inbox: the outbox's tables are missing or behind (run outbox::migrate or `outbox migrate`): \
                     handlers that publish with cx.publish will fail"
                );
            }
            conn.release();
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

fn close(slot: Slot) {
    slot.stop.cancel();
    slot.flow.close();
}
