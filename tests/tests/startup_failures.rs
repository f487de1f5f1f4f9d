//! Start-up failures are errors, not loops: a relay or inbox pointed at a database without the
//! schema, at brokers none of which answers, or (inbox) at a topic that does not exist returns a
//! clear error from `run`. A schema error comes at once: the start-up timeout here is an hour,
//! and the test would wait for it (and fail on the outer bound) if `run` retried.

use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::ErrorKind;
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

tests::backends!(
    a_relay_on_an_unmigrated_database_fails_at_once,
    an_inbox_on_an_unmigrated_database_fails_at_once,
    an_inbox_on_a_database_with_only_the_outbox_tables_fails_at_once,
    a_relay_whose_brokers_never_answer_fails_at_its_deadline,
    an_inbox_whose_topic_does_not_exist_fails_at_its_deadline,
    a_relay_started_during_an_outage_delivers_once_the_brokers_are_back,
);

const AN_HOUR: Duration = Duration::from_secs(3600);
/// Only a bound for a run that hangs; every case returns long before it.
const HANG: Duration = Duration::from_secs(120);

struct Ignore;

#[inbox::async_trait]
impl<C: outbox::Database> Handler<Happened, C> for Ignore {
    async fn handle(&self, _: Happened, _: &mut Context<'_, C>) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn run_to_error<F: Future<Output = outbox::Result<()>>>(what: &str, run: F) -> outbox::Error {
    let outcome = tokio::time::timeout(HANG, run).await.unwrap_or_else(|_| panic!("{what}: run() kept retrying"));
    let e = outcome.expect_err(&format!("{what}: run() returned Ok"));
    println!("{what}: {:?}: {e}", e.kind());
    e
}

async fn a_relay_on_an_unmigrated_database_fails_at_once<B: Backend>() {
    let db = TestDb::<B>::empty().await;
    let kafka = TestKafka::new();
    let relay = rs::relay(db.pool(2).await, &kafka).startup_timeout(AN_HOUR).build().unwrap();
    let e = run_to_error("relay, no schema", relay.run(CancellationToken::new())).await;
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert!(e.to_string().contains("outbox migrate"), "the error says what to do: {e}");
}

async fn an_inbox_on_an_unmigrated_database_fails_at_once<B: Backend>() {
    let db = TestDb::<B>::empty().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    let inbox = Inbox::builder(db.pool(2).await, kafka.brokers())
        .group("startup")
        .handle(Ignore)
        .startup_timeout(AN_HOUR)
        .build()
        .unwrap();
    let e = run_to_error("inbox, no schema", inbox.run(CancellationToken::new())).await;
    assert_eq!(e.kind(), ErrorKind::Schema);
    let text = e.to_string();
    assert!(text.contains("`inbox::migrate`") && text.contains("`outbox migrate`"), "the error says what to do: {e}");
}

/// The inbox checks its own set: the outbox's tables (all a relay needs) are not enough.
async fn an_inbox_on_a_database_with_only_the_outbox_tables_fails_at_once<B: Backend>() {
    let db = TestDb::<B>::empty().await;
    outbox::migrate(&mut db.conn().await).await.unwrap();
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    let inbox = Inbox::builder(db.pool(2).await, kafka.brokers())
        .group("startup")
        .handle(Ignore)
        .startup_timeout(AN_HOUR)
        .build()
        .unwrap();
    let e = run_to_error("inbox, only the outbox's tables", inbox.run(CancellationToken::new())).await;
    assert_eq!(e.kind(), ErrorKind::Schema);
    let text = e.to_string();
    for version in inbox::MIGRATIONS.versions::<B::Conn>().iter().map(|(v, _)| v) {
        assert!(text.contains(version), "the error names {version}: {e}");
    }
    assert!(text.contains("none of its migrations applied") && text.contains("`inbox::migrate`"), "{e}");
}

async fn a_relay_whose_brokers_never_answer_fails_at_its_deadline<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    // Nothing listens on port 1 of the loopback address.
    let relay = rs::relay_with(db.pool(2).await, outbox::KafkaConfig::new("127.0.0.1:1"))
        .startup_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let ids = rs::write_events(&db, 5, 1, 5).await;
    let e = run_to_error("relay, no broker", relay.run(CancellationToken::new())).await;
    assert_eq!(e.kind(), ErrorKind::Kafka);
    assert!(e.to_string().contains("no broker answered"), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "the error names the brokers: {e}");
    let left = db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL").await;
    assert_eq!(left, ids.len() as i64, "nothing was marked sent");
}

async fn an_inbox_whose_topic_does_not_exist_fails_at_its_deadline<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("some.other.topic", 1).await;
    let inbox = Inbox::builder(db.pool(2).await, kafka.brokers())
        .group("startup")
        .handle(Ignore)
        .startup_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let e = run_to_error("inbox, no topic", inbox.run(CancellationToken::new())).await;
    assert_eq!(e.kind(), ErrorKind::Kafka);
    assert!(e.to_string().contains(rs::TOPIC) && e.to_string().contains("do not exist"), "{e}");
}

/// The deadline is for brokers that never answer: a relay started during a short outage waits
/// and delivers everything once they are back.
async fn a_relay_started_during_an_outage_delivers_once_the_brokers_are_back<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let Some(mock) = kafka.mock() else {
        println!("KAFKA_BROKERS is set: taking brokers down needs the mock cluster; not run");
        return;
    };
    kafka.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 100, 5, 10).await;
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let relay = rs::relay(db.pool(2).await, &kafka).startup_timeout(AN_HOUR).build().unwrap();
    let (stop, task) = rs::spawn(relay);
    // The relay is running (it took the lease) while no broker answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the relay did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    println!("started during an outage: {:?}", rs::check_delivery(&records, &ids, &Default::default()));
}
