//! Cancellation shared by the relay's loops and the storage's listener: a leaf module, so the
//! storage does not import the relay for it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps for `d`, or until `shutdown` fires, whichever comes first.
pub(crate) async fn sleep_or_cancel(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
