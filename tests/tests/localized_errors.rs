//! Error classification does not read the server's English: PostgreSQL translates its messages
//! (`lc_messages`), so the inbox's decisions that once matched message text must hold when the
//! server answers in German. Each test sets `lc_messages = 'de_DE.UTF-8'` on its database (the
//! test server's role is a superuser; scripts/pg.sh generates the locale) and first checks that
//! the server does answer in German.
//!
//! What still goes by text, and why, is in docs/databases.md ("Error classification").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use inbox::{Context, Handler, HandlerError, Inbox, ReplaySelection};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::backend::Pg;
use tests::inbox_support::{raw_dead_letters, run_until_positions};
use tests::produce::{CloudEvent, TestProducer};
use tests::{Effect, TestConn, TestDb, TestKafka};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    behaviour: String,
}

/// A fresh database whose sessions speak German, checked on a new session.
async fn german_db() -> TestDb<Pg> {
    let db = TestDb::<Pg>::fresh().await;
    db.exec(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET lc_messages = %L', current_database(), 'de_DE.UTF-8'); END $$",
    )
    .await;
    let mut conn = db.conn().await;
    let err = conn.batch_execute("SELECT 1/0").await.expect_err("division by zero fails");
    assert!(
        err.to_string().contains("Division durch Null"),
        "the server does not answer in German ({err}): it needs the de_DE.UTF-8 locale (scripts/pg.sh \
         generates it: localedef -i de_DE -f UTF-8 de_DE.UTF-8) and its German messages (postgresql package)"
    );
    db.create_effects().await;
    db
}

struct Misbehave;

#[inbox::async_trait]
impl Handler<OrderPlaced, AsyncPgConnection> for Misbehave {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        let (id, group, attempt) = (cx.message_id(), cx.group().to_owned(), cx.attempt() as i32);
        cx.conn()
            .insert_effect(Effect { grp: Some(&group), n: Some(1), attempt: Some(attempt), ..Effect::of(id) })
            .await?;
        match e.behaviour.as_str() {
            "swallow" => {
                let failed = cx.conn().batch_execute("SELECT * FROM no_such_table").await;
                let text = failed.expect_err("the statement fails").to_string();
                assert!(text.contains("existiert nicht"), "in German: {text}");
            }
            // The server ends the handler's session (as a restart or pg_terminate_backend would):
            // FATAL 57P01, "Verbindung wird abgebrochen aufgrund von Anweisung des Administrators".
            "terminated" if attempt == 1 => {
                let ended = cx.conn().batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").await;
                let e = ended.expect_err("the session is terminated");
                assert!(!e.to_string().contains("terminating connection"), "not in English: {e}");
                return Err(e.into());
            }
            _ => {}
        }
        Ok(())
    }
}

const GROUPS: [(&str, usize); 2] = [("batch", 100), ("single", 1)];

/// Three good messages, the `behaviour` one, three good: one batch in batch mode. Returns the
/// misbehaving message's id once both groups have moved past every message.
async fn run(db: &TestDb<Pg>, behaviour: &str) -> Uuid {
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    let event = |b: &str| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), behaviour: b.into() }).partition(0);
    let mut input: Vec<CloudEvent> = (0..3).map(|_| event("ok")).collect();
    input.push(event(behaviour));
    input.extend((0..3).map(|_| event("ok")));
    let bad = input[3].id().unwrap();
    TestProducer::new(&kafka).send_all(&input).await;
    let mut inboxes = Vec::new();
    for (group, batch_size) in GROUPS {
        let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
            .group(group)
            .batch_size(batch_size)
            .max_attempts(3)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .handle(Misbehave)
            .build()
            .unwrap();
        inboxes.push((inbox, input.len() as i64));
    }
    let n = input.len() as i64;
    let reached = run_until_positions(db, inboxes, Duration::from_secs(30)).await;
    assert_eq!(reached, [n, n], "{behaviour}: both groups moved past every message");
    for (group, _) in GROUPS {
        let sql = format!("SELECT count(*) AS n FROM effects WHERE grp = '{group}' AND message_id <> '{bad}'");
        assert_eq!(db.count(&sql).await, n - 1, "{behaviour} ({group}): every good message took effect once");
    }
    bad
}

