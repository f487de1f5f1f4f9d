//! Producing one claimed batch and collecting its delivery reports.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RelayConfig;
use crate::db::{Claimed, Failure};
use crate::envelope;
use crate::otel;

/// The result of producing a batch.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Acknowledged by Kafka: safe to mark.
    pub sent: Vec<i64>,
    /// Failed: retried later, or parked.
    pub failures: Vec<Failure>,
    /// The producer hit a fatal error and must be recreated.
    pub fatal: bool,
    /// Claimed but blocked by a failing earlier row of their key: to be held.
    pub hold: Vec<i64>,
    /// (topic, key) of acknowledged rows that had failed before: their held rows are released.
    pub release: Vec<(String, String)>,
}

/// Errors that concern the record itself: retrying cannot help, so the row is parked at once.
fn is_permanent(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

fn headers(row: &Claimed, source: &str) -> OwnedHeaders {
    envelope::encode(row.id, &row.event_type, row.event_version.into(), source, row.occurred_at, &row.headers)
}

type Report = <DeliveryFuture as Future>::Output;

/// A batch handed to the producer whose delivery reports are still to come.
pub(crate) struct Produced {
    pub rows: Vec<Claimed>,
    /// The producer the batch was handed to (purges go to it, also after a fatal error
    /// replaced the relay's producer).
    producer: FutureProducer,
    /// Index in `rows` of each delivery report of `pending` (and later `reports`).
    indexes: Vec<usize>,
    pending: Pin<Box<dyn Future<Output = Vec<Report>> + Send>>,
    /// When the batch was handed to the producer (its delivery timeout runs from here).
    produced_at: Instant,
    /// Every delivery report, once [`Produced::acked`] has seen them all.
    reports: Option<Vec<Report>>,
    /// Rows that failed before reaching the producer's queue: (index in `rows`, error).
    rejected: Vec<(usize, KafkaError)>,
    /// The relay's "purged" flag: set by every purge (see [`purge_all`]).
    purged: Arc<AtomicBool>,
}

impl Produced {
    /// Waits until every delivery report is in. Cancel-safe: dropping the future loses
    /// nothing, a later call goes on waiting.
    pub async fn acked(&mut self) {
        if self.reports.is_none() {
            self.reports = Some(self.pending.as_mut().await);
        }
    }

    /// When the batch was handed to the producer.
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

/// Fails everything the producer holds at once (queued and in flight). After a delivery failure
/// or timeout, no later message of the same partition may still be acknowledged: with the
/// idempotent producer, what the broker keeps of the purged messages is a prefix of each
/// partition's sequence, so per-key order survives the resend.
///
/// Sets `purged`, which stops the relay's claims until every batch in flight is marked: the
/// purged rows of a batch that had not timed out yet are left unmarked (attempts unchanged), so
/// nothing in the database would stop a later row of their key from being claimed and produced
/// ahead of their resend.
fn purge_all(producer: &FutureProducer, purged: &AtomicBool) {
    purged.store(true, Ordering::Relaxed);
    producer.purge(PurgeConfig::default().queue().inflight().non_blocking());
}

fn is_purged(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(code, Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight))
}

/// Hands every row to the producer without awaiting any acknowledgement. A key whose row is
/// rejected synchronously (e.g. too large) is `held`: its later rows are not produced, in this
/// batch or in the batches pipelined behind it, so the key's order survives the retry.
pub(crate) async fn produce(
    producer: &FutureProducer,
    rows: Vec<Claimed>,
    source: &str,
    held: &mut HashSet<(String, String)>,
    purged: Arc<AtomicBool>,
) -> Produced {
    let mut deliveries = Vec::with_capacity(rows.len());
    let mut indexes = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    // Feature `otel`: a span per record, ended by its delivery report (docs/tracing.md).
    let mut spans = Vec::with_capacity(rows.len());
    let ambient = otel::ambient();
    for (index, row) in rows.iter().enumerate() {
        if row.blocked {
            continue; // held by the mark, never produced
        }
        if let Some(key) = row.key.as_deref()
            && held.contains(&(row.topic.clone(), key.to_owned()))
        {
            continue;
        }
        let span = otel::SendSpan::start(row, &ambient);
        let mut record =
            FutureRecord::to(&row.topic).payload(&row.payload[..]).headers(span.headers(headers(row, source)));
        if let Some(key) = row.key.as_deref() {
            record = record.key(key);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    indexes.push(index);
                    deliveries.push(delivery);
                    spans.push(span);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    warn!(seq = row.seq, id = %row.id, error = %e, "produce failed");
                    span.failed(&e);
                    rejected.push((index, e));
                    if let Some(key) = row.key.as_deref() {
                        held.insert((row.topic.clone(), key.to_owned()));
                    }
                    break;
                }
            }
        }
    }
    // The first failed report purges everything in flight: the key's later messages, in this
    // batch or in the one pipelined behind it, must not be acknowledged after it.
    let deliveries = deliveries.into_iter().zip(spans).map(|(delivery, span)| {
        let (producer, purged) = (producer.clone(), purged.clone());
        delivery.inspect(move |report| {
            if let Ok(Err((e, _))) = report
                && !is_purged(e.rdkafka_error_code())
            {
                purge_all(&producer, &purged);
            }
            match report {
                Ok(Ok(d)) => span.delivered(d.partition, d.offset),
                Ok(Err((e, _))) => span.failed(e),
                Err(_canceled) => span.canceled(),
            }
        })
    });
    Produced {
        rows,
        producer: producer.clone(),
        indexes,
        pending: Box::pin(join_all(deliveries)),
        produced_at: Instant::now(),
        reports: None,
        rejected,
        purged,
    }
}

