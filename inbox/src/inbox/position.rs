//! Where a newly assigned partition starts, and the checks of its stored position against the
//! log: the seek right after the assignment, the seeks librdkafka refused and are tried again,
//! and the first messages of an assignment, which decide whether the stored position is one in
//! this log. Separate from the loop's events (`consumer_loop`): this is the per-partition state
//! machine the inbox's recovery after a restore or a recreated topic rests on.

use std::collections::HashMap;
use std::time::Duration;

use outbox::db::Database;
use rdkafka::Offset;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};

use super::Loop;
use crate::rebalance::TopicPartition;
use crate::store::{StoredPosition, store};

/// Where a newly assigned partition stands relative to its stored position.
#[derive(Debug, Clone, Copy)]
pub(super) enum Position {
    /// No message forwarded yet in this assignment (or one was left for later): where to start.
    Start(Start),
    /// Sought to the record before the stored position, to check it is the record stored there.
    Verifying { next: i64, fingerprint: i64 },
    /// Sought to the stored position; everything librdkafka returns from now on is from there.
    Sought(i64),
    /// Sought to the beginning of the log: whatever comes next is its first message.
    Beginning,
    /// Forwarding; the next offset expected.
    Active(i64),
}

/// Where a partition starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    /// Where the group's committed Kafka offset put the consumer (`trust_committed_offsets`).
    Committed,
    /// At the beginning of the log (no stored position, or the log changed).
    Beginning,
    /// At a stored position; with the fingerprint of the record before it, when known.
    Stored { next: i64, fingerprint: Option<i64> },
}

/// A partition whose initial seek librdkafka refused (and no message arrived since).
fn is_deferred(position: Position) -> bool {
    matches!(position, Position::Start(Start::Beginning | Start::Stored { .. }))
}

impl<C: Database> Loop<C> {
    /// Where a newly assigned partition starts, and whether its stored position must be
    /// replaced because it belongs to another log.
    pub(super) fn start(&self, topic: &str, partition: i32, stored: Option<&StoredPosition>) -> (Start, bool) {
        let Some(stored) = stored else {
            // No stored position (a new group, or a restored database): Kafka's committed
            // offset may be ahead of what this database holds, so start at the beginning and
            // let dedup absorb what was handled already — unless told to trust it.
            let start = if self.shared.options.trust_committed_offsets { Start::Committed } else { Start::Beginning };
            return (start, false);
        };
        let current = self.shared.cluster_id.get().and_then(Option::as_deref);
        if let (Some(old), Some(new)) = (stored.cluster_id.as_deref(), current)
            && old != new
        {
            tracing::warn!(
                topic,
                partition,
                stored = stored.next_offset,
                old_cluster = old,
                new_cluster = new,
                "inbox: the stored position was written for another Kafka cluster; handling this partition \
                 from the beginning of its log (dedup absorbs what was handled already)"
            );
            return (Start::Beginning, true);
        }
        (Start::Stored { next: stored.next_offset, fingerprint: stored.fingerprint }, false)
    }

