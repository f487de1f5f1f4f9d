//! Dead-letter replay (docs/dead-letters.md): the handler runs on the stored record in a
//! transaction that also deletes the dead letter, so a replay takes effect once however often it
//! is asked for and however many inboxes replay at once; a replay that fails again leaves the
//! dead letter with the new error and one more attempt. Operators request replays through
//! `inbox::ops::request_replay` (the CLI's `dead-letters replay`), and a running inbox picks
//! them up. Retention pruning deletes dead letters past their retention only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use inbox::{Context, ErrorKind, Handler, HandlerError, Inbox, ReplayReport, ReplaySelection};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::run_until_positions;
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(
    an_unknown_version_is_replayed_once_after_the_upgrade,
    a_replay_that_fails_again_stays_a_dead_letter_with_the_new_error,
    two_inboxes_replaying_at_once_run_the_effects_once,
    requested_replays_are_picked_up_by_a_running_inbox,
    dead_letters_past_their_retention_are_pruned,
    a_replayed_message_is_a_duplicate_for_a_whole_dedup_window_after_the_replay,
);

/// Version 1, the only one the old deployment handles.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 1)]
struct OrderPlacedV1 {
    #[event(key)]
    order_id: Uuid,
}

/// Version 2, produced before the consumers were upgraded.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 2)]
struct OrderPlacedV2 {
    #[event(key)]
    order_id: Uuid,
    priority: u8,
}

struct ReserveV1;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlacedV1, C> for ReserveV1 {
    async fn handle(&self, _: OrderPlacedV1, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        Ok(())
    }
}

/// The upgraded handler: records the attempt it was called with.
#[derive(Default)]
struct ReserveV2 {
    calls: AtomicU32,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlacedV2, C> for Arc<ReserveV2> {
    async fn handle(&self, e: OrderPlacedV2, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert_eq!(e.priority, 7, "the stored payload, decoded");
        let effect =
            Effect { attempt: Some(cx.attempt() as i32), grp: Some("replayed"), ..Effect::of(cx.message_id()) };
        cx.conn().insert_effect(effect).await?;
        Ok(())
    }
}

fn v2_record() -> CloudEvent {
    CloudEvent::of(&OrderPlacedV2 { order_id: Uuid::now_v7(), priority: 7 }).partition(0).header("tenant", "acme")
}

/// Dead-letters `records` for real: an inbox of `group` on the old version runs until its
/// stored position passes them.
async fn dead_letter_v2<B: Backend>(db: &TestDb<B>, kafka: &TestKafka, group: &str, records: &[CloudEvent]) {
    TestProducer::new(kafka).send_all(records).await;
    let old =
        Inbox::builder(db.pool(2).await, inbox_kafka_config(kafka)).group(group).handle(ReserveV1).build().unwrap();
    let reached = run_until_positions(db, vec![(old, records.len() as i64)], Duration::from_secs(60)).await;
    assert_eq!(reached, [records.len() as i64]);
    let dead = db.conn().await.dead_letters().await;
    assert_eq!(dead.len(), records.len(), "{dead:#?}");
    assert!(dead.iter().all(|d| d.reason == "unsupported_version" && d.attempts == 0), "{dead:#?}");
}

async fn an_unknown_version_is_replayed_once_after_the_upgrade<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    let record = v2_record();
    let id = record.id().unwrap();
    dead_letter_v2(&db, &kafka, "inventory", std::slice::from_ref(&record)).await;

