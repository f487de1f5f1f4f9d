//! The Kafka sink: an idempotent `FutureProducer` (recreated when it turns fatal), the
//! CloudEvents headers of each record, its delivery reports and their classification.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Delivery, Held, Report, Reports, Sink};
use crate::db::Claimed;
use crate::{Error, KafkaConfig, Result, envelope, otel, startup};

/// Publishes to Kafka. See the [parent module](super) for what a sink guarantees.
pub(crate) struct Kafka {
    producer: FutureProducer,
    producer_config: ClientConfig,
    /// From the Kafka configuration's `message.timeout.ms` (see `KafkaConfig::delivery_timeout`).
    delivery_timeout: Option<Duration>,
}

impl Kafka {
    /// The producer of `kafka`, whose queue holds a whole batch of `batch_size` rows (the relay
    /// produces it without awaiting each message).
    pub(crate) fn new(kafka: &KafkaConfig, batch_size: usize) -> Result<Self> {
        let mut producer_config = kafka.producer_config()?;
        let delivery_timeout = kafka.delivery_timeout()?;
        // The queue must hold a whole batch: the relay produces it without awaiting each message.
        let queue = (batch_size * 2).max(100_000).to_string();
        if kafka.get("queue.buffering.max.messages").is_none() {
            producer_config.set("queue.buffering.max.messages", &queue);
        }
        let producer = producer_config
            .create()
            .map_err(|e| Error::with_source(crate::ErrorKind::Config, format!("kafka producer: {e}"), e))?;
        Ok(Kafka { producer, producer_config, delivery_timeout })
    }
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

type DeliveryReport = <DeliveryFuture as Future>::Output;

/// A batch handed to the producer whose delivery reports are still to come.
struct Produced {
    /// The producer the batch was handed to (purges go to it, also after a fatal error
    /// replaced the sink's producer).
    producer: FutureProducer,
    /// Index in the batch's rows of each delivery report of `pending` (and later `reports`).
    indexes: Vec<usize>,
    pending: Pin<Box<dyn Future<Output = Vec<DeliveryReport>> + Send>>,
    /// Every delivery report, once [`Delivery::acked`] has seen them all.
    reports: Option<Vec<DeliveryReport>>,
    /// Rows that failed before reaching the producer's queue: (index in the rows, error).
    rejected: Vec<(usize, KafkaError)>,
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

/// A fatal error is the producer's, not the record's: the rows are left as they were (maybe
/// sent, no attempt counted) and the producer is recreated. Seen synchronously from
/// `send_result` once the producer is fatal, or in a delivery report.
fn is_fatal(e: &KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
}

fn failed(e: &KafkaError) -> Report {
    Report::Failed { error: e.to_string(), permanent: is_permanent(e.rdkafka_error_code()) }
}

impl Sink for Kafka {
    /// Hands every row to the producer without awaiting any acknowledgement. A key whose row is
    /// rejected synchronously (e.g. too large) is held: its later rows are not produced, in this
    /// batch or in the batches pipelined behind it, so the key's order survives the retry.
    fn send<'a>(
        &'a self,
        rows: &'a [Claimed],
        source: &'a str,
        held: &'a mut Held,
        purged: &'a Arc<AtomicBool>,
    ) -> BoxFuture<'a, Box<dyn Delivery>> {
        async move {
            let producer = &self.producer;
            let mut deliveries = Vec::with_capacity(rows.len());
            let mut indexes = Vec::with_capacity(rows.len());
            let mut rejected = Vec::new();
            // Feature `otel`: a span per record, ended by its delivery report (docs/tracing.md).
            let mut spans = Vec::with_capacity(rows.len());
            let ambient = otel::ambient();
            for (index, row) in rows.iter().enumerate() {
                if held.skips(row) {
                    continue; // held by the mark, or behind a rejected row of its key: never produced
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
                            held.hold(row);
                            break;
                        }
                    }
                }
            }
            // The first failed report purges everything in flight: the key's later messages, in
            // this batch or in the one pipelined behind it, must not be acknowledged after it.
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
            let produced = Produced {
                producer: producer.clone(),
                indexes,
                pending: Box::pin(join_all(deliveries)),
                reports: None,
                rejected,
            };
            Box::new(produced) as Box<dyn Delivery>
        }
        .boxed()
    }

    fn delivery_timeout(&self) -> Option<Duration> {
        self.delivery_timeout
    }

    fn probe(&self, deadline: tokio::time::Instant, stop: CancellationToken) -> BoxFuture<'static, Result<bool>> {
        let config = self.producer_config.clone();
        async move { startup::wait_for_brokers(&config, startup::ClientKind::Producer, &[], deadline, &stop).await }
            .boxed()
    }

    fn recover(&mut self) -> Error {
        // An idempotent producer that hit a fatal error can not be used again.
        match self.producer_config.create() {
            Ok(producer) => {
                self.producer = producer;
                Error::new(
                    crate::ErrorKind::Kafka,
                    "the kafka producer hit a fatal error; recreated it, its unacknowledged messages will be sent again",
                )
            }
            Err(e) => Error::from(e),
        }
    }
}

impl Delivery for Produced {
    fn acked(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if self.reports.is_none() {
                self.reports = Some(self.pending.as_mut().await);
            }
        }
        .boxed()
    }

    fn purge(&self, wait: bool) {
        let config = PurgeConfig::default().queue().inflight();
        self.producer.purge(if wait { config } else { config.non_blocking() });
    }

    fn reports(self: Box<Self>, rows: &[Claimed], purged_timed_out: bool) -> Reports {
        let timed_out = || KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let Produced { indexes, reports, rejected, .. } = *self;
        let mut out = Reports { fatal: rejected.iter().any(|(_, e)| is_fatal(e)), ..Reports::default() };
        out.rows.extend(rejected.iter().filter(|(_, e)| !is_fatal(e)).map(|(index, e)| (*index, failed(e))));
        for (index, report) in indexes.into_iter().zip(reports.unwrap_or_default()) {
            let row = &rows[index];
            match report {
                Ok(Ok(_delivery)) => out.rows.push((index, Report::Sent)),
                Ok(Err((e, _))) => {
                    if is_purged(e.rdkafka_error_code()) {
                        if purged_timed_out {
                            out.rows.push((index, failed(&timed_out())));
                        }
                        continue; // maybe sent: left as it is, produced again by a later claim
                    }
                    if is_fatal(&e) {
                        out.fatal = true;
                        continue;
                    }
                    warn!(seq = row.seq, id = %row.id, error = %e, "delivery failed");
                    out.rows.push((index, failed(&e)));
                }
                Err(_canceled) => {} // producer dropped: maybe sent
            }
        }
        out
    }
}
