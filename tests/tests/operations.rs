//! `outbox::ops` and `inbox::ops`: what an operator sees and repairs, on PostgreSQL and SQLite.
//! A message parked for real by the relay is listed with its error, retried (and then delivered
//! ahead of the messages it held back, in key order) or discarded (releasing its key); inbox dead
//! letters are listed and discarded (`inbox::ops`).

use std::collections::HashSet;
use std::time::Duration;

use diesel_async::AsyncConnection;
use inbox::ops::DeadLetterSelection;
use outbox::ops::{self, Selection};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestConn, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(
    parked_messages_are_listed_retried_in_key_order_and_discarded,
    dead_letters_are_listed_newest_first_and_discarded,
    operations_run_inside_a_callers_transaction,
);

/// Held rows (out of the pending index behind a failing row of their key), on both backends
/// (`held` is a boolean on PostgreSQL, 0/1 on SQLite).
const HELD: &str = "SELECT count(*) AS n FROM outbox_messages WHERE held";

/// The operations' futures can be spawned (axum handlers, tokio::spawn) on both backends.
fn send<F: Send>(f: F) -> F {
    f
}

/// Waits until `sql` (a count) returns `want`.
async fn wait_count<B: Backend>(db: &TestDb<B>, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = db.count(sql).await;
        if n == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sql}: {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn parked_messages_are_listed_retried_in_key_order_and_discarded<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;

    // Keys a, b, c written round-robin; a's and b's second events are larger than the first
    // relay's producer accepts.
    let mut conn = db.conn().await;
    let mut written = Vec::new(); // (key, n, id) in write order
    for n in 0..4u64 {
        for key in ["a", "b", "c"] {
            if key != "a" && n == 3 {
                continue;
            }
            let mut e = Happened::new(key, n);
            if n == 1 && key != "c" {
                e.pad = "y".repeat(64 * 1024);
            }
            let id = conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &e).await).await.unwrap();
            written.push((key, n, id));
        }
    }
    let id = |key: &str, n: u64| written.iter().find(|w| w.0 == key && w.1 == n).map(|w| w.2).unwrap();
    let (a1, b1) = (id("a", 1), id("b", 1));

    let strict = outbox::KafkaConfig::new(kafka.brokers()).set("message.max.bytes", "32768");
    let relay = rs::relay_with(db.pool(4).await, strict).max_attempts(3).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // Left behind: a1, a2, a3 and b1, b2 — the two heads parked, the rest held back.
    wait_count(&db, "SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NOT NULL", 2).await;
    wait_count(&db, "SELECT count(*) AS n FROM outbox_messages", 5).await;
    wait_count(&db, HELD, 3).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let status = send(ops::status(&mut conn)).await.unwrap();
    println!("{status:?}");
    assert_eq!((status.pending, status.parked, status.sent_kept), (3, 2, 0));
    assert_eq!(inbox::ops::status(&mut conn).await.unwrap().dead_letters, 0);
    assert!(status.oldest_pending_age.is_some());
    assert_eq!(status.per_topic.len(), 1);
    let topic = &status.per_topic[0];
    assert_eq!((topic.topic.as_str(), topic.pending, topic.parked), (rs::TOPIC, 3, 2));
    let lease = status.lease.expect("the relay took the lease");
    assert_eq!(lease.name, "default");
    assert!(lease.epoch >= 1);
    assert_eq!((lease.owner, lease.expires_in), (None, None), "a stopped relay released its lease");

    let parked = send(ops::list_parked(&mut conn, 10, None)).await.unwrap();
    assert_eq!(parked.iter().map(|m| m.id).collect::<Vec<_>>(), [a1, b1], "oldest first");
    for m in &parked {
        assert_eq!(
            (m.topic.as_str(), m.event_type.as_str(), m.event_version, m.attempts),
            (rs::TOPIC, "test.happened", 2, 1)
        );
        let error = m.last_error.as_deref().unwrap_or_default().to_lowercase();
        assert!(error.contains("too large"), "{error}");
        assert!(m.parked_at >= m.created_at);
    }
    assert_eq!(parked[0].key.as_deref(), Some("a"));
    assert_eq!(ops::list_parked(&mut conn, 1, None).await.unwrap().len(), 1);
    assert!(ops::list_parked(&mut conn, 10, Some("other.topic")).await.unwrap().is_empty());
    assert_eq!(ops::list_parked(&mut conn, 10, Some(rs::TOPIC)).await.unwrap().len(), 2);

    // A held (pending) message is not parked: neither retry nor discard touches it.
    let a2 = id("a", 2);
    assert_eq!(send(ops::retry_parked(&mut conn, Selection::Ids(vec![a2, Uuid::now_v7()]))).await.unwrap(), 0);
    assert_eq!(send(ops::discard_parked(&mut conn, Selection::Ids(vec![a2]))).await.unwrap(), 0);
    assert_eq!(ops::retry_parked(&mut conn, Selection::Ids(vec![])).await.unwrap(), 0);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 5);
    assert_eq!(db.count(HELD).await, 3, "nothing released");

    // Discard b's head: b2 is released at once, in the same transaction (not by a relay's
    // later clean-up). Retry a's head: a2 and a3 are released; a1 keeps its error until sent.
    assert_eq!(ops::discard_parked(&mut conn, Selection::Ids(vec![b1])).await.unwrap(), 1);
    assert_eq!(db.count(&format!("{HELD} AND key = 'b'")).await, 0, "b's held message is released");
    assert_eq!(db.count(HELD).await, 2, "a's stay held behind the parked a1");
    assert_eq!(ops::retry_parked(&mut conn, Selection::Ids(vec![b1])).await.unwrap(), 0, "gone");
    assert_eq!(ops::retry_parked(&mut conn, Selection::All { topic: Some("other.topic".into()) }).await.unwrap(), 0);
    assert_eq!(ops::retry_parked(&mut conn, Selection::All { topic: Some(rs::TOPIC.into()) }).await.unwrap(), 1);
    assert_eq!(db.count(HELD).await, 0, "a's held messages are released");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM outbox_messages WHERE id = '{a1}' AND parked_at IS NULL AND attempts = 0 \
             AND next_attempt_at <= {} AND lower(last_error) LIKE '%too large%'",
            B::Conn::sql_ago(Duration::ZERO)
        ))
        .await,
        1
    );
    let status = ops::status(&mut conn).await.unwrap();
    assert_eq!((status.pending, status.parked), (4, 0));

    // With the broker's limit (not the test's small one), a second relay delivers a1 and then
    // everything it held back, in key order; b1 never reaches the topic.
    let relay = rs::relay(db.pool(4).await, &kafka).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let expected: Vec<Uuid> = written.iter().map(|w| w.2).filter(|id| *id != b1).collect();
    let records = rs::read_topic(&kafka, expected.len()).await;
    let report = rs::check_delivery(&records, &expected, &HashSet::from([b1]));
    println!("after retry and discard: {report:?}");
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
}