    // Before the upgrade, a replay fails again (still version 2 for a version-1 handler).
    let old = Inbox::builder(db.pool(2).await, inbox_kafka_config(&kafka))
        .group("inventory")
        .handle(ReserveV1)
        .build()
        .unwrap();
    let report = old.replayer().replay(&ReplaySelection::all()).await.unwrap();
    assert_eq!((report.handled, report.failed, report.skipped), (0, 1, 0));
    let dead = db.conn().await.dead_letters().await;
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("unsupported_version", 1), "{dead:#?}");
    assert!(dead[0].error.contains("version 2 is not supported"), "{}", dead[0].error);

    // The upgraded inbox (not running: the replay needs the database only) handles it once.
    let handler = Arc::new(ReserveV2::default());
    let new = Inbox::builder(db.pool(2).await, inbox_kafka_config(&kafka))
        .group("inventory")
        .handle(handler.clone())
        .build()
        .unwrap();
    let after_upgrade = ReplaySelection::all().in_group("inventory").with_reason("unsupported_version");
    let report = new.replayer().replay(&after_upgrade).await.unwrap();
    assert_eq!((report.handled, report.failed, report.skipped), (1, 0, 0));
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM effects WHERE grp = 'replayed' AND attempt = 2").await,
        1,
        "the handler saw attempt 2 (one failed replay before)"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0, "deleted with the effects");
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM inbox_messages WHERE message_id = '{id}'")).await,
        1,
        "the message id stays recorded: a redelivery is still a duplicate"
    );

    // Replayed again (by id and by selection): nothing matches, nothing runs.
    let report = new.replayer().replay(&ReplaySelection::all()).await.unwrap();
    assert_eq!(report, ReplayReport::default());
    let report = new.replayer().replay(&ReplaySelection::ids([1, 2, 3])).await.unwrap();
    assert_eq!(report, ReplayReport::default());
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1, "still once");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);

    // Another group's dead letters are not this inbox's to replay.
    let err = new.replayer().replay(&ReplaySelection::all().in_group("billing")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("billing"), "{err}");
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "shipments", name = "shipment.requested")]
struct ShipmentRequested {
    #[event(key)]
    shipment_id: Uuid,
}

const REJECT: u8 = 0;
const OFFLINE: u8 = 1;
const PANIC: u8 = 2;
const ACCEPT: u8 = 3;
const HANG: u8 = 4;

/// Writes its effect, then fails or not as `mode` says: the failed attempts must leave nothing.
struct Ship {
    mode: AtomicU8,
}

