//! The relay's metric names, reported through the [`metrics`] facade: install any recorder
//! (Prometheus, StatsD, ...) in the application to collect them; without one they cost next to
//! nothing. What each metric means, its labels and unit: the metrics table in
//! `docs/operations.md` (a test checks that table against [`describe`]).
//!
//! Every relay metric carries the label `relay` (the relay's [name](crate::relay::RelayBuilder::name)).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use metrics::Unit;
use uuid::Uuid;

use crate::db::{Claimed, TopicBacklog};

/// Gauge, per `topic`: messages waiting to be published (not sent, not parked).
pub const PENDING: &str = "outbox_pending";
/// Gauge, per `topic`: parked messages.
pub const PARKED: &str = "outbox_parked";
/// Gauge, per `topic`: age of the oldest pending message, in seconds (0 when none).
pub const OLDEST_PENDING_SECONDS: &str = "outbox_oldest_pending_seconds";
/// Histogram: rows per produced batch.
pub const BATCH_SIZE: &str = "outbox_batch_size";
/// Histogram: seconds from handing a batch to the producer to its last delivery report.
pub const PUBLISH_SECONDS: &str = "outbox_publish_seconds";
/// Counter, per `topic`: messages acknowledged by Kafka and marked sent.
pub const PUBLISHED_TOTAL: &str = "outbox_published_total";
/// Counter, per `topic`: failed deliveries recorded (each one is retried later, or parked).
pub const PUBLISH_FAILURES_TOTAL: &str = "outbox_publish_failures_total";
/// Counter: messages parked by the relay.
pub const PARKED_TOTAL: &str = "outbox_parked_total";
/// Gauge, per `owner` (one relay instance): 1 while it holds the lease, 0 while it stands by.
pub const LEASE_HELD: &str = "outbox_lease_held";
/// Gauge: Unix time, in seconds, of the relay's last successful round.
pub const LAST_SUCCESS_SECONDS: &str = "outbox_last_success_timestamp_seconds";

/// Describes every relay metric (kind, unit, help text) to the installed recorder.
///
/// [`RelayBuilder::build`](crate::relay::RelayBuilder::build) calls it; call it yourself when the
/// recorder is installed after the relay is built (descriptions reach only the recorder that is
/// installed when they are given). Calling it again is harmless.
pub fn describe() {
    metrics::describe_gauge!(PENDING, Unit::Count, "messages waiting to be published (not sent, not parked)");
    metrics::describe_gauge!(PARKED, Unit::Count, "parked messages (see `outbox parked list`)");
    metrics::describe_gauge!(
        OLDEST_PENDING_SECONDS,
        Unit::Seconds,
        "age of the oldest pending message (0 when nothing is pending)"
    );
    metrics::describe_histogram!(BATCH_SIZE, Unit::Count, "rows per produced batch");
    metrics::describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "time from handing a batch to the producer to its last delivery report"
    );
    metrics::describe_counter!(PUBLISHED_TOTAL, Unit::Count, "messages acknowledged by Kafka and marked sent");
    metrics::describe_counter!(
        PUBLISH_FAILURES_TOTAL,
        Unit::Count,
        "failed deliveries recorded (retried with backoff, or parked)"
    );
    metrics::describe_counter!(PARKED_TOTAL, Unit::Count, "messages parked by the relay");
    metrics::describe_gauge!(LEASE_HELD, Unit::Count, "1 while this relay instance holds the lease, 0 on standby");
    metrics::describe_gauge!(
        LAST_SUCCESS_SECONDS,
        Unit::Seconds,
        "Unix time of the relay's last successful round (no error, no failed delivery)"
    );
}

/// The relay's backlog gauges: refreshed every `metrics_interval`, by the lease holder and the
/// stand-bys alike (aggregate with `max`). A topic whose backlog is gone is set to 0 rather
/// than left at its last value.
pub(crate) struct Gauges {
    relay: String,
    last: Option<Instant>,
    topics: HashSet<String>,
}