    /// Stored positions of the assigned partitions, retried until the database answers (or
    /// shutdown): starting without them could skip messages.
    pub(super) async fn load_positions(
        &self,
        partitions: &[TopicPartition],
    ) -> HashMap<TopicPartition, StoredPosition> {
        let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
        for (t, p) in partitions {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let o = &self.shared.options;
        let mut delays = o.retry.delays();
        'retry: loop {
            let mut out = HashMap::new();
            let mut failure = None;
            match self.shared.pool.get().await {
                Ok(mut conn) => {
                    for (topic, parts) in &by_topic {
                        match store(&mut *conn).load_positions(&o.group, topic, parts).await {
                            Ok(found) => out.extend(found.into_iter().map(|(p, n)| ((topic.to_string(), p), n))),
                            Err(e) => {
                                failure = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(e) => failure = Some(e.to_string()),
            }
            let Some(error) = failure else {
                return out;
            };
            tracing::warn!(%error, "inbox: cannot load stored positions; retrying");
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return HashMap::new(),
                _ = tokio::time::sleep(delays.next().unwrap_or(o.retry.max)) => {}
            }
            continue 'retry;
        }
    }

    /// Seeks a newly assigned partition to where it starts right away, so it gets there even
    /// when no message would arrive where Kafka's committed offset put it (a restored database
    /// behind that offset, and no new traffic). When librdkafka refuses the seek this early,
    /// the first message of the partition does it (see `route`).
    pub(super) fn initial_seek(&self, topic: &str, partition: i32, start: Start) -> Position {
        let (to, then) = match start {
            Start::Committed => return Position::Start(start),
            Start::Beginning => (Offset::Beginning, Position::Beginning),
            Start::Stored { next, fingerprint: Some(fingerprint) } if next > 0 => {
                (Offset::Offset(next - 1), Position::Verifying { next, fingerprint })
            }
            Start::Stored { next, .. } => (Offset::Offset(next), Position::Sought(next)),
        };
        match self.consumer.seek(topic, partition, to, Duration::from_secs(10)) {
            Ok(()) => then,
            Err(e) => {
                tracing::debug!(error = %e, topic, partition, "inbox: cannot seek yet; seeking at the first message");
                Position::Start(start)
            }
        }
    }

    pub(super) fn has_deferred_seeks(&self) -> bool {
        self.slots.values().flat_map(|m| m.values()).any(|slot| is_deferred(slot.position))
    }

    pub(super) fn retry_seeks(&mut self) {
        let deferred: Vec<(String, i32, Start)> = self
            .slots
            .iter()
            .flat_map(|(topic, m)| m.iter().map(move |(p, slot)| (topic, *p, slot.position)))
            .filter_map(|(topic, p, position)| match position {
                Position::Start(start) if is_deferred(position) => Some((topic.clone(), p, start)),
                _ => None,
            })
            .collect();
        for (topic, partition, start) in deferred {
            let position = self.initial_seek(&topic, partition, start);
            if let Some(slot) = self.slots.get_mut(&topic).and_then(|m| m.get_mut(&partition))
                && matches!(slot.position, Position::Start(_))
            {
                slot.position = position;
            }
        }
    }

    /// Hands a message to its partition's task, after putting the partition where it starts:
    /// the first message of an assignment decides whether to seek (Kafka's committed offset is
    /// only a hint, and may be behind or, after a restore, ahead). A stored position is checked
    /// against the log first: the record before it must be the one stored with it, or the log
    /// is another one (topic recreated, new cluster) and the partition starts at its beginning.
    pub(super) fn route(&mut self, msg: OwnedMessage) {
        let (topic, partition, offset) = (msg.topic().to_owned(), msg.partition(), msg.offset());
        let Some(slot) = self.slots.get_mut(&topic).and_then(|m| m.get_mut(&partition)) else {
            tracing::trace!(topic, partition, "inbox: message of an unassigned partition dropped");
            return;
        };
        let consumer = &self.consumer;
        let seek = |to: Offset| match consumer.seek(&topic, partition, to, Duration::from_secs(10)) {
            // seek() bumps the partition's fetch version at once: nothing read before it is
            // returned after it.
            Ok(()) => true,
            // Stay put: the next message tries again; nothing is forwarded meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, topic, partition, "inbox: cannot seek");
                false
            }
        };
        match slot.position {
            Position::Start(_) if slot.flow.is_paused() => return, // read again after resume
            Position::Start(Start::Committed) => {}
            Position::Start(Start::Beginning) => {
                if seek(Offset::Beginning) {
                    slot.position = Position::Beginning;
                }
                return;
            }
            Position::Start(Start::Stored { next, fingerprint: Some(fingerprint) }) if next > 0 => {
                if offset != next - 1 {
                    if seek(Offset::Offset(next - 1)) {
                        slot.position = Position::Verifying { next, fingerprint };
                    }
                    return;
                }
                slot.position = Position::Verifying { next, fingerprint };
                return self.route(msg);
            }
            Position::Start(Start::Stored { next, .. }) if offset != next => {
                if seek(Offset::Offset(next)) {
                    tracing::debug!(
                        topic,
                        partition,
                        from = offset,
                        to = next,
                        "inbox: resuming from the stored position"
                    );
                    slot.position = Position::Sought(next);
                }
                return;
            }
            Position::Verifying { next, fingerprint } if offset == next - 1 => {
                let found = crate::raw_headers::fingerprint(&msg);
                if found == fingerprint {
                    slot.position = Position::Active(next); // handled already: the position follows it
                } else {
                    tracing::warn!(
                        topic,
                        partition,
                        stored = next,
                        old_fingerprint = format_args!("{fingerprint:016x}"),
                        new_fingerprint = format_args!("{found:016x}"),
                        cluster = self.shared.cluster_id.get().and_then(Option::as_deref).unwrap_or("unknown"),
                        "inbox: the record before the stored position is not the one handled there: this is \
                         another log (topic recreated, or another cluster); handling the partition from the \
                         beginning of its log (dedup absorbs what was handled already)"
                    );
                    slot.flow.replace_position();
                    if seek(Offset::Beginning) {
                        slot.position = Position::Beginning;
                    } else {
                        slot.position = Position::Start(Start::Beginning);
                    }
                }
                return;
            }
            Position::Verifying { next, .. } | Position::Sought(next) if offset < next => {
                // Nothing read before the seek comes back after it, so a lower offset means
                // librdkafka found the offset out of range and reset: the log no longer reaches
                // the stored position (topic deleted and recreated, or a new cluster). Skipping
                // would lose the new log's messages; handle them, dedup by message id keeps
                // anything already handled from taking effect twice, and the new log's
                // positions replace the old one.
                tracing::warn!(
                    topic,
                    partition,
                    stored = next,
                    offset,
                    "inbox: the partition's log restarts below the stored position (topic recreated?); \
                     handling from this offset"
                );
                slot.flow.replace_position();
            }
            Position::Active(next) if offset < next => return,
            Position::Start(_)
            | Position::Verifying { .. }
            | Position::Sought(_)
            | Position::Beginning
            | Position::Active(_) => {}
        }
        if !slot.flow.admit(offset, crate::raw_headers::size(&msg)) {
            // Over the partition's byte budget: drop it and read it again from here once the
            // partition has drained (it is paused now).
            slot.position = Position::Start(Start::Stored { next: offset, fingerprint: None });
            return;
        }
        slot.position = Position::Active(offset + 1);
        let _ = slot.tx.send(msg);
    }
}
