//! The inbox's background gauges (the per-partition lag comes from librdkafka's statistics, in
//! `rebalance.rs`).

use std::sync::Arc;

use outbox::Database;
use tokio_util::sync::CancellationToken;

use crate::metrics::DEAD_LETTERS;
use crate::shared::Shared;
use crate::store::store;

/// Refreshes the group's dead-letter gauge every `metrics_interval` until `stop`.
pub(crate) async fn dead_letter_depth<C: Database>(shared: Arc<Shared<C>>, stop: CancellationToken) {
    let o = &shared.options;
    loop {
        let count = match shared.pool.get().await {
            Ok(mut conn) => store(&mut *conn).dead_letter_count(&o.group).await.map_err(outbox::Error::from),
            Err(e) => Err(e),
        };
        match count {
            Ok(n) => metrics::gauge!(DEAD_LETTERS, "group" => o.group.clone()).set(n as f64),
            Err(e) => tracing::debug!(error = %e, "inbox: cannot count dead letters"),
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(o.metrics_interval) => {}
        }
    }
}