/// A byte-string literal in `B`'s SQL.
fn blob<B: Backend>(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match B::NAME {
        "postgres" => format!("decode('{hex}', 'hex')"),
        _ => format!("X'{hex}'"),
    }
}

async fn dead_letters_are_listed_newest_first_and_discarded<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let empty = ops::status(&mut conn).await.unwrap();
    assert_eq!((empty.pending, empty.parked), (0, 0));
    assert_eq!(inbox::ops::status(&mut conn).await.unwrap().dead_letters, 0);
    assert!(empty.lease.is_none() && empty.per_topic.is_empty() && empty.oldest_pending_age.is_none());
    assert!(send(inbox::ops::list_dead_letters(&mut conn, None, 10)).await.unwrap().is_empty());

    let ago = |mins: u64| B::Conn::sql_ago(Duration::from_secs(60 * mins));
    let raw = outbox::raw_headers::encode([(&b"ce_type"[..], Some(&b"x\x1b"[..])), (&[0xff][..], None)]);
    conn.exec(&format!(
        "INSERT INTO inbox_dead_letters
             (consumer_group, message_id, topic, kafka_partition, kafka_offset, key, payload, headers,
              reason, error, attempts, created_at, raw_headers)
         VALUES ('g1', '0190f6e0-0000-7000-8000-000000000001', 'orders', 0, 10, {}, {}, '{{\"ce_type\":\"x\"}}',
                 'handler_failed', 'first', 5, {}, {}),
                ('g1', '0190f6e0-0000-7000-8000-000000000002', 'orders', 1, 11, NULL, NULL, '{{}}',
                 'unknown_type', 'second', 1, {}, NULL),
                ('g1', NULL, 'orders', 0, 12, NULL, {}, '{{}}',
                 'invalid_message', 'third: missing ce_id', 1, {}, NULL),
                ('g2', '0190f6e0-0000-7000-8000-000000000004', 'payments', 3, 99, NULL, NULL, '{{}}',
                 'handler_failed', 'other group', 2, {}, NULL)",
        blob::<B>(b"k"),
        blob::<B>(b"p"),
        ago(3),
        blob::<B>(&raw),
        ago(2),
        blob::<B>(b"garbage"),
        ago(1),
        ago(0),
    ))
    .await;

    let all = inbox::ops::list_dead_letters(&mut conn, None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.error.as_str()).collect::<Vec<_>>(),
        ["other group", "third: missing ce_id", "second", "first"]
    );
    let g1 = inbox::ops::list_dead_letters(&mut conn, Some("g1"), 2).await.unwrap();
    assert_eq!(g1.iter().map(|d| d.error.as_str()).collect::<Vec<_>>(), ["third: missing ce_id", "second"]);
    assert_eq!(g1[0].message_id, None);
    assert_eq!((g1[0].reason.as_str(), g1[0].partition, g1[0].offset), ("invalid_message", 0, 12));
    assert_eq!((g1[1].topic.as_str(), g1[1].attempts, g1[1].consumer_group.as_str()), ("orders", 1, "g1"));
    assert_eq!(g1[1].message_id, Some("0190f6e0-0000-7000-8000-000000000002".parse().unwrap()));
    assert!(g1[1].headers.0.is_empty(), "no raw headers stored");
    // The raw headers, decoded and escaped.
    assert_eq!(all[3].headers.to_string(), "ce_type=x\\u{1b}, \\xFF");
    assert!(all[3].created_at < all[0].created_at);
    assert!(inbox::ops::list_dead_letters(&mut conn, Some("nobody"), 10).await.unwrap().is_empty());
    assert_eq!(inbox::ops::status(&mut conn).await.unwrap().dead_letters, 4);

    let first = all[3].id;
    assert_eq!(
        send(inbox::ops::discard_dead_letters(&mut conn, DeadLetterSelection::Ids(vec![first, -1]))).await.unwrap(),
        1
    );
    assert_eq!(inbox::ops::discard_dead_letters(&mut conn, DeadLetterSelection::Ids(vec![])).await.unwrap(), 0);
    assert_eq!(
        inbox::ops::discard_dead_letters(&mut conn, DeadLetterSelection::Group("nobody".into())).await.unwrap(),
        0
    );
    assert_eq!(inbox::ops::discard_dead_letters(&mut conn, DeadLetterSelection::Group("g1".into())).await.unwrap(), 2);
    let left = inbox::ops::list_dead_letters(&mut conn, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].consumer_group, "g2");
    assert_eq!(inbox::ops::status(&mut conn).await.unwrap().dead_letters, 1);
}

