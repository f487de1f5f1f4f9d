//! One round of the relay's loop: hold (or renew) the lease, claim due rows, produce them into
//! the pipeline of batches in flight, and mark a batch under the fence once Kafka has
//! answered for every message of it. Separate from the loop in the parent module, which only
//! decides how long to wait between rounds and what a failed round costs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use super::{AfterSend, Lease, PIPELINE_DEPTH, Pipeline, Relay, Round, publish};
use crate::Result;
use crate::db::{Database, Fence, InFlight, Marks};

/// How often the lease holder releases held rows whose failing row was retried or discarded by
/// an operator while the hold was being written (see `Database::release_orphans`).
/// One statement over the failing and held rows only (a partial index), so it is cheap.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

impl<C: Database> Relay<C> {
    pub(super) async fn round(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
        wake: &Notify,
        shutdown: &CancellationToken,
        gauges: &mut crate::metrics::Gauges,
    ) -> Result<Round> {
        if pipeline.quiet(self.wakeup.seen()) {
            // The last claim found nothing more to publish and nothing was committed here
            // since: instead of claiming again, wait for the oldest batch's acknowledgements or
            // for news, whichever comes first.
            let wakeup = self.wakeup.clone();
            let local = wakeup.notified();
            tokio::pin!(local);
            local.as_mut().enable();
            let still_quiet = pipeline.quiet(self.wakeup.seen()); // checked again after `enable`: no signal lost
            if let Some(front) = pipeline.window.front_mut()
                && still_quiet
            {
                let deadline = front.deadline(self.sink.delivery_timeout());
                tokio::select! {
                    _ = front.acked() => {}
                    // Past its delivery timeout: `finish` fails what is still in flight.
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = &mut local => {}
                    _ = wake.notified() => pipeline.drained = None,
                    _ = shutdown.cancelled() => {}
                }
            }
            if pipeline.quiet(self.wakeup.seen())
                && let Some(epoch) = lease.epoch
                && let Some(batch) = pipeline.window.pop_front()
            {
                self.finish(batch, lease, epoch, shutdown).await?;
                if !pipeline.window.is_empty() {
                    return Ok(Round::Busy);
                }
                // Drained, and the claim that said so is the last word: no empty claim now.
                pipeline.held.clear();
                self.purged.store(false, Ordering::Relaxed);
                pipeline.drained = None;
                return Ok(Round::Idle);
            }
        }
        let mut conn = self.pool.get().await?;
        if lease.epoch.is_none() || lease.renewed.elapsed() >= self.config.lease / 3 {
            let renewed = Instant::now();
            let epoch = conn.acquire_lease(&self.config.name, lease.owner, self.config.lease).await?;
            if epoch != lease.epoch {
                match epoch {
                    Some(e) => info!(relay = %self.config.name, epoch = e, "relay holds the lease"),
                    None if lease.epoch.is_some() => {
                        warn!(relay = %self.config.name, "relay lost the lease")
                    }
                    None => {
                        debug!(relay = %self.config.name, "lease held by another relay; standing by")
                    }
                }
            }
            let rival = if epoch.is_none() { conn.rival_lease(&self.config.name).await? } else { None };
            if let (None, Some(held), Some(_)) = (epoch, lease.epoch, &rival) {
                // Yielding to a relay of another name (both got in at once): release ours at
                // once, or the rival's fence refuses its marks until ours expires.
                conn.release_lease(&self.config.name, lease.owner, held).await?;
            }
            lease.epoch = epoch;
            lease.renewed = renewed;
            if rival != lease.rival {
                if let Some(other) = &rival {
                    tracing::error!(
                        relay = %self.config.name,
                        other = %other,
                        "a relay named `{other}` holds a live lease on this outbox: relays over one outbox table \
                         must share one name (two names would both publish every message); standing by until it stops"
                    );
                }
                lease.rival = rival;
            }
        }
        if gauges.due(self.config.metrics_interval) {
            // Stand-bys too: the backlog stays visible while no instance can publish.
            let backlog = conn.backlog().await?;
            gauges.report(&backlog);
            self.health.backlog(&backlog);
            crate::metrics::lease_held(&self.config.name, lease.owner, lease.epoch.is_some());
        }
        let Some(epoch) = lease.epoch else {
            // Whatever is still in flight stays unmarked ("maybe sent"); the new leader resends it.
            pipeline.window.clear();
            pipeline.held.clear();
            return Ok(Round::Standby);
        };
        if pipeline.last_sweep.is_none_or(|t| t.elapsed() >= ORPHAN_SWEEP_INTERVAL) {
            pipeline.last_sweep = Some(Instant::now());
            let released = conn.release_orphans().await?;
            if released > 0 {
                debug!(released, "relay: released held rows with no failing row ahead of them");
            }
        }
        // After a purge (a failed delivery or a timed-out batch) nothing more is produced
        // until the window is marked, so no later message of a failed key can follow it out.
        // An empty window has nothing left to wait for, however it was emptied (marked,
        // dropped on standby or after a failed round).
        if pipeline.window.is_empty() {
            self.purged.store(false, Ordering::Relaxed);
        }
        let claim =
            !shutdown.is_cancelled() && pipeline.window.len() < PIPELINE_DEPTH && !self.purged.load(Ordering::Relaxed);
        let in_flight = match (pipeline.window.front(), pipeline.window.back()) {
            (Some(first), Some(last)) => InFlight {
                first: first.first_seq(),
                last: last.last_seq(),
                rows: pipeline.window.iter().map(|b| b.rows.len() as i64).sum(),
            },
            _ => InFlight { first: 1, last: 0, rows: 0 },
        };
        if claim {
            let seen = self.wakeup.seen();
            let holder = self.fence(lease.owner, epoch);
            let limit = self.config.batch_size as i64;
            let rows = if self.pool.transaction_pooled() {
                conn.claim_in_transaction(limit, in_flight, holder).await?
            } else {
                conn.claim(limit, in_flight, holder).await?
            };
            pipeline.drained = (rows.len() < self.config.batch_size).then_some(seen);
            // Never hold a pooled connection while waiting for Kafka; released, it stays warm
            // for the mark or the next claim (no check-out test, see `db::ConnPool`).
            conn.release();
            if !rows.is_empty() {
                let purged = self.purged.clone();
                let batch = publish::produce(&*self.sink, rows, &self.config.source, &mut pipeline.held, purged).await;
                pipeline.window.push_back(batch);
                if pipeline.window.len() < PIPELINE_DEPTH {
                    return Ok(Round::Busy);
                }
            }
        } else {
            conn.release();
        }
        let Some(batch) = pipeline.window.pop_front() else {
            pipeline.held.clear();
            return Ok(Round::Idle);
        };
        self.finish(batch, lease, epoch, shutdown).await?;
        if pipeline.window.is_empty() {
            pipeline.held.clear();
            self.purged.store(false, Ordering::Relaxed);
        }
        Ok(Round::Busy)
    }

