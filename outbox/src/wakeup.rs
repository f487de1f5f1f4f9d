//! The in-process wake-up: relays running in this process learn of new events without polling,
//! at no cost to the writer's transaction (no NOTIFY, no extra statement).
//!
//! Two signals. [`committed`] is sent by [`crate::transaction`] after the COMMIT that stored
//! events: the rows are visible, so a relay claims them at once. [`published`] is sent by
//! `publish` when it runs inside any other transaction (e.g. diesel's own `transaction`), before
//! the caller commits: a relay that reacts at once may not see the rows yet, so it re-claims a
//! few times over the next ~130 ms (see [`BURST`]) and otherwise falls back to polling.

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

static PUBLISHED: AtomicU64 = AtomicU64::new(0);
static COMMITTED: AtomicU64 = AtomicU64::new(0);
static SIGNAL: LazyLock<Notify> = LazyLock::new(Notify::new);

tokio::task_local! {
    /// Set inside [`crate::transaction`]: whether the transaction stored events.
    static STORED: Cell<bool>;
}

/// Delays between re-claims after a [`published`] signal: the writer's COMMIT usually lands
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

pub(crate) fn seen() -> Seen {
    Seen { published: PUBLISHED.load(Ordering::Acquire), committed: COMMITTED.load(Ordering::Acquire) }
}

/// Called by the writer after its INSERT. Inside [`crate::transaction`] it only records that
/// events were stored (the signal follows the commit); elsewhere it signals at once.
pub(crate) fn published() {
    if STORED.try_with(|s| s.set(true)).is_err() {
        PUBLISHED.fetch_add(1, Ordering::Release);
        SIGNAL.notify_waiters();
    }
}

/// Called after a COMMIT that stored events.
fn committed() {
    COMMITTED.fetch_add(1, Ordering::Release);
    SIGNAL.notify_waiters();
}

/// Runs `body` (a whole outermost transaction) and sends [`committed`] if it succeeded and
/// stored events.
pub(crate) async fn around_commit<R, E>(body: impl Future<Output = Result<R, E>>) -> Result<R, E> {
    let (result, stored) = STORED
        .scope(Cell::new(false), async {
            let result = body.await;
            (result, STORED.with(Cell::get))
        })
        .await;
    if result.is_ok() && stored {
        committed();
    }
    result
}

/// Resolves on the next signal after this call returns: a relay creates it (and `enable`s it)
/// before comparing [`seen`], so no signal falls between the two.
pub(crate) fn notified() -> tokio::sync::futures::Notified<'static> {
    SIGNAL.notified()
}
