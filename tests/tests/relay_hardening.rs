//! The relay's own failure paths, each driven until it runs: rows of a failing key keep their
//! order after relay-level failures, a long key cannot stop the marks, the backoff grows while
//! marks keep failing, a blocked key's backlog is held (not walked by every claim), a relay
//! paused past its lease claims nothing, and relays of different names never both publish.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel_async::AsyncConnection;
use outbox::db::{Fence, InFlight, RelayStore as _};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestConn, TestDb, TestKafka};
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

tests::backends!(
    failing_keys_keep_their_order_through_relay_level_failures,
    failing_keys_keep_their_order_through_produce_errors,
    a_batch_behind_a_timed_out_one_is_not_overtaken,
    a_relay_fenced_while_its_window_was_purged_publishes_once_it_leads_again,
    a_long_key_that_fails_does_not_stop_the_marks,
    backoff_grows_while_marks_keep_failing,
    a_blocked_keys_backlog_is_held_not_walked_by_every_claim,
    a_relay_paused_past_its_lease_claims_nothing,
    relays_of_different_names_never_both_publish,
);

/// The smallest pool the builder accepts, with LISTEN on and the NOTIFY trigger enabled: the
/// LISTEN session must not take the pool's only connection (it did, and nothing was published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_of_one_with_listen_publishes() {
    let db = TestDb::<tests::Pg>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut conn = db.conn().await;
    outbox::set_notify(&mut conn, true).await.unwrap();
    let relay = rs::relay(db.pool(1).await, &kafka).listen(true).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    let ids = rs::write_events(&db, 200, 10, 20).await;
    rs::wait_drained(&db, Duration::from_secs(30)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    println!("pool of one with LISTEN: {:?}", rs::check_delivery(&records, &ids, &HashSet::new()));
}

/// Every broker down for longer than `message.timeout.ms`, so every delivery of several rounds
/// fails in the relay itself (not inside librdkafka): several rows of one key fail in one
/// batch, get failure records, and must still come out in write order.
async fn failing_keys_keep_their_order_through_relay_level_failures<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: taking brokers down needs the mock cluster; not run");
        return;
    };
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut ids = rs::write_events(&db, 400, 4, 10).await;
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let config = outbox::KafkaConfig::new(kafka.brokers()).set("message.timeout.ms", "300");
    let relay = rs::relay_with(db.pool(3).await, config)
        .batch_size(50)
        .backoff(Duration::from_millis(200), Duration::from_millis(800))
        .max_attempts(1000)
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    // Keep writing while the failures are recorded: rows written after a failure must wait too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT CAST(COALESCE(max(attempts), 0) AS BIGINT) AS n FROM outbox_messages").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no relay-level failure was recorded");
        ids.extend(rs::write_events(&db, 20, 4, 5).await);
    }
    let failed = db.count("SELECT count(*) AS n FROM outbox_messages WHERE attempts > 0").await;
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("{} events, {failed} rows with recorded failures: {report:?}", ids.len());
}

/// A batch that times out purges the one pipelined behind it, whose rows are left unmarked
/// ("maybe sent"): no later row of their key may be claimed and produced before they are. Batches
/// of one row: `a` times out, `b0` (behind it) is purged, and the brokers come back at once,
/// while `b1..` are still to be claimed.
async fn a_batch_behind_a_timed_out_one_is_not_overtaken<B: Backend>() {
    const CYCLES: u64 = 3;
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: taking brokers down needs the mock cluster; not run");
        return;
    };
    kafka.create_topic(rs::TOPIC, 1).await;
    let config = outbox::KafkaConfig::new(kafka.brokers())
        .set("message.timeout.ms", "3000")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "50");
    let relay = rs::relay_with(db.pool(3).await, config)
        .batch_size(1)
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .max_attempts(1000)
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    let mut conn = db.conn().await;
    let mut ids = Vec::new();
    // The race is the relay's (the brokers come back while the purged batch waits to be marked):
    // each cycle is one more chance for an overtaking row to show.
    for cycle in 0..CYCLES {
        for b in 1..=3 {
            mock.broker_down(b).unwrap();
        }
        let mut events = vec![Happened::new(format!("a{cycle}"), 0)];
        events.extend((1..=20).map(|n| Happened::new(format!("b{cycle}"), n)));
        ids.extend(
            conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &events).await).await.unwrap(),
        );
        let failed = format!("SELECT count(*) AS n FROM outbox_messages WHERE attempts > 0 AND key = 'a{cycle}'");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while db.count(&failed).await == 0 {
            assert!(tokio::time::Instant::now() < deadline, "cycle {cycle}: the first batch did not time out");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for b in 1..=3 {
            mock.broker_up(b).unwrap();
        }
        rs::wait_drained(&db, Duration::from_secs(60)).await;
    }
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("{CYCLES} cycles behind a timed-out batch: {report:?}");
}

