//! Retention: deletes the group's dedup rows older than the dedup window, in small batches, and
//! (with `dead_letter_retention` set) its dead letters older than that (`dead_letters::prune`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use outbox::Database;

use crate::inbox::Shared;

pub(crate) async fn run<C: Database>(shared: Arc<Shared<C>>, stop: CancellationToken) {
    let o = &shared.options;
    loop {
        prune_once(&shared, &stop).await;
        if let Some(retention) = o.dead_letter_retention {
            crate::dead_letters::prune(&shared, &stop, retention).await;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(o.prune_interval) => {}
        }
    }
}

/// Deletes batch after batch until a batch comes back short; yields between batches.
async fn prune_once<C: Database>(shared: &Shared<C>, stop: &CancellationToken) {
    let o = &shared.options;
    let mut total = 0u64;
    while !stop.is_cancelled() {
        let mut conn = match shared.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "inbox: pruning skipped, no database connection");
                return;
            }
        };
        match conn.prune_dedup(&o.group, o.dedup_window, o.prune_batch_size).await {
            Ok(n) => {
                total += n as u64;
                if (n as i64) < o.prune_batch_size {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox: pruning dedup rows failed");
                break;
            }
        }
        drop(conn);
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::debug!(rows = total, group = %o.group, "inbox: pruned dedup rows");
        metrics::counter!(crate::metrics::PRUNED_TOTAL, "group" => o.group.clone()).increment(total);
    }
}
