//! `outbox relay`: the relay configured from a file, flags and environment variables, stopped by a
//! signal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use outbox::relay::{AfterSend, Relay, RelayBuilder, RelayConfig};
use outbox::{Database, KafkaConfig};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::connect::Target;

/// bb8's default pool size, which the PostgreSQL pool keeps when --pool-size is not given;
/// `outbox::sqlite::pool` takes it explicitly.
const DEFAULT_POOL_SIZE: u32 = 10;

/// Every option of the relay. The configuration is [`RelayConfig::default()`], then the file
/// of `--config`, then each flag (or its environment variable) that is given. No default is
/// written here: `--help` shows those of [`RelayConfig::default()`] (see [`with_defaults`]).
#[derive(Args)]
pub(crate) struct RelayArgs {
    /// A relay configuration file (TOML, the fields of outbox::relay::RelayConfig; `outbox
    /// config print-default` prints one with every default). The flags below override it.
    #[arg(long, env = "OUTBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the configuration the relay would run with (defaults, --config, flags) as TOML and
    /// exit, without connecting to anything.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// Relays with the same name share one lease; one of them publishes.
    #[arg(long, env = "OUTBOX_RELAY_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Rows claimed, produced and marked together, 1 to 100000.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", value_name = "N")]
    batch_size: Option<usize>,
    /// How often to look for rows when nothing woke the relay, in milliseconds.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", value_name = "MS")]
    poll_interval_ms: Option<u64>,
    /// Wake on the insert trigger's NOTIFY; refused with --transaction-pooling and on SQLite.
    #[arg(long, env = "OUTBOX_LISTEN", value_name = "BOOL", action = ArgAction::Set)]
    listen: Option<bool>,
    /// Leadership lease: a dead relay's work is taken over within it; at least 1000 ms.
    #[arg(long, env = "OUTBOX_LEASE_MS", value_name = "MS")]
    lease_ms: Option<u64>,
    /// Delivery attempts before a message is parked.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", value_name = "N")]
    max_attempts: Option<u32>,
    /// Retry delay after the first failure, doubled each attempt, in milliseconds (retry.base).
    #[arg(long, env = "OUTBOX_BACKOFF_BASE_MS", value_name = "MS")]
    backoff_base_ms: Option<u64>,
    /// Upper bound of the retry delay, in milliseconds (retry.max).
    #[arg(long, env = "OUTBOX_BACKOFF_MAX_MS", value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Keep sent rows this long instead of deleting them once sent (after_send).
    #[arg(long, env = "OUTBOX_RETENTION_SECS", value_name = "SECS")]
    retention_secs: Option<u64>,
    /// On shutdown, how long the in-flight batch may take to be acknowledged, in milliseconds.
    #[arg(long, env = "OUTBOX_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// How long start-up may wait for the database and a broker before the relay exits with
    /// an error, in seconds; a missing schema or grant fails at once.
    #[arg(long, env = "OUTBOX_STARTUP_TIMEOUT_SECS", value_name = "SECS")]
    startup_timeout_secs: Option<u64>,
    /// The CloudEvents ce_source of every message, e.g. /order-service.
    #[arg(long, env = "OUTBOX_SOURCE", value_name = "URI")]
    source: Option<String>,
    /// Maximum database connections (the relay uses up to 3) [default: 10, bb8's].
    #[arg(long, env = "OUTBOX_POOL_SIZE", value_name = "N")]
    pool_size: Option<u32>,
}

/// The `[default: ...]` of each relay flag, from `config` (the library's defaults), by the
/// flag's id (its field name in [`RelayArgs`]).
pub(crate) fn flag_defaults(config: &RelayConfig) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    vec![
        ("name", config.name.clone()),
        ("batch_size", config.batch_size.to_string()),
        ("poll_interval_ms", ms(config.poll_interval)),
        (
            "listen",
            config
                .listen
                .map_or_else(|| "true, false with --transaction-pooling or on SQLite".into(), |on| on.to_string()),
        ),
        ("lease_ms", ms(config.lease)),
        ("max_attempts", config.max_attempts.to_string()),
        ("backoff_base_ms", ms(config.retry.base)),
        ("backoff_max_ms", ms(config.retry.max)),
        (
            "retention_secs",
            match config.after_send {
                AfterSend::Delete => "delete on send".into(),
                AfterSend::Keep { retention } => retention.as_secs().to_string(),
            },
        ),
        ("shutdown_timeout_ms", ms(config.shutdown_timeout)),
        ("startup_timeout_secs", config.startup_timeout.as_secs().to_string()),
        ("source", config.source.clone()),
    ]
}