/// A relay waits in a batch's delivery timeout longer than its lease: the lease runs out, another
/// owner takes it, the timed-out batch purges the window and its mark is fenced, and the relay
/// stands by with its window dropped. Once it leads again it must publish (the purge's stop on
/// claims was left set and it claimed nothing, ever again).
async fn a_relay_fenced_while_its_window_was_purged_publishes_once_it_leads_again<B: Backend>() {
    let name = format!("fenced-purged-{}", B::NAME);
    let events = relay_events(&name); // before TestDb installs its subscriber
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: taking brokers down needs the mock cluster; not run");
        return;
    };
    kafka.create_topic(rs::TOPIC, 1).await;
    let mut conn = db.conn().await;
    let written: Vec<Happened> = (0..5).map(|n| Happened::new(format!("k{n}"), 0)).collect();
    let ids =
        conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &written).await).await.unwrap();
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let config = outbox::KafkaConfig::new(kafka.brokers())
        .set("message.timeout.ms", "3000")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "50");
    let relay = rs::relay_with(db.pool(3).await, config)
        .name(&name)
        .lease(Duration::from_secs(1))
        .batch_size(1)
        .max_attempts(1000)
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    // The relay waits in its first batch's 3 s timeout and cannot renew its 1 s lease: take it
    // over as soon as it has run out.
    let leading = format!("SELECT count(*) AS n FROM outbox_relay_leases WHERE name = '{name}' AND owner IS NOT NULL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.count(&leading).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the relay never took the lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let thief = Uuid::now_v7();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let epoch = loop {
        if let Some(epoch) = conn.acquire_lease(&name, thief, Duration::from_secs(3600)).await.unwrap() {
            break epoch;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay's lease never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The timed-out batch's mark is refused by the fence.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !events().iter().any(|(m, _)| m.starts_with("fenced")) {
        if task.is_finished() || tokio::time::Instant::now() >= deadline {
            stop.cancel();
            panic!("the relay's mark was not fenced: {:?}; run: {:?}", events(), task.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    conn.release_lease(&name, thief, epoch).await.unwrap();
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("fenced while purged, then leading again: {report:?}");
}

/// Retriable produce errors, more than librdkafka absorbs within a short `message.timeout.ms`:
/// deliveries fail and succeed by turns, rows of one key fail in the same batch and in the batch
/// pipelined behind it, while writers go on writing.
async fn failing_keys_keep_their_order_through_produce_errors<B: Backend>() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: request error injection needs the mock cluster; not run");
        return;
    };
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut ids = rs::write_events(&db, 300, 3, 10).await;
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    ]
    .into_iter()
    .cycle()
    .take(150)
    .collect();
    mock.request_errors(RDKafkaApiKey::Produce, &errors);
    let config =
        outbox::KafkaConfig::new(kafka.brokers()).set("message.timeout.ms", "300").set("retry.backoff.ms", "20");
    let relay = rs::relay_with(db.pool(3).await, config)
        .batch_size(20)
        .backoff(Duration::from_millis(200), Duration::from_millis(800))
        .max_attempts(1000)
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("SELECT CAST(COALESCE(max(attempts), 0) AS BIGINT) AS n FROM outbox_messages").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no relay-level failure was recorded");
        ids.extend(rs::write_events(&db, 12, 3, 3).await);
    }
    for _ in 0..20 {
        ids.extend(rs::write_events(&db, 12, 3, 3).await);
    }
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("{} events through 150 injected produce errors: {report:?}", ids.len());
}

