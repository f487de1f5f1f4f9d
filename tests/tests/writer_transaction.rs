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
