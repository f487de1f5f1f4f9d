//! The in-process wake-up: `publish` tells relays running in the same process that a row was
//! written, at no cost to the writer's transaction (no NOTIFY, no extra statement).
//!
//! The signal is sent before the caller commits, so a relay that reacts at once may not see the
//! row yet; it re-claims a few times over the next ~130 ms (see [`BURST`]) and otherwise falls
//! back to polling.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static SIGNAL: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Delays between re-claims after a signal: the writer's COMMIT usually lands within the first few.
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

/// Called by the writer after its INSERT.
pub(crate) fn published() {
    GENERATION.fetch_add(1, Ordering::Release);
    SIGNAL.notify_waiters();
}

/// The current generation; a relay compares it before and after a claim to notice writes that
/// happened while it was not waiting.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Resolves on the next `published()` after this call returns: a relay creates it (and
/// `enable`s it) before checking [`generation`], so no signal falls between the two.
pub(crate) fn notified() -> tokio::sync::futures::Notified<'static> {
    SIGNAL.notified()
}