impl Ship {
    fn new(mode: u8) -> Arc<Self> {
        Arc::new(Ship { mode: AtomicU8::new(mode) })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<ShipmentRequested, C> for Arc<Ship> {
    async fn handle(&self, _: ShipmentRequested, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        match self.mode.load(Ordering::SeqCst) {
            REJECT => Err(HandlerError::permanent("carrier rejected the address")),
            OFFLINE => Err(HandlerError::transient("label printer offline")),
            PANIC => panic!("carrier returned an impossible state"),
            HANG => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

fn shipment() -> CloudEvent {
    CloudEvent::of(&ShipmentRequested { shipment_id: Uuid::now_v7() }).partition(0)
}

fn ship_inbox<B: Backend>(
    pool: bb8::Pool<B::Manager>,
    kafka: &TestKafka,
    handler: &Arc<Ship>,
) -> inbox::InboxBuilder<B::Conn> {
    Inbox::builder(pool, inbox_kafka_config(kafka))
        .group("shipping")
        .max_attempts(1)
        .handler_timeout(Duration::from_millis(500))
        .replay_poll_interval(Duration::from_millis(100))
        .handle(handler.clone())
}

/// `(reason, error, attempts, replay requested)` of dead letter `id`.
async fn dead_letter_state<B: Backend>(db: &TestDb<B>, id: i64) -> Option<(String, String, i32, bool)> {
    let count = async |cond: String| {
        db.count(&format!("SELECT count(*) AS n FROM inbox_dead_letters WHERE id = {id} {cond}")).await
    };
    if count(String::new()).await == 0 {
        return None;
    }
    let dead = db.conn().await.dead_letters().await;
    let offset = db.count(&format!("SELECT kafka_offset AS n FROM inbox_dead_letters WHERE id = {id}")).await;
    let row = dead.into_iter().find(|d| d.kafka_offset == offset)?;
    let requested = count("AND replay_requested_at IS NOT NULL".into()).await == 1;
    Some((row.reason, row.error, row.attempts, requested))
}

async fn a_replay_that_fails_again_stays_a_dead_letter_with_the_new_error<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("shipments", 1).await;
    db.create_effects().await;
    TestProducer::new(&kafka).send(&shipment()).await;
    let handler = Ship::new(REJECT);
    let first = ship_inbox::<B>(db.pool(2).await, &kafka, &handler).build().unwrap();
    assert_eq!(run_until_positions(&db, vec![(first, 1)], Duration::from_secs(60)).await, [1]);
    let id = db.count("SELECT id AS n FROM inbox_dead_letters").await;
    let (reason, error, attempts, _) = dead_letter_state(&db, id).await.unwrap();
    assert_eq!((reason.as_str(), attempts), ("handler_failed", 1));
    assert!(error.contains("carrier rejected"), "{error}");

    let replayer = ship_inbox::<B>(db.pool(2).await, &kafka, &handler).build().unwrap().replayer();
    let expect = [
        (OFFLINE, "handler_failed", "label printer offline", 2),
        (PANIC, "handler_panicked", "carrier returned an impossible state", 3),
        // Abandoned at the handler timeout: its connection (and transaction) dropped, the
        // failure recorded on another.
        (HANG, "handler_timed_out", "did not finish within 500ms", 4),
    ];
    for (mode, reason, error, attempts) in expect {
        handler.set(mode);
        let report = replayer.replay(&ReplaySelection::ids([id])).await.unwrap();
        assert_eq!((report.handled, report.failed), (0, 1), "mode {mode}");
        let (r, e, a, requested) = dead_letter_state(&db, id).await.expect("still a dead letter");
        assert_eq!((r.as_str(), a, requested), (reason, attempts, false), "mode {mode}: {e}");
        assert!(e.contains(error), "mode {mode}: {e}");
        assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 0, "mode {mode}: the effect was rolled back");
    }

    handler.set(ACCEPT);
    let report = replayer.replay(&ReplaySelection::ids([id])).await.unwrap();
    assert_eq!((report.handled, report.failed), (1, 0));
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
    assert!(dead_letter_state(&db, id).await.is_none());
}

/// Holds its first call until released, so a second replay meets the first one mid-handler.
#[derive(Default)]
struct Gated {
    calls: AtomicU32,
    entered: Notify,
    release: Notify,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlacedV2, C> for Arc<Gated> {
    async fn handle(&self, _: OrderPlacedV2, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        if call == 0 {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

async fn two_inboxes_replaying_at_once_run_the_effects_once<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    dead_letter_v2(&db, &kafka, "inventory", &[v2_record()]).await;

    let handler = Arc::new(Gated::default());
    let instance = async || {
        Inbox::builder(db.pool(2).await, inbox_kafka_config(&kafka))
            .group("inventory")
            .handle(handler.clone())
            .build()
            .unwrap()
            .replayer()
    };
    let (a, b) = (instance().await, instance().await);
    let first = tokio::spawn(async move { a.replay(&ReplaySelection::all()).await });
    tokio::time::timeout(Duration::from_secs(30), handler.entered.notified()).await.expect("the first replay runs");
    let second = tokio::spawn(async move { b.replay(&ReplaySelection::all()).await });
    let second_report = if B::NAME == "postgres" {
        // The row is locked by the first replay: the second skips it at once, without waiting.
        let report = tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .expect("the second replay does not wait for the first")
            .unwrap()
            .unwrap();
        handler.release.notify_one();
        report
    } else {
        // SQLite: the second waits for the write lock, then finds the row gone.
        handler.release.notify_one();
        second.await.unwrap().unwrap()
    };
    let first_report = first.await.unwrap().unwrap();
    println!("{}: first {first_report:?}, second {second_report:?}", B::NAME);
    assert_eq!((first_report.handled, first_report.failed), (1, 0));
    assert_eq!((second_report.handled, second_report.failed), (0, 0));
    if B::NAME == "postgres" {
        assert_eq!(second_report.skipped, 1, "the second met the row locked");
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
}

async fn request<B: Backend>(db: &TestDb<B>, selection: &ReplaySelection) -> u64 {
    inbox::ops::request_replay(&mut db.conn().await, selection).await.unwrap()
}

/// Polls `sql` (a one-value query) until it returns exactly `want`.
async fn until<B: Backend>(db: &TestDb<B>, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = db.count(sql).await;
        if n == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sql}: {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn requested_replays_are_picked_up_by_a_running_inbox<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("shipments", 1).await;
    db.create_effects().await;
    let records = [shipment(), shipment(), shipment()];
    TestProducer::new(&kafka).send_all(&records).await;
    let handler = Ship::new(REJECT);
    let shutdown = CancellationToken::new();
    let inbox = ship_inbox::<B>(db.pool(3).await, &kafka, &handler).build().unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let dead = wait_for_count(&db, "SELECT count(*) AS n FROM inbox_dead_letters", 3, Duration::from_secs(60)).await;
    assert_eq!(dead, 3);
    let id_at = async |offset: i64| {
        db.count(&format!("SELECT id AS n FROM inbox_dead_letters WHERE kafka_offset = {offset}")).await
    };
    let (d1, d2, d3) = (id_at(0).await, id_at(1).await, id_at(2).await);
    assert!(d1 < d2 && d2 < d3);

    // Requested while the handler still fails: replayed once, the request cleared.
    assert_eq!(request(&db, &ReplaySelection::ids([d2, -5])).await, 1);
    until(&db, &format!("SELECT count(*) AS n FROM inbox_dead_letters WHERE id = {d2} AND attempts = 2"), 1).await;
    let (reason, error, attempts, requested) = dead_letter_state(&db, d2).await.unwrap();
    assert_eq!((reason.as_str(), attempts, requested), ("handler_failed", 2, false), "{error}");
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 0);

    // Fixed. Only what is requested is replayed: d3, not d1 (never requested) nor d2 (its
    // request was cleared; had it stayed, the pass replaying d3 would have handled d2 first).
    handler.set(ACCEPT);
    assert_eq!(request(&db, &ReplaySelection::ids([d3])).await, 1);
    until(&db, &format!("SELECT count(*) AS n FROM inbox_dead_letters WHERE id = {d3}"), 0).await;
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);
    let m3 = records[2].id().unwrap();
    assert_eq!(db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{m3}'")).await, 1);
    assert_eq!(dead_letter_state(&db, d2).await.map(|s| s.2), Some(2), "d2 was not retried in a loop");
    assert!(dead_letter_state(&db, d1).await.is_some());

    // The rest of the group, requested by reason; another group's selection matches nothing.
    assert_eq!(request(&db, &ReplaySelection::all().in_group("billing")).await, 0);
    let rest = ReplaySelection::all().in_group("shipping").with_reason("handler_failed");
    assert_eq!(request(&db, &rest).await, 2);
    until(&db, "SELECT count(*) AS n FROM inbox_dead_letters", 0).await;
    for r in &records {
        let id = r.id().unwrap();
        assert_eq!(db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await, 1);
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 3, "each once");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Inserts `count` dead letters of `group` stored `age` ago (`requested`: with a replay request).
async fn insert_aged_dead_letters<B: Backend>(
    db: &TestDb<B>,
    group: &str,
    count: usize,
    age: Duration,
    requested: bool,
) {
    let ago = B::Conn::sql_ago(age);
    let request = if requested { B::Conn::sql_ago(Duration::ZERO) } else { "NULL".into() };
    let rows: Vec<String> = (0..count)
        .map(|i| format!("('{group}', 'orders', 0, {i}, 'handler_failed', 'old', 1, {ago}, {request})"))
        .collect();
    db.exec(&format!(
        "INSERT INTO inbox_dead_letters (consumer_group, topic, kafka_partition, kafka_offset, reason, error, attempts, \
         created_at, replay_requested_at) VALUES {}",
        rows.join(", ")
    ))
    .await;
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

async fn dead_letters_past_their_retention_are_pruned<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    insert_aged_dead_letters(&db, "inventory", 250, 3 * DAY, false).await;
    insert_aged_dead_letters(&db, "inventory", 5, DAY, false).await;
    insert_aged_dead_letters(&db, "inventory", 2, 3 * DAY, true).await;
    insert_aged_dead_letters(&db, "billing", 5, 3 * DAY, false).await;
    let dedup_pruned = "SELECT count(*) AS n FROM inbox_messages";
    let base = async || {
        Inbox::builder(db.pool(2).await, inbox_kafka_config(&kafka))
            .group("inventory")
            .prune_interval(Duration::from_millis(100))
            .prune_batch_size(100)
            // The requested rows stay requested (a replay would fail them and clear the request).
            .replay_poll_interval(Duration::from_secs(3600))
            .handle(ReserveV1)
    };

    // Off by default: two pruning passes (seen through the dedup rows they delete) leave every
    // dead letter.
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(base().await.dedup_window(DAY).build().unwrap().run(shutdown.clone()));
    for _ in 0..2 {
        db.conn().await.insert_aged_dedup_rows("inventory", 3, 3 * DAY).await;
        until(&db, dedup_pruned, 0).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 262);

    let shutdown = CancellationToken::new();
    let inbox = base().await.dead_letter_retention(2 * DAY).build().unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let old = format!(
        "SELECT count(*) AS n FROM inbox_dead_letters WHERE consumer_group = 'inventory' AND created_at < {}",
        B::Conn::sql_ago(2 * DAY)
    );
    until(&db, &old, 2).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let count =
        async |cond: &str| db.count(&format!("SELECT count(*) AS n FROM inbox_dead_letters WHERE {cond}")).await;
    assert_eq!(count("consumer_group = 'inventory'").await, 7, "5 inside the retention, 2 waiting for a replay");
    assert_eq!(count("consumer_group = 'inventory' AND replay_requested_at IS NOT NULL").await, 2);
    assert_eq!(count("consumer_group = 'billing'").await, 5, "other groups are not touched");

    let err = base().await.dead_letter_retention(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = base().await.replay_poll_interval(Duration::ZERO).build().unwrap_err();
    assert!(err.to_string().contains("replay_poll_interval"), "{err}");
}

/// The replay commits the handler's effects now, so a redelivery of the message within the
/// dedup window from now must be a duplicate. The dedup row the inbox wrote when it
/// dead-lettered the message is older than that: unless the replay renews it, pruning deletes it
/// a window after the dead-lettering, and a redelivery (a partition restarted at the beginning of
/// its log, see `trust_committed_offsets`) runs the handler a second time inside the window.
async fn a_replayed_message_is_a_duplicate_for_a_whole_dedup_window_after_the_replay<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    db.create_effects().await;
    let record = v2_record();
    let id = record.id().unwrap();
    dead_letter_v2(&db, &kafka, "inventory", std::slice::from_ref(&record)).await;
    // Dead-lettered a day and a half ago (the dedup row was written with the dead letter).
    let window = 2 * DAY;
    db.exec(&format!(
        "UPDATE inbox_messages SET handled_at = {} WHERE message_id = '{id}'",
        B::Conn::sql_ago(DAY + DAY / 2)
    ))
    .await;

    let handler = Arc::new(ReserveV2::default());
    let build = async || {
        Inbox::builder(db.pool(2).await, inbox_kafka_config(&kafka))
            .group("inventory")
            .dedup_window(window)
            .prune_interval(Duration::from_millis(100))
            .handle(handler.clone())
            .build()
            .unwrap()
    };
    let report = build().await.replayer().replay(&ReplaySelection::all()).await.unwrap();
    assert_eq!((report.handled, report.failed), (1, 0));
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 1);

    // A day passes: the replay's effects are a day old, well inside the two-day window.
    let shift = if B::NAME == "postgres" {
        "handled_at - interval '1 day'".to_owned()
    } else {
        format!("handled_at - {}", DAY.as_millis())
    };
    db.exec(&format!("UPDATE inbox_messages SET handled_at = {shift}")).await;

    // The inbox runs (pruning past the window), and the record arrives once more.
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(build().await.run(shutdown.clone()));
    // Give the pruning task its passes: a dedup row of another message, past the window, goes.
    db.conn().await.insert_aged_dedup_rows("inventory", 1, 3 * DAY).await;
    until(&db, &format!("SELECT count(*) AS n FROM inbox_messages WHERE message_id <> '{id}'"), 0).await;
    TestProducer::new(&kafka).send_all(std::slice::from_ref(&record)).await;
    until(&db, "SELECT count(*) AS n FROM inbox_offsets WHERE consumer_group = 'inventory' AND next_offset = 2", 1)
        .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        db.count("SELECT count(*) AS n FROM effects").await,
        1,
        "the redelivery a day after the replay ran the handler again: the replay did not renew the dedup row"
    );
}
