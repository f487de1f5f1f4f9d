//! [`InboxHealth`]: a cheap, cloneable handle on an inbox's health for a readiness endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub use outbox::health::Unhealthy;
use outbox::health::secs;

/// What an inbox is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxState {
    /// Built, or `run` is checking the schema and connecting.
    Starting,
    /// Subscribed and consuming.
    Running,
    /// `Inbox::run` has returned.
    Stopped,
}

/// A partition whose current message has not been committed yet after failures: its handler
/// keeps failing and is being retried, or the database refuses the inbox's own statements.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the message being retried.
    pub offset: i64,
    /// Since when (the first failure of this message).
    pub since: SystemTime,
    /// How long ago that was.
    pub retrying_for: Duration,
    /// Failures so far.
    pub failures: u32,
    /// The last error.
    pub last_error: String,
}

/// What an [`InboxHealth`] handle reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStatus {
    /// The consumer group.
    pub group: String,
    /// Starting, running or stopped.
    pub state: InboxState,
    /// Partitions retrying a message right now, longest first.
    pub retrying: Vec<StuckPartition>,
}

/// When an inbox counts as unhealthy. See [`InboxHealth::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxThresholds {
    /// A partition retrying one message for longer than this is stuck. Default 60 s (the
    /// default retries of a failing handler take about 1.5 s before it is dead-lettered; only
    /// a database outage or a long retry backoff keeps a partition retrying that long).
    pub max_retrying: Duration,
}

impl Default for InboxThresholds {
    fn default() -> Self {
        Self { max_retrying: Duration::from_secs(60) }
    }
}

impl InboxThresholds {
    /// Sets [`max_retrying`](Self::max_retrying).
    pub fn max_retrying(mut self, d: Duration) -> Self {
        self.max_retrying = d;
        self
    }
}

/// A cheap, cloneable handle on an inbox's health, from [`Inbox::health`](crate::Inbox::health):
/// reading it costs a mutex lock, no query.
#[derive(Debug, Clone)]
pub struct InboxHealth(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    group: String,
    state: InboxState,
    retrying: HashMap<(String, i32), Retrying>,
}

#[derive(Debug)]
struct Retrying {
    offset: i64,
    since: (Instant, SystemTime),
    failures: u32,
    last_error: String,
}

impl InboxHealth {
    pub(crate) fn new(group: &str) -> Self {
        let state = State { group: group.to_owned(), state: InboxState::Starting, retrying: HashMap::new() };
        Self(Arc::new(Mutex::new(state)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the inbox knows about itself right now.
    pub fn status(&self) -> InboxStatus {
        let s = self.lock();
        let mut retrying: Vec<StuckPartition> = s
            .retrying
            .iter()
            .map(|((topic, partition), r)| StuckPartition {
                topic: topic.clone(),
                partition: *partition,
                offset: r.offset,
                since: r.since.1,
                retrying_for: r.since.0.elapsed(),
                failures: r.failures,
                last_error: r.last_error.clone(),
            })
            .collect();
        retrying.sort_by_key(|p| std::cmp::Reverse(p.retrying_for));
        InboxStatus { group: s.group.clone(), state: s.state, retrying }
    }

    /// `Ok(())` when running with no stuck partition, otherwise every reason it is not.
    pub fn check(&self, thresholds: &InboxThresholds) -> Result<(), Unhealthy> {
        let s = self.status();
        let mut reasons = Vec::new();
        match s.state {
            InboxState::Starting => reasons.push("the inbox has not started consuming yet".to_owned()),
            InboxState::Stopped => reasons.push("the inbox has stopped".to_owned()),
            InboxState::Running => {}
        }
        for p in s.retrying.iter().filter(|p| p.retrying_for > thresholds.max_retrying) {
            reasons.push(format!(
                "partition {}/{} has been retrying offset {} for {} (threshold {}, {} failures): {}",
                p.topic,
                p.partition,
                p.offset,
                secs(p.retrying_for),
                secs(thresholds.max_retrying),
                p.failures,
                p.last_error
            ));
        }
        Unhealthy::from_reasons(reasons)
    }

    pub(crate) fn set_state(&self, state: InboxState) {
        let mut s = self.lock();
        s.state = state;
        if state == InboxState::Stopped {
            s.retrying.clear();
        }
    }

    /// A message of the partition failed and is retried.
    pub(crate) fn failed(&self, topic: &str, partition: i32, offset: i64, error: &str) {
        let mut s = self.lock();
        let key = (topic.to_owned(), partition);
        let r = s.retrying.entry(key).or_insert_with(|| Retrying {
            offset,
            since: (Instant::now(), SystemTime::now()),
            failures: 0,
            last_error: String::new(),
        });
        if r.offset != offset {
            *r =
                Retrying { offset, since: (Instant::now(), SystemTime::now()), failures: 0, last_error: String::new() };
        }
        r.failures += 1;
        r.last_error = error.to_owned();
    }

    /// The partition committed (or is no longer this inbox's): not retrying any more.
    pub(crate) fn cleared(&self, topic: &str, partition: i32) {
        let mut s = self.lock();
        if !s.retrying.is_empty() {
            s.retrying.remove(&(topic.to_owned(), partition));
        }
    }
}
