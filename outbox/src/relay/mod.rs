//! The relay: publishes stored events to Kafka and marks them sent.
//!
//! One loop per process, started with a shutdown token:
//!
//! ```no_run
//! # async fn run(pool: outbox::Pool) -> outbox::Result<()> {
//! use outbox::{KafkaConfig, relay::Relay};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let relay = Relay::builder(pool, KafkaConfig::new("localhost:9092")).build()?;
//! relay.run(shutdown.clone()).await?;
//! # Ok(()) }
//! ```
//!
//! Each round: hold the lease (one publishing relay per `name`), claim due rows in `seq` order,
//! produce the whole batch without awaiting messages one at a time, wait for every delivery
//! report, then — in one transaction under the fencing check — delete (or mark) the
//! acknowledged rows and record failures with backoff. A row is never marked before Kafka
//! acknowledged it; any error means "maybe sent" and the row is produced again.
//!
//! While one batch is in flight the next is claimed and produced (two at most). When a claim
//! returns less than a full batch, the relay does not claim again right away: it waits for the
//! in-flight batch's reports or for news (a commit in this process, a NOTIFY), whichever comes
//! first — at a low rate, one claim per event instead of three.
//!
//! Here: the [`Relay`], its start-up and its loop between rounds (waits, backoff, shutdown).
//! A round itself (lease, claim, produce, mark) is in `round`, handing a batch to the sink and
//! collecting its answers into what the mark records in `publish`, the seam to where messages go
//! (what a sink must guarantee) in `sink` and the Kafka sink in `sink::kafka`, the builder and
//! options in `config`, the retention cleanup of [`AfterSend::Keep`] in `retention`.

mod config;
mod publish;
mod retention;
mod round;
mod sink;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

pub use config::{AfterSend, RelayBuilder, RelayConfig};

use crate::db::{ConnPool, Database};
use crate::health::{RelayHealth, RelayRole};
use crate::{Error, KafkaConfig, Result, RetryPolicy, Wakeup, startup, wakeup};

use retention::cleanup;

/// Publishes the outbox to Kafka. See the [module docs](self).
pub struct Relay<C: Database = AsyncPgConnection> {
    pool: ConnPool<C>,
    /// Where the messages go (Kafka; see `sink` for what a sink guarantees).
    sink: Box<dyn sink::Sink>,
    config: RelayConfig,
    /// A batch was marked since the run loop last looked: the relay is making progress.
    marked: bool,
    /// Everything in flight was purged (a delivery failed, a batch timed out, or shutdown): no
    /// claim until every batch of the window is marked (or the window is dropped). Set by
    /// `publish` wherever it purges.
    purged: Arc<AtomicBool>,
    /// This instance's lease owner id, and what it reports about itself (see [`Relay::health`]).
    owner: Uuid,
    health: RelayHealth,
    /// A delivery failed in the current round: it does not count as a successful one.
    delivery_failed: bool,
    /// What this process's writers signal (see [`Relay::wakeup`]).
    pub(crate) wakeup: Wakeup,
}

impl<C: Database> std::fmt::Debug for Relay<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("config", &self.config).finish_non_exhaustive()
    }
}

struct Lease {
    owner: Uuid,
    epoch: Option<i64>,
    renewed: Instant,
    /// A relay of another name holding a live lease on this outbox (logged once per change).
    rival: Option<String>,
}

impl<C: Database> RelayBuilder<C> {
    /// The wake-up line the relay listens to (default [`Wakeup::shared`], what
    /// [`crate::transaction`] signals). Give each relay of a multi-database process its own
    /// ([`Wakeup::new`]) and commit through it: see [`Wakeup`].
    pub fn wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }
}

/// The pause after a failed round (the database or the producer), by failures in a row.
const ROUND_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

impl<C: Database> Relay<C> {
    /// A relay over `pool` (PostgreSQL, or SQLite with the `sqlite` feature) publishing with
    /// `kafka`; see [`RelayBuilder`] for the options.
    pub fn builder<M>(pool: bb8::Pool<M>, kafka: KafkaConfig) -> RelayBuilder<C>
    where
        M: bb8::ManageConnection<Connection = C>,
        M::Error: std::error::Error,
    {
        RelayBuilder { pool: ConnPool::new(pool), kafka, config: RelayConfig::default(), wakeup: Wakeup::shared() }
    }

    /// A cheap, cloneable handle on this relay's health (leader or standby, last successful
    /// round, backlog), for a readiness endpoint; take it before [`run`](Self::run) consumes
    /// the relay. See [`crate::health`].
    pub fn health(&self) -> RelayHealth {
        self.health.clone()
    }