impl Gauges {
    pub(crate) fn new(relay: &str) -> Self {
        Self { relay: relay.to_owned(), last: None, topics: HashSet::new() }
    }

    /// Whether a refresh is due.
    pub(crate) fn due(&self, interval: Duration) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= interval)
    }

    pub(crate) fn report(&mut self, backlog: &[TopicBacklog]) {
        self.last = Some(Instant::now());
        let mut seen = HashSet::with_capacity(backlog.len());
        for t in backlog {
            self.set(&t.topic, t.pending as f64, t.parked as f64, t.oldest_pending_secs.unwrap_or(0.0));
            seen.insert(t.topic.clone());
        }
        for gone in self.topics.difference(&seen) {
            self.set(gone, 0.0, 0.0, 0.0);
        }
        self.topics = seen;
    }

    fn set(&self, topic: &str, pending: f64, parked: f64, oldest: f64) {
        let labels = [("relay", self.relay.clone()), ("topic", topic.to_owned())];
        metrics::gauge!(PENDING, &labels).set(pending);
        metrics::gauge!(PARKED, &labels).set(parked);
        metrics::gauge!(OLDEST_PENDING_SECONDS, &labels).set(oldest);
    }
}

pub(crate) fn lease_held(relay: &str, owner: Uuid, held: bool) {
    metrics::gauge!(LEASE_HELD, "relay" => relay.to_owned(), "owner" => owner.to_string()).set(if held {
        1.0
    } else {
        0.0
    });
}

pub(crate) fn last_success(relay: &str, at: SystemTime) {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LAST_SUCCESS_SECONDS, "relay" => relay.to_owned()).set(secs);
}

/// What one marked batch did: counters per topic, batch size and latency.
pub(crate) fn batch(relay: &str, size: usize, publish_seconds: f64) {
    metrics::histogram!(BATCH_SIZE, "relay" => relay.to_owned()).record(size as f64);
    metrics::histogram!(PUBLISH_SECONDS, "relay" => relay.to_owned()).record(publish_seconds);
}

/// The topic of each row of a batch, by seq, kept while the rows themselves go to `collect`.
pub(crate) struct TopicsOf {
    /// (seq, index in `names`), in seq order as claimed.
    seqs: Vec<(i64, usize)>,
    names: Vec<String>,
}

impl TopicsOf {
    pub(crate) fn new(rows: &[Claimed]) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut seqs = Vec::with_capacity(rows.len());
        for r in rows {
            let i = match names.iter().position(|n| *n == r.topic) {
                Some(i) => i,
                None => {
                    names.push(r.topic.clone());
                    names.len() - 1
                }
            };
            seqs.push((r.seq, i));
        }
        seqs.sort_unstable();
        Self { seqs, names }
    }

    pub(crate) fn topic(&self, seq: i64) -> &str {
        match self.seqs.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => &self.names[self.seqs[i].1],
            Err(_) => "",
        }
    }
}

/// Counts sent and failed rows per topic, and parked rows.
pub(crate) fn marked<'a>(
    relay: &str,
    sent: impl Iterator<Item = &'a str>,
    failed: impl Iterator<Item = &'a str>,
    parked: usize,
) {
    for (name, topics) in [(PUBLISHED_TOTAL, count(sent)), (PUBLISH_FAILURES_TOTAL, count(failed))] {
        for (topic, n) in topics {
            metrics::counter!(name, "relay" => relay.to_owned(), "topic" => topic.to_owned()).increment(n);
        }
    }
    if parked > 0 {
        metrics::counter!(PARKED_TOTAL, "relay" => relay.to_owned()).increment(parked as u64);
    }
}

/// Occurrences of each topic, in first-seen order (a batch has few topics: a linear scan).
fn count<'a>(topics: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = Vec::new();
    for t in topics {
        match out.iter_mut().find(|(seen, _)| *seen == t) {
            Some((_, n)) => *n += 1,
            None => out.push((t, 1)),
        }
    }
    out
}
