//! `outbox relay`: the relay configured from flags and environment variables, stopped by a signal.

use std::time::Duration;

use clap::{ArgAction, Args};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use outbox::relay::{AfterSend, Relay, RelayBuilder};
use outbox::{Database, KafkaConfig};
use tokio_util::sync::CancellationToken;

use crate::{Failure, Target};

/// bb8's default pool size, which the PostgreSQL pool keeps when --pool-size is not given;
/// `outbox::sqlite::pool` takes it explicitly.
const DEFAULT_POOL_SIZE: u32 = 10;

/// The library's backoff defaults (`RelayBuilder::backoff`, relay/config.rs). `backoff` sets base
/// and max together, so when only one of the two flags is given the other keeps this value.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Every option of the relay; `None` keeps the library's default.
#[derive(Args)]
pub(crate) struct RelayArgs {
    /// Relays with the same name share one lease; one of them publishes [default: default].
    #[arg(long, env = "OUTBOX_RELAY_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Rows claimed, produced and marked together, 1 to 100000 [default: 1000].
    #[arg(long, env = "OUTBOX_BATCH_SIZE", value_name = "N")]
    batch_size: Option<usize>,
    /// How often to look for rows when nothing woke the relay [default: 100].
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", value_name = "MS")]
    poll_interval_ms: Option<u64>,
    /// Wake on the insert trigger's NOTIFY; refused with --transaction-pooling and on SQLite
    /// [default: true, false with --transaction-pooling or on SQLite].
    #[arg(long, env = "OUTBOX_LISTEN", value_name = "BOOL", action = ArgAction::Set)]
    listen: Option<bool>,
    /// Leadership lease: a dead relay's work is taken over within it; at least 1000 [default: 15000].
    #[arg(long, env = "OUTBOX_LEASE_MS", value_name = "MS")]
    lease_ms: Option<u64>,
    /// Delivery attempts before a message is parked [default: 12].
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", value_name = "N")]
    max_attempts: Option<u32>,
    /// Retry delay after the first failure, doubled each attempt [default: 500].
    #[arg(long, env = "OUTBOX_BACKOFF_BASE_MS", value_name = "MS")]
    backoff_base_ms: Option<u64>,
    /// Upper bound of the retry delay [default: 300000].
    #[arg(long, env = "OUTBOX_BACKOFF_MAX_MS", value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Keep sent rows this long instead of deleting them once sent [default: delete on send].
    #[arg(long, env = "OUTBOX_RETENTION_SECS", value_name = "SECS")]
    retention_secs: Option<u64>,
    /// On shutdown, how long the in-flight batch may take to be acknowledged [default: 10000].
    #[arg(long, env = "OUTBOX_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// How long start-up may wait for the database and a broker before the relay exits with
    /// an error; a missing schema or grant fails at once [default: 30].
    #[arg(long, env = "OUTBOX_STARTUP_TIMEOUT_SECS", value_name = "SECS")]
    startup_timeout_secs: Option<u64>,
    /// The CloudEvents ce_source of every message, e.g. /order-service [default: outbox].
    #[arg(long, env = "OUTBOX_SOURCE", value_name = "URI")]
    source: Option<String>,
    /// Maximum database connections (the relay uses up to 3) [default: 10].
    #[arg(long, env = "OUTBOX_POOL_SIZE", value_name = "N")]
    pool_size: Option<u32>,
}

/// Builds the relay (invalid settings: exit code 2), checks the database, runs until a signal.
pub(crate) async fn run(target: &Target, transaction_pooling: bool, args: RelayArgs) -> Result<(), Failure> {
    let kafka = KafkaConfig::from_env()?;
    if args.pool_size == Some(0) {
        return Err(Failure::Usage("pool size must be at least 1".into()));
    }
    // LIFO: each round gets back the connection the last one used (docs/relay.md, "Pools").
    fn pool<M: bb8::ManageConnection>(size: Option<u32>) -> bb8::Builder<M> {
        let pool = bb8::Pool::builder().queue_strategy(bb8::QueueStrategy::Lifo);
        match size {
            Some(n) => pool.max_size(n),
            None => pool,
        }
    }
    match target {
        // Connections are opened on first use; the relay's start-up check reports an
        // unreachable database.
        Target::Postgres(url) if transaction_pooling => {
            let pool = pool(args.pool_size).build_unchecked(outbox::pooler::Manager::new(url));
            run_relay(Relay::builder(pool, kafka), args).await
        }
        Target::Postgres(url) => {
            let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
            run_relay(Relay::builder(pool(args.pool_size).build_unchecked(manager), kafka), args).await
        }
        Target::Sqlite(url) => {
            if args.listen == Some(true) {
                return Err(Failure::Usage(
                    "--listen true (OUTBOX_LISTEN) wakes the relay on PostgreSQL's NOTIFY, which SQLite does not \
                     have: remove it; a relay in its own process polls SQLite every --poll-interval-ms"
                        .into(),
                ));
            }
            // The file exists (checked by the caller): opening it creates nothing.
            let pool = outbox::sqlite::pool(url, args.pool_size.unwrap_or(DEFAULT_POOL_SIZE)).await?;
            run_relay(Relay::builder(pool, kafka), args).await
        }
    }
}

/// Applies the flags to `builder` (invalid settings: exit code 2), then runs the relay until a
/// signal.
async fn run_relay<C: Database>(mut builder: RelayBuilder<C>, args: RelayArgs) -> Result<(), Failure> {
    if let Some(name) = args.name {
        builder = builder.name(name);
    }
    if let Some(n) = args.batch_size {
        builder = builder.batch_size(n);
    }
    if let Some(ms) = args.poll_interval_ms {
        builder = builder.poll_interval(Duration::from_millis(ms));
    }
    if let Some(on) = args.listen {
        builder = builder.listen(on);
    }
    if let Some(ms) = args.lease_ms {
        builder = builder.lease(Duration::from_millis(ms));
    }
    if let Some(n) = args.max_attempts {
        builder = builder.max_attempts(n);
    }
    if args.backoff_base_ms.is_some() || args.backoff_max_ms.is_some() {
        builder = builder.backoff(
            args.backoff_base_ms.map_or(DEFAULT_BACKOFF_BASE, Duration::from_millis),
            args.backoff_max_ms.map_or(DEFAULT_BACKOFF_MAX, Duration::from_millis),
        );
    }
    if let Some(secs) = args.retention_secs {
        builder = builder.after_send(AfterSend::Keep { retention: Duration::from_secs(secs) });
    }
    if let Some(ms) = args.shutdown_timeout_ms {
        builder = builder.shutdown_timeout(Duration::from_millis(ms));
    }
    if let Some(secs) = args.startup_timeout_secs {
        builder = builder.startup_timeout(Duration::from_secs(secs));
    }
    if let Some(source) = args.source {
        builder = builder.source(source);
    }
    let relay = builder.build()?;

    let shutdown = CancellationToken::new();
    let signals = Signals::new().map_err(|e| Failure::Runtime(format!("cannot install signal handlers: {e}")))?;
    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    relay.run(shutdown).await?;
    Ok(())
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere). The first one stops the relay gracefully, a second
/// one exits at once.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        self.recv().await;
        tracing::info!("shutdown requested: finishing the in-flight batch (signal again to exit at once)");
        shutdown.cancel();
        self.recv().await;
        tracing::warn!("second signal: exiting without waiting for the in-flight batch");
        std::process::exit(130);
    }
}