    /// The wake-up line this relay listens to: commit through
    /// [`Wakeup::transaction`](crate::Wakeup::transaction) on it and the relay claims at once.
    /// [`Wakeup::shared`](crate::Wakeup::shared) (what [`crate::transaction`] signals) unless the
    /// builder was given another ([`RelayBuilder::wakeup`]).
    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// Runs until `shutdown` is cancelled.
    ///
    /// Start-up fails with an error instead of retrying: a schema that is missing or behind
    /// ([`ErrorKind::Schema`](crate::ErrorKind::Schema), at once), a database that cannot be
    /// used, brokers that refuse the TLS handshake or the credentials (librdkafka's reason is in
    /// the error), brokers none of which answered, or a first round that fails for good (a missing
    /// grant) or still fails at the deadline, each within
    /// [`startup_timeout`](RelayBuilder::startup_timeout). Rows produced meanwhile stay unsent.
    ///
    /// After a healthy start, database and broker errors are logged and retried, never
    /// returned: the loop survives lost connections and broker outages. On shutdown it stops
    /// claiming, gives the in-flight batch up to `shutdown_timeout` to be acknowledged, marks
    /// what was acknowledged, releases the lease and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.startup_timeout;
        if !startup::wait_for_schema(&self.pool, &crate::MIGRATIONS, deadline, &shutdown).await? {
            return Ok(());
        }
        // The brokers are probed beside the first rounds (a relay started during a short outage
        // delivers as soon as they are back); a probe that fails stops the relay like a shutdown
        // would, and `run` returns its error.
        let stop = shutdown.child_token();
        let startup_failed: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
        let probe = {
            let (stop, failed) = (stop.clone(), startup_failed.clone());
            let probe = self.sink.probe(deadline, stop.clone());
            tokio::spawn(async move {
                if let Err(e) = probe.await {
                    tracing::error!(error = %e, "relay start-up failed");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop.cancel();
                }
            })
        };
        let result = self.run_until(stop.clone(), deadline).await;
        stop.cancel(); // ends the probe's thread too
        probe.abort();
        match startup_failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// The run loop. Until its first successful round the relay is starting: an error that
    /// retrying cannot cure (`!is_transient()`: a missing grant, a constraint) or any error once
    /// `startup_deadline` has passed ends it, and `run` returns that error.
    async fn run_until(&mut self, shutdown: CancellationToken, startup_deadline: tokio::time::Instant) -> Result<()> {
        let mut started = false;
        let mut startup_error: Option<Error> = None;
        let mut lease = Lease { owner: self.owner, epoch: None, renewed: Instant::now(), rival: None };
        let wake = Arc::new(Notify::new());
        let tasks = tokio_util::task::TaskTracker::new();
        let background = shutdown.child_token();
        match self.config.listen {
            Some(false) => {}
            None if self.pool.transaction_pooled() => {
                info!(relay = %self.config.name, "relay: no LISTEN behind a transaction pooler (outbox::pooler::Manager); polling every {:?}", self.config.poll_interval);
            }
            _ => {
                tasks.spawn(C::listen(self.pool.clone(), wake.clone(), background.clone()));
            }
        }
        if let AfterSend::Keep { retention } = self.config.after_send {
            tasks.spawn(cleanup(self.pool.clone(), retention, self.config.clone(), background.clone()));
        }
        info!(relay = %self.config.name, owner = %lease.owner, "relay started");
        let mut failures_in_a_row = 0u32;
        let mut pipeline = Pipeline::default();
        let mut published = self.wakeup.seen().published;
        let mut burst: Option<usize> = None;
        let mut gauges = crate::metrics::Gauges::new(&self.config.name);
        while !shutdown.is_cancelled() {
            let before = self.wakeup.seen();
            let round = self.round(&mut lease, &mut pipeline, &wake, &shutdown, &mut gauges).await;
            started |= round.is_ok();
            self.report_round(round.is_ok(), &lease);
            match round {
                Ok(Round::Busy) => {
                    // Only a batch marked is progress: a claim that succeeds before every mark
                    // fails must not reset the backoff (it would republish ~10 times a second).
                    if std::mem::take(&mut self.marked) {
                        failures_in_a_row = 0;
                    }
                    burst = None;
                }
                Ok(Round::Idle) => {
                    failures_in_a_row = 0;
                    let now = self.wakeup.seen();
                    // `outbox::transaction` committed events while this round was claiming:
                    // they are visible now.
                    if now.committed != before.committed {
                        burst = None;
                        continue;
                    }
                    // A `publish` in this process since we last looked, in a transaction that
                    // is probably about to commit: look again shortly, a few times.
                    if now.published != published {
                        published = now.published;
                        burst = Some(0);
                    }
                    let wait = match burst {
                        Some(i) if i < wakeup::BURST.len() => {
                            burst = Some(i + 1);
                            wakeup::BURST[i]
                        }
                        _ => {
                            burst = None;
                            self.config.poll_interval
                        }
                    };
                    self.idle(&wake, &shutdown, wait, now).await;
                }
                Ok(Round::Standby) => {
                    let wait = self.config.poll_interval.max(self.config.lease / 3);
                    self.idle(&wake, &shutdown, wait, self.wakeup.seen()).await;
                }
                Err(e) if !started && (!e.is_transient() || tokio::time::Instant::now() >= startup_deadline) => {
                    tracing::error!(relay = %self.config.name, error = %e, "relay start-up failed");
                    startup_error = Some(e);
                    break;
                }
                Err(e) => {
                    // Batches still in flight stay unmarked; they are claimed again later.
                    pipeline.window.clear();
                    pipeline.held.clear();
                    self.purged.store(false, Ordering::Relaxed);
                    // A mark that succeeded before the round failed (a fatal producer) is no
                    // progress: the backoff keeps growing.
                    self.marked = false;
                    failures_in_a_row += 1;
                    let delay = ROUND_RETRY.delay(failures_in_a_row);
                    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    warn!(relay = %self.config.name, error = %e, retry_in = ?delay, retry_in_ms, failures_in_a_row, "relay round failed");
                    self.idle(&wake, &shutdown, delay, self.wakeup.seen()).await;
                }
            }
        }
        // Stopped claiming; finish (or, past shutdown_timeout, abandon) what is in flight.
        while let Some(batch) = pipeline.window.pop_front() {
            let Some(epoch) = lease.epoch else { break };
            if let Err(e) = self.finish(batch, &mut lease, epoch, &shutdown).await {
                warn!(error = %e, "relay: could not mark the last batch; it will be published again");
            }
        }
        if let Some(epoch) = lease.epoch
            && let Ok(mut conn) = self.pool.get().await
        {
            let _ = conn.release_lease(&self.config.name, lease.owner, epoch).await;
        }
        background.cancel();
        tasks.close();
        tasks.wait().await;
        self.health.set_role(RelayRole::Stopped);
        crate::metrics::lease_held(&self.config.name, lease.owner, false);
        info!(relay = %self.config.name, "relay stopped");
        startup_error.map_or(Ok(()), Err)
    }