/// Inside a transaction of the caller's, an operation runs in a savepoint: rolled back with the
/// caller's transaction, and it sees the caller's uncommitted rows.
async fn operations_run_inside_a_callers_transaction<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let now = B::Conn::sql_ago(Duration::ZERO);
    conn.exec(&format!(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, \
                                      last_error, parked_at) \
         VALUES ('0190f6e0-0000-7000-8000-000000000001', 'orders', 'k', 't', 1, {}, '2026-01-01T00:00:00Z', 1, \
                 'too large', {now})",
        blob::<B>(b"{}")
    ))
    .await;
    let id: Uuid = "0190f6e0-0000-7000-8000-000000000001".parse().unwrap();
    let undone = outbox::transaction(&mut conn, async |tx| {
        assert_eq!(ops::status(tx).await?.parked, 1);
        assert_eq!(ops::discard_parked(tx, Selection::Ids(vec![id])).await?, 1);
        assert_eq!(ops::status(tx).await?.parked, 0, "the caller's transaction sees the discard");
        Err::<(), outbox::Error>(diesel::result::Error::RollbackTransaction.into())
    })
    .await;
    assert!(undone.is_err());
    let parked = ops::list_parked(&mut conn, 10, None).await.unwrap();
    assert_eq!(parked.iter().map(|m| m.id).collect::<Vec<_>>(), [id], "rolled back with the caller's transaction");
    assert_eq!(parked[0].key.as_deref(), Some("k"));
    assert!(parked[0].created_at <= parked[0].parked_at, "{:?}", parked[0]);
}