/// The `relay` subcommand with each flag's help ending in the default of
/// [`RelayConfig::default()`], so the help cannot drift from the library.
pub(crate) fn with_defaults(mut cmd: clap::Command) -> clap::Command {
    for (id, default) in flag_defaults(&RelayConfig::default()) {
        cmd = cmd.mut_arg(id, |arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let arg = match arg.get_long_help().map(ToString::to_string) {
                Some(long) => arg.long_help(format!("{long} [default: {default}]")),
                None => arg,
            };
            arg.help(format!("{help} [default: {default}]"))
        });
    }
    cmd
}

/// The configuration the flags describe: the defaults, then `--config`, then each flag given.
pub(crate) fn config(args: &RelayArgs) -> Result<RelayConfig, Failure> {
    let mut config = match &args.config {
        Some(path) => read_config(path)?,
        None => RelayConfig::default(),
    };
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    if let Some(n) = args.batch_size {
        config.batch_size = n;
    }
    if let Some(ms) = args.poll_interval_ms {
        config.poll_interval = Duration::from_millis(ms);
    }
    if let Some(on) = args.listen {
        config.listen = Some(on);
    }
    if let Some(ms) = args.lease_ms {
        config.lease = Duration::from_millis(ms);
    }
    if let Some(n) = args.max_attempts {
        config.max_attempts = n;
    }
    if let Some(ms) = args.backoff_base_ms {
        config.retry.base = Duration::from_millis(ms);
    }
    if let Some(ms) = args.backoff_max_ms {
        config.retry.max = Duration::from_millis(ms);
    }
    if let Some(secs) = args.retention_secs {
        config.after_send = AfterSend::Keep { retention: Duration::from_secs(secs) };
    }
    if let Some(ms) = args.shutdown_timeout_ms {
        config.shutdown_timeout = Duration::from_millis(ms);
    }
    if let Some(secs) = args.startup_timeout_secs {
        config.startup_timeout = Duration::from_secs(secs);
    }
    if let Some(source) = &args.source {
        config.source = source.clone();
    }
    Ok(config)
}

/// A relay configuration file: TOML, unknown fields and malformed values refused (exit code 2)
/// with the file, line and field named.
fn read_config(path: &Path) -> Result<RelayConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--config {}: cannot read it: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::Usage(format!("--config {}: {e}", path.display())))
}

/// A relay configuration as TOML.
pub(crate) fn to_toml(config: &RelayConfig) -> Result<String, Failure> {
    toml::to_string(config).map_err(|e| Failure::Runtime(format!("cannot write the configuration as TOML: {e}")))
}

/// Builds the relay (invalid settings: exit code 2), checks the database, runs until a signal.
pub(crate) async fn run(target: &Target, transaction_pooling: bool, args: RelayArgs) -> Result<(), Failure> {
    let config = config(&args)?;
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
            run_relay(Relay::builder(pool, kafka), config).await
        }
        Target::Postgres(url) => {
            let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
            run_relay(Relay::builder(pool(args.pool_size).build_unchecked(manager), kafka), config).await
        }
        Target::Sqlite(url) => {
            if config.listen == Some(true) {
                return Err(Failure::Usage(
                    "--listen true (OUTBOX_LISTEN, or listen = true in --config) wakes the relay on PostgreSQL's NOTIFY, \
                     which SQLite does not have: remove it; a relay in its own process polls SQLite every \
                     poll_interval (--poll-interval-ms)"
                        .into(),
                ));
            }
            // The file exists (checked by the caller): opening it creates nothing.
            let pool = outbox::sqlite::pool(url, args.pool_size.unwrap_or(DEFAULT_POOL_SIZE)).await?;
            run_relay(Relay::builder(pool, kafka), config).await
        }
    }
}

/// Builds the relay from `config` (invalid settings: exit code 2), then runs it until a signal.
async fn run_relay<C: Database>(builder: RelayBuilder<C>, config: RelayConfig) -> Result<(), Failure> {
    let relay = builder.config(config).build()?;

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