    fn fence(&self, owner: Uuid, epoch: i64) -> Fence<'_> {
        Fence { lease: &self.config.name, owner, epoch, max_attempts: self.config.max_attempts as i32 }
    }

    /// Waits for a produced batch's delivery reports and marks it under the fence.
    pub(super) async fn finish(
        &mut self,
        batch: publish::Produced,
        lease: &mut Lease,
        epoch: i64,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let n = batch.rows.len();
        let span = info_span!("outbox.relay.batch", relay = %self.config.name, epoch, size = n);
        async {
            let produced_at = batch.produced_at();
            let topics = crate::metrics::TopicsOf::new(&batch.rows);
            let outcome = publish::collect(batch, &self.config, self.sink.delivery_timeout(), shutdown).await;
            crate::metrics::batch(&self.config.name, n, produced_at.elapsed().as_secs_f64());
            let mut conn = self.pool.get().await?;
            let marks = Marks {
                sent: &outcome.sent,
                delete_sent: matches!(self.config.after_send, AfterSend::Delete),
                failures: &outcome.failures,
                hold: &outcome.hold,
                release: &outcome.release,
            };
            let marked = conn.mark(self.fence(lease.owner, epoch), &marks).await?;
            conn.release();
            match marked {
                None => {
                    warn!(relay = %self.config.name, epoch, "fenced: another relay took the lease; nothing marked");
                    lease.epoch = None;
                }
                Some(m) => {
                    self.marked = true;
                    if m.held > 0 || m.released > 0 {
                        debug!(held = m.held, released = m.released, "rows held behind a failing row of their key");
                    }
                    crate::metrics::marked(
                        &self.config.name,
                        outcome.sent.iter().map(|&seq| topics.topic(seq)),
                        outcome.failures.iter().map(|f| topics.topic(f.seq)),
                        m.parked,
                    );
                    if m.failed > 0 {
                        self.delivery_failed = true;
                        warn!(sent = m.sent, failed = m.failed, parked = m.parked, "batch had delivery failures");
                    } else {
                        debug!(sent = m.sent, "batch published");
                    }
                }
            }
            if outcome.fatal {
                // A sink that hit a fatal error (an idempotent producer's) is rebuilt. Failing
                // the round makes the loop back off (a sink that turns fatal at once again is
                // not rebuilt in a tight loop) and drops the batches sent through the old one.
                return Err(self.sink.recover());
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}
