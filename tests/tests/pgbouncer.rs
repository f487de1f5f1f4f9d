//! The writer, the relay, the inbox and the operations through a real PgBouncer in transaction
//! mode (`PGBOUNCER_URL`, which `scripts/test` exports after starting Debian's pgbouncer in front
//! of its PostgreSQL; see scripts/pgbouncer.sh and docs/pgbouncer.md).
//!
//! First the failure this mode exists for: with diesel-async's own connections, a writer's second
//! transaction that PgBouncer serves on another server connection fails with
//! `prepared statement "sN" does not exist` (the statement cached by the first one). Then the same
//! sequence, and every component, on `outbox::pooler` connections. Every database and the checks
//! of the results go directly to PostgreSQL (`DATABASE_URL`); the SDK goes through PgBouncer.

use std::collections::HashSet;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::KafkaConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::relay_support::{self, Happened, TOPIC};
use tests::{Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `PGBOUNCER_URL` with the test's database: PgBouncer's `*` entry maps any database name to the
/// same name on the server. Panics when it is unset: this suite must never pass without
/// PgBouncer (scripts/test always starts one).
fn via_pgbouncer(db: &TestDb) -> String {
    let url = std::env::var("PGBOUNCER_URL").ok().filter(|u| !u.is_empty()).expect(
        "PGBOUNCER_URL is not set: this suite runs through a real PgBouncer; run it with scripts/test, \
         which starts one (scripts/pgbouncer.sh)",
    );
    let root = url.rsplit_once('/').map_or(url.as_str(), |(root, _)| root);
    format!("{root}/{}", db.name)
}

async fn pooler_pool(url: &str, size: u32) -> outbox::pooler::Pool {
    bb8::Pool::builder()
        .max_size(size)
        .queue_strategy(bb8::QueueStrategy::Lifo)
        .build(outbox::pooler::Manager::new(url))
        .await
        .expect("pool through PgBouncer")
}

/// A transaction's outcome: rolled back on purpose, or failed.
#[derive(Debug)]
enum Tx {
    RolledBack,
    Failed(outbox::Error),
}

impl From<diesel::result::Error> for Tx {
    fn from(e: diesel::result::Error) -> Self {
        Tx::Failed(e.into())
    }
}

impl From<outbox::Error> for Tx {
    fn from(e: outbox::Error) -> Self {
        Tx::Failed(e)
    }
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// One writer transaction: an event, and the PostgreSQL backend that served it.
async fn write_one(conn: &mut AsyncPgConnection, n: u64) -> Result<(Uuid, i32), outbox::Error> {
    outbox::transaction(conn, async |tx| {
        let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(tx).await?;
        let id = outbox::publish(tx, &Happened::new("k", n)).await?;
        Ok((id, pid.pid))
    })
    .await
}

/// The writer's first transaction on `writer` runs on PgBouncer's only idle server connection;
/// while `hog` holds that one in an open transaction, the writer's second transaction is served
/// by another. Returns both outcomes.
async fn two_transactions_on_two_servers(
    writer: &mut AsyncPgConnection,
    hog: &mut AsyncPgConnection,
) -> (Result<(Uuid, i32), outbox::Error>, Result<(Uuid, i32), outbox::Error>) {
    let first = write_one(writer, 1).await;
    hog.batch_execute("BEGIN; SELECT 1").await.expect("hog holds a server connection");
    let second = write_one(writer, 2).await;
    hog.batch_execute("ROLLBACK").await.expect("hog lets go");
    (first, second)
}

/// Without `outbox::pooler`: diesel-async's connection caches the INSERT prepared in the first
/// transaction, and the second transaction, on another server connection, fails with the error
/// of issue 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pooler_mode_the_second_transaction_fails() {
    let db = TestDb::new().await;
    let url = via_pgbouncer(&db);
    let mut writer = AsyncPgConnection::establish(&url).await.expect("connect through PgBouncer");
    let mut hog = outbox::pooler::establish(&url).await.expect("connect through PgBouncer");
    let (first, second) = two_transactions_on_two_servers(&mut writer, &mut hog).await;
    let (_, pid) = first.expect("the first transaction works");
    let err = second.expect_err("the second transaction runs on another server connection").to_string();
    println!("first transaction on backend {pid}; second: {err}");
    let name = err
        .strip_prefix("database error: prepared statement \"")
        .or_else(|| err.split_once("prepared statement \"").map(|(_, rest)| rest))
        .and_then(|rest| rest.strip_suffix("\" does not exist"))
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    assert!(name.starts_with('s') && name[1..].bytes().all(|b| b.is_ascii_digit()), "{err}");
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 1, "only the first one committed");
}

