//! Shared fixtures of the end-to-end suites: a fresh PostgreSQL database per test (from
//! `DATABASE_URL`, which `scripts/test` exports) and a Kafka cluster per test (librdkafka's
//! in-process mock cluster, or the broker named by `KAFKA_BROKERS`).
#![allow(missing_docs)]
// The README's code blocks compile (and run, unless `no_run`) as doc tests of this crate.
#![doc = include_str!("../../README.md")]

pub mod crash;
pub mod kafka;
pub mod produce;
pub mod relay_support;

use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub use kafka::TestKafka;

/// Installs a test-local tracing subscriber once (RUST_LOG=outbox=debug to see the relay).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A database of its own for one test, with the outbox and inbox tables migrated.
pub struct TestDb {
    pub url: String,
    pub name: String,
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

impl TestDb {
    pub async fn new() -> Self {
        init_tracing();
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = AsyncPgConnection::establish(&server_url()).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
        let url = with_database(&server_url(), &name);
        let db = TestDb { url, name };
        let mut conn = db.conn().await;
        outbox::migrate(&mut conn).await.expect("migrate");
        db
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url).await.expect("connect to test database")
    }

    pub async fn pool(&self, size: u32) -> Pool<AsyncPgConnection> {
        self.pool_named(size, "test").await
    }

    /// A pool whose sessions carry `application_name`, so a test can terminate them.
    pub async fn pool_named(&self, size: u32, application_name: &str) -> Pool<AsyncPgConnection> {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}application_name={application_name}", self.url);
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        Pool::builder().max_size(size).build(manager).await.expect("pool")
    }

    /// Runs a one-value query such as `SELECT count(*) AS n FROM outbox_messages`.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await;
        diesel::sql_query(sql).get_result::<N>(&mut conn).await.expect(sql).n
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
