//! Handling the messages of one partition in transactions: a whole batch in one, and when
//! anything in it fails, each message in its own, so only the failing message is retried or
//! dead-lettered.
//!
//! Every message's dedup row is inserted right before its own handler runs, and after every
//! handler the inbox checks that the transaction is still the one it opened and still usable
//! (see `same_transaction` in the `store` module). A handler that
//! committed or rolled it back (through diesel or with raw SQL) is charged with
//! `handler_ended_transaction`, one that left it aborted with `handler_aborted_transaction`;
//! in a batch, that message alone is charged and the batch splits, so batch mode and
//! one-message mode end in the same state.
//!
//! Errors fall in two classes. A handler error belongs to its message: it is retried with
//! backoff up to `max_attempts` and then dead-lettered. An infrastructure error (pool, BEGIN,
//! our own statements, COMMIT) says nothing about the message: the same step is retried with
//! backoff for as long as it takes, and never dead-letters anything.
//!
//! Here: the `Processor`, what both modes share (the failure types, the metrics and offset
//! hint after a commit, the pauses, the rollback). Batch mode is in `batch`, one-message mode
//! in `one`, the handler call and the reading of its errors in `call`, the rows written for a
//! message in `rows`.

mod batch;
mod call;
mod one;
mod rows;

pub(crate) use call::{connection_lost, error_chain, panic_message, server_rejected};

use std::time::Duration;

use diesel_async::TransactionManager;
use outbox::Database;
use rdkafka::Offset;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::classify::{Plan, classify};
use crate::flow::Flow;
use crate::metrics::Tally;
use crate::shared::{Consumer, Shared};

/// One Kafka message and what to do with it.
pub(crate) struct Item<C: Database> {
    msg: OwnedMessage,
    plan: Plan<C>,
}

/// Whether the worker may go on with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Done,
    /// Stopped (shutdown or partition revoked) before the batch was finished; the unfinished
    /// messages are not committed and will be read again by whoever owns the partition next.
    Interrupted,
}

/// A failed handler call.
#[derive(Debug, Clone)]
struct Failure {
    transient: bool,
    reason: &'static str,
    /// The dead-letter reason when a transient failure has used up its attempts.
    exhausted: &'static str,
    error: String,
    /// The handler ended the inbox transaction itself, so its dedup row may be committed
    /// already: write the dead letter even though the id is recorded.
    ended_transaction: bool,
    /// The handler was abandoned mid-call: its connection is dropped, not rolled back and reused.
    abandoned: bool,
}

impl Failure {
    fn new(transient: bool, reason: &'static str, error: impl Into<String>) -> Self {
        Failure {
            transient,
            reason,
            exhausted: "retries_exhausted",
            error: error.into(),
            ended_transaction: false,
            abandoned: false,
        }
    }

    fn ended_transaction(how: &str) -> Self {
        Failure {
            ended_transaction: true,
            ..Failure::new(
                false,
                "handler_ended_transaction",
                format!(
                    "the handler ended the inbox transaction itself ({how}); commit and rollback belong to the \
                     inbox (nested `conn.transaction(..)` calls are savepoints and are fine)"
                ),
            )
        }
    }

    fn aborted_transaction(e: &diesel::result::Error) -> Self {
        Failure {
            exhausted: "handler_aborted_transaction",
            ..Failure::new(
                true,
                "handler_aborted_transaction",
                format!(
                    "the handler returned Ok but left the inbox transaction aborted (a failed statement was \
                     ignored): {e}"
                ),
            )
        }
    }
}

enum StepError {
    Handler(Failure),
    Infra(String),
}

fn infra(e: impl std::fmt::Display) -> StepError {
    StepError::Infra(e.to_string())
}

/// Processes the batches of one partition.
pub(crate) struct Processor<'a, C: Database> {
    pub shared: &'a Shared<C>,
    pub consumer: &'a Consumer,
    pub topic: &'a str,
    pub partition: i32,
    pub stop: &'a CancellationToken,
    pub flow: &'a Flow,
}

impl<C: Database> Processor<'_, C> {
    pub(crate) async fn process(&self, batch: Vec<OwnedMessage>) -> Progress {
        let shared = self.shared;
        let mut items: Vec<Item<C>> = batch
            .into_iter()
            .map(|msg| Item { plan: classify(&shared.registry, &shared.options, &msg), msg })
            .collect();
        let mut failed: Option<(usize, Failure)> = None;
        if items.len() > 1 {
            match self.try_batch(&mut items).await {
                Ok(()) => return Progress::Done,
                Err((index, failure)) => {
                    tracing::debug!(
                        topic = self.topic,
                        partition = self.partition,
                        size = items.len(),
                        "inbox: batch failed; handling its messages one transaction each"
                    );
                    failed = index.zip(failure);
                }
            }
        }
        for (index, item) in items.iter_mut().enumerate() {
            let prior = match &failed {
                Some((i, f)) if *i == index => Some(f.clone()),
                _ => None,
            };
            if self.process_one(item, prior).await == Progress::Interrupted {
                return Progress::Interrupted;
            }
        }
        Progress::Done
    }

    /// After a commit: metrics, and the Kafka offset hint. Storing fails for a partition no
    /// longer assigned to this consumer, which is exactly when it must not be stored.
    fn committed(&self, next_offset: i64, tally: &Tally) {
        // The relays claim what this transaction's handlers published now, not after the batch.
        self.shared.wakeup.signal_stored();
        self.flow.replaced();
        self.shared.health.cleared(self.topic, self.partition);
        tally.report(&self.shared.options.group, self.topic);
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(next_offset)).is_ok()
            && let Err(e) = self.consumer.store_offsets(&tpl)
        {
            tracing::debug!(error = %e, topic = self.topic, partition = self.partition, "inbox: offset hint not stored");
        }
    }

    /// For [`crate::InboxHealth`]: the partition is retrying this message.
    fn retrying(&self, item: &Item<C>, error: &str) {
        self.shared.health.failed(self.topic, self.partition, item.msg.offset(), error);
    }

    fn delays(&self) -> impl Iterator<Item = Duration> + use<C> {
        self.shared.options.retry.delays()
    }

    /// Waits `delay`, or returns false at once when the worker is told to stop.
    async fn pause(&self, delay: Option<Duration>) -> bool {
        let delay = delay.unwrap_or(self.shared.options.retry.max);
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

pub(crate) fn transaction_depth<C: Database>(conn: &mut C) -> Option<u32> {
    outbox::db::transaction_depth(conn).ok().flatten()
}

/// Rolls back every open level (the handler may have left savepoints behind). A failure here
/// leaves the transaction manager broken, and the pool then discards the connection.
pub(crate) async fn rollback_all<C: Database>(conn: &mut C) {
    while transaction_depth(conn).is_some() {
        if let Err(e) = C::TransactionManager::rollback_transaction(conn).await {
            tracing::debug!(error = %e, "inbox: rollback failed; the connection will be discarded");
            return;
        }
    }
}
