//! One task per assigned partition: takes what the consumer loop has buffered, up to a batch,
//! and processes it. Partitions run concurrently; messages of one partition strictly in order.

use std::sync::Arc;

use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use outbox::Database;

use crate::flow::Flow;
use crate::process::{Processor, Progress};
use crate::shared::{Consumer, Shared};

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
            flow: &self.flow,
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
            let bytes: usize = batch.iter().map(crate::raw_headers::size).sum();
            self.flow.taken(batch.len());
            // A handler's `cx.publish` wakes the relays after its transaction's commit
            // (`Processor::committed`); the scope collects what `publish` stored.
            let progress = self.shared.wakeup.signal_after(processor.process(batch)).await;
            self.flow.finished(bytes);
            if progress == Progress::Interrupted {
                // No longer retrying here (revoked or shutting down).
                self.shared.health.cleared(&self.topic, self.partition);
                return;
            }
        }
    }
}
