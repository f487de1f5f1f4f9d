//! The in-process wake-up: relays running in this process learn of new events without polling,
//! at no cost to the writer's transaction (no NOTIFY, no extra statement).
//!
//! A [`Wakeup`] is the line between the writers and the relays of one database. Two signals go
//! along it. *Committed* is sent by [`Wakeup::transaction`] (and [`crate::transaction`]) after
//! the COMMIT that stored events: the rows are visible, so a relay claims them at once.
//! *Published* is sent by `publish` when it runs inside any other transaction (e.g. diesel's
//! own `transaction`), before the caller commits: a relay that reacts at once may not see the
//! rows yet, so it re-claims a few times over the next ~130 ms (see [`BURST`]) and otherwise
//! falls back to polling.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Notify;

/// The wake-up line between the writers and the relays of one database, in one process.
///
/// A relay listens to one `Wakeup` ([`RelayBuilder::wakeup`](crate::relay::RelayBuilder::wakeup),
/// [`Relay::wakeup`](crate::relay::Relay::wakeup)); a commit through [`Wakeup::transaction`] wakes
/// the relays listening to that handle and no other. Cloning gives the same line.
///
/// **Default: [`Wakeup::shared`]**, one line for the whole process, used by
/// [`outbox::transaction`](crate::transaction), by a `publish` outside any
/// `transaction`, and by every relay not given a handle. With one database per process
/// (the common case) nothing needs configuring. A process with relays on several databases
/// gives each relay its own handle and commits through that handle, so a commit to one database
/// wakes only that database's relay (the others keep their poll interval, and claim nothing in
/// vain):
///
/// ```no_run
/// # use serde::Serialize; use schemars::JsonSchema;
/// # #[derive(Serialize, JsonSchema, outbox::Event)] #[event(topic = "orders")]
/// # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid }
/// # async fn run(orders: outbox::Pool, billing: outbox::Pool, orders_conn: &mut diesel_async::AsyncPgConnection)
/// #     -> outbox::Result<()> {
/// use outbox::{KafkaConfig, Wakeup, relay::Relay};
/// let orders_relay = Relay::builder(orders, KafkaConfig::new("kafka:9092")).wakeup(Wakeup::new()).build()?;
/// let billing_relay = Relay::builder(billing, KafkaConfig::new("kafka:9092")).wakeup(Wakeup::new()).build()?;
/// let orders_wakeup = orders_relay.wakeup();
/// // ... spawn both relays; then, on a connection to the orders database:
/// orders_wakeup
///     .transaction(orders_conn, async |tx| {
///         outbox::publish(tx, &OrderPlaced { order_id: uuid::Uuid::now_v7() }).await?;
///         Ok::<_, outbox::Error>(())
///     })
///     .await
/// # }
/// ```
///
/// A `publish` inside a plain diesel transaction signals the handle of the
/// [`Wakeup::transaction`] (or [`Wakeup::signal_after`]) it runs in, if any, and
/// [`Wakeup::shared`] otherwise. **So a relay given a line of its own hears only commits made
/// through that handle**: give the same handle to the inbox whose handlers publish
/// (`InboxBuilder::wakeup`); events stored by `publish` in any other transaction (your own diesel
/// `transaction`) reach it at its poll interval (100 ms by default), not at once. Nothing is lost
/// either way; only the latency differs.
#[derive(Clone)]
pub struct Wakeup(Arc<Line>);

/// [`Wakeup::shared`]: a handle made by `Default` (e.g. `..Default::default()` in a struct of
/// yours) is the process's line, as the docs promise, not a private line nothing signals.
impl Default for Wakeup {
    fn default() -> Self {
        Self::shared()
    }
}

#[derive(Default)]
struct Line {
    published: AtomicU64,
    committed: AtomicU64,
    signal: Notify,
}

impl std::fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seen = self.seen();
        f.debug_struct("Wakeup")
            .field("shared", &self.same_as(&Wakeup::shared()))
            .field("published", &seen.published)
            .field("committed", &seen.committed)
            .finish()
    }
}

static SHARED: LazyLock<Wakeup> = LazyLock::new(|| Wakeup(Arc::default()));

