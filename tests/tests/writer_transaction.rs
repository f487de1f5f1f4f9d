//! `outbox::transaction`: the same commit / rollback / savepoint contract as diesel-async's
//! `transaction` (guarantee 1), plus the wake-up after COMMIT that lets an in-process relay
//! publish without polling — on PostgreSQL and SQLite.

use std::collections::HashSet;
use std::time::Duration;

use diesel_async::AsyncConnection;
use outbox::ErrorKind;
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestConn, TestDb, TestKafka};

tests::backends!(
    commit_stores_and_returns_the_value,
    error_rolls_back_and_is_returned,
    nested_is_a_savepoint,
    inside_a_plain_transaction_is_a_savepoint,
    relay_is_woken_by_the_commit_not_by_polling,
);

async fn stored<B: Backend>(db: &TestDb<B>) -> Vec<uuid::Uuid> {
    db.conn().await.outbox_rows().await.into_iter().map(|r| r.id).collect()
}

async fn commit_stores_and_returns_the_value<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let (a, b) = outbox::transaction(&mut conn, async |tx| {
        let a = outbox::publish(tx, &Happened::new("k", 1)).await?;
        let b = outbox::publish(tx, &Happened::new("k", 2)).await?;
        Ok::<_, outbox::Error>((a, b))
    })
    .await
    .unwrap();
    assert_eq!(stored(&db).await, vec![a, b]);
    assert!(outbox::db::transaction_depth(&mut conn).unwrap().is_none(), "transaction closed");
}

#[derive(Debug)]
enum AppError {
    Refused,
    Db(outbox::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Refused => f.write_str("refused by the business rule"),
            AppError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl From<outbox::Error> for AppError {
    fn from(e: outbox::Error) -> Self {
        AppError::Db(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e.into())
    }
}

async fn error_rolls_back_and_is_returned<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let result: Result<(), AppError> = outbox::transaction(&mut conn, async |tx| {
        outbox::publish(tx, &Happened::new("k", 1)).await?;
        Err(AppError::Refused)
    })
    .await;
    assert!(matches!(result, Err(AppError::Refused)), "{result:?}");
    assert!(stored(&db).await.is_empty(), "rolled back: nothing stored");
    // The connection is usable afterwards, outside any transaction.
    assert!(outbox::db::transaction_depth(&mut conn).unwrap().is_none());
    let err = outbox::publish(&mut conn, &Happened::new("k", 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotInTransaction);
}

async fn nested_is_a_savepoint<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let outer = outbox::transaction(&mut conn, async |tx| {
        let kept = outbox::publish(tx, &Happened::new("k", 1)).await?;
        let inner: Result<(), AppError> = outbox::transaction(tx, async |tx| {
            outbox::publish(tx, &Happened::new("k", 2)).await?;
            Err(AppError::Refused)
        })
        .await;
        assert!(matches!(inner, Err(AppError::Refused)));
        let also = outbox::transaction(tx, async |tx| outbox::publish(tx, &Happened::new("k", 3)).await).await?;
        Ok::<_, outbox::Error>(vec![kept, also])
    })
    .await
    .unwrap();
    assert_eq!(stored(&db).await, outer, "the rolled-back savepoint's event is gone, the others committed");
}

async fn inside_a_plain_transaction_is_a_savepoint<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let result = conn
        .transaction::<(), AppError, _>(async |tx| {
            outbox::transaction(tx, async |tx| outbox::publish(tx, &Happened::new("k", 1)).await).await?;
            Err(AppError::Refused)
        })
        .await;
    assert!(matches!(result, Err(AppError::Refused)), "{result:?}");
    assert!(stored(&db).await.is_empty(), "the outer rollback also undoes the inner savepoint");
}

