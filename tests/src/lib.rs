//! Shared fixtures of the end-to-end suites: a fresh database per test, PostgreSQL (from
//! `DATABASE_URL`, which `scripts/test` exports) or SQLite (a temporary file; see [`backend`]
//! and [`backends!`]), and a Kafka cluster per test (librdkafka's
//! in-process mock cluster, or the broker named by `KAFKA_BROKERS`).
#![allow(missing_docs)]
// The code blocks of the README and of docs/*.md compile (and run, unless `no_run`) as doc tests
// of this crate; each docs file with Rust blocks is included by a hidden module below.
#![doc = include_str!("../../README.md")]

pub mod backend;
pub mod crash;
pub mod inbox_support;
pub mod kafka;
pub mod produce;
pub mod raw;
pub mod relay_gen;
pub mod relay_gen_ops;
pub mod relay_gen_oracle;
pub mod relay_support;
pub mod tls;

// docs/*.md files with Rust code blocks, compiled as doc tests (see the top of this file).
#[doc = include_str!("../../docs/databases.md")]
mod docs_databases {}
#[doc = include_str!("../../docs/embedded-kafka-and-examples.md")]
mod docs_embedded_kafka_and_examples {}
#[cfg(feature = "otel")]
#[doc = include_str!("../../docs/tracing.md")]
mod docs_tracing {}

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;

pub use backend::{Backend, Effect, Pg, Sqlite, TestConn};
pub use kafka::TestKafka;

/// Installs a test-local tracing subscriber once (RUST_LOG=outbox=debug to see the relay).
/// Without RUST_LOG: errors only, and none of librdkafka's (the fault-injection suites take
/// brokers down on purpose; every refused connection would be logged).
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error,librdkafka=off,rdkafka=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A database of its own for one test, with the outbox and inbox tables migrated: on the
/// `DATABASE_URL` server for [`Pg`] (the default), in a temporary file for [`Sqlite`].
pub struct TestDb<B: Backend = Pg> {
    pub url: String,
    pub name: String,
    _dir: Option<backend::TempDir>,
    _backend: std::marker::PhantomData<B>,
}

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the suites with scripts/test, which starts a throwaway PostgreSQL server")
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

impl TestDb<Pg> {
    /// A fresh PostgreSQL database (see [`TestDb::fresh`] for any backend).
    pub async fn new() -> Self {
        Self::fresh().await
    }
}

impl<B: Backend> TestDb<B> {
    /// A fresh, migrated database of backend `B`.
    pub async fn fresh() -> Self {
        let db = Self::empty().await;
        let mut conn = db.conn().await;
        outbox::migrate(&mut conn).await.expect("migrate the outbox");
        inbox::migrate(&mut conn).await.expect("migrate the inbox");
        db
    }

    /// A fresh database of backend `B` with no tables.
    pub async fn empty() -> Self {
        init_tracing();
        let store = B::create().await;
        TestDb { url: store.url, name: store.name, _dir: store.dir, _backend: std::marker::PhantomData }
    }

    pub async fn conn(&self) -> B::Conn {
        B::connect(&self.url).await
    }

    pub async fn pool(&self, size: u32) -> bb8::Pool<B::Manager> {
        B::pool(&self.url, size).await
    }

    /// Runs a one-value query such as `SELECT count(*) AS n FROM outbox_messages`.
    pub async fn count(&self, sql: &str) -> i64 {
        self.conn().await.count(sql).await
    }

    /// Runs SQL statements on a connection of its own.
    pub async fn exec(&self, sql: &str) {
        self.conn().await.exec(sql).await
    }

    /// Creates the suites' `effects` table (see [`TestConn::create_effects`]).
    pub async fn create_effects(&self) {
        self.conn().await.create_effects().await
    }
}

impl TestDb<Pg> {
    /// A pool whose sessions carry `application_name`, so a test can terminate them.
    pub async fn pool_named(&self, size: u32, application_name: &str) -> Pool<AsyncPgConnection> {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}application_name={application_name}", self.url);
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        Pool::builder().max_size(size).build(manager).await.expect("pool")
    }

    /// Terminates every other session of this database (simulates a crash of its clients).
    pub async fn terminate_backends(&self, application_name_like: &str) -> i64 {
        self.count(&format!(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid() AND application_name LIKE '{}'",
            self.name, application_name_like
        ))
        .await
    }
}