/// Waits for every delivery report of a produced batch. When `shutdown` fires, waits at most
/// `shutdown_timeout` more, then purges: purged messages are neither sent nor failed (maybe
/// sent), so they stay in the outbox and are produced again later.
/// `delivery_timeout`: from the Kafka configuration's `message.timeout.ms` (see
/// `KafkaConfig::delivery_timeout`).
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
            batch.producer.purge(PurgeConfig::default().queue().inflight());
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
            purge_all(&batch.producer, &batch.purged);
            batch.acked().await;
        }
    };
    // Purged after this batch's own timeout ran out: a failed delivery, recorded as such.
    // Purged earlier (another message failed, or shutdown): maybe sent, left for the next claim.
    let expired = expired || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
    let timed_out = || KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
    let Produced { rows, indexes, reports, rejected, .. } = batch;
    let mut outcome =
        Outcome { hold: rows.iter().filter(|r| r.blocked).map(|r| r.seq).collect(), ..Outcome::default() };
    // A fatal error is the producer's, not the record's: the rows are left as they were (maybe
    // sent, no attempt counted) and the producer is recreated. Seen synchronously from
    // `send_result` once the producer is fatal, or in a delivery report.
    let is_fatal = |e: &KafkaError| matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal));
    outcome.fatal = rejected.iter().any(|(_, e)| is_fatal(e));
    let mut failed: Vec<(usize, KafkaError)> = rejected.into_iter().filter(|(_, e)| !is_fatal(e)).collect();
    for (index, report) in indexes.into_iter().zip(reports.unwrap_or_default()) {
        let row = &rows[index];
        match report {
            Ok(Ok(_delivery)) => {
                outcome.sent.push(row.seq);
                if row.attempts > 0
                    && let Some(key) = &row.key
                {
                    outcome.release.push((row.topic.clone(), key.clone()));
                }
            }
            Ok(Err((e, _))) => {
                let code = e.rdkafka_error_code();
                if is_purged(code) {
                    if expired && !shutdown.is_cancelled() {
                        failed.push((index, timed_out()));
                    }
                    continue; // maybe sent: left as it is, produced again by a later claim
                }
                if is_fatal(&e) {
                    outcome.fatal = true;
                    continue;
                }
                warn!(seq = row.seq, id = %row.id, error = %e, "delivery failed");
                failed.push((index, e));
            }
            Err(_canceled) => {} // producer dropped: maybe sent
        }
    }
    failed.sort_by_key(|(index, _)| *index);
    let mut failed_keys: HashSet<(&str, &str)> = HashSet::new();
    for (index, e) in failed {
        let row = &rows[index];
        let counted = match row.key.as_deref() {
            Some(key) => failed_keys.insert((row.topic.as_str(), key)),
            None => true,
        };
        outcome.failures.push(Failure {
            seq: row.seq,
            error: e.to_string(),
            retry_in: config.retry.delay(row.attempts as u32 + 1),
            park_now: is_permanent(e.rdkafka_error_code()),
            counted,
        });
    }
    outcome
}