/// With `outbox::pooler::establish`: the same two transactions both commit, on two different
/// PostgreSQL backends; a rolled-back one leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_transactions_commit_and_roll_back_through_pgbouncer() {
    let db = TestDb::new().await;
    let url = via_pgbouncer(&db);
    let mut writer = outbox::pooler::establish(&url).await.expect("connect through PgBouncer");
    let mut hog = outbox::pooler::establish(&url).await.expect("connect through PgBouncer");
    let (first, second) = two_transactions_on_two_servers(&mut writer, &mut hog).await;
    let (a, pid_a) = first.expect("first transaction");
    let (b, pid_b) = second.expect("second transaction, on another server connection");
    println!("committed {a} on backend {pid_a} and {b} on backend {pid_b}");
    assert_ne!(pid_a, pid_b, "PgBouncer served the two transactions on two server connections");

    let rolled_back: Result<(), Tx> = outbox::transaction(&mut writer, async |tx| {
        outbox::publish(tx, &Happened::new("k", 3)).await?;
        Err(Tx::RolledBack)
    })
    .await;
    assert!(matches!(rolled_back, Err(Tx::RolledBack)));
    // A batch (unnest statement) and the writer's statements after a rollback still work.
    let batch = outbox::transaction(&mut writer, async |tx| {
        outbox::publish_all(tx, &[Happened::new("k", 4), Happened::new("k", 5)]).await
    })
    .await
    .expect("batch");
    assert_eq!(batch.len(), 2);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 4, "2 + a batch of 2; none rolled back");

    // The operations, on the same connection (each runs in a transaction of its own).
    let status = outbox::ops::status(&mut writer).await.expect("ops status through PgBouncer");
    assert_eq!(status.pending, 4);
    assert!(outbox::ops::list_parked(&mut writer, 10, None).await.expect("list parked").is_empty());
    outbox::set_notify(&mut writer, false).await.expect("set_notify through PgBouncer");
}

/// Many writers at once through a pool of `outbox::pooler` connections, and the relay on another,
/// drain everything to Kafka (the mock cluster) in per-key order. `listen(true)` is refused on
/// such a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_drains_to_kafka_through_pgbouncer() {
    let db = TestDb::new().await;
    let url = via_pgbouncer(&db);
    let kafka = TestKafka::new();
    kafka.create_topic(TOPIC, 3).await;

    let refused = relay_support::relay(pooler_pool(&url, 2).await, &kafka).listen(true).build();
    let err = refused.expect_err("listen(true) behind a transaction pooler").to_string();
    println!("listen(true): {err}");
    assert!(err.contains("listen(true) needs a session of its own"), "{err}");

    let relay = relay_support::relay(pooler_pool(&url, 4).await, &kafka).batch_size(50).build().expect("relay");
    let (stop, running) = relay_support::spawn(relay);

    let writers = pooler_pool(&url, 8).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let writers = writers.clone();
        tasks.spawn(async move {
            let mut conn = writers.get_owned().await.expect("writer connection");
            let mut ids = Vec::new();
            for i in 0..25u64 {
                let n = w * 1000 + i;
                let id = outbox::transaction(&mut *conn, async |tx| {
                    outbox::publish(tx, &Happened::new(format!("w{w}"), n)).await
                })
                .await
                .expect("writer transaction through PgBouncer");
                ids.push(id);
            }
            ids
        });
    }
    let mut expected = Vec::new();
    for ids in tasks.join_all().await {
        expected.extend(ids);
    }
    let records = kafka.read_all(TOPIC, expected.len(), Duration::from_secs(30), Duration::from_millis(200)).await;
    let report = relay_support::check_delivery(&records, &expected, &HashSet::new());
    println!("{} events from 8 writers through PgBouncer: {report:?}", expected.len());
    assert_eq!(report.distinct, expected.len(), "{report:?}");
    relay_support::wait_drained(&db, Duration::from_secs(10)).await;
    stop.cancel();
    running.await.expect("relay task").expect("relay stopped cleanly");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NULL").await,
        1,
        "lease released"
    );
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "pgb.orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
}

struct RecordOrder;

#[inbox::async_trait]
impl Handler<OrderPlaced, AsyncPgConnection> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect { n: Some(e.n), ..Effect::of(id) }).await?;
        Ok(())
    }
}

