//! What every task of one inbox shares: the pool, the handlers, the options, the consumer's type.
//! A leaf of the runtime: the consumer loop, the partition tasks, pruning, replay and the gauges
//! all read it, and it names none of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, OnceLock};

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
    /// Dead letters whose replays lost their database connection, and how often in a row.
    pub replays_lost: LostReplays,
}

/// Per dead letter, the replays in a row that lost their database connection (in this process):
/// a replay that keeps losing it is recorded as failed after `max_attempts` (see the
/// `dead_letters` module).
#[derive(Default)]
pub(crate) struct LostReplays(Mutex<HashMap<i64, u32>>);

impl LostReplays {
    /// One more lost replay of `dead_letter`; returns how many in a row.
    pub fn count(&self, dead_letter: i64) -> u32 {
        let mut lost = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = lost.entry(dead_letter).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// The replay of `dead_letter` ended (handled or recorded).
    pub fn clear(&self, dead_letter: i64) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&dead_letter);
    }
}