/// A key longer than a btree entry can hold (~2.7 KB on PostgreSQL) on a row that fails: its
/// failure record must not roll back the batch's marks.
async fn a_long_key_that_fails_does_not_stop_the_marks<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut ids = rs::write_events(&db, 100, 10, 25).await;
    // Random, so that PostgreSQL cannot compress the index entry below the btree limit.
    let key: String = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        (0..8 * 1024).map(|_| char::from(rng.random_range(b'!'..=b'~'))).collect()
    };
    let long = Happened::new(key, 1_000);
    let mut conn = db.conn().await;
    let long_id = conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &long).await).await.unwrap();
    ids.extend(rs::write_events(&db, 100, 10, 25).await);
    // The long key makes the record larger than the producer accepts: rejected, parked.
    let config = outbox::KafkaConfig::new(kafka.brokers()).set("message.max.bytes", "4096");
    let relay = rs::relay_with(db.pool(3).await, config).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(30)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::from([long_id]));
    let parked = conn.parked_rows().await;
    assert_eq!(parked.iter().map(|p| p.0).collect::<Vec<_>>(), vec![long_id], "the long-keyed row is parked");
    println!("200 events around an 8 KB random key: {report:?}; parked with {:?}", parked[0].1);
}

/// Marks fail (a trigger refuses the DELETE) while claims and produces succeed: the retry delay
/// must grow with each failed round, not restart at the minimum after every successful claim.
async fn backoff_grows_while_marks_keep_failing<B: Backend>() {
    let name = format!("backoff-{}", B::NAME);
    let delays = round_failure_delays(&name);
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 50, 5, 50).await;
    db.exec(refuse_deletes_sql(B::NAME, true)).await;
    let relay = rs::relay(db.pool(3).await, &kafka).name(&name).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delays().len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "marks did not fail 6 times: {:?}", delays());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = delays();
    // Equal jitter on 100 ms doubling: the 6th delay is at least half of 3.2 s.
    assert!(seen[5] >= 1_600, "retry delays after failed marks do not grow: {seen:?} ms");
    db.exec(refuse_deletes_sql(B::NAME, false)).await;
    rs::wait_drained(&db, Duration::from_secs(30)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("retry delays of the first failed marks: {seen:?} ms; then {report:?}");
}

