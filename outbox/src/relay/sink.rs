//! The seam between the relay's machinery (lease, claim, the pipeline window, deadlines,
//! shutdown, mark) and where the messages go. Today's one sink is Kafka (`kafka`); another (HTTP
//! endpoints, say) implements [`Sink`] and [`Delivery`] beside it and touches nothing else.
//!
//! The machinery hands a sink the claimed rows of a batch ([`Sink::send`]) and gets back a
//! [`Delivery`]: a handle it awaits for acknowledgements under its own deadline (the delivery
//! timeout, measured from the send), purges on a timeout or at shutdown, and turns into per-row
//! [`Reports`] once every row has an answer. What a row's answer means for the database (mark
//! sent, retry with backoff, park, hold its key, release held rows) is decided by the machinery
//! from those reports, never by the sink.
//!
//! What a sink must guarantee, or the relay's promises break:
//!
//! - **An acknowledgement is durable.** [`Report::Sent`] means the destination has the message
//!   and will not lose it: the row is deleted (or marked sent) on the strength of it. Anything
//!   short of that ("queued", "probably") is not a report at all: the row stays maybe-sent and is
//!   sent again later, so the destination must tolerate duplicates (ids are stable).
//! - **An error report leaves a per-key prefix.** When a row fails, no later row of its key
//!   (in this batch or in one pipelined behind it) may still be acknowledged after it. The first
//!   failed report therefore purges everything the sink has in flight and sets `purged` (which
//!   stops the relay's claims until the window is marked), unless the sink can itself prove that
//!   nothing behind the failed row was delivered. Kafka's idempotent producer keeps a prefix of
//!   each partition for the purged messages.
//! - **Purge fails everything in flight, at once.** [`Delivery::purge`] concerns the whole sink,
//!   not only the batch it is called on: afterwards every outstanding row of every batch gets an
//!   answer promptly (purged rows are neither sent nor failed: maybe sent, left for a later
//!   claim), so [`Delivery::acked`] returns.
//! - **Synchronous rejections hold their key.** A row refused before it was handed over (too
//!   large, say) is reported failed, and its key goes into [`Held`] so the key's later rows of the
//!   window are not sent ahead of its retry; rows [`Held::skips`] are not sent at all.
//! - **Fatal is the sink's, not the row's.** When the sink itself can not go on (Kafka's fatal
//!   idempotence error), [`Reports::fatal`] says so: those rows are left as they were, the round
//!   fails and [`Sink::recover`] rebuilds the sink before the next one.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::db::Claimed;
use crate::{Error, Result};

mod kafka;

pub(super) use kafka::Kafka;

/// Where the relay sends its messages. A trait object (`Box<dyn Sink>`): the public
/// [`Relay`](super::Relay) keeps its one generic parameter, and a sink is called once per batch,
/// so the dynamic call costs nothing next to the network round trip.
pub(crate) trait Sink: Send + Sync {
    /// Hands every row of a batch over without awaiting any acknowledgement, skipping the rows
    /// `held` [skips](Held::skips) and [holding](Held::hold) the key of each row refused on the
    /// spot. A failed report must purge everything in flight and set `purged` (module docs).
    fn send<'a>(
        &'a self,
        rows: &'a [Claimed],
        source: &'a str,
        held: &'a mut Held,
        purged: &'a Arc<AtomicBool>,
    ) -> BoxFuture<'a, Box<dyn Delivery>>;

    /// How long after the send the relay stops waiting for a batch's acknowledgements and fails
    /// what is still in flight (`None`: no deadline).
    fn delivery_timeout(&self) -> Option<Duration>;

    /// Checks at start-up that the destination answers, until `deadline`; returns `Ok(false)`
    /// when `stop` fired first. Runs beside the first rounds.
    fn probe(&self, deadline: tokio::time::Instant, stop: CancellationToken) -> BoxFuture<'static, Result<bool>>;

    /// After a batch reported [`Reports::fatal`]: rebuilds the sink, and returns the error that
    /// fails the round (the loop backs off, the window is dropped and sent again).
    fn recover(&mut self) -> Error;
}

/// A batch handed to a sink whose acknowledgements are still to come.
pub(crate) trait Delivery: Send {
    /// Waits until every row sent has its answer. Cancel-safe: dropping the future loses
    /// nothing, a later call goes on waiting.
    fn acked(&mut self) -> BoxFuture<'_, ()>;

    /// Fails everything the sink holds at once, queued and in flight, of every batch (module
    /// docs). `wait`: block until the purge is done (at shutdown) rather than return at once.
    fn purge(&self, wait: bool);

    /// The answers, once [`acked`](Self::acked) returned. `rows` is the batch as sent;
    /// `purged_timed_out`: the batch's deadline passed, so a purged row is reported failed
    /// (timed out) rather than left maybe-sent.
    fn reports(self: Box<Self>, rows: &[Claimed], purged_timed_out: bool) -> Reports;
}

/// What a sink answered for a batch.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// (index in the batch's rows, answer). A row not listed is maybe sent: it stays as it was
    /// and a later claim sends it again.
    pub rows: Vec<(usize, Report)>,
    /// The sink hit an error of its own and must be [recovered](Sink::recover).
    pub fatal: bool,
}

/// One row's answer.
#[derive(Debug)]
pub(crate) enum Report {
    /// Durably accepted: safe to mark.
    Sent,
    /// Failed: retried with backoff, or parked at once when `permanent` (retrying cannot help:
    /// the record itself is refused).
    Failed { error: String, permanent: bool },
}

/// Keys refused on the spot in the current window: their later rows are not sent.
#[derive(Debug, Default)]
pub(crate) struct Held(HashSet<(String, String)>);

impl Held {
    /// Whether `row` must not be sent: held by the mark (blocked), or its key was refused
    /// earlier in the window.
    pub fn skips(&self, row: &Claimed) -> bool {
        row.blocked || row.key.as_deref().is_some_and(|key| self.0.contains(&(row.topic.clone(), key.to_owned())))
    }

    /// `row` was refused before it was handed over: hold its key for the rest of the window.
    pub fn hold(&mut self, row: &Claimed) {
        if let Some(key) = row.key.as_deref() {
            self.0.insert((row.topic.clone(), key.to_owned()));
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}
