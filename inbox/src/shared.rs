//! What every task of one inbox shares: the pool, the handlers, the options, the consumer's type.
//! A leaf of the runtime: the consumer loop, the partition tasks, pruning, replay and the gauges
//! all read it, and it names none of them.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;

use outbox::db::{ConnPool, Database};
use rdkafka::consumer::StreamConsumer;

use crate::config::InboxConfig;
use crate::health::InboxHealth;
use crate::rebalance::InboxContext;
use crate::registry::Registry;

pub(crate) type Consumer = StreamConsumer<InboxContext>;

/// What every task of one inbox shares.
pub(crate) struct Shared<C: Database> {
    pub pool: ConnPool<C>,
    pub registry: Registry<C>,
    pub options: InboxConfig,
    /// The Kafka cluster id, set once when `run` starts (`None`: the cluster reported none).
    pub cluster_id: OnceLock<Option<String>>,
    /// The most bytes one partition has held buffered (see [`BufferWatermark`](crate::inbox::BufferWatermark)).
    pub high_water: Arc<AtomicUsize>,
    /// What [`Inbox::health`] reports.
    pub health: InboxHealth,
    /// Signalled after a batch (or a replay) whose handlers published commits.
    pub wakeup: outbox::Wakeup,
}
