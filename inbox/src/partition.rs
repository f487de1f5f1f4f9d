//! One task per assigned partition: takes what the consumer loop has buffered, up to a batch,
//! and processes it. Partitions run concurrently; messages of one partition strictly in order.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use outbox::Database;

use crate::inbox::{Consumer, Shared};
use crate::process::{Processor, Progress};

/// Per-partition backpressure. The buffer between the consumer loop and a partition's task is
/// bounded by pausing the partition in librdkafka when it is full, not by blocking the loop,
/// so one slow partition never holds the others back. librdkafka discards what it prefetched
/// for a paused partition and fetches it again from the last message handed out on resume.
pub(crate) struct Flow {
    state: Mutex<FlowState>,
    high: usize,
    low: usize,
    consumer: Arc<Consumer>,
    topic: String,
    partition: i32,
}

#[derive(Default)]
struct FlowState {
    queued: usize,
    paused: bool,
    closed: bool,
}

impl Flow {
    pub(crate) fn new(consumer: Arc<Consumer>, topic: &str, partition: i32, batch_size: usize) -> Self {
        let high = (batch_size * 4).max(256);
        Self {
            state: Mutex::new(FlowState::default()),
            high,
            low: high / 4,
            consumer,
            topic: topic.to_owned(),
            partition,
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

    /// The consumer loop buffered one more message.
    pub(crate) fn pushed(&self) {
        let mut s = self.lock();
        s.queued += 1;
        if !s.paused && !s.closed && s.queued >= self.high {
            match self.consumer.pause(&self.tpl()) {
                Ok(()) => s.paused = true,
                Err(e) => tracing::debug!(error = %e, "inbox: cannot pause partition"),
            }
        }
    }

    /// The partition's task took `n` messages.
    fn taken(&self, n: usize) {
        let mut s = self.lock();
        s.queued = s.queued.saturating_sub(n);
        if s.paused && !s.closed && s.queued <= self.low {
            self.resume(&mut s);
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
            Err(e) => tracing::debug!(error = %e, "inbox: cannot resume partition"),
        }
    }
}

pub(crate) struct PartitionWorker<C: Database> {
    pub shared: Arc<Shared<C>>,
    pub consumer: Arc<Consumer>,
    pub topic: String,
    pub partition: i32,
    pub rx: UnboundedReceiver<OwnedMessage>,
    pub flow: Arc<Flow>,
    /// Cancelled on shutdown and on revocation: finish the batch in hand, then return.
    pub stop: CancellationToken,
}

impl<C: Database> PartitionWorker<C> {
    pub(crate) async fn run(mut self) {
        let batch_size = self.shared.options.batch_size;
        let processor = Processor {
            shared: &self.shared,
            consumer: &self.consumer,
            topic: &self.topic,
            partition: self.partition,
            stop: &self.stop,
        };
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                m = self.rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let mut batch = Vec::with_capacity(batch_size.min(self.rx.len() + 1));
            batch.push(first);
            while batch.len() < batch_size {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.flow.taken(batch.len());
            if processor.process(batch).await == Progress::Interrupted {
                return;
            }
        }
    }
}
