//! The NOTIFY wake-up between processes (`outbox::set_notify`, PostgreSQL). Rows are inserted
//! with plain SQL, as another process would: nothing in this process signals the relay, and the
//! relay polls once an hour, so a row published at once was published because of the NOTIFY.
//! The control at the end turns the trigger off and shows the same insert then waits.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tests::TestDb;
use tests::relay_support as rs;
use uuid::Uuid;

const ROWS: usize = 10;

fn insert_sql(id: Uuid, n: usize) -> String {
    format!(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at) \
         VALUES ('{id}', '{topic}', 'k{k}', 'test.happened', 2, \
         convert_to('{{\"key\":\"k{k}\",\"n\":{n},\"pad\":\"\"}}', 'UTF8'), now())",
        topic = rs::TOPIC,
        k = n % 3,
    )
}

async fn wait_gone(db: &TestDb, id: Uuid, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let sql = format!("SELECT count(*) AS n FROM outbox_messages WHERE id = '{id}'");
    while started.elapsed() < within {
        if db.count(&sql).await == 0 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_a_relay_that_polls_once_an_hour() {
    let db = TestDb::<tests::Pg>::fresh().await;
    let kafka = tests::TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut conn = db.conn().await;
    outbox::set_notify(&mut conn, true).await.unwrap();
    let relay =
        rs::relay(db.pool(3).await, &kafka).poll_interval(Duration::from_secs(3600)).listen(true).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // Observable readiness: the relay holds the lease and its LISTEN session is registered.
    let listening = "SELECT count(*) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND query ILIKE 'LISTEN %'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL").await == 0
        || db.count(listening).await == 0
    {
        assert!(Instant::now() < deadline, "the relay did not start listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ids = Vec::new();
    let mut took = Vec::new();
    for n in 0..ROWS {
        let id = Uuid::now_v7();
        db.exec(&insert_sql(id, n)).await;
        let t = wait_gone(&db, id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("row {n} was not published within 30 s (the relay polls once an hour)"));
        ids.push(id);
        took.push(t);
    }
    // Control: without the trigger nothing wakes the relay; the row waits for the hourly poll.
    outbox::set_notify(&mut conn, false).await.unwrap();
    let quiet = Uuid::now_v7();
    db.exec(&insert_sql(quiet, ROWS)).await;
    assert_eq!(wait_gone(&db, quiet, Duration::from_secs(3)).await, None, "published without a NOTIFY");
    stop.cancel();
    task.await.unwrap().unwrap();
    let records = rs::read_topic(&kafka, ids.len()).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    took.sort();
    println!(
        "NOTIFY wake-up, insert -> row marked sent (polled every 1 ms): median {:?}, max {:?} over {ROWS} rows; \
         without the trigger: still unsent after 3 s; {report:?}",
        took[ROWS / 2],
        took[ROWS - 1]
    );
}
