//! Per-partition flow control: how much the consumer loop may buffer for one partition's task
//! before it pauses the partition in librdkafka. Shared by the consumer loop, the partition task
//! and the processing of a batch; names none of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer as _;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::shared::Consumer;

/// Per-partition backpressure, in messages and in bytes. The buffer between the consumer loop
/// and a partition's task — and the batch that task has in hand — is bounded by pausing the
/// partition in librdkafka, not by blocking the loop, so one slow partition never holds the
/// others back. librdkafka discards what it prefetched for a paused partition and fetches it
/// again from the last message handed out on resume.
///
/// Bytes (key + payload + headers) count from the moment the loop hands a message over until
/// the batch holding it is finished. A message that would take the partition past
/// `max_bytes` is not buffered: the partition pauses and the message is read again once the
/// partition has drained (see `Loop::route`). So a partition never holds more than
/// `max_bytes`, except that one record larger than that on its own is let through alone.
pub(crate) struct Flow {
    state: Mutex<FlowState>,
    high: usize,
    low: usize,
    max_bytes: usize,
    consumer: Arc<Consumer>,
    topic: String,
    partition: i32,
    /// The log changed under the stored position: the next commit replaces it (see
    /// `NewPosition::replace`).
    replace: AtomicBool,
    /// The inbox's high-water mark of bytes held by one partition.
    high_water: Arc<AtomicUsize>,
}

#[derive(Default)]
struct FlowState {
    queued: usize,
    bytes: usize,
    paused: bool,
    closed: bool,
    /// A message refused for lack of room: the partition is sought back to it on resume (it
    /// may have been the last one of the log, so no later message would trigger the seek).
    refetch: Option<i64>,
}

impl Flow {
    pub(crate) fn new(
        consumer: Arc<Consumer>,
        topic: &str,
        partition: i32,
        batch_size: usize,
        max_bytes: usize,
        high_water: Arc<AtomicUsize>,
    ) -> Self {
        let high = (batch_size * 4).max(256);
        Self {
            state: Mutex::new(FlowState::default()),
            high,
            low: high / 4,
            max_bytes,
            consumer,
            topic: topic.to_owned(),
            partition,
            replace: AtomicBool::new(false),
            high_water,
        }
    }

    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The consumer loop wants to buffer the message at `offset`, of `size` bytes. Returns
    /// false — and pauses the partition — when it does not fit; the caller then drops it, and
    /// the partition is sought back to it when it resumes.
    pub(crate) fn admit(&self, offset: i64, size: usize) -> bool {
        let mut s = self.lock();
        if s.bytes > 0 && s.bytes.saturating_add(size) > self.max_bytes {
            s.refetch = Some(s.refetch.map_or(offset, |o| o.min(offset)));
            self.pause(&mut s);
            return false;
        }
        s.queued += 1;
        s.bytes = s.bytes.saturating_add(size);
        self.high_water.fetch_max(s.bytes, Ordering::Relaxed);
        if s.queued >= self.high || s.bytes >= self.max_bytes {
            self.pause(&mut s);
        }
        true
    }

    /// Whether the partition is paused (then a message that arrives anyway is left for later).
    pub(crate) fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// The partition's task took `n` messages.
    pub(crate) fn taken(&self, n: usize) {
        let mut s = self.lock();
        s.queued = s.queued.saturating_sub(n);
        self.maybe_resume(&mut s);
    }

    /// The partition's task finished a batch of `bytes`.
    pub(crate) fn finished(&self, bytes: usize) {
        let mut s = self.lock();
        s.bytes = s.bytes.saturating_sub(bytes);
        self.maybe_resume(&mut s);
    }

    fn maybe_resume(&self, s: &mut FlowState) {
        if s.paused && !s.closed && s.queued <= self.low && (s.bytes == 0 || s.bytes <= self.max_bytes / 2) {
            self.resume(s);
        }
    }

    fn pause(&self, s: &mut FlowState) {
        if s.paused || s.closed {
            return;
        }
        match self.consumer.pause(&self.tpl()) {
            Ok(()) => s.paused = true,
            Err(e) => tracing::debug!(error = %e, "inbox: cannot pause partition"),
        }
    }

    /// The partition was revoked: never leave it paused, or it would stay paused when it is
    /// assigned again (librdkafka keeps an application pause across assignments).
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        if s.paused {
            self.resume(&mut s);
        }
    }

    fn resume(&self, s: &mut FlowState) {
        match self.consumer.resume(&self.tpl()) {
            Ok(()) => s.paused = false,
            Err(e) => {
                tracing::debug!(error = %e, "inbox: cannot resume partition");
                return;
            }
        }
        if let Some(offset) = s.refetch.take()
            && !s.closed
        {
            // Zero timeout: librdkafka starts the seek and returns at once (this runs on the
            // partition's task). Should it not happen, the next message of the partition makes
            // the consumer loop seek (its position is still "start at `offset`").
            let to = rdkafka::Offset::Offset(offset);
            if let Err(e) = self.consumer.seek(&self.topic, self.partition, to, std::time::Duration::ZERO) {
                tracing::debug!(error = %e, offset, "inbox: cannot seek back to the refused message");
            }
        }
    }

    /// The loop found the partition's log changed under the stored position.
    pub(crate) fn replace_position(&self) {
        self.replace.store(true, Ordering::SeqCst);
    }

    /// Whether the next stored position replaces the old one.
    pub(crate) fn replace_pending(&self) -> bool {
        self.replace.load(Ordering::SeqCst)
    }

    /// A position was committed (with `replace_pending()` as it was).
    pub(crate) fn replaced(&self) {
        self.replace.store(false, Ordering::SeqCst);
    }
}