/// With a one-hour poll interval and no LISTEN, only the in-process signals can make the relay
/// look: the commit of `outbox::transaction`, and `publish` inside a plain transaction (which
/// signals before its commit and is followed by a few re-claims).
async fn relay_is_woken_by_the_commit_not_by_polling<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let relay =
        rs::relay(db.pool(4).await, &kafka).poll_interval(Duration::from_secs(3600)).listen(false).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // Let the relay make its first (empty) round and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut conn = db.conn().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id =
            outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &Happened::new("k", n)).await).await.unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each path on its own: a later wake-up would also publish earlier rows.
    let records = kafka.read_all(rs::TOPIC, ids.len(), Duration::from_secs(20), Duration::from_millis(200)).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    assert_eq!(report.distinct, 5, "woken by outbox::transaction's commit: {report:?}");
    for n in 5..10 {
        let id = conn
            .transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &Happened::new("k", n)).await)
            .await
            .unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let records = kafka.read_all(rs::TOPIC, ids.len(), Duration::from_secs(20), Duration::from_millis(200)).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    assert_eq!(report.distinct, ids.len(), "woken by publish in a plain transaction: {report:?}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// At a low rate the relay claims once per event: after a claim that found less than a full
/// batch it waits for that batch's acknowledgements (or for news) instead of claiming again at
/// once. Counted by PostgreSQL as scans of the pending-rows index, which every claim starts
/// with; the relay's backends have exited (stats flushed) when it is read.
#[tokio::test]
async fn postgres_relay_claims_once_per_event_at_a_low_rate() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let pool = db.pool(4).await;
    let relay = rs::relay(pool.clone(), &kafka).poll_interval(Duration::from_secs(3600)).listen(false).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    tokio::time::sleep(Duration::from_millis(500)).await;

    const EVENTS: i64 = 20;
    rs::publish_one_at_a_time(&db, &kafka, EVENTS as u64, Duration::from_millis(100)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    drop(pool);

    // Backends flush their statistics when they exit; wait until the relay's have.
    let scans = async || {
        db.count(
            "SELECT COALESCE(sum(idx_scan), 0)::bigint AS n FROM pg_stat_user_indexes \
             WHERE indexrelname = 'outbox_messages_pending'",
        )
        .await
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut claims = scans().await;
    while claims < EVENTS && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        claims = scans().await;
    }
    // One claim per event, plus the first round's, the backlog gauge's and the drain check's.
    assert!(
        (EVENTS..=EVENTS + 5).contains(&claims),
        "scans of the pending index for {EVENTS} events published one at a time: {claims}"
    );
}

/// Two relays on two databases in one process, each listening to its own `outbox::Wakeup`: a
/// commit through database A's handle wakes relay A (it publishes with a one-hour poll
/// interval, so only the wake-up can have made it claim) and not relay B, whose claims are
/// counted as above: B claims in its first round and never again, where a process-wide signal
/// would make it claim once per commit on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_of_its_own_database_only() {
    let (db_a, db_b) = (TestDb::<tests::backend::Pg>::fresh().await, TestDb::<tests::backend::Pg>::fresh().await);
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let (pool_a, pool_b) = (db_a.pool(4).await, db_b.pool(4).await);
    let relay = |pool| rs::relay(pool, &kafka).poll_interval(Duration::from_secs(3600)).listen(false);
    let relay_a = relay(pool_a.clone()).wakeup(outbox::Wakeup::new()).build().unwrap();
    let relay_b = relay(pool_b.clone()).wakeup(outbox::Wakeup::new()).build().unwrap();
    let (wakeup_a, wakeup_b) = (relay_a.wakeup(), relay_b.wakeup());
    assert!(!wakeup_a.same_as(&wakeup_b) && !wakeup_a.same_as(&outbox::Wakeup::shared()));
    let (stop_a, task_a) = rs::spawn(relay_a);
    let (stop_b, task_b) = rs::spawn(relay_b);

    const EVENTS: i64 = 20;
    let mut conn = db_a.conn().await;
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        let id = wakeup_a
            .transaction(&mut conn, async |tx| outbox::publish(tx, &Happened::new("k", n as u64)).await)
            .await
            .unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = kafka.read_all(rs::TOPIC, ids.len(), Duration::from_secs(20), Duration::from_millis(200)).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    assert_eq!(report.distinct, ids.len(), "relay A woken by its handle's commits: {report:?}");
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        stop.cancel();
        task.await.unwrap().unwrap();
    }
    drop((pool_a, pool_b, conn));

    // Backends flush their statistics before they leave pg_stat_activity: once only the
    // counting session is left, the counts are final.
    for db in [&db_a, &db_b] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db
            .count("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .await
            > 0
        {
            assert!(std::time::Instant::now() < deadline, "the relays' sessions did not end");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let scans = async |db: &TestDb<tests::backend::Pg>| {
        db.count(
            "SELECT COALESCE(sum(idx_scan), 0)::bigint AS n FROM pg_stat_user_indexes \
             WHERE indexrelname = 'outbox_messages_pending'",
        )
        .await
    };
    let (claims_a, claims_b) = (scans(&db_a).await, scans(&db_b).await);
    println!("scans of the pending index: relay A {claims_a}, relay B {claims_b}");
    // A was woken: every event reached the topic with a one-hour poll interval (above). How
    // many claims that took depends on the broker's ack latency (a commit made while a batch is
    // in flight is claimed with the next one: 20 on the mock, 15 seen on tansu).
    assert!(claims_a > claims_b, "relay A claimed {claims_a} times, relay B {claims_b}");
    // B: its first round's claim and backlog gauge, its drain check; nothing per commit on A.
    assert!(claims_b <= 5, "relay B claimed {claims_b} times: woken by commits to another database");
}
