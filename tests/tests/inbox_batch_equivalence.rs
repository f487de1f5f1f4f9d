//! Batch mode and one-message mode leave identical database state on the same input: effects,
//! dedup rows, dead letters (reason, attempts, payload) and stored positions. The input mixes
//! what makes batches fall back to one-message transactions: duplicates inside a batch, a
//! transient failure, a permanent failure, a panic and hostile messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: i64,
    behaviour: String,
}

#[derive(Default)]
struct RecordOrder {
    calls: Mutex<HashMap<(String, Uuid), u32>>,
}

#[inbox::async_trait]
impl Handler<OrderPlaced> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
        let (id, group) = (cx.message_id(), cx.group().to_owned());
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry((group.clone(), id)).or_default();
            *c += 1;
            *c
        };
        diesel::sql_query("INSERT INTO effects (grp, message_id, n) VALUES ($1, $2, $3)")
            .bind::<Text, _>(group)
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(e.n)
            .execute(cx.conn())
            .await?;
        match e.behaviour.as_str() {
            "transient_twice" if call <= 2 => Err(HandlerError::transient("busy")),
            "always_transient" => Err(HandlerError::transient("still busy")),
            "permanent" => Err(HandlerError::permanent("invalid order")),
            "panic" => panic!("handler bug"),
            _ => Ok(()),
        }
    }
}

fn input() -> Vec<CloudEvent> {
    let event = |n: i64, behaviour: &str| {
        CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), n, behaviour: behaviour.into() })
            .partition((n % 2) as i32)
    };
    let mut out = Vec::new();
    let mut n = 0;
    let mut next = |behaviour: &str| {
        n += 1;
        event(n, behaviour)
    };
    let dup = next("ok");
    out.push(dup.clone());
    for _ in 0..10 {
        out.push(next("ok"));
    }
    out.push(next("transient_twice"));
    out.push(dup.clone().partition(0));
    out.push(next("ok"));
    out.push(next("always_transient"));
    out.push(next("ok"));
    out.push(next("permanent"));
    out.push(next("ok").header("ce_type", "order.cancelled"));
    out.push(next("ok").header("ce_id", "not-a-uuid"));
    out.push(next("ok").payload("{oops"));
    out.push(next("panic"));
    for _ in 0..10 {
        out.push(next("ok"));
    }
    out.push(dup.partition(1));
    out
}

#[derive(QueryableByName)]
struct Snapshot {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

/// The group's rows in every inbox table and in `effects`, as comparable text.
async fn snapshot(db: &TestDb, group: &str) -> Vec<Option<String>> {
    let mut conn = db.conn().await;
    let mut out = Vec::new();
    for sql in [
        "SELECT string_agg(message_id::text || ':' || n, ',' ORDER BY message_id, n) AS v \
         FROM effects WHERE grp = $1",
        "SELECT string_agg(message_id::text || '@' || topic || '/' || kafka_partition || '/' || kafka_offset, \
         ',' ORDER BY message_id) AS v FROM inbox_messages WHERE consumer_group = $1",
        "SELECT string_agg(concat_ws('|', message_id, topic, kafka_partition, kafka_offset, reason, attempts, \
         md5(payload), md5(key), headers->>'ce_id'), ',' ORDER BY kafka_partition, kafka_offset) AS v \
         FROM inbox_dead_letters WHERE consumer_group = $1",
        "SELECT string_agg(topic || '/' || kafka_partition || '=' || next_offset, ',' \
         ORDER BY topic, kafka_partition) AS v FROM inbox_offsets WHERE consumer_group = $1",
    ] {
        let row: Snapshot = diesel::sql_query(sql).bind::<Text, _>(group).get_result(&mut conn).await.unwrap();
        out.push(row.v);
    }
    out
}

#[tokio::test]
async fn batch_and_one_message_modes_leave_identical_state() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 2).await;
    diesel::sql_query("CREATE TABLE effects (grp text NOT NULL, message_id uuid NOT NULL, n bigint NOT NULL)")
        .execute(&mut db.conn().await)
        .await
        .unwrap();
    let input = input();
    TestProducer::new(&kafka).send_all(&input).await;

    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for (group, batch_size) in [("batch", 100), ("single", 1)] {
        let inbox = Inbox::builder(db.pool(4).await, kafka.brokers())
            .group(group)
            .batch_size(batch_size)
            .max_attempts(3)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .handle(RecordOrder::default())
            .build()
            .unwrap();
        running.push(tokio::spawn(inbox.run(shutdown.clone())));
    }
    let consumed = wait_for_count(
        &db,
        "SELECT coalesce(sum(next_offset), 0)::bigint AS n FROM inbox_offsets",
        2 * input.len() as i64,
        Duration::from_secs(25),
    )
    .await;
    shutdown.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
    assert_eq!(consumed, 2 * input.len() as i64, "both groups consumed everything");

    let batch = snapshot(&db, "batch").await;
    let single = snapshot(&db, "single").await;
    assert!(batch.iter().all(Option::is_some), "every table has rows: {batch:?}");
    assert_eq!(batch, single, "identical effects, dedup rows, dead letters and positions");
    // And the state is the expected one, not merely the same.
    assert_eq!(db.count("SELECT count(*) AS n FROM effects WHERE grp = 'batch'").await, 24);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters WHERE consumer_group = 'batch'").await, 6);
}
