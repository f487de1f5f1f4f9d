//! Guarantees 2, 4 and the wire format: 10,000 events over 100 keys all reach Kafka, in order
//! per key, with the right key and CloudEvents headers, and the outbox ends empty.

use std::collections::HashSet;
use std::time::Duration;

use outbox::relay::AfterSend;
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestDb, TestKafka};

tests::backends!(
    ten_thousand_events_over_a_hundred_keys,
    retention_mode_keeps_sent_rows_then_cleans_them_up,
    invalid_configuration_fails_at_build,
    the_inbox_decodes_exactly_what_the_relay_writes,
);

async fn ten_thousand_events_over_a_hundred_keys<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;
    let ids = rs::write_events(&db, 10_000, 100, 250).await;

    let relay = rs::relay(db.pool(4).await, &kafka).source("/tests/relay").build().unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(120)).await;
    let records = rs::read_topic(&kafka, ids.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let report = rs::check_delivery(&records, &ids, &HashSet::new());
    println!("delivered: {report:?}");
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0, "outbox empty");

    // Every record: key = event key, value = the stored bytes, CloudEvents binary headers.
    for r in &records {
        let event: Happened = serde_json::from_slice(&r.payload).expect("payload is the event's JSON");
        assert_eq!(r.key.as_deref(), Some(event.key.as_str()));
        assert_eq!(r.header("ce_specversion"), Some("1.0"));
        assert_eq!(r.header("ce_type"), Some("test.happened"));
        assert_eq!(r.header("ce_typeversion"), Some("2"));
        assert_eq!(r.header("ce_source"), Some("/tests/relay"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(chrono::DateTime::parse_from_rfc3339(r.header("ce_time").unwrap()).is_ok());
        let id: uuid::Uuid = r.header("ce_id").unwrap().parse().unwrap();
        assert_eq!(ids[event.n as usize], id, "ce_id is the id returned by publish");
    }
}

async fn retention_mode_keeps_sent_rows_then_cleans_them_up<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 500, 10, 100).await;
    let relay = rs::relay(db.pool(4).await, &kafka)
        .after_send(AfterSend::Keep { retention: Duration::from_secs(2) })
        .cleanup(Duration::from_millis(200), 50)
        .build()
        .unwrap();
    let (stop, task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    // Right after sending, the rows are still there, marked sent.
    let kept = db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NOT NULL").await;
    assert!(kept > 0, "sent rows are kept for the retention period");
    let records = rs::read_topic(&kafka, ids.len()).await;
    rs::check_delivery(&records, &ids, &HashSet::new());
    // After the retention period the cleanup removes them, in batches of 50.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.count("SELECT count(*) AS n FROM outbox_messages").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "cleanup did not remove the sent rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// The wire format, end to end through the production code on both sides: the relay's encoder
/// writes the record, the inbox's decoder (`Envelope::from_headers`, what `inbox::classify`
/// calls) reads back every field the writer stored, and the tests' and bench's encoder
/// (`Envelope::to_headers`) gives the very same headers.
async fn the_inbox_decodes_exactly_what_the_relay_writes<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    let meta = outbox::Metadata::new()
        .correlation_id("checkout-42")
        .causation_id("cause-7")
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("tenant", "acme")
        .header("Z-Last", "sorted?");
    let before = chrono::Utc::now();
    let mut conn = db.conn().await;
    let id = outbox::transaction(&mut conn, async |tx| {
        outbox::publish_with(tx, &rs::Happened::new("k", 1), meta.clone()).await
    })
    .await
    .expect("publish");
    let after = chrono::Utc::now();
    let relay = rs::relay(db.pool(2).await, &kafka).source("/tests/wire").build().unwrap();
    let (stop, task) = rs::spawn(relay);
    let records = rs::read_topic(&kafka, 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let wire = &records[0].headers;

    let decoded = outbox::Envelope::from_headers(wire.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))))
        .expect("the inbox's decoder accepts what the relay wrote");
    // (whole seconds: the stored time's precision differs between backends)
    use chrono::SubsecRound;
    assert!(
        before.trunc_subsecs(0) <= decoded.time && decoded.time <= after,
        "ce_time {} is the write's",
        decoded.time
    );
    let expected = outbox::Envelope {
        id,
        event_type: "test.happened".into(),
        version: 2,
        source: "/tests/wire".into(),
        time: decoded.time,
        correlation_id: Some("checkout-42".into()),
        causation_id: Some("cause-7".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        headers: [("tenant", "acme"), ("Z-Last", "sorted?")].map(|(k, v)| (k.to_owned(), v.to_owned())).into(),
    };
    assert_eq!(decoded, expected);
    let encoded: std::collections::HashMap<String, String> = expected.to_headers().into_iter().collect();
    assert_eq!(&encoded, wire, "Envelope::to_headers writes what the relay writes");
}

async fn invalid_configuration_fails_at_build<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let pool = db.pool(2).await;
    let kafka = outbox::KafkaConfig::new("localhost:9092");
    let cases: Vec<(&str, outbox::relay::RelayBuilder<B::Conn>)> = vec![
        ("batch_size", outbox::relay::Relay::builder(pool.clone(), kafka.clone()).batch_size(0)),
        ("lease", outbox::relay::Relay::builder(pool.clone(), kafka.clone()).lease(Duration::from_millis(10))),
        ("max_attempts", outbox::relay::Relay::builder(pool.clone(), kafka.clone()).max_attempts(0)),
        (
            "backoff",
            outbox::relay::Relay::builder(pool.clone(), kafka.clone())
                .backoff(Duration::from_secs(5), Duration::from_secs(1)),
        ),
        (
            "enable.idempotence",
            outbox::relay::Relay::builder(pool.clone(), kafka.clone().set("enable.idempotence", "false")),
        ),
        ("acks", outbox::relay::Relay::builder(pool.clone(), kafka.clone().set("acks", "1"))),
        ("bootstrap.servers", outbox::relay::Relay::builder(pool.clone(), outbox::KafkaConfig::default())),
    ];
    for (what, builder) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), outbox::ErrorKind::Config, "{what}");
        assert!(err.to_string().contains(what), "error for {what} names it: {err}");
    }
}
