//! Handlers that misuse the inbox transaction — commit or roll it back through diesel's
//! transaction manager, send a raw `COMMIT` / `ROLLBACK`, swallow a failed statement and return
//! Ok — or that panic or hang past the handler timeout, sitting in the middle of a batch of good
//! messages. In batch mode and in one-message mode alike: nothing is silently skipped, the
//! misbehaving message and only it is dead-lettered with a reason naming the misuse, every
//! other message takes effect exactly once, and both modes end in the same state (effects,
//! dedup rows, dead letters by message id and reason, stored position).
//!
//! SQLite rolls back only a failed statement, never the transaction, so a swallowed failure
//! leaves nothing to detect there: the message is simply handled (checked as such).

use std::time::Duration;

use diesel_async::TransactionManager;
use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::{raw_dead_letters, run_until_positions};
use tests::produce::{CloudEvent, TestProducer};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(
    handler_commits_the_transaction,
    handler_rolls_back_the_transaction,
    handler_sends_raw_commit,
    handler_sends_raw_rollback,
    handler_swallows_a_failed_statement,
    handler_panics,
    handler_exceeds_the_timeout,
);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    behaviour: String,
}

struct Misbehave;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for Misbehave {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let (id, group) = (cx.message_id(), cx.group().to_owned());
        cx.conn().insert_effect(Effect { grp: Some(&group), n: Some(1), ..Effect::of(id) }).await?;
        let conn = cx.conn();
        match e.behaviour.as_str() {
            "commit" => C::TransactionManager::commit_transaction(conn).await?,
            "rollback" => C::TransactionManager::rollback_transaction(conn).await?,
            "raw_commit" => conn.batch_execute("COMMIT").await?,
            "raw_rollback" => conn.batch_execute("ROLLBACK").await?,
            "swallow" => {
                let failed = conn.batch_execute("SELECT * FROM no_such_table").await;
                assert!(failed.is_err(), "the statement fails");
            }
            "panic" => panic!("handler bug"),
            "hang" => std::future::pending::<()>().await,
            _ => {}
        }
        Ok(())
    }
}

const GROUPS: [(&str, usize); 2] = [("batch", 100), ("single", 1)];

/// 5 messages (the third hostile: an unknown type, dead-lettered without a handler), the
/// misbehaving one, 5 good: one batch in batch mode.
async fn misuse<B: Backend>(behaviour: &str, reason: Option<&str>) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    let event = |b: &str| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), behaviour: b.into() }).partition(0);
    let mut input: Vec<CloudEvent> = (0..5).map(|_| event("ok")).collect();
    input[2] = event("ok").header("ce_type", "order.cancelled");
    let hostile = input[2].id().unwrap();
    input.push(event(behaviour));
    input.extend((0..5).map(|_| event("ok")));
    let bad = input[5].id().unwrap();
    TestProducer::new(&kafka).send_all(&input).await;

    let mut inboxes = Vec::new();
    for (group, batch_size) in GROUPS {
        let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
            .group(group)
            .batch_size(batch_size)
            .max_attempts(2)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .handler_timeout(Duration::from_millis(300))
            .handle(Misbehave)
            .build()
            .unwrap();
        inboxes.push((inbox, input.len() as i64));
    }
    let reached = run_until_positions(&db, inboxes, Duration::from_secs(30)).await;
    let n = input.len() as i64;
    assert_eq!(reached, [n, n], "{behaviour}: both groups moved past every message (none stuck)");

    for (group, _) in GROUPS {
        let dead = raw_dead_letters(&db, group).await;
        let got: Vec<(Option<String>, String)> =
            dead.iter().map(|d| (d.message_id.clone(), d.reason.clone())).collect();
        let mut want = vec![(Some(hostile.to_string()), "unknown_type".to_owned())];
        want.extend(reason.iter().map(|r| (Some(bad.to_string()), (*r).to_owned())));
        assert_eq!(got, want, "{behaviour} ({group}): the misbehaving message and only it is dead-lettered");
        for (i, e) in input.iter().enumerate().filter(|(i, _)| *i != 5 && *i != 2) {
            let id = e.id().unwrap();
            let sql = format!("SELECT count(*) AS n FROM effects WHERE grp = '{group}' AND message_id = '{id}'");
            assert_eq!(db.count(&sql).await, 1, "{behaviour} ({group}): message {i} took effect exactly once");
        }
        let dedup = format!("SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = '{group}'");
        assert_eq!(db.count(&dedup).await, n, "{behaviour} ({group}): every message is recorded as done");
    }
    let batch = db.conn().await.inbox_snapshot("batch").await;
    let single = db.conn().await.inbox_snapshot("single").await;
    assert_eq!(batch, single, "{behaviour}: batch mode ends in the same state as one-message mode");
}

async fn handler_commits_the_transaction<B: Backend>() {
    misuse::<B>("commit", Some("handler_ended_transaction")).await;
}

async fn handler_rolls_back_the_transaction<B: Backend>() {
    misuse::<B>("rollback", Some("handler_ended_transaction")).await;
}

async fn handler_sends_raw_commit<B: Backend>() {
    misuse::<B>("raw_commit", Some("handler_ended_transaction")).await;
}

async fn handler_sends_raw_rollback<B: Backend>() {
    misuse::<B>("raw_rollback", Some("handler_ended_transaction")).await;
}

async fn handler_swallows_a_failed_statement<B: Backend>() {
    let reason = (B::NAME == "postgres").then_some("handler_aborted_transaction");
    misuse::<B>("swallow", reason).await;
}

async fn handler_panics<B: Backend>() {
    misuse::<B>("panic", Some("handler_panicked")).await;
}

async fn handler_exceeds_the_timeout<B: Backend>() {
    misuse::<B>("hang", Some("handler_timed_out")).await;
}