/// A handler that swallows a failed statement and returns Ok leaves the transaction aborted:
/// found by the probe after the handler (a statement the live connection refuses), not by the
/// server's "current transaction is aborted" text — here "aktuelle Transaktion wurde abgebrochen".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_is_found_in_german() {
    let db = german_db().await;
    let bad = run(&db, "swallow").await;
    for (group, _) in GROUPS {
        let dead: Vec<_> = raw_dead_letters(&db, group)
            .await
            .into_iter()
            .map(|d| (d.message_id, d.reason, d.error.contains("abgebrochen")))
            .collect();
        assert_eq!(
            dead,
            [(Some(bad.to_string()), "handler_aborted_transaction".to_owned(), true)],
            "({group}): dead-lettered as an aborted transaction, with the server's German text"
        );
    }
}

/// A handler whose session the server ended is retried (transient) on a new connection, not
/// dead-lettered: the inbox sees that the connection no longer answers. The server's message
/// ("Verbindung wird abgebrochen ...") does not contain the English "terminating connection"
/// that `is_transient_db_error` matches, so before the probe this message was dead-lettered as
/// `handler_failed` at its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_is_retried_in_german() {
    let db = german_db().await;
    let bad = run(&db, "terminated").await;
    for (group, _) in GROUPS {
        assert!(raw_dead_letters(&db, group).await.is_empty(), "({group}): nothing dead-lettered");
        let sql =
            format!("SELECT count(*) AS n FROM effects WHERE grp = '{group}' AND message_id = '{bad}' AND attempt = 2");
        assert_eq!(db.count(&sql).await, 1, "({group}): the second attempt took effect (the first was rolled back)");
    }
}

#[derive(Debug, PartialEq, diesel::QueryableByName)]
struct DeadLetterState {
    #[diesel(sql_type = diesel::sql_types::Text)]
    behaviour: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    error: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    requested: bool,
}

/// The dead letters, oldest first, each with the `behaviour` of its payload.
async fn dead_letter_states(db: &TestDb<Pg>) -> Vec<DeadLetterState> {
    let sql = "SELECT convert_from(payload, 'UTF8')::json->>'behaviour' AS behaviour, reason, error, attempts, \
               replay_requested_at IS NOT NULL AS requested FROM inbox_dead_letters ORDER BY id";
    diesel_async::RunQueryDsl::load(diesel::sql_query(sql), &mut db.conn().await).await.expect("dead letters")
}

/// Fails for good when consumed (so every message is dead-lettered). Replayed, it ends its own
/// session (as a server restart would) once (`ends-once`), every time (`ends-always`) or never
/// (`ok`), and otherwise takes effect.
#[derive(Default)]
struct EndsItsSession {
    calls: Mutex<HashMap<Uuid, u32>>,
}

impl EndsItsSession {
    fn calls(&self, id: Uuid) -> u32 {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

#[inbox::async_trait]
impl Handler<OrderPlaced, AsyncPgConnection> for Arc<EndsItsSession> {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(id).or_insert(0);
            *n += 1;
            *n
        };
        let ends = match e.behaviour.as_str() {
            "ends-once" => call == 2,
            "ends-always" => true,
            _ => false,
        };
        if call == 1 {
            Err(HandlerError::permanent("not yet"))
        } else if ends {
            let ended = cx.conn().batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").await;
            Err(ended.expect_err("the session is terminated").into())
        } else {
            cx.conn().insert_effect(Effect { grp: Some("replayed"), ..Effect::of(id) }).await?;
            Ok(())
        }
    }
}

/// Dead-letters one message per behaviour (in this order, on one partition) with `handler`, and
/// requests their replay. Returns the message ids.
async fn dead_letter(
    db: &TestDb<Pg>,
    kafka: &TestKafka,
    handler: &Arc<EndsItsSession>,
    behaviours: &[&str],
) -> Vec<Uuid> {
    kafka.create_topic("orders", 1).await;
    let records: Vec<CloudEvent> = behaviours
        .iter()
        .map(|b| CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), behaviour: (*b).into() }).partition(0))
        .collect();
    TestProducer::new(kafka).send_all(&records).await;
    let consumer = Inbox::builder(db.pool(2).await, tests::produce::inbox_kafka_config(kafka))
        .group("g")
        .handle(handler.clone())
        .build()
        .unwrap();
    let n = records.len() as i64;
    let reached = run_until_positions(db, vec![(consumer, n)], Duration::from_secs(30)).await;
    assert_eq!(reached, [n], "the inbox moved past every message");
    db.exec("UPDATE inbox_dead_letters SET replay_requested_at = now()").await;
    let dead = dead_letter_states(db).await;
    assert_eq!(dead.len(), records.len(), "{dead:?}");
    assert!(dead.iter().all(|d| d.reason == "handler_failed" && d.requested), "{dead:?}");
    records.iter().map(|r| r.id().unwrap()).collect()
}