/// A parked head with thousands of later rows of its key: claims must not walk them (measured
/// as index tuples read by the claims on PostgreSQL), and once the head is retried they all
/// follow in order.
async fn a_blocked_keys_backlog_is_held_not_walked_by_every_claim<B: Backend>() {
    const BACKLOG: u64 = 5_000;
    const CLAIMS: i64 = 40;
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut conn = db.conn().await;
    let mut poison = Happened::new("hot", 0);
    poison.pad = "p".repeat(64 * 1024);
    let mut hot =
        vec![conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &poison).await).await.unwrap()];
    let mut cold = Vec::new();
    for chunk in 0..BACKLOG / 500 {
        let events: Vec<Happened> = (0..500).map(|i| Happened::new("hot", 1 + chunk * 500 + i)).collect();
        hot.extend(
            conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &events).await).await.unwrap(),
        );
        cold.extend(rs::write_events(&db, 10, 5, 10).await);
    }
    let small = || outbox::KafkaConfig::new(kafka.brokers()).set("message.max.bytes", "32768");
    let pool = db.pool(3).await;
    let relay = rs::relay_with(pool.clone(), small()).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // Every other key flows; the poison head is parked.
    let records = rs::read_topic(&kafka, cold.len()).await;
    rs::check_delivery(&records, &cold, &hot.iter().copied().collect());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while conn.parked_rows().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the oversized head was not parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The claims after the park hold the backlog a batch at a time (reading it once, on a slow
    // machine after this point): measure from when all of it is held.
    let unheld = "SELECT count(*) AS n FROM outbox_messages \
                  WHERE key = 'hot' AND sent_at IS NULL AND parked_at IS NULL AND NOT held";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = db.count(unheld).await;
        if n == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} rows behind the parked head were not held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The table as it is now: holding a row moves it out of the pending index, but its old entry
    // stays until vacuumed (the first scan reads all 5,000: idx_tup_read counts dead entries);
    // and with the statistics of the load above the claim was once planned without the pending
    // index (0 scans of it counted in the tansu pass).
    let vacuum = if B::NAME == "postgres" { "VACUUM (ANALYZE) outbox_messages" } else { "ANALYZE outbox_messages" };
    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, vacuum).await.unwrap();
    // Events of another key, one transaction at a time: one claim or more each.
    let before = pending_index_reads::<B>(&db).await;
    for i in 0..CLAIMS as u64 {
        let e = Happened::new("cold", 100_000 + i);
        cold.push(outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &e).await).await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while db.count("SELECT count(*) AS n FROM outbox_messages WHERE key = 'cold'").await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "event {i} of key `cold` was not published");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    drop(pool);
    if let Some(before) = before {
        // Backends flush their statistics when they exit (on a loaded machine, seconds later):
        // wait until the claims are counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut after = pending_index_reads::<B>(&db).await.unwrap_or_default();
        while after.0 - before.0 < CLAIMS && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = pending_index_reads::<B>(&db).await.unwrap_or_default();
        }
        let (scans, read) = (after.0 - before.0, after.1 - before.1);
        println!(
            "{scans} pending-index scans read {read} index entries with {BACKLOG} rows blocked behind a parked head"
        );
        assert!(scans >= CLAIMS, "the claims were not counted ({scans} scans)");
        // Per scan: how many claims run depends on how fast the broker acknowledges (each
        // publish here is followed by a burst of claims until it is acknowledged: ~45 scans on
        // the mock, ~3,000 on tansu); a claim that walked the held backlog would read all of it.
        assert!(
            read / scans < BACKLOG as i64 / 10,
            "{scans} scans read {read} pending-index entries: the blocked backlog is walked"
        );
    }

    // Retried (PostgreSQL: `ops::retry_parked`, which releases the held rows; SQLite: by hand,
    // so the relay's sweep of held rows with nothing failing ahead of them must release them).
    if B::NAME == "postgres" {
        let mut pg = <tests::Pg as Backend>::connect(&db.url).await;
        assert_eq!(outbox::ops::retry_parked(&mut pg, outbox::ops::Selection::All { topic: None }).await.unwrap(), 1);
    } else {
        db.exec("UPDATE outbox_messages SET parked_at = NULL, attempts = 0, next_attempt_at = 0 WHERE parked_at IS NOT NULL")
            .await;
    }
    let relay = rs::relay(db.pool(3).await, &kafka).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let all: Vec<Uuid> = cold.iter().chain(&hot).copied().collect();
    let records = kafka.read_all(rs::TOPIC, all.len(), Duration::from_secs(60), Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let hot_records: Vec<_> = records.iter().filter(|r| r.key.as_deref() == Some("hot")).cloned().collect();
    let report = rs::check_delivery(&hot_records, &hot, &HashSet::new());
    println!("after the retry, the held key: {report:?}");
}

/// A relay whose lease was taken over while it was paused claims nothing with its old epoch,
/// even though rows are due: the claim checks the lease in the same statement.
async fn a_relay_paused_past_its_lease_claims_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    rs::write_events(&db, 10, 2, 10).await;
    let mut conn = db.conn().await;
    let none = InFlight { first: 1, last: 0, rows: 0 };
    let fence = |owner, epoch| Fence { lease: "paused", owner, epoch, max_attempts: 3 };
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let lease = Duration::from_secs(60);
    let epoch_a = conn.acquire_lease("paused", a, lease).await.unwrap().expect("A takes the free lease");
    assert_eq!(conn.claim(100, none, fence(a, epoch_a)).await.unwrap().len(), 10);
    // A pauses; its lease runs out and B takes over.
    let expire = if B::NAME == "postgres" { "now() - interval '1 second'" } else { "0" };
    db.exec(&format!("UPDATE outbox_relay_leases SET expires_at = {expire}")).await;
    let epoch_b = conn.acquire_lease("paused", b, lease).await.unwrap().expect("B takes the expired lease");
    assert!(epoch_b > epoch_a);
    let stale = conn.claim(100, none, fence(a, epoch_a)).await.unwrap();
    assert!(stale.is_empty(), "a relay with a superseded lease claimed {} rows", stale.len());
    assert_eq!(conn.claim(100, none, fence(b, epoch_b)).await.unwrap().len(), 10);
}

