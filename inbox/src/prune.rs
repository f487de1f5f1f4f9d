//! Retention: deletes the group's dedup rows older than the dedup window, in small batches, and
//! (with `dead_letter_retention` set) its dead letters older than that.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use outbox::Database;

use crate::shared::Shared;
use crate::store::store;

pub(crate) async fn run<C: Database>(shared: Arc<Shared<C>>, stop: CancellationToken) {
    let o = &shared.options;
    loop {
        let n = in_batches(&shared, &stop, Rows::Dedup).await;
        if n > 0 {
            tracing::debug!(rows = n, group = %o.group, "inbox: pruned dedup rows");
            metrics::counter!(crate::metrics::PRUNED_TOTAL, "group" => o.group.clone()).increment(n);
        }
        if let Some(retention) = o.dead_letter_retention {
            let n = in_batches(&shared, &stop, Rows::DeadLetters(retention)).await;
            if n > 0 {
                tracing::info!(rows = n, group = %o.group, ?retention, "inbox: pruned dead letters past their retention");
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(o.prune_interval) => {}
        }
    }
}

/// What a pruning pass deletes.
#[derive(Clone, Copy)]
enum Rows {
    /// Dedup rows older than the dedup window.
    Dedup,
    /// Dead letters older than this retention (not those waiting for a requested replay).
    DeadLetters(Duration),
}

/// Deletes `rows` of the group one bounded DELETE at a time until a batch comes back short, an
/// error, or shutdown; yields between batches. Returns the rows deleted.
async fn in_batches<C: Database>(shared: &Shared<C>, stop: &CancellationToken, rows: Rows) -> u64 {
    let o = &shared.options;
    let batch = o.prune_batch_size;
    let what = match rows {
        Rows::Dedup => "dedup rows",
        Rows::DeadLetters(_) => "dead letters",
    };
    let mut total = 0u64;
    while !stop.is_cancelled() {
        let mut conn = match shared.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "inbox: pruning {what} skipped, no database connection");
                break;
            }
        };
        let deleted = match rows {
            Rows::Dedup => store(&mut *conn).prune_dedup(&o.group, o.dedup_window, batch).await,
            Rows::DeadLetters(retention) => store(&mut *conn).prune_dead_letters(&o.group, retention, batch).await,
        };
        match deleted {
            Ok(n) => {
                total += n as u64;
                if (n as i64) < batch {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox: pruning {what} failed");
                break;
            }
        }
        drop(conn);
        tokio::task::yield_now().await;
    }
    total
}
