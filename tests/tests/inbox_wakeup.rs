//! An inbox handler's `cx.publish` wakes the relay of its database once the batch commits
//! (`InboxBuilder::wakeup`, through `outbox::Wakeup::signal_after`). The relay polls once an hour
//! and does not LISTEN, so after its first (empty) round only that signal can make it claim the
//! follow-up events: without it they stay in the outbox and the test times out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tests::inbox_support::run_until_positions;

use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::Wakeup;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(a_handlers_publish_wakes_a_relay_on_its_own_line, a_handlers_publish_wakes_the_shared_line_by_default);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "shipments", name = "shipment.requested")]
struct ShipmentRequested {
    #[event(key)]
    order_id: Uuid,
    /// `publish`: publishes a follow-up; `wait`: fails once (the batch falls back to one
    /// transaction per message), then waits until the outbox holds nothing unsent.
    step: String,
}

/// See [`ShipmentRequested::step`].
struct PublishThenWait {
    pool: outbox::Pool,
    published: AtomicU32,
    failed_once: AtomicBool,
    /// Whether the `wait` message saw the follow-up sent before its own transaction ended.
    saw_it_sent: AtomicBool,
}

#[derive(diesel::QueryableByName)]
struct Unsent {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[inbox::async_trait]
impl Handler<ShipmentRequested, AsyncPgConnection> for Arc<PublishThenWait> {
    async fn handle(&self, e: ShipmentRequested, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        if e.step == "publish" {
            self.published.fetch_add(1, Ordering::SeqCst);
            cx.publish(&Happened::new(e.order_id.to_string(), 1)).await?;
            return Ok(());
        }
        if !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::transient("fail the batch once"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut conn = self.pool.get().await.map_err(HandlerError::transient)?;
            let sql = "SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL AND parked_at IS NULL";
            let unsent: Unsent = diesel_async::RunQueryDsl::get_result(diesel::sql_query(sql), &mut *conn).await?;
            if unsent.n == 0 {
                self.saw_it_sent.store(true, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The wake-up follows each commit, not the batch: 49 messages that publish a follow-up each,
/// then one that fails once, so its batch falls back to one transaction per message; when the
/// last one runs again, the follow-ups committed before it in its batch are already sent.
/// Signalled only after the batch, the relay (polling once an hour) would not claim them before
/// the last one finished, and it would wait its 20 s in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_is_published_after_its_own_commit_not_after_the_batch() {
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("shipments", 1).await;
    kafka.create_topic(rs::TOPIC, 2).await;
    let line = Wakeup::new();
    let relay = rs::relay(db.pool(4).await, &kafka)
        .poll_interval(Duration::from_secs(3600))
        .listen(false)
        .wakeup(line.clone())
        .build()
        .unwrap();
    let health = relay.health();
    let (stop_relay, relay_task) = rs::spawn(relay);
    first_round_over(&health).await;
    let handler = Arc::new(PublishThenWait {
        pool: db.pool(2).await,
        published: AtomicU32::new(0),
        failed_once: AtomicBool::new(false),
        saw_it_sent: AtomicBool::new(false),
    });
    const PUBLISHING: u32 = 49;
    let records: Vec<CloudEvent> = (0..=PUBLISHING)
        .map(|n| if n < PUBLISHING { "publish" } else { "wait" })
        .map(|step| CloudEvent::of(&ShipmentRequested { order_id: Uuid::now_v7(), step: step.into() }).partition(0))
        .collect();
    TestProducer::new(&kafka).send_all(&records).await;
    let inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka))
        .group("shipping")
        .batch_size(100)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .wakeup(line)
        .handle(handler.clone())
        .build()
        .unwrap();
    let n = records.len() as i64;
    let reached = run_until_positions(&db, vec![(inbox, n)], Duration::from_secs(60)).await;
    assert_eq!(reached, [n], "the inbox moved past every message");
    // The premise: the failing message shared its batch with publishing ones, which ran twice.
    let published = handler.published.load(Ordering::SeqCst);
    assert!(published > PUBLISHING, "a batch with publishing messages fell back ({published} calls)");
    assert!(
        handler.saw_it_sent.load(Ordering::SeqCst),
        "the first message's follow-up was sent while the second's handler ran (signalled after its own commit)"
    );
    stop_relay.cancel();
    relay_task.await.unwrap().unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: u64,
}

/// Publishes one follow-up per order, in the inbox's transaction.
struct FollowUp;

#[inbox::async_trait]
impl<C: outbox::Database> Handler<OrderPlaced, C> for FollowUp {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        cx.publish(&Happened::new(e.order_id.to_string(), e.n)).await?;
        Ok(())
    }
}

async fn a_handlers_publish_wakes_a_relay_on_its_own_line<B: Backend>() {
    follow_ups_reach_kafka::<B>(Some(Wakeup::new())).await;
}

async fn a_handlers_publish_wakes_the_shared_line_by_default<B: Backend>() {
    follow_ups_reach_kafka::<B>(None).await;
}

/// Waits until the relay's first round (an empty claim) is over: from then on only a wake-up
/// makes it claim. Fails if that never happens.
async fn first_round_over(health: &outbox::health::RelayHealth) {
    let first_round = async {
        while health.status().last_success.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), first_round).await.is_err() {
        panic!("the relay's first round did not end: {:?}", health.status());
    }
}

/// `line`: the relay's own line, also given to the inbox; `None`: both on the default.
async fn follow_ups_reach_kafka<B: Backend>(line: Option<Wakeup>) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    kafka.create_topic(rs::TOPIC, 2).await;
    let mut relay = rs::relay(db.pool(4).await, &kafka).poll_interval(Duration::from_secs(3600)).listen(false);
    if let Some(line) = &line {
        relay = relay.wakeup(line.clone());
    }
    let relay = relay.build().unwrap();
    let health = relay.health();
    let (stop_relay, relay_task) = rs::spawn(relay);
    first_round_over(&health).await;

    let mut inbox = Inbox::builder(db.pool(4).await, inbox_kafka_config(&kafka)).group("shipping").handle(FollowUp);
    if let Some(line) = &line {
        inbox = inbox.wakeup(line.clone());
    }
    let stop_inbox = CancellationToken::new();
    let inbox_task = tokio::spawn(inbox.build().unwrap().run(stop_inbox.clone()));
    let order_ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let orders: Vec<CloudEvent> = order_ids
        .iter()
        .zip(0..)
        .map(|(&order_id, n)| CloudEvent::of(&OrderPlaced { order_id, n }).partition(0))
        .collect();
    TestProducer::new(&kafka).send_all(&orders).await;

    let records = kafka.read_all(rs::TOPIC, orders.len(), Duration::from_secs(30), Duration::from_millis(200)).await;
    let keys: HashSet<String> = records.iter().filter_map(|r| r.key.clone()).collect();
    let expected: HashSet<String> = order_ids.iter().map(Uuid::to_string).collect();
    assert_eq!(keys, expected, "every follow-up reached Kafka through the wake-up (the relay polls once an hour)");
    stop_inbox.cancel();
    inbox_task.await.unwrap().unwrap();
    stop_relay.cancel();
    relay_task.await.unwrap().unwrap();
}
