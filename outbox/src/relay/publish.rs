//! Sending one claimed batch through the sink and collecting its answers into the [`Outcome`]
//! the mark records: the relay-owned delivery timeout, shutdown's grace period, the purges, and
//! what each answer means for the database (sent, retried with backoff, parked, held, released).
//! What the sink itself does is behind [`super::sink`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RelayConfig;
use super::sink::{Delivery, Held, Report, Sink};
use crate::db::{Claimed, Failure};

/// The result of sending a batch.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Acknowledged by the sink: safe to mark.
    pub sent: Vec<i64>,
    /// Failed: retried later, or parked.
    pub failures: Vec<Failure>,
    /// The sink hit a fatal error and must be recovered.
    pub fatal: bool,
    /// Claimed but blocked by a failing earlier row of their key: to be held.
    pub hold: Vec<i64>,
    /// (topic, key) of acknowledged rows that had failed before: their held rows are released.
    pub release: Vec<(String, String)>,
}

/// A batch handed to the sink whose answers are still to come.
pub(crate) struct Produced {
    pub rows: Vec<Claimed>,
    delivery: Box<dyn Delivery>,
    /// When the batch was handed to the sink (its delivery timeout runs from here).
    produced_at: Instant,
    /// The relay's "purged" flag: set by every purge (see `sink`'s module docs).
    purged: Arc<AtomicBool>,
}

impl Produced {
    /// Waits until every answer is in. Cancel-safe: dropping the future loses nothing, a later
    /// call goes on waiting.
    pub async fn acked(&mut self) {
        self.delivery.acked().await;
    }

    /// When the batch was handed to the sink.
    pub fn produced_at(&self) -> Instant {
        self.produced_at
    }

    pub fn first_seq(&self) -> i64 {
        self.rows.first().map_or(i64::MAX, |r| r.seq)
    }

    pub fn last_seq(&self) -> i64 {
        self.rows.last().map_or(i64::MIN, |r| r.seq)
    }

    /// When the relay gives up waiting for this batch's acknowledgements.
    pub fn deadline(&self, timeout: Option<Duration>) -> Option<tokio::time::Instant> {
        timeout.map(|t| tokio::time::Instant::from_std(self.produced_at + t))
    }
}

/// Hands every row to the sink without awaiting any acknowledgement. A key whose row is
/// rejected synchronously (e.g. too large) is `held`: its later rows are not sent, in this
/// batch or in the batches pipelined behind it, so the key's order survives the retry.
pub(crate) async fn produce(
    sink: &dyn Sink,
    rows: Vec<Claimed>,
    source: &str,
    held: &mut Held,
    purged: Arc<AtomicBool>,
) -> Produced {
    let delivery = sink.send(&rows, source, held, &purged).await;
    Produced { rows, delivery, produced_at: Instant::now(), purged }
}

/// Waits for every answer of a sent batch. When `shutdown` fires, waits at most
/// `shutdown_timeout` more, then purges: purged messages are neither sent nor failed (maybe
/// sent), so they stay in the outbox and are sent again later.
/// `delivery_timeout`: the sink's ([`Sink::delivery_timeout`]).
pub(crate) async fn collect(
    mut batch: Produced,
    config: &RelayConfig,
    delivery_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> Outcome {
    let deadline = batch.deadline(delivery_timeout);
    let mut expired = false;
    tokio::select! {
        _ = batch.acked() => {},
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout).await;
        } => {
            warn!(timeout = ?config.shutdown_timeout, "shutdown: abandoning unacknowledged messages (they stay unsent)");
            batch.purged.store(true, Ordering::Relaxed);
            batch.delivery.purge(true);
            batch.acked().await;
        }
        _ = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        } => {
            warn!(timeout = ?delivery_timeout, "messages not acknowledged in time; failing every message in flight");
            expired = true;
            batch.purged.store(true, Ordering::Relaxed);
            batch.delivery.purge(false);
            batch.acked().await;
        }
    };
    // Purged after this batch's own timeout ran out: a failed delivery, recorded as such.
    // Purged earlier (another message failed, or shutdown): maybe sent, left for the next claim.
    let expired = expired || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
    let Produced { rows, delivery, .. } = batch;
    let reports = delivery.reports(&rows, expired && !shutdown.is_cancelled());
    let mut outcome = Outcome {
        hold: rows.iter().filter(|r| r.blocked).map(|r| r.seq).collect(),
        fatal: reports.fatal,
        ..Outcome::default()
    };
    let mut failed: Vec<(usize, String, bool)> = Vec::new();
    for (index, report) in reports.rows {
        let row = &rows[index];
        match report {
            Report::Sent => {
                outcome.sent.push(row.seq);
                if row.attempts > 0
                    && let Some(key) = &row.key
                {
                    outcome.release.push((row.topic.clone(), key.clone()));
                }
            }
            Report::Failed { error, permanent } => failed.push((index, error, permanent)),
        }
    }
    failed.sort_by_key(|(index, ..)| *index);
    let mut failed_keys: HashSet<(&str, &str)> = HashSet::new();
    for (index, error, permanent) in failed {
        let row = &rows[index];
        let counted = match row.key.as_deref() {
            Some(key) => failed_keys.insert((row.topic.as_str(), key)),
            None => true,
        };
        outcome.failures.push(Failure {
            seq: row.seq,
            error,
            retry_in: config.retry.delay(row.attempts as u32 + 1),
            park_now: permanent,
            counted,
        });
    }
    outcome
}