/// Relays named differently over one outbox: the second stands by while the first holds its
/// lease (instead of both publishing every message), and takes over when the first stops.
async fn relays_of_different_names_never_both_publish<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let live = |name: &str| {
        let now = if B::NAME == "postgres" {
            "now()"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
        };
        format!(
            "SELECT count(*) AS n FROM outbox_relay_leases WHERE name = '{name}' AND owner IS NOT NULL AND expires_at > {now}"
        )
    };
    let (stop_a, task_a) = rs::spawn(rs::relay(db.pool(3).await, &kafka).name("alpha").build().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.count(&live("alpha")).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "alpha did not take its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stop_b, task_b) = rs::spawn(rs::relay(db.pool(3).await, &kafka).name("beta").build().unwrap());
    let mut ids = rs::write_events(&db, 300, 10, 10).await;
    rs::wait_drained(&db, Duration::from_secs(30)).await;
    assert_eq!(db.count(&live("beta")).await, 0, "beta took a lease while alpha held one");
    let records = rs::read_topic(&kafka, ids.len()).await;
    let first = rs::check_delivery(&records, &ids, &HashSet::new());
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    ids.extend(rs::write_events(&db, 50, 10, 10).await);
    rs::wait_drained(&db, Duration::from_secs(30)).await;
    assert_eq!(db.count(&live("beta")).await, 1, "beta took over after alpha stopped");
    let records = rs::read_topic(&kafka, ids.len()).await;
    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    println!("alpha alone: {first:?}; after beta took over: {report:?}");
}

fn refuse_deletes_sql(backend: &str, on: bool) -> &'static str {
    match (backend, on) {
        ("postgres", true) => {
            "CREATE FUNCTION refuse_deletes() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected: marks refused'; END $$; \
             CREATE TRIGGER refuse_deletes BEFORE DELETE ON outbox_messages \
             FOR EACH STATEMENT EXECUTE FUNCTION refuse_deletes();"
        }
        ("postgres", false) => "DROP TRIGGER refuse_deletes ON outbox_messages;",
        (_, true) => {
            "CREATE TRIGGER refuse_deletes BEFORE DELETE ON outbox_messages \
             BEGIN SELECT RAISE(ABORT, 'injected: marks refused'); END;"
        }
        (_, false) => "DROP TRIGGER refuse_deletes;",
    }
}

/// (scans, index entries read) of the pending index; `None` where the backend keeps no such
/// statistics (SQLite).
async fn pending_index_reads<B: Backend>(db: &TestDb<B>) -> Option<(i64, i64)> {
    if B::NAME != "postgres" {
        return None;
    }
    let sql = |col: &str| {
        format!(
            "SELECT COALESCE(sum({col}), 0)::bigint AS n FROM pg_stat_user_indexes \
             WHERE indexrelname = 'outbox_messages_pending'"
        )
    };
    Some((db.count(&sql("idx_scan")).await, db.count(&sql("idx_tup_read")).await))
}

/// The `retry_in_ms` of every "relay round failed" event of the relay named `relay`, as the
/// relay logs them (a process-wide subscriber; both backends' tests may share the process).
fn round_failure_delays(relay: &str) -> impl Fn() -> Vec<u64> {
    let events = relay_events(relay);
    move || events().into_iter().filter(|(m, _)| m == "relay round failed").filter_map(|(_, d)| d).collect()
}

/// Every event the relay named `relay` logs with its name: (message, `retry_in_ms`).
fn relay_events(relay: &str) -> impl Fn() -> Vec<(String, Option<u64>)> {
    type Seen = Mutex<Vec<(String, String, Option<u64>)>>;
    static SEEN: OnceLock<Arc<Seen>> = OnceLock::new();
    struct Capture(Arc<Seen>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            #[derive(Default)]
            struct Fields {
                message: String,
                relay: Option<String>,
                delay: Option<u64>,
            }
            impl tracing::field::Visit for Fields {
                fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                    if f.name() == "retry_in_ms" {
                        self.delay = Some(v);
                    }
                }
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    match f.name() {
                        "message" => self.message = format!("{v:?}"),
                        "relay" => self.relay = Some(format!("{v:?}")),
                        _ => {}
                    }
                }
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Some(relay) = fields.relay {
                self.0.lock().unwrap().push((relay, fields.message, fields.delay));
            }
        }
    }
    let seen = SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture(seen.clone())));
        seen
    });
    let relay = relay.to_owned();
    move || seen.lock().unwrap().iter().filter(|(r, ..)| *r == relay).map(|(_, m, d)| (m.clone(), *d)).collect()
}
