//! The relay's and the inbox's pool handle (`outbox::db::ConnPool`): a connection whose last use
//! succeeded is handed out again within 500 ms without bb8's check-out test (a `SELECT 1` round
//! trip on the path from COMMIT to handler); everything else is still tested, the pool's last
//! connection is never kept back, and a kept connection goes back to the pool once cold.
//!
//! The pool's manager is diesel-async's own, wrapped only to count the check-out tests it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel_async::pooled_connection::{AsyncDieselConnectionManager, PoolError};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};
use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::db::ConnPool;
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::relay_support::{self as rs, Happened};
use tests::{TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

/// diesel-async's manager, counting `is_valid` (bb8's check-out test).
#[derive(Clone)]
struct Counting {
    inner: Arc<AsyncDieselConnectionManager<AsyncPgConnection>>,
    tests: Arc<AtomicUsize>,
}

impl bb8::ManageConnection for Counting {
    type Connection = AsyncPgConnection;
    type Error = PoolError;

    async fn connect(&self) -> Result<AsyncPgConnection, PoolError> {
        self.inner.connect().await
    }

    async fn is_valid(&self, conn: &mut AsyncPgConnection) -> Result<(), PoolError> {
        self.tests.fetch_add(1, Ordering::SeqCst);
        self.inner.is_valid(conn).await
    }

    fn has_broken(&self, conn: &mut AsyncPgConnection) -> bool {
        self.inner.has_broken(conn)
    }
}

async fn counting_pool(db: &TestDb<tests::backend::Pg>, size: u32) -> (bb8::Pool<Counting>, Arc<AtomicUsize>) {
    let tests = Arc::new(AtomicUsize::new(0));
    let manager = Counting { inner: Arc::new(AsyncDieselConnectionManager::new(db.url.clone())), tests: tests.clone() };
    let pool = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .await
        .expect("pool");
    (pool, tests)
}

async fn backend_pid(conn: &mut AsyncPgConnection) -> i64 {
    conn.count("SELECT pg_backend_pid()::bigint AS n").await
}

#[tokio::test]
async fn postgres_a_released_connection_comes_back_without_a_checkout_test() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let (pool, tests) = counting_pool(&db, 4).await;
    let conns = ConnPool::new(pool.clone());

    let mut conn = conns.get().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    let base = tests.load(Ordering::SeqCst);
    conn.release();

    for _ in 0..5 {
        let mut conn = conns.get().await.unwrap();
        assert_eq!(backend_pid(&mut conn).await, pid, "the released connection is handed out again");
        conn.release();
    }
    assert_eq!(tests.load(Ordering::SeqCst), base, "no check-out test for a connection released just now");

    // Dropped without `release` (what every error path does): the pool tests it next time.
    let conn = conns.get().await.unwrap();
    drop(conn);
    let mut conn = conns.get().await.unwrap();
    assert_eq!(tests.load(Ordering::SeqCst), base + 1, "a dropped connection is tested on its next check-out");
    backend_pid(&mut conn).await;

    // Released inside a transaction: not kept (the pool discards it as broken).
    let in_tx = backend_pid(&mut conn).await;
    AnsiTransactionManager::begin_transaction(&mut *conn).await.unwrap();
    conn.release();
    let mut conn = conns.get().await.unwrap();
    assert_eq!(outbox::db::transaction_depth(&mut *conn).unwrap(), None);
    assert_ne!(backend_pid(&mut conn).await, in_tx, "a connection left in a transaction is not handed out again");
}

#[tokio::test]
async fn postgres_the_pools_last_connection_is_never_kept_back() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let (pool, _) = counting_pool(&db, 1).await;
    let conns = ConnPool::new(pool.clone());
    let mut conn = conns.get().await.unwrap();
    backend_pid(&mut conn).await;
    conn.release();
    // The application's own code sharing a one-connection pool finds it idle there at once
    // (not half a second later, when a kept connection would go back).
    assert_eq!(pool.state().idle_connections, 1, "the pool's only connection went back to it");
    let direct = pool.get().await;
    assert!(direct.is_ok(), "the pool's only connection went back to it: {:?}", direct.err());
}

#[tokio::test]
async fn postgres_a_kept_connection_goes_back_to_the_pool_once_cold() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let (pool, tests) = counting_pool(&db, 4).await;
    let conns = ConnPool::new(pool.clone());
    let mut conn = conns.get().await.unwrap();
    backend_pid(&mut conn).await;
    conn.release();
    let kept = pool.state();
    assert_eq!(kept.idle_connections + 1, kept.connections, "released just now: kept warm, not idle in the pool");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cold = pool.state();
    assert_eq!(cold.idle_connections, cold.connections, "after the window every connection is back in the pool");
    let before = tests.load(Ordering::SeqCst);
    let _conn = conns.get().await.unwrap();
    assert_eq!(tests.load(Ordering::SeqCst), before + 1, "a cold connection is tested again");
}

/// Twenty events one at a time: every claim and every mark took the warm connection. Before it,
/// each claim and each mark was a check-out test: 40 at least.
#[tokio::test]
async fn postgres_relay_tests_no_connection_per_event_at_a_low_rate() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let (pool, tests) = counting_pool(&db, 4).await;
    let relay = rs::relay(pool.clone(), &kafka).listen(false).build().unwrap();
    let (stop, task) = rs::spawn(relay);

    const EVENTS: u64 = 20;
    rs::publish_one_at_a_time(&db, &kafka, EVENTS, Duration::from_millis(50)).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let tested = tests.load(Ordering::SeqCst);
    assert!(tested <= 5, "check-out tests for {EVENTS} events published one at a time: {tested}");
}

struct Count;

#[inbox::async_trait]
impl Handler<Happened, AsyncPgConnection> for Count {
    async fn handle(&self, e: Happened, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(tests::Effect { n: Some(e.n as i64), ..tests::Effect::of(id) }).await?;
        Ok(())
    }
}

/// The inbox's side: twenty messages one at a time, each in its own transaction on the warm
/// connection. Before it, one check-out test per message.
#[tokio::test]
async fn postgres_inbox_tests_no_connection_per_message_at_a_low_rate() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    db.create_effects().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    let (pool, tests) = counting_pool(&db, 4).await;
    let shutdown = CancellationToken::new();
    let inbox =
        Inbox::builder(pool, tests::produce::inbox_kafka_config(&kafka)).group("warm").handle(Count).build().unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));

    const MESSAGES: i64 = 20;
    let producer = TestProducer::new(&kafka);
    for n in 0..MESSAGES {
        producer.send(&CloudEvent::of(&Happened::new("k", n as u64)).partition(0)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_count(&db, "SELECT count(*) AS n FROM effects", MESSAGES, Duration::from_secs(20)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, MESSAGES);
    let tested = tests.load(Ordering::SeqCst);
    assert!(tested <= 5, "check-out tests for {MESSAGES} messages handled one at a time: {tested}");
}

/// A pool that does not test its check-outs has nothing to save: nothing is kept back from it.
#[tokio::test]
async fn postgres_a_pool_without_checkout_tests_is_left_alone() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(db.url.clone());
    let pool = bb8::Pool::builder().max_size(4).test_on_check_out(false).build(manager).await.expect("pool");
    let conns = ConnPool::new(pool.clone());
    let mut conn = conns.get().await.unwrap();
    backend_pid(&mut conn).await;
    conn.release();
    let state = pool.state();
    assert_eq!(state.idle_connections, state.connections, "released straight back to the pool");
}