    /// After each round: the health handle, the lease and last-success gauges.
    fn report_round(&mut self, ok: bool, lease: &Lease) {
        let failed = std::mem::take(&mut self.delivery_failed);
        let role = match lease.epoch {
            Some(epoch) => RelayRole::Leader { epoch },
            None => RelayRole::Standby,
        };
        let before = self.health.status().role;
        if ok && !failed {
            let at = self.health.succeeded(role);
            crate::metrics::last_success(&self.config.name, at);
        } else if before != RelayRole::Starting {
            self.health.set_role(role);
        }
        if before != role {
            crate::metrics::lease_held(&self.config.name, lease.owner, lease.epoch.is_some());
        }
    }

    /// Waits for shutdown, a NOTIFY, a signal of this process's writers (since `seen`) or `d`.
    async fn idle(&self, wake: &Notify, shutdown: &CancellationToken, d: Duration, seen: wakeup::Seen) {
        let local = self.wakeup.notified();
        tokio::pin!(local);
        local.as_mut().enable();
        if self.wakeup.seen() != seen {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = wake.notified() => {}
            _ = &mut local => {}
            _ = tokio::time::sleep(d) => {}
        }
    }
}

/// Batches produced but not yet acknowledged. While batch N waits for its acknowledgements,
/// batch N+1 is already claimed and produced, so the producer never idles between batches.
#[derive(Default)]
struct Pipeline {
    window: VecDeque<publish::Produced>,
    /// Keys rejected synchronously in the current window: their later rows are not produced.
    held: sink::Held,
    /// Set when a claim returned less than a full batch: what this process's writers had
    /// signalled just before it (see [`Pipeline::quiet`]).
    drained: Option<wakeup::Seen>,
    /// When held rows were last checked for a failing row ahead of them.
    last_sweep: Option<Instant>,
}

impl Pipeline {
    /// Batches are in flight, the last claim found nothing more to publish, and no writer of
    /// this process has signalled since (a NOTIFY ends it too). Lasts at most until the
    /// oldest batch is acknowledged: an idle relay never skips a claim because of it.
    fn quiet(&self, now: wakeup::Seen) -> bool {
        !self.window.is_empty() && self.drained == Some(now)
    }
}

/// Batches in flight at once. Two keep the producer busy; more only add memory.
const PIPELINE_DEPTH: usize = 2;

enum Round {
    Busy,
    Idle,
    Standby,
}