/// The inbox on a pool of `outbox::pooler` connections: five copies of one message id take
/// effect once, in batch mode and in one-message mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_handles_and_dedups_through_pgbouncer() {
    for batch_size in [100, 1] {
        let db = TestDb::new().await;
        let url = via_pgbouncer(&db);
        let kafka = TestKafka::new();
        kafka.create_topic("pgb.orders", 1).await;
        db.create_effects().await;
        let order = |n| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), n }).partition(0);
        let dup = order(0);
        let input = vec![dup.clone(), order(1), dup.clone(), order(2), dup.clone(), order(3), dup.clone(), dup.clone()];
        TestProducer::new(&kafka).send_all(&input).await;

        let shutdown = CancellationToken::new();
        let inbox = Inbox::builder(pooler_pool(&url, 4).await, tests::produce::inbox_kafka_config(&kafka))
            .group("pgb")
            .batch_size(batch_size)
            .handle(RecordOrder)
            .build()
            .expect("inbox");
        let running = tokio::spawn(inbox.run(shutdown.clone()));
        let position = wait_for_count(
            &db,
            "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets",
            input.len() as i64,
            // A real broker (the tansu pass) holds a new group's first join for ~20 s.
            Duration::from_secs(60),
        )
        .await;
        shutdown.cancel();
        running.await.expect("inbox task").expect("inbox stopped cleanly");
        println!("batch_size {batch_size}: position {position}");
        assert_eq!(position, input.len() as i64, "every message consumed (batch_size {batch_size})");
        let dup_id = dup.id().expect("id");
        assert_eq!(
            db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{dup_id}'")).await,
            1,
            "the redelivered message took effect once (batch_size {batch_size})"
        );
        assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 4, "batch_size {batch_size}");
        assert_eq!(db.count("SELECT count(*) AS n FROM inbox_messages").await, 4, "batch_size {batch_size}");
        assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
    }
}

/// The quickstart's flow through PgBouncer: orders committed with their event (every fourth
/// rolled back after publishing), the relay publishing, the inbox handling each committed order
/// exactly once, nothing of a rolled-back order anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_flow_through_pgbouncer() {
    let db = TestDb::new().await;
    let url = via_pgbouncer(&db);
    let kafka = TestKafka::new();
    kafka.create_topic("pgb.orders", 3).await;
    db.create_effects().await;
    db.exec("CREATE TABLE orders (id uuid PRIMARY KEY, n bigint NOT NULL)").await;

    let pool = pooler_pool(&url, 8).await;
    let shutdown = CancellationToken::new();
    let relay = outbox::relay::Relay::builder(pool.clone(), KafkaConfig::new(kafka.brokers()))
        .poll_interval(Duration::from_millis(50))
        .build()
        .expect("relay");
    let inbox = Inbox::builder(pool.clone(), tests::produce::inbox_kafka_config(&kafka))
        .group("pgb-quickstart")
        .handle(RecordOrder)
        .build()
        .expect("inbox");
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let inbox_task = tokio::spawn(inbox.run(shutdown.clone()));

    let mut conn = pool.get().await.expect("connection");
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for n in 0..40i64 {
        let order_id = Uuid::now_v7();
        let result: Result<Uuid, Tx> = outbox::transaction(&mut *conn, async |tx| {
            diesel::sql_query("INSERT INTO orders (id, n) VALUES ($1, $2)")
                .bind::<diesel::sql_types::Uuid, _>(order_id)
                .bind::<diesel::sql_types::BigInt, _>(n)
                .execute(tx)
                .await?;
            let id = outbox::publish(tx, &OrderPlaced { order_id, n }).await?;
            if n % 4 == 3 {
                return Err(Tx::RolledBack);
            }
            Ok(id)
        })
        .await;
        match result {
            Ok(id) => committed.insert(id),
            Err(Tx::RolledBack) => rolled_back.insert(n),
            Err(Tx::Failed(e)) => panic!("order {n}: {e}"),
        };
    }
    drop(conn);
    let handled =
        wait_for_count(&db, "SELECT count(*) AS n FROM effects", committed.len() as i64, Duration::from_secs(30)).await;
    shutdown.cancel();
    relay_task.await.expect("relay task").expect("relay stopped cleanly");
    inbox_task.await.expect("inbox task").expect("inbox stopped cleanly");
    println!("{} orders committed, {} rolled back, {handled} handled", committed.len(), rolled_back.len());
    assert_eq!(handled, committed.len() as i64);
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM effects").await, committed.len() as i64);
    assert_eq!(db.count("SELECT count(*) AS n FROM orders").await, committed.len() as i64);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0, "all published and deleted");
    let rolled: Vec<String> = rolled_back.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM effects WHERE n IN ({})", rolled.join(","))).await,
        0,
        "nothing of a rolled-back order was handled"
    );
}
