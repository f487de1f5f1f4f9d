//! `inbox::testing::Harness`, the test harness users test their handlers with, held to its
//! contract on SQLite (its zero-setup path; the example-service and quickstart suites use it on
//! PostgreSQL and SQLite): waits that see what the SDK did, duplicate and hostile deliveries
//! that reach the inbox as such, timeouts and stopped tasks reported with what happened.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use inbox::testing::Harness;
use inbox::{Context, Handler, HandlerError};
use outbox::ErrorKind;
use outbox::sqlite::SqliteConnection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "harness.orders", name = "order.placed")]
struct Placed {
    #[event(key)]
    id: Uuid,
}

/// One `effects` row per call: no key, so a message handled twice shows up as two rows.
struct Record;

#[inbox::async_trait]
impl Handler<Placed, SqliteConnection> for Record {
    async fn handle(&self, e: Placed, cx: &mut Context<'_, SqliteConnection>) -> Result<(), HandlerError> {
        diesel::sql_query("INSERT INTO effects (id) VALUES ($1)")
            .bind::<Text, _>(e.id.to_string())
            .execute(cx.conn())
            .await?;
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(60);

async fn harness() -> Harness<SqliteConnection> {
    let mut h = Harness::sqlite().await.expect("harness");
    h.pool().get().await.unwrap().batch_execute("CREATE TABLE effects (id TEXT NOT NULL)").await.unwrap();
    h.create_topic::<Placed>(3).unwrap();
    let inbox = h.inbox_builder().group("g").handle(Record).build().unwrap();
    h.start(inbox).unwrap();
    h
}

async fn effects(h: &Harness<SqliteConnection>) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = h.pool().get_owned().await.unwrap();
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM effects").get_result(&mut *conn).await.unwrap();
    n.n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_reach_the_inbox_and_take_effect_once() {
    let mut h = harness().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.publish(&Placed { id: Uuid::now_v7() }).await.unwrap());
    }
    assert_eq!(h.until_handled("g", 5, WAIT).await.unwrap(), 5);
    for id in &ids[..2] {
        let (partition, offset) = h.redeliver(*id).await.unwrap();
        println!("redelivered {id} at {partition}/{offset}");
    }
    h.until_quiet(WAIT).await.unwrap();
    // Quiet means the copies were read and committed past: they were skipped as duplicates.
    assert_eq!(effects(&h).await, 5, "one effect per message id");
    assert_eq!(h.handled("g").await.unwrap(), 5);
    assert!(h.dead_letters("g").await.unwrap().is_empty());
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_hostile_bytes_are_dead_lettered_with_their_bytes_and_reason() {
    let mut h = harness().await;
    let bytes: &[u8] = b"\xff\xfe\x00{\"id\":";
    let id = Uuid::now_v7().to_string();
    let headers: [(&str, Option<&[u8]>); 3] =
        [("ce_id", Some(id.as_bytes())), ("ce_type", Some(b"order.placed")), ("ce_specversion", Some(b"1.0"))];
    h.deliver_raw(<Placed as outbox::Event>::TOPIC, Some(b"k\x00"), Some(bytes), &headers).await.unwrap();
    h.deliver_raw(<Placed as outbox::Event>::TOPIC, None, Some(bytes), &[]).await.unwrap();
    h.until_quiet(WAIT).await.unwrap();
    let dead = h.dead_letters("g").await.unwrap();
    for d in &dead {
        println!("dead letter {:?} at {}/{}: {} ({})", d.message_id, d.partition, d.offset, d.reason, d.error);
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|d| d.payload.as_deref() == Some(bytes)), "the bytes are kept as received");
    assert_eq!(effects(&h).await, 0);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_cannot_be_met_times_out_saying_what_it_saw() {
    let mut h = harness().await;
    h.publish(&Placed { id: Uuid::now_v7() }).await.unwrap();
    h.until_handled("g", 1, WAIT).await.unwrap();
    let err = h.until_handled("g", 2, Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("1 of 2 messages handled by `g`"), "{err}");
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_that_stops_ends_the_wait_with_its_error_not_the_deadline() {
    let mut h = Harness::sqlite().await.unwrap();
    h.create_topic::<Placed>(1).unwrap();
    // A schema behind this build: the inbox (and the relay) refuse to start, at once.
    h.pool().get().await.unwrap().batch_execute("DELETE FROM outbox_schema_migrations").await.unwrap();
    let inbox = h.inbox_builder().group("g").handle(Record).build().unwrap();
    h.start(inbox).unwrap();
    let started = std::time::Instant::now();
    let err = h.until_handled("g", 1, Duration::from_secs(600)).await.unwrap_err();
    println!("after {:?}: {err}", started.elapsed());
    assert!(err.to_string().contains("stopped: database schema not migrated"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Schema, "{err}");
}