tokio::task_local! {
    /// Set inside [`Wakeup::transaction`]: whether the transaction stored events.
    static STORED: Cell<bool>;
}

/// Delays between re-claims after a *published* signal: the writer's COMMIT usually lands
/// within the first few.
pub(crate) const BURST: [Duration; 8] = [
    Duration::from_micros(200),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
    Duration::from_millis(32),
    Duration::from_millis(64),
];

/// What relays have been told so far; compared before and after a claim to notice writes that
/// happened while a relay was not waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub published: u64,
    pub committed: u64,
}

impl Wakeup {
    /// A new line of its own, for the writers and relays of one database.
    pub fn new() -> Self {
        Self(Arc::default())
    }

    /// The process's default line: what [`crate::transaction`] signals and what a relay listens
    /// to unless given another handle.
    pub fn shared() -> Self {
        SHARED.clone()
    }

    pub(crate) fn shared_ref() -> &'static Wakeup {
        &SHARED
    }

    /// Whether both handles are the same line.
    pub fn same_as(&self, other: &Wakeup) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn seen(&self) -> Seen {
        Seen {
            published: self.0.published.load(Ordering::Acquire),
            committed: self.0.committed.load(Ordering::Acquire),
        }
    }

    /// Resolves on the next signal after this call returns: a relay creates it (and `enable`s it)
    /// before comparing [`seen`](Self::seen), so no signal falls between the two.
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.signal.notified()
    }

    /// Sent after a COMMIT that stored events.
    fn committed(&self) {
        self.0.committed.fetch_add(1, Ordering::Release);
        self.0.signal.notify_waiters();
    }

    /// Sent by a `publish` whose transaction commits later, out of sight.
    fn published(&self) {
        self.0.published.fetch_add(1, Ordering::Release);
        self.0.signal.notify_waiters();
    }

    /// Runs `body` (a whole outermost transaction) and signals *committed* on this line if it
    /// succeeded and stored events.
    pub(crate) async fn around_commit<R, E>(&self, body: impl Future<Output = Result<R, E>>) -> Result<R, E> {
        let (result, stored) = stored_in(body).await;
        if result.is_ok() && stored {
            self.committed();
        }
        result
    }

    /// Runs `body` and then, if `publish` stored events inside it, signals *committed* on this
    /// line: for code that runs its transactions itself instead of through
    /// [`Wakeup::transaction`]. `body` must end every transaction it opens (the signal says the
    /// rows are visible); one that rolled back after publishing costs the relays a claim that
    /// finds nothing. A `publish` inside `body` signals nothing by itself, so relays on
    /// [`Wakeup::shared`] do not re-claim before the commit either.
    ///
    /// The `inbox` crate runs each batch of messages it handles in this (see its
    /// `InboxBuilder::wakeup`) and calls [`signal_stored`](Self::signal_stored) after each of the
    /// batch's commits, so a handler's `cx.publish` wakes the relay once its transaction commits.
    pub async fn signal_after<F: Future>(&self, body: F) -> F::Output {
        let (output, stored) = stored_in(body).await;
        if stored {
            self.committed();
        }
        output
    }
}

impl Wakeup {
    /// Inside the body of [`signal_after`](Self::signal_after), right after a COMMIT: signals
    /// *committed* now if `publish` stored events since the body started or since the last call,
    /// so a body that commits several transactions wakes the relays after each (the inbox calls
    /// it after each of a batch's commits). Outside such a body it does nothing.
    pub fn signal_stored(&self) {
        if STORED.try_with(|s| s.replace(false)).unwrap_or(false) {
            self.committed();
        }
    }
}

/// Runs `body` in a scope of its own: whether `publish` stored events inside it.
async fn stored_in<F: Future>(body: F) -> (F::Output, bool) {
    STORED
        .scope(Cell::new(false), async {
            let output = body.await;
            (output, STORED.with(Cell::get))
        })
        .await
}

/// Called by the writer after its INSERT. Inside [`Wakeup::transaction`] it only records that
/// events were stored (the signal follows the commit); elsewhere it signals the shared line at once.
pub(crate) fn published() {
    if STORED.try_with(|s| s.set(true)).is_err() {
        SHARED.published();
    }
}
