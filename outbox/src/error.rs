//! The crate's error type: opaque, with a [`ErrorKind`] users can match on.

use std::fmt;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `publish` was called on a connection that is not inside a transaction. Nothing was written.
    NotInTransaction,
    /// The event could not be serialised to JSON. Nothing was written.
    Serialize,
    /// A database error (connection lost, constraint violated, ...).
    Database,
    /// A Kafka client error.
    Kafka,
    /// Invalid configuration, detected when the object was built.
    Config,
    /// A message that does not follow the wire format (missing or malformed CloudEvents headers).
    InvalidMessage,
    /// The database schema is missing or behind this build: run the migrations.
    Schema,
    /// A wait did not see what it waited for before its deadline (the inbox's test harness).
    Timeout,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotInTransaction => "not in a transaction",
            ErrorKind::Serialize => "serialisation failed",
            ErrorKind::Database => "database error",
            ErrorKind::Kafka => "kafka error",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::InvalidMessage => "invalid message",
            ErrorKind::Schema => "database schema not migrated",
            ErrorKind::Timeout => "timed out",
        })
    }
}

/// An error from the outbox: see [`Error::kind`] and [`Error::is_transient`].
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// The message without the kind's prefix.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn with_source(kind: ErrorKind, message: impl Into<String>, source: impl Into<Source>) -> Self {
        Self { kind, message: message.into(), source: Some(source.into()) }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Builds an error of `kind` with `message` and, optionally, the error that caused it. For
    /// crates that build on the outbox and report through its error type (the `inbox` crate does).
    pub fn other(kind: ErrorKind, message: impl Into<String>, source: Option<Source>) -> Self {
        Self { kind, message: message.into(), source }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation later may succeed (lost connection, serialisation
    /// conflict, broker unavailable). Configuration and input errors are never transient.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Database => match self.source.as_deref().and_then(|s| s.downcast_ref::<diesel::result::Error>())
            {
                Some(e) => is_transient_db_error(e),
                None => true,
            },
            ErrorKind::Kafka => true,
            _ => false,
        }
    }
}

/// PostgreSQL's English messages of transient errors diesel has no kind for (their SQLSTATE is
/// not reachable): 57P01/57P02 `terminating connection due to ...`, 40P01 `deadlock detected`,
/// 55P03 `could not obtain lock on ...` and `canceling statement due to lock timeout`.
/// Translated under another `lc_messages`.
const POSTGRES_TRANSIENT_MESSAGES: &[&str] =
    &["terminating connection", "deadlock detected", "could not obtain lock", "lock timeout"];

/// SQLite's messages of `SQLITE_BUSY` and `SQLITE_LOCKED` (sqlite3_errstr; never translated).
const SQLITE_TRANSIENT_MESSAGES: &[&str] = &["database is locked", "database table is locked"];

/// Whether a database error may pass on retry: lost connections and sessions terminated by the
/// server, serialization failures, deadlocks, lock timeouts, read-only replicas (PostgreSQL), and
/// a locked database (SQLite's `SQLITE_BUSY` after `busy_timeout`). Constraint violations and
/// other errors are permanent. Used by [`Error::is_transient`] and by the inbox to decide between
/// retrying a handler and dead-lettering its message.
///
/// By error kind where diesel has one (SQLSTATE 40001, 25006, a closed connection); the rest by
/// message text, because neither diesel 2.3 nor diesel-async 0.9 exposes the SQLSTATE of other
/// codes (the server's error is boxed behind `DatabaseErrorInformation`, which has no code and
/// cannot be downcast). SQLite's messages are not translated; PostgreSQL's are, under
/// `lc_messages`, and then 57P01, 40P01 and 55P03 count as permanent (the inbox still
/// retries a handler whose connection the server closed: it sees that the connection no longer
/// answers). See docs/databases.md, "Error classification".
pub fn is_transient_db_error(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as D, Error as E};
    match e {
        E::DatabaseError(kind, info) => match kind {
            D::SerializationFailure | D::ClosedConnection | D::UnableToSendCommand | D::ReadOnlyTransaction => true,
            _ => {
                let m = info.message();
                POSTGRES_TRANSIENT_MESSAGES.iter().chain(SQLITE_TRANSIENT_MESSAGES).any(|text| m.contains(text))
            }
        },
        E::BrokenTransactionManager => true,
        _ => false,
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Self::with_source(ErrorKind::Database, e.to_string(), e)
    }
}

impl From<diesel::ConnectionError> for Error {
    fn from(e: diesel::ConnectionError) -> Self {
        Self::with_source(ErrorKind::Database, e.to_string(), e)
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::with_source(ErrorKind::Kafka, e.to_string(), e)
    }
}

/// Lets `outbox::publish(tx, &e).await?` work inside a transaction closure whose error type is
/// `diesel::result::Error`. A database error is passed through unchanged, so diesel's own
/// handling (e.g. of serialisation failures) still applies.
impl From<Error> for diesel::result::Error {
    fn from(e: Error) -> Self {
        match e.source {
            Some(source) if e.kind == ErrorKind::Database => match source.downcast::<diesel::result::Error>() {
                Ok(inner) => *inner,
                Err(source) => diesel::result::Error::QueryBuilderError(source),
            },
            _ => diesel::result::Error::QueryBuilderError(Box::new(Error { source: None, ..e })),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
