//! Reading the inbox's counters (duplicates skipped, dead-lettered) through a `metrics`
//! recorder the quickstart installs, so the flow can wait for them and the report count them.

use std::sync::OnceLock;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The inbox reports through the `metrics` facade; the quickstart installs a recorder to read
/// its counters (an application would install Prometheus or similar instead).
pub(super) fn metrics_snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _ = recorder.install(); // another recorder already installed: counters read 0
        snapshotter
    })
}

/// (duplicates skipped, dead-lettered) counted by the inbox for `group`.
pub(super) fn counters(group: &str) -> (u64, u64) {
    let mut duplicates = 0;
    let mut dead = 0;
    for (key, _, _, value) in metrics_snapshotter().snapshot().into_vec() {
        let key = key.key();
        if !key.labels().any(|l| l.key() == "group" && l.value() == group) {
            continue;
        }
        if let DebugValue::Counter(n) = value {
            match key.name() {
                inbox::metrics::DUPLICATES_TOTAL => duplicates += n,
                inbox::metrics::DEAD_LETTERED_TOTAL => dead += n,
                _ => {}
            }
        }
    }
    (duplicates, dead)
}
