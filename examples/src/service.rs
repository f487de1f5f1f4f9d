//! Start-up code both services share: settings from the environment, the connection pool,
//! logging, and shutdown on Ctrl-C / SIGTERM.

use std::fmt;

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use outbox::KafkaConfig;
use tokio_util::sync::CancellationToken;

/// The error type of the examples: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a service finds PostgreSQL and Kafka. (No `Debug`: the URL may hold a password.)
#[derive(Clone)]
pub struct Settings {
    /// `DATABASE_URL`: the PostgreSQL connection URL.
    pub database_url: String,
    /// `KAFKA_BROKERS` plus every `KAFKA_<PROPERTY>` variable (see [`KafkaConfig::from_env`]).
    pub kafka: KafkaConfig,
}

/// `DATABASE_URL` or `KAFKA_BROKERS` is missing; the message explains both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSettings {
    service: String,
    missing: Vec<&'static str>,
}

impl fmt::Display for MissingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.missing.as_slice() {
            [one] => writeln!(f, "{one} is not set.")?,
            several => writeln!(f, "{} are not set.", several.join(" and "))?,
        }
        writeln!(f)?;
        writeln!(f, "{} needs two environment variables:", self.service)?;
        writeln!(f, "  DATABASE_URL   PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/postgres")?;
        writeln!(f, "  KAFKA_BROKERS  Kafka's bootstrap servers, e.g. localhost:9092")?;
        writeln!(f, "                 (more client properties as KAFKA_<PROPERTY>, e.g. KAFKA_SECURITY_PROTOCOL=SSL)")?;
        writeln!(f)?;
        write!(
            f,
            "No Kafka at hand? `cargo run -p examples --example embedded-kafka` starts one in-process \
             and prints the KAFKA_BROKERS to use."
        )
    }
}

impl std::error::Error for MissingSettings {}

impl Settings {
    /// Reads `DATABASE_URL` and `KAFKA_BROKERS` (both required, neither has a default: a service
    /// that silently talked to the wrong database or broker would be worse than one that stops).
    /// `service` names the program in the error message.
    pub fn from_env(service: &str) -> Result<Self, MissingSettings> {
        let present = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let missing: Vec<&'static str> =
            ["DATABASE_URL", "KAFKA_BROKERS"].into_iter().filter(|v| !present(v)).collect();
        let error = |missing| MissingSettings { service: service.to_owned(), missing };
        if !missing.is_empty() {
            return Err(error(missing));
        }
        let database_url = std::env::var("DATABASE_URL").map_err(|_| error(vec!["DATABASE_URL"]))?;
        let kafka = KafkaConfig::from_env().map_err(|_| error(vec!["KAFKA_BROKERS"]))?;
        Ok(Settings { database_url, kafka })
    }
}

/// One connection to `database_url`, with the driver's reason when it cannot be opened: call
/// it first, so a wrong `DATABASE_URL` is reported at start-up.
pub async fn connect(database_url: &str) -> Result<AsyncPgConnection, BoxError> {
    AsyncPgConnection::establish(database_url)
        .await
        .map_err(|e| format!("cannot connect to DATABASE_URL: {}", error_chain(&e)).into())
}

/// A pool of up to `max_size` connections to `database_url`, opened when first needed; LIFO,
/// so the relay and the inbox get back the connection they just used (docs/relay.md, "Pools").
pub fn pool(database_url: &str, max_size: u32) -> outbox::Pool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    outbox::Pool::builder().max_size(max_size).queue_strategy(bb8::QueueStrategy::Lifo).build_unchecked(manager)
}

/// Logs to stdout at `info` (or what `RUST_LOG` says, e.g. `RUST_LOG=info,outbox=debug`), in
/// colour when stdout is a terminal.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

/// Cancels `shutdown` on the first Ctrl-C (SIGINT) or SIGTERM; a second one exits at once
/// with status 130.
pub fn cancel_on_signal(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown requested: finishing the work in hand (signal again to exit at once)");
        shutdown.cancel();
        signals.recv().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    Ok(())
}

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
}

/// An error and its sources on one line, each message once (drivers often keep the useful
/// part in a source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
