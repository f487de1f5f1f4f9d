//! Start-up checks shared by the relay and the inbox: the schema is migrated and the brokers
//! answer (and, for a consumer, its topics exist), within a start-up deadline. What fails here
//! is returned from `run` as an error; once started, the loops retry transient errors as before.
//! Public so the `inbox` crate (or a service of your own that starts beside the relay) applies
//! the same checks.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::{ConnPool, Database};
use crate::migrations::Migrations;
use crate::{Error, ErrorKind, Result, RetryPolicy};

/// How long `run` waits at start-up for the database and the brokers unless told otherwise.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The pauses between looks at the database while it is not ready: 50 ms doubling to 2 s.
const SCHEMA_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(2)).without_jitter();

/// Waits until a connection can be had and the schema has every migration of `set` this build
/// has (the relay checks [`outbox::MIGRATIONS`](crate::MIGRATIONS), the inbox its own set).
/// A schema that is missing or behind, or a search path that does not lead to the migrated
/// tables, fails at once (waiting does not migrate it), with an
/// error that says to run `outbox migrate` or the set's `migrate`; a database that cannot be
/// reached fails when `deadline` passes, with the last error.
/// Returns `Ok(false)` when `shutdown` fired first.
pub async fn wait_for_schema<C: Database>(
    pool: &ConnPool<C>,
    set: &Migrations,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let pause = SCHEMA_RETRY.delay(attempt);
        // bb8 itself waits up to its connection_timeout (30 s by default): bounded by ours.
        let got = tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            got = tokio::time::timeout_at(deadline, pool.get()) => got,
        };
        let Ok(got) = got else {
            return Err(Error::new(
                ErrorKind::Database,
                "start-up: no database connection before the start-up deadline (is the server up, and DATABASE_URL right?)",
            ));
        };
        let error = match got {
            Ok(mut conn) => match set.missing(&mut *conn).await {
                Ok(missing) if missing.is_empty() => {
                    conn.release();
                    return Ok(true);
                }
                Ok(missing) => {
                    return Err(Error::new(
                        ErrorKind::Schema,
                        format!(
                            "the database schema is not migrated for the {name}: missing {} ({}); run \
                             `outbox migrate` or `{name}::migrate` first",
                            missing.join(", "),
                            if missing.len() == set.versions::<C>().len() {
                                "none of its migrations applied"
                            } else {
                                "behind"
                            },
                            name = set.name(),
                        ),
                    ));
                }
                // A search path on the wrong schema (Migrations::missing): waiting does not fix it.
                Err(e) if e.kind() == ErrorKind::Config => return Err(e),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() + pause >= deadline {
            return Err(Error::new(
                error.kind(),
                format!("start-up: the database could not be used before the start-up deadline: {}", error.message()),
            ));
        }
        tracing::debug!(%error, "start-up: database not ready yet");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Which kind of client a configuration is for (a probe of the same kind is created from it,
/// so librdkafka reads every property as the real client will).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The relay's producer.
    Producer,
    /// The inbox's consumer.
    Consumer,
}

/// Keeps what librdkafka reported through the error callback (TLS handshake, SASL
/// authentication, name resolution, ...): a metadata request that fails says only "timed out"
/// or "transport failure". The first permanent error is kept (librdkafka follows it with
/// "all brokers down"), otherwise the last one. The callback runs only when the client is
/// polled, which the probe does between its requests.
#[derive(Default)]
struct LastError(Mutex<Option<(RDKafkaErrorCode, String)>>, Mutex<Option<String>>);

impl ClientContext for LastError {
    /// librdkafka's log lines arrive from its own threads, unpolled: the last warning or error
    /// (e.g. "SSL handshake failed: ... certificate verify failed") is the reason a metadata
    /// request only reports as a transport failure.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error | L::Warning) {
            *self.1.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{fac}: {message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if !last.as_ref().is_some_and(|(c, _)| is_permanent(*c)) {
                *last = Some((code, reason.to_owned()));
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl rdkafka::consumer::ConsumerContext for LastError {}

impl LastError {
    fn get(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn logged(&self) -> Option<String> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The probe's client: a producer or a consumer made from the real client's configuration.
enum Probe {
    Producer(BaseProducer<LastError>),
    Consumer(BaseConsumer<LastError>),
}

impl Probe {
    fn new(config: &ClientConfig, kind: ClientKind) -> Result<Probe> {
        let create = |e: KafkaError| Error::with_source(ErrorKind::Config, format!("kafka client: {e}"), e);
        Ok(match kind {
            ClientKind::Producer => Probe::Producer(config.create_with_context(LastError::default()).map_err(create)?),
            ClientKind::Consumer => Probe::Consumer(config.create_with_context(LastError::default()).map_err(create)?),
        })
    }

    /// One metadata request of all topics (so none is auto-created), then a poll that serves
    /// the error callbacks; the topics that exist, or the request's error.
    fn topics(&self, timeout: Duration) -> std::result::Result<Vec<String>, KafkaError> {
        let names = |m: rdkafka::metadata::Metadata| {
            m.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_owned()).collect()
        };
        match self {
            Probe::Producer(p) => {
                let r = p.client().fetch_metadata(None, timeout).map(names);
                p.poll(Duration::ZERO);
                r
            }
            Probe::Consumer(c) => {
                let r = rdkafka::consumer::Consumer::client(c).fetch_metadata(None, timeout).map(names);
                let _ = c.poll(Duration::ZERO);
                r
            }
        }
    }

    fn context(&self) -> &LastError {
        match self {
            Probe::Producer(p) => p.context(),
            Probe::Consumer(c) => rdkafka::consumer::Consumer::client(c).context(),
        }
    }

    fn reported(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.context().get()
    }
}

/// Errors that waiting cannot cure: wrong credentials, a certificate that is not trusted.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL | RDKafkaErrorCode::InvalidArgument)
}

/// Waits until a broker answers a metadata request made with `config` and every topic in
/// `topics` exists. Errors librdkafka reports as permanent through the error callback
/// (authentication, TLS) fail at once; a TLS handshake the broker refuses shows only in its log,
/// which the deadline's error quotes; unreachable brokers and missing topics fail when `deadline` passes. Topics are
/// looked up in the list of all topics, so the check never auto-creates one.
/// Returns `Ok(false)` when `shutdown` fired first (the probe's thread stops within a second).
pub async fn wait_for_brokers(
    config: &ClientConfig,
    kind: ClientKind,
    topics: &[String],
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let brokers = config.get("bootstrap.servers").unwrap_or_default().to_owned();
    let (config, topics, stop) = (config.clone(), topics.to_vec(), shutdown.clone());
    let probe = tokio::task::spawn_blocking(move || -> Result<bool> {
        let client = Probe::new(&config, kind)?;
        let mut last = "no broker answered yet".to_owned();
        loop {
            if stop.is_cancelled() {
                return Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let (true, Some(logged)) = (last.ends_with("yet"), client.context().logged()) {
                    last = format!("no broker answered; librdkafka said: {logged}");
                }
                return Err(Error::new(
                    ErrorKind::Kafka,
                    format!("start-up: {last} before the start-up deadline (bootstrap.servers={brokers})"),
                ));
            }
            // Short requests, so a shutdown is seen within a second.
            let result = client.topics(left.min(Duration::from_secs(1)));
            let reported = client.reported();
            if let Some((code, reason)) = &reported
                && is_permanent(*code)
            {
                return Err(Error::new(
                    ErrorKind::Kafka,
                    format!("start-up: the broker refused the connection ({code:?}): {reason}"),
                ));
            }
            match result {
                Ok(present) => {
                    let missing: Vec<&String> = topics.iter().filter(|t| !present.contains(t)).collect();
                    if missing.is_empty() {
                        return Ok(true);
                    }
                    last = format!("topics {missing:?} do not exist (or are not visible to this client)");
                }
                Err(e) => {
                    last = match (reported, client.context().logged()) {
                        (Some((_, reason)), _) => format!("no broker answered: {reason}"),
                        (None, Some(logged)) => format!("no broker answered ({e}); librdkafka said: {logged}"),
                        (None, None) => format!("no broker answered: {e}"),
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())));
        }
    });
    tokio::select! {
        _ = shutdown.cancelled() => Ok(false),
        r = probe => r.map_err(|e| Error::new(ErrorKind::Kafka, format!("start-up probe: {e}")))?,
    }
}
