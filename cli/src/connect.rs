//! The connection setup: which database DATABASE_URL names ([`Target`]), and opening a
//! connection to it (PostgreSQL directly or through a transaction pooler, or SQLite), with errors
//! that say what failed. Shared by `migrate`, the operations and the relay.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use outbox::ErrorKind;

use crate::Failure;

/// The database DATABASE_URL names.
///
/// SQLite: `sqlite://PATH` (`sqlite:///abs/app.db`, `sqlite://app.db`), a `file:` URI, or a
/// path ending in `.db`, `.sqlite` or `.sqlite3` (without `://` or `=`, so a PostgreSQL URL or
/// `key=value` connection string never matches). Anything else is PostgreSQL.
pub(crate) enum Target {
    /// A PostgreSQL connection URL or string.
    Postgres(String),
    /// A SQLite database, as `outbox::sqlite::connect` takes it.
    Sqlite(String),
}

impl Target {
    pub(crate) fn of(url: &str) -> Result<Self, Failure> {
        let path_like = !url.contains("://") && !url.contains('=');
        let sqlite_ext = [".db", ".sqlite", ".sqlite3"].iter().any(|ext| url.ends_with(ext));
        if url.starts_with("sqlite:") && !url.starts_with("sqlite://") {
            Err(Failure::Usage(format!(
                "DATABASE_URL `{url}`: write a SQLite database as sqlite://PATH (sqlite:///abs/path.db, sqlite://app.db)"
            )))
        } else if url.starts_with("sqlite://") || url.starts_with("file:") || (path_like && sqlite_ext) {
            Ok(Target::Sqlite(url.to_owned()))
        } else {
            Ok(Target::Postgres(url.to_owned()))
        }
    }

    /// A SQLite file that does not exist is an error (not an empty database); `file:` URIs are
    /// left to SQLite.
    pub(crate) fn check_exists(&self) -> Result<(), Failure> {
        if let Target::Sqlite(url) = self {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if !path.starts_with("file:") && !std::path::Path::new(path).exists() {
                return Err(Failure::Runtime(format!(
                    "the SQLite database `{path}` (DATABASE_URL) does not exist; `outbox migrate` creates it"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) async fn connect(url: &str, transaction_pooling: bool) -> Result<AsyncPgConnection, Failure> {
    let conn = if transaction_pooling {
        outbox::pooler::establish(url).await
    } else {
        AsyncPgConnection::establish(url).await
    };
    conn.map_err(|e| Failure::Runtime(format!("cannot connect to the database (DATABASE_URL): {}", chain(&e))))
}

pub(crate) async fn connect_sqlite(url: &str) -> Result<outbox::sqlite::SqliteConnection, Failure> {
    outbox::sqlite::connect(url).await.map_err(|e| match e.kind() {
        ErrorKind::Config => Failure::Usage(format!("DATABASE_URL: {e}")),
        _ => Failure::Runtime(format!("cannot open the database (DATABASE_URL): {}", chain(&e))),
    })
}

/// An error with its sources, each once: driver errors often keep the useful part in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}
