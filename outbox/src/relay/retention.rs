//! The retention cleanup of [`AfterSend::Keep`](super::AfterSend::Keep): sent rows older than
//! the retention deleted in batches, on a schedule of its own. Separate because it runs beside
//! the relay's loop, as its own task, whether or not this relay holds the lease.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::RelayConfig;
use crate::Result;
use crate::cancel::sleep_or_cancel;
use crate::db::{ConnPool, Database};

pub(super) async fn cleanup<C: Database>(
    pool: ConnPool<C>,
    retention: Duration,
    config: RelayConfig,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let result: Result<usize> = async {
            let mut conn = pool.get().await?;
            let mut total = 0;
            loop {
                let n = conn.cleanup_sent(retention, config.cleanup_batch).await?;
                total += n;
                if (n as i64) < config.cleanup_batch || shutdown.is_cancelled() {
                    return Ok(total);
                }
            }
        }
        .await;
        match result {
            Ok(n) if n > 0 => debug!(deleted = n, "outbox retention cleanup"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "outbox retention cleanup failed"),
        }
        sleep_or_cancel(&shutdown, config.cleanup_interval).await;
    }
}
