//! Batch mode and one-message mode leave identical database state on the same input: effects,
//! dedup rows, dead letters (reason, attempts, payload) and stored positions. The input mixes
//! what makes batches fall back to one-message transactions: duplicates inside a batch, a
//! transient failure, a permanent failure, a panic and hostile messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(batch_and_one_message_modes_leave_identical_state,);

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
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for RecordOrder {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let (id, group) = (cx.message_id(), cx.group().to_owned());
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry((group.clone(), id)).or_default();
            *c += 1;
            *c
        };
        cx.conn().insert_effect(Effect { grp: Some(group.as_str()), n: Some(e.n), ..Effect::of(id) }).await?;
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

/// The group's rows in every inbox table and in `effects`, as comparable text.
async fn snapshot<B: Backend>(db: &TestDb<B>, group: &str) -> Vec<Option<String>> {
    db.conn().await.inbox_snapshot(group).await
}

async fn batch_and_one_message_modes_leave_identical_state<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 2).await;
    db.create_effects().await;
    let input = input();
    TestProducer::new(&kafka).send_all(&input).await;

    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for (group, batch_size) in [("batch", 100), ("single", 1)] {
        let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
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
        "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) AS n FROM inbox_offsets",
        2 * input.len() as i64,
        Duration::from_secs(25),
    )
    .await;
    shutdown.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
    assert_eq!(consumed, 2 * input.len() as i64, "both groups consumed everything");

    // The duplicate's copies are in both partitions, which run concurrently: which copy is
    // handled (and recorded in the dedup row) is a race in either mode. It must be handled once,
    // wherever; the dedup rows are compared without its position.
    let dup_id = input[0].header_text("ce_id").expect("the duplicate has an id");
    let unplace = |mut snap: Vec<Option<String>>| {
        if let Some(Some(dedup)) = snap.get_mut(1) {
            *dedup = dedup
                .split(',')
                .map(|row| if row.starts_with(&dup_id) { format!("{dup_id}@either copy") } else { row.to_owned() })
                .collect::<Vec<_>>()
                .join(",");
        }
        snap
    };
    let batch = unplace(snapshot(&db, "batch").await);
    let single = unplace(snapshot(&db, "single").await);
    assert!(batch.iter().all(Option::is_some), "every table has rows: {batch:?}");
    assert_eq!(batch, single, "identical effects, dedup rows, dead letters and positions");
    // And the state is the expected one, not merely the same.
    assert_eq!(db.count("SELECT count(*) AS n FROM effects WHERE grp = 'batch'").await, 24);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters WHERE consumer_group = 'batch'").await, 6);
}
