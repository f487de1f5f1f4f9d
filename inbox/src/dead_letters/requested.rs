//! The background task of a running inbox that replays the dead letters an operator asked to
//! replay (`inbox::ops::request_replay`, `outbox dead-letters replay`), polling for them.

use std::sync::Arc;

use outbox::Database;
use tokio_util::sync::CancellationToken;

use super::{ReplayReport, replay_matching};
use crate::shared::Shared;
use crate::store::DeadLetterFilter;

/// The background task of a running inbox: every `replay_poll_interval` (the first time one
/// interval after the start), replays the dead letters of its group that an operator asked to
/// replay.
pub(crate) async fn run_requested<C: Database>(shared: Arc<Shared<C>>, stop: CancellationToken) {
    let filter = DeadLetterFilter { group: Some(&shared.options.group), requested: true, ..Default::default() };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.options.replay_poll_interval) => {}
        }
        match replay_matching(&shared, &filter, Some(&stop)).await {
            Ok(report) if report != ReplayReport::default() => tracing::info!(
                group = %shared.options.group,
                handled = report.handled,
                failed = report.failed,
                skipped = report.skipped,
                "inbox: requested dead-letter replays done"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inbox: requested dead-letter replays failed; trying again later"),
        }
    }
}
