//! The health handles: `Relay::health` (leader and standby; a relay that cannot deliver because
//! every broker is down reports unhealthy, and healthy again once they are back) and
//! `Inbox::health` (a partition whose handler keeps failing is reported stuck).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use inbox::health::InboxState;
use inbox::{Context, Handler, HandlerError, Inbox, InboxThresholds};
use outbox::Event as _;
use outbox::health::{RelayHealth, RelayRole, RelayThresholds, Unhealthy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::relay_support as rs;
use tests::{Backend, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

tests::backends!(
    leader_and_standby_are_healthy_and_a_stopped_relay_is_not,
    relay_is_unhealthy_while_every_broker_is_down,
    inbox_reports_a_partition_stuck_retrying,
);

/// Polls `f` until it returns `Some`, or panics with `what` after a minute.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn role(h: &RelayHealth) -> RelayRole {
    h.status().role
}

async fn leader_and_standby_are_healthy_and_a_stopped_relay_is_not<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let build = async || rs::relay(db.pool(2).await, &kafka).name("health").build().unwrap();
    let first = build().await;
    let first_health = first.health();
    let thresholds = RelayThresholds::default();
    let not_started = first_health.check(&thresholds).unwrap_err();
    assert!(not_started.to_string().contains("not completed a round"), "{not_started}");
    let (stop_first, first_task) = rs::spawn(first);
    until("the first relay leads", || matches!(role(&first_health), RelayRole::Leader { .. }).then_some(())).await;

    let second = build().await;
    let second_health = second.health();
    let (stop_second, second_task) = rs::spawn(second);
    until("the second relay stands by", || (role(&second_health) == RelayRole::Standby).then_some(())).await;
    let status = second_health.status();
    println!("leader: {:?}\nstandby: {status:?}", first_health.status());
    assert_ne!(status.owner, first_health.status().owner, "two instances, two owners");
    assert!(status.backlog.is_some(), "a standby reads the backlog too: {status:?}");
    first_health.check(&thresholds).expect("the leader is healthy");
    second_health.check(&thresholds).expect("a standby whose rounds succeed is healthy");

    // The leader stops: it reports so, and the standby takes over.
    stop_first.cancel();
    first_task.await.unwrap().unwrap();
    assert_eq!(role(&first_health), RelayRole::Stopped);
    let stopped = first_health.check(&thresholds).unwrap_err();
    assert!(stopped.to_string().contains("stopped"), "{stopped}");
    until("the standby takes the lease over", || {
        matches!(role(&second_health), RelayRole::Leader { .. }).then_some(())
    })
    .await;
    second_health.check(&thresholds).expect("the new leader is healthy");
    stop_second.cancel();
    second_task.await.unwrap().unwrap();
}

async fn relay_is_unhealthy_while_every_broker_is_down<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    // Taking brokers down needs the mock cluster: scripts/test's real-broker pass leaves this out
    // by name (a test that passes without running would be reported as run).
    let mock =
        kafka.mock().expect("this test needs the mock cluster (it takes brokers down); run it without KAFKA_BROKERS");
    kafka.create_topic(rs::TOPIC, 2).await;
    rs::write_events(&db, 10, 2, 10).await;
    let kafka_config = outbox::KafkaConfig::new(kafka.brokers()).set("message.timeout.ms", "1000");
    let relay = rs::relay_with(db.pool(4).await, kafka_config)
        .max_attempts(1000)
        .metrics_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let health = relay.health();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    // A second of pending age is unhealthy for this test; the round-age check is left at its default.
    let thresholds = RelayThresholds::default().max_pending_age(Duration::from_secs(1));
    until("the relay is healthy", || health.check(&thresholds).ok()).await;

    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    rs::write_events(&db, 5, 1, 5).await;
    let unhealthy: Unhealthy = until("the relay reports unhealthy", || health.check(&thresholds).err()).await;
    println!("brokers down: {unhealthy}\n{:?}", health.status());
    assert!(
        unhealthy.reasons.iter().any(|r| r.contains("oldest pending message")),
        "the stalled backlog is the reason: {unhealthy}"
    );
    let backlog = health.status().backlog.expect("the backlog was read");
    assert!(backlog.pending >= 1, "{backlog:?}");

    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    until("the relay is healthy again", || health.check(&thresholds).ok()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "health.orders", name = "order.placed")]
struct Placed {
    #[event(key)]
    order_id: String,
}

/// Fails while `failing` is set.
struct Flaky {
    failing: Arc<AtomicBool>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<Placed, C> for Flaky {
    async fn handle(&self, _: Placed, _: &mut Context<'_, C>) -> Result<(), HandlerError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(HandlerError::transient(std::io::Error::other("stock service unavailable")));
        }
        Ok(())
    }
}

async fn inbox_reports_a_partition_stuck_retrying<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(Placed::TOPIC, 1).await;
    let producer = tests::produce::TestProducer::new(&kafka);
    producer.send(&tests::produce::CloudEvent::of(&Placed { order_id: "o1".into() })).await;

    let failing = Arc::new(AtomicBool::new(true));
    let inbox = Inbox::builder(db.pool(2).await, tests::produce::inbox_kafka_config(&kafka))
        .group("health")
        .handle(Flaky { failing: failing.clone() })
        .max_attempts(1_000_000)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .build()
        .unwrap();
    let health = inbox.health();
    assert_eq!(health.status().state, InboxState::Starting);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(inbox.run(shutdown.clone()));

    until("the inbox runs", || (health.status().state == InboxState::Running).then_some(())).await;
    // Any retrying at all is stuck for this test.
    let thresholds = InboxThresholds::default().max_retrying(Duration::from_millis(1));
    let unhealthy = until("the partition is reported stuck", || health.check(&thresholds).err()).await;
    let status = health.status();
    println!("handler failing: {unhealthy}\n{status:?}");
    assert_eq!(status.state, InboxState::Running);
    let stuck = status.retrying.first().expect("a partition is retrying");
    assert_eq!((stuck.topic.as_str(), stuck.partition, stuck.offset), (Placed::TOPIC, 0, 0));
    assert!(stuck.last_error.contains("stock service unavailable"), "{stuck:?}");
    assert!(unhealthy.to_string().contains("health.orders/0 has been retrying offset 0"), "{unhealthy}");
    assert!(
        health.check(&InboxThresholds::default().max_retrying(Duration::from_secs(3600))).is_ok(),
        "within a longer threshold"
    );

    failing.store(false, Ordering::SeqCst);
    until("the partition is healthy again", || health.check(&thresholds).ok()).await;
    assert!(health.status().retrying.is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(health.status().state, InboxState::Stopped);
}