fn replayer(
    db_pool: outbox::Pool,
    kafka: &TestKafka,
    handler: &Arc<EndsItsSession>,
    max_attempts: u32,
) -> inbox::Replayer {
    Inbox::builder(db_pool, tests::produce::inbox_kafka_config(kafka))
        .group("g")
        .max_attempts(max_attempts)
        .handle(handler.clone())
        .build()
        .unwrap()
        .replayer()
}

async fn effects(db: &TestDb<Pg>, id: Uuid) -> i64 {
    db.count(&format!("SELECT count(*) AS n FROM effects WHERE grp = 'replayed' AND message_id = '{id}'")).await
}

/// A replay whose session the server ends is not a failure of the message: the dead letter keeps
/// its reason, error, attempts and replay request, and the replay returns the error; the next
/// replay handles it once. Before, the lost session was recorded on the row as `handler_failed`
/// (one more attempt, request cleared), so an operator's requested replay was silently dropped
/// by a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_session_ends_leaves_the_dead_letter_as_it_was() {
    let db = german_db().await;
    let kafka = TestKafka::new();
    let handler = Arc::new(EndsItsSession::default());
    let ids = dead_letter(&db, &kafka, &handler, &["ends-once"]).await;
    let before = dead_letter_states(&db).await;

    let replayer = replayer(db.pool(2).await, &kafka, &handler, 5);
    let lost = replayer.replay(&ReplaySelection::all()).await;
    assert!(lost.is_err(), "the replay whose session ended returns the error: {lost:?}");
    assert_eq!(
        dead_letter_states(&db).await,
        before,
        "the dead letter is as it was (reason, error, attempts, request)"
    );
    assert_eq!(handler.calls(ids[0]), 2, "the handler ran once in the first replay");

    let report = replayer.replay(&ReplaySelection::all()).await.expect("the second replay");
    assert_eq!((report.handled, report.failed, report.skipped), (1, 0, 0));
    assert!(dead_letter_states(&db).await.is_empty(), "the dead letter was deleted with the effect");
    assert_eq!(effects(&db, ids[0]).await, 1, "the replay took effect once");
}

/// A dead letter whose replays always end their session neither holds up the dead letters after
/// it nor is replayed forever: the replay goes on with the next one (handled) and returns the
/// error; after `max_attempts` lost replays in a row it is recorded as failed, its request
/// cleared. Before, the replay stopped at it, so the dead letters after it were never replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_always_loses_its_session_is_bounded_and_holds_up_nothing() {
    let db = german_db().await;
    let kafka = TestKafka::new();
    let handler = Arc::new(EndsItsSession::default());
    let ids = dead_letter(&db, &kafka, &handler, &["ends-always", "ok"]).await;
    let before = dead_letter_states(&db).await.remove(0);
    let replayer = replayer(db.pool(2).await, &kafka, &handler, 2);

    let first = replayer.replay(&ReplaySelection::all()).await;
    assert!(first.is_err(), "the lost session is reported: {first:?}");
    assert_eq!(effects(&db, ids[1]).await, 1, "the dead letter after the lost one was replayed");
    let dead = dead_letter_states(&db).await;
    let attempts = before.attempts;
    assert_eq!(dead, [before], "only the lost one is left, unchanged");

    let second = replayer.replay(&ReplaySelection::all()).await.expect("the second replay records the failure");
    assert_eq!((second.handled, second.failed, second.skipped), (0, 1, 0));
    let dead = dead_letter_states(&db).await;
    assert!(
        matches!(dead.as_slice(), [d] if d.attempts == attempts + 1 && !d.requested && d.error.contains("lost in 2 replays in a row")),
        "recorded after max_attempts (2) lost replays: {dead:?}"
    );
    assert_eq!(handler.calls(ids[0]), 3, "consumed once, replayed twice");
    assert_eq!(effects(&db, ids[0]).await, 0, "no effect of the lost replays survived");
}
